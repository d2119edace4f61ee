//! Fixed names shared with Kubernetes and the other Cairn components.
//! Annotations, finalizers, labels and condition types exactly as upstream spells them.

/// The CSI driver name (DESIGN.md).
pub const DRIVER: &str = "csi.cairn.dev";
/// Topology key whose value is the node name.
pub const TOPOLOGY_NODE_KEY: &str = "topology.cairn.dev/node";
/// Zone topology key, passed through when a node carries it.
pub const TOPOLOGY_ZONE_KEY: &str = "topology.kubernetes.io/zone";
/// The well-known hostname label, used for static local PVs.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Set by the scheduler on WaitForFirstConsumer claims.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Set by the PV controller: the provisioner expected to act on a claim.
pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// The deprecated beta spelling of [`ANN_STORAGE_PROVISIONER`].
pub const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// Set by the expand controller: the resizer expected to act on a claim.
pub const ANN_STORAGE_RESIZER: &str = "volume.kubernetes.io/storage-resizer";
/// Names the provisioner of a dynamically or statically created PV.
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The deprecated beta storage class annotation on claims.
pub const ANN_BETA_STORAGE_CLASS: &str = "volume.beta.kubernetes.io/storage-class";

/// external-provisioner's PV finalizer (HonorPVReclaimPolicy).
pub const PV_FINALIZER: &str = "external-provisioner.volume.kubernetes.io/finalizer";
/// external-attacher's finalizer on VolumeAttachments and PVs: `external-attacher/<driver with dots as dashes>`.
pub const ATTACHER_FINALIZER: &str = "external-attacher/csi-cairn-dev";

/// Labels external-provisioner puts on CSIStorageCapacity objects.
pub const LABEL_DRIVER_NAME: &str = "csi.storage.k8s.io/drivername";
/// See [`LABEL_DRIVER_NAME`].
pub const LABEL_MANAGED_BY: &str = "csi.storage.k8s.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`] for central provisioning, as upstream.
pub const MANAGED_BY: &str = "external-provisioner";

/// Prefix of the class parameters that belong to the sidecar, not the driver.
pub const CSI_PARAM_PREFIX: &str = "csi.storage.k8s.io/";
/// The fsType class parameter.
pub const PARAM_FSTYPE: &str = "csi.storage.k8s.io/fstype";
/// Added to PV volumeAttributes, as upstream does.
pub const ATTR_PROVISIONER_IDENTITY: &str = "storage.kubernetes.io/csiProvisionerIdentity";

/// PVC condition while the controller resizes.
pub const COND_RESIZING: &str = "Resizing";
/// PVC condition while the kubelet has to finish a filesystem resize.
pub const COND_FS_RESIZE_PENDING: &str = "FileSystemResizePending";
/// `status.allocatedResourceStatuses` values (RecoverVolumeExpansionFailure).
pub const RESIZE_CONTROLLER_IN_PROGRESS: &str = "ControllerResizeInProgress";
/// See [`RESIZE_CONTROLLER_IN_PROGRESS`].
pub const RESIZE_NODE_PENDING: &str = "NodeResizePending";

/// The class of static local PVs.
pub const LOCAL_STORAGE_CLASS: &str = "local-storage";

/// Turns a driver name into the form used in object names (`csi.cairn.dev` → `csi-cairn-dev`).
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The PV name for a claim, as upstream: `pvc-<uid>`.
pub fn pv_name(claim_uid: &str) -> String {
    format!("pvc-{claim_uid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attacher_finalizer_is_sanitized_driver() {
        assert_eq!(
            ATTACHER_FINALIZER,
            format!("external-attacher/{}", sanitize(DRIVER))
        );
        assert_eq!(pv_name("abc"), "pvc-abc");
    }
}
