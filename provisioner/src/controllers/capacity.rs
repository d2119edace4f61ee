//! The capacity publisher: one CSIStorageCapacity per (node topology segment × Cairn class)
//! from GetCapacity, refreshed periodically and when a volume is created, resized or deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::csi::v1::{GetCapacityRequest, Topology};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::storage::v1::{CSIStorageCapacity, StorageClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, ResourceExt};
use tracing::{debug, info, warn};

use crate::context::Ctx;
use crate::error::{Result, is_api_code};
use crate::names::{DRIVER, LABEL_DRIVER_NAME, LABEL_MANAGED_BY, MANAGED_BY};
use crate::{params, quantity, topology};

/// Runs until dropped: publish, then wait for the interval or a trigger.
pub async fn run(ctx: Arc<Ctx>, namespace: String, interval: Duration) {
    loop {
        match publish_once(&ctx, &namespace).await {
            Ok(()) => ctx.metrics.reconciled("capacity", "ok"),
            Err(e) => {
                ctx.metrics.reconciled("capacity", e.kind());
                warn!(error = %e, "publishing CSIStorageCapacity failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = ctx.capacity_trigger.notified() => {}
        }
    }
}

/// The label selector of the objects this publisher owns.
pub fn selector() -> String {
    format!("{LABEL_DRIVER_NAME}={DRIVER},{LABEL_MANAGED_BY}={MANAGED_BY}")
}

/// One pass: create, update and delete CSIStorageCapacity objects in `namespace`.
pub async fn publish_once(ctx: &Ctx, namespace: &str) -> Result<()> {
    let classes: Vec<StorageClass> = Api::<StorageClass>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|c| c.provisioner == DRIVER)
        .collect();
    let segments: BTreeSet<BTreeMap<String, String>> = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(topology::registered_segment)
        .collect();
    let api = Api::<CSIStorageCapacity>::namespaced(ctx.client.clone(), namespace);
    let existing = api
        .list(&ListParams::default().labels(&selector()))
        .await?
        .items;
    let mut keep: BTreeSet<String> = BTreeSet::new();

    for class in &classes {
        let class_name = class.name_any();
        let p = match params::parse(class.parameters.as_ref()) {
            Ok(p) => p,
            Err(e) => {
                warn!(class = %class_name, error = %e, "skipping class with invalid parameters");
                continue;
            }
        };
        for seg in &segments {
            let found = existing.iter().find(|c| {
                c.storage_class_name == class_name
                    && c.node_topology
                        .as_ref()
                        .and_then(|t| t.match_labels.as_ref())
                        == Some(seg)
                    && !keep.contains(&c.name_any())
            });
            if let Some(c) = found {
                keep.insert(c.name_any());
            }
            let req = GetCapacityRequest {
                volume_capabilities: vec![],
                parameters: p.driver.clone(),
                accessible_topology: Some(Topology {
                    segments: seg.clone().into_iter().collect(),
                }),
            };
            let resp = match ctx.csi.get_capacity(req).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(class = %class_name, segment = ?seg, error = %e, "GetCapacity failed");
                    continue;
                }
            };
            let capacity = Some(quantity::from_bytes(resp.available_capacity.max(0) as u64));
            let max = resp
                .maximum_volume_size
                .map(|m| quantity::from_bytes(m.max(0) as u64));
            match found {
                Some(c) if c.capacity == capacity && c.maximum_volume_size == max => {}
                Some(c) => {
                    let mut updated = c.clone();
                    updated.capacity = capacity;
                    updated.maximum_volume_size = max;
                    match api
                        .replace(&c.name_any(), &PostParams::default(), &updated)
                        .await
                    {
                        Ok(_) => debug!(class = %class_name, segment = ?seg, "capacity updated"),
                        Err(e) if is_api_code(&e, 409) => {
                            debug!("capacity changed meanwhile; next pass")
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                None => {
                    let obj = new_object(class, seg, capacity, max);
                    let created = api.create(&PostParams::default(), &obj).await?;
                    keep.insert(created.name_any());
                    info!(class = %class_name, segment = ?seg, name = %created.name_any(), "capacity published");
                }
            }
        }
    }
    for stale in existing.iter().filter(|c| !keep.contains(&c.name_any())) {
        match api
            .delete(&stale.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => info!(name = %stale.name_any(), "stale capacity removed"),
            Err(e) if is_api_code(&e, 404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A new object, owned by its StorageClass so it goes away with the class.
pub fn new_object(
    class: &StorageClass,
    seg: &BTreeMap<String, String>,
    capacity: Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    max: Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
) -> CSIStorageCapacity {
    let owner = class.uid().map(|uid| OwnerReference {
        api_version: "storage.k8s.io/v1".into(),
        kind: "StorageClass".into(),
        name: class.name_any(),
        uid,
        controller: Some(true),
        block_owner_deletion: None,
    });
    CSIStorageCapacity {
        metadata: ObjectMeta {
            generate_name: Some("csisc-".into()),
            labels: Some(
                [
                    (LABEL_DRIVER_NAME.to_string(), DRIVER.to_string()),
                    (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                ]
                .into(),
            ),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        capacity,
        maximum_volume_size: max,
        node_topology: Some(LabelSelector {
            match_labels: Some(seg.clone()),
            match_expressions: None,
        }),
        storage_class_name: class.name_any(),
    }
}
