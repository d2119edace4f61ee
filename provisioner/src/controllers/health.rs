//! The volume health watcher: polls the condition of every Cairn PV (CSI ControllerGetVolume)
//! and records an Event on the PV when it turns abnormal and when it is healthy again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::csi::v1 as csi;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::ListParams;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, warn};

use crate::context::Ctx;
use crate::error::Result;
use crate::names::DRIVER;

/// How often every PV's condition is read: a rebuild takes minutes, so a degraded volume
/// is reported within this, at one cheap call per volume.
pub const INTERVAL: Duration = Duration::from_secs(15);

/// The reason of the Event recorded when a volume turns abnormal.
pub const DEGRADED: &str = "VolumeDegraded";
/// The reason of the Event recorded when it is healthy again.
pub const HEALTHY: &str = "VolumeHealthy";

/// The Event a change of condition calls for: a volume seen abnormal for the first time (at
/// start or since it was last healthy), or healthy after being abnormal. A message that
/// changes while the volume stays abnormal (a rebuild's percentage) records nothing.
pub fn transition(before: Option<bool>, abnormal: bool) -> Option<(EventType, &'static str)> {
    match (before, abnormal) {
        (Some(b), a) if b == a => None,
        (_, true) => Some((EventType::Warning, DEGRADED)),
        (Some(true), false) => Some((EventType::Normal, HEALTHY)),
        (_, false) => None,
    }
}

/// Runs until dropped, when the driver serves ControllerGetVolume with conditions.
pub async fn run(ctx: Arc<Ctx>, interval: Duration) {
    use csi::controller_service_capability::rpc::Type;
    let mut seen = HashMap::new();
    loop {
        let able = matches!(ctx.csi.has_capability(Type::GetVolume).await, Ok(true))
            && matches!(
                ctx.csi.has_capability(Type::VolumeCondition).await,
                Ok(true)
            );
        if able {
            match poll_once(&ctx, &mut seen).await {
                Ok(()) => ctx.metrics.reconciled("health", "ok"),
                Err(e) => {
                    ctx.metrics.reconciled("health", e.kind());
                    warn!(error = %e, "reading volume conditions failed");
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// One pass over the PVs of this driver; `seen` holds each PV's last condition (abnormal).
pub async fn poll_once(ctx: &Ctx, seen: &mut HashMap<String, bool>) -> Result<()> {
    let pvs = Api::<PersistentVolume>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let mut listed = Vec::new();
    for pv in &pvs {
        let Some(handle) = pv
            .spec
            .as_ref()
            .and_then(|s| s.csi.as_ref())
            .filter(|c| c.driver == DRIVER)
            .map(|c| c.volume_handle.clone())
        else {
            continue;
        };
        if pv.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pv.name_any();
        listed.push(name.clone());
        let condition = match ctx.csi.volume_condition(&handle).await {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                debug!(pv = %name, error = %e, "no condition for this volume");
                continue;
            }
        };
        let before = seen.insert(name.clone(), condition.abnormal);
        if let Some((kind, reason)) = transition(before, condition.abnormal) {
            let note = format!("volume {handle}: {}", condition.message);
            ctx.event(&pv.object_ref(&()), kind, reason, note).await;
        }
    }
    seen.retain(|pv, _| listed.contains(pv));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_of_condition_record_events() {
        let t = |b, a| transition(b, a).map(|(_, r)| r);
        assert_eq!(t(None, false), None);
        assert_eq!(t(None, true), Some(DEGRADED));
        assert_eq!(t(Some(false), true), Some(DEGRADED));
        assert_eq!(t(Some(true), true), None);
        assert_eq!(t(Some(true), false), Some(HEALTHY));
        assert_eq!(t(Some(false), false), None);
    }
}
