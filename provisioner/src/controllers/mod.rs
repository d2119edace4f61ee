//! The controllers, one file each (provisioner with its content sources and cloning protection,
//! deleter, attacher, resizer, capacity publisher, health watcher, local static provisioner).

pub mod attach;
pub mod capacity;
pub mod cloning;
pub mod delete;
pub mod health;
pub mod local;
pub mod provision;
pub mod resize;
pub mod source;

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

use crate::context::Ctx;
use crate::error::{Error, Result};

/// The controller role: provisioner, resizer, deleter, attacher, capacity publisher and
/// volume health watcher.
pub async fn run(ctx: Arc<Ctx>, cap_ns: String, cap_every: Duration) {
    let c = ctx.client.clone();
    tokio::join!(
        drive(
            Api::<PersistentVolumeClaim>::all(c.clone()),
            provision::reconcile,
            provision::error_policy,
            ctx.clone()
        ),
        drive(
            Api::<PersistentVolumeClaim>::all(c.clone()),
            resize::reconcile,
            resize::error_policy,
            ctx.clone()
        ),
        drive(
            Api::<PersistentVolume>::all(c.clone()),
            delete::reconcile,
            delete::error_policy,
            ctx.clone()
        ),
        drive(
            Api::<VolumeAttachment>::all(c),
            attach::reconcile,
            attach::error_policy,
            ctx.clone()
        ),
        capacity::run(ctx.clone(), cap_ns, cap_every),
        health::run(ctx, health::INTERVAL)
    );
}

/// One kube-runtime controller over every object of `api`, until its watch ends.
async fn drive<K, Fut>(
    api: Api<K>,
    reconcile: fn(Arc<K>, Arc<Ctx>) -> Fut,
    error_policy: fn(Arc<K>, &Error, Arc<Ctx>) -> Action,
    ctx: Arc<Ctx>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Debug + Unpin,
    Fut: Future<Output = Result<Action>> + Send + 'static,
{
    Controller::new(api, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await
}
