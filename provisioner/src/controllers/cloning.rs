//! Cloning protection, as external-provisioner does it: a claim being cloned carries
//! `provisioner.storage.kubernetes.io/cloning-protection` until no pending claim clones it.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::info;

use crate::claim;
use crate::context::Ctx;
use crate::error::{Error, Result};

/// The finalizer upstream's external-provisioner puts on a clone's source claim.
pub const CLONE_FINALIZER: &str = "provisioner.storage.kubernetes.io/cloning-protection";

/// The name of the claim `pvc` clones, if its content source is another claim.
pub fn clone_source(pvc: &PersistentVolumeClaim) -> Option<String> {
    let src = claim::data_source(pvc)?;
    (src.group.is_empty() && src.kind == "PersistentVolumeClaim").then_some(src.name)
}

/// Claims in `claims` (one namespace) still waiting for a volume cloned from `source`,
/// leaving out the one with uid `except` (a clone that has just got its volume).
pub fn pending_clones(
    claims: &[PersistentVolumeClaim],
    source: &str,
    except: Option<&str>,
) -> usize {
    claims
        .iter()
        .filter(|c| c.uid().as_deref() != except)
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .filter(|c| {
            c.spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .is_none_or(str::is_empty)
        })
        .filter(|c| clone_source(c).as_deref() == Some(source))
        .count()
}

/// The claim's finalizers with ours added (`add`) or removed; `None` if nothing changes.
pub fn finalizers_with(pvc: &PersistentVolumeClaim, add: bool) -> Option<Vec<String>> {
    let mut list = pvc.finalizers().to_vec();
    let has = list.iter().any(|f| f == CLONE_FINALIZER);
    match (add, has) {
        (true, false) => list.push(CLONE_FINALIZER.to_string()),
        (false, true) => list.retain(|f| f != CLONE_FINALIZER),
        _ => return None,
    }
    Some(list)
}

/// Writes `finalizers` to `pvc`, guarded by its resourceVersion (a conflict is retried
/// by the caller's reconcile).
async fn patch_finalizers(
    ctx: &Ctx,
    pvc: &PersistentVolumeClaim,
    finalizers: Vec<String>,
) -> Result<()> {
    let ns = pvc.namespace().unwrap_or_default();
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": pvc.resource_version()}});
    Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
        .patch(
            &pvc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// Puts the finalizer on `source` before it is cloned. A source already being deleted
/// is not cloned (upstream refuses it too); the clone waits.
pub async fn protect(ctx: &Ctx, source: &PersistentVolumeClaim) -> Result<()> {
    let ns = source.namespace().unwrap_or_default();
    if source.metadata.deletion_timestamp.is_some() {
        return Err(Error::Waiting(format!(
            "source claim {ns}/{} is being deleted",
            source.name_any()
        )));
    }
    if let Some(f) = finalizers_with(source, true) {
        patch_finalizers(ctx, source, f).await?;
        info!(pvc = %format!("{ns}/{}", source.name_any()), "cloning protection added");
    }
    Ok(())
}

/// Takes the finalizer off claim `ns/source` once no claim but `except` still waits
/// for a clone of it. Returns whether the claim is now free of it.
pub async fn release(ctx: &Ctx, ns: &str, source: &str, except: Option<&str>) -> Result<bool> {
    let claims = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns);
    let all = claims.list(&ListParams::default()).await?.items;
    if pending_clones(&all, source, except) > 0 {
        return Ok(false);
    }
    let Some(src) = all.iter().find(|c| c.name_any() == source) else {
        return Ok(true);
    };
    if let Some(f) = finalizers_with(src, false) {
        patch_finalizers(ctx, src, f).await?;
        info!(pvc = %format!("{ns}/{source}"), "cloning protection removed");
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(
        name: &str,
        uid: &str,
        source: Option<&str>,
        bound: bool,
        deleting: bool,
    ) -> PersistentVolumeClaim {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "ns", "uid": uid},
            "spec": {"volumeName": if bound { "pv" } else { "" }},
        });
        if let Some(s) = source {
            v["spec"]["dataSource"] = json!({"kind": "PersistentVolumeClaim", "name": s});
        }
        if deleting {
            v["metadata"]["deletionTimestamp"] = json!("2026-12-03T00:00:00Z");
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_unbound_live_clones_of_the_source_are_pending() {
        let claims = vec![
            claim("origin", "u0", None, true, false),
            claim("a", "u1", Some("origin"), false, false),
            claim("b", "u2", Some("origin"), true, false),
            claim("c", "u3", Some("origin"), false, true),
            claim("d", "u4", Some("other"), false, false),
        ];
        assert_eq!(pending_clones(&claims, "origin", None), 1, "only a");
        assert_eq!(
            pending_clones(&claims, "origin", Some("u1")),
            0,
            "a just got its volume"
        );
        assert_eq!(pending_clones(&claims, "other", None), 1);
        assert_eq!(pending_clones(&claims, "nobody", None), 0);
    }

    #[test]
    fn the_finalizer_is_added_once_and_removed_alone() {
        let mut src = claim("origin", "u0", None, true, false);
        src.metadata.finalizers = Some(vec!["kubernetes.io/pvc-protection".into()]);
        let added = finalizers_with(&src, true).expect("added");
        assert_eq!(added, ["kubernetes.io/pvc-protection", CLONE_FINALIZER]);
        src.metadata.finalizers = Some(added);
        assert_eq!(finalizers_with(&src, true), None, "already there");
        assert_eq!(
            finalizers_with(&src, false).expect("removed"),
            ["kubernetes.io/pvc-protection"]
        );
        src.metadata.finalizers = None;
        assert_eq!(finalizers_with(&src, false), None, "nothing to remove");
    }

    #[test]
    fn only_a_claim_source_is_a_clone_source() {
        assert_eq!(
            clone_source(&claim("a", "u1", Some("origin"), false, false)).as_deref(),
            Some("origin")
        );
        assert_eq!(clone_source(&claim("a", "u1", None, false, false)), None);
        let snap: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "r"},
            "spec": {"dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s"}}
        }))
        .unwrap();
        assert_eq!(clone_source(&snap), None);
    }
}
