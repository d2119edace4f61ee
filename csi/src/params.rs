//! Validation of StorageClass parameters, volume capabilities and capacity ranges.
//! Pure functions: the controller and node services call these before touching storaged.

use std::collections::HashMap;

use cairn_proto::VolumeName;
use cairn_proto::csi::v1::{
    CapacityRange, VolumeCapability, volume_capability::AccessType,
    volume_capability::access_mode::Mode,
};

use crate::error::{CsiError, Result};

/// The CSI driver name (DESIGN.md).
pub const DRIVER_NAME: &str = "csi.cairn.dev";
/// Topology key carrying the node name.
pub const TOPOLOGY_NODE_KEY: &str = "topology.cairn.dev/node";
/// Topology key carrying the node's zone, when it has one.
pub const TOPOLOGY_ZONE_KEY: &str = "topology.kubernetes.io/zone";
/// Standard Kubernetes prefix whose keys are always accepted.
pub const K8S_PARAM_PREFIX: &str = "csi.storage.k8s.io/";
/// The standard fsType parameter.
pub const FSTYPE_PARAM: &str = "csi.storage.k8s.io/fstype";
/// Sizes are rounded up to whole MiB.
pub const MIB: u64 = 1 << 20;
/// Size of a volume created without a capacity range.
pub const DEFAULT_SIZE: u64 = 1 << 30;
/// Filesystem used when nobody asks for one.
pub const DEFAULT_FS: &str = "ext4";
/// Filesystems the node plugin can create and grow.
pub const SUPPORTED_FS: &[&str] = &["ext4", "xfs"];

/// The `type` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeType {
    Replicated,
    Local,
}

impl VolumeType {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeType::Replicated => "replicated",
            VolumeType::Local => "local",
        }
    }
}

/// Validated StorageClass parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeParams {
    pub kind: VolumeType,
    pub replicas: u32,
    /// From `csi.storage.k8s.io/fstype`, if set.
    pub fs_type: Option<String>,
}

/// Parse and validate parameters; unknown keys are refused, naming the key.
pub fn parse_parameters(params: &HashMap<String, String>) -> Result<VolumeParams> {
    let mut kind = VolumeType::Replicated;
    let mut replicas: Option<u32> = None;
    let mut fs_type = None;
    // Deterministic error messages: look at keys in order.
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    for key in keys {
        let value = params[key].as_str();
        match key.as_str() {
            "type" => {
                kind = match value {
                    "replicated" | "" => VolumeType::Replicated,
                    "local" => VolumeType::Local,
                    other => {
                        return Err(CsiError::InvalidArgument(format!(
                            "parameter `type`: `{other}` is neither `replicated` nor `local`"
                        )));
                    }
                }
            }
            "replicas" => match value.parse::<u32>() {
                Ok(n) if (1..=5).contains(&n) => replicas = Some(n),
                _ => {
                    return Err(CsiError::InvalidArgument(format!(
                        "parameter `replicas`: `{value}` is not a number from 1 to 5"
                    )));
                }
            },
            FSTYPE_PARAM => {
                if !value.is_empty() {
                    check_fs_type(value)?;
                    fs_type = Some(value.to_string());
                }
            }
            k if k.starts_with(K8S_PARAM_PREFIX) => {}
            k => {
                return Err(CsiError::InvalidArgument(format!(
                    "unknown parameter `{k}` (accepted: type, replicas, {K8S_PARAM_PREFIX}*)"
                )));
            }
        }
    }
    let replicas = match (kind, replicas) {
        (VolumeType::Local, Some(n)) if n != 1 => {
            return Err(CsiError::InvalidArgument(format!(
                "parameter `replicas`: a `type: local` volume has exactly 1 replica, not {n}"
            )));
        }
        (VolumeType::Local, _) => 1,
        (VolumeType::Replicated, n) => n.unwrap_or(3),
    };
    Ok(VolumeParams {
        kind,
        replicas,
        fs_type,
    })
}

/// Refuse a filesystem the node plugin cannot create.
pub fn check_fs_type(fs: &str) -> Result<()> {
    if SUPPORTED_FS.contains(&fs) {
        Ok(())
    } else {
        Err(CsiError::InvalidArgument(format!(
            "filesystem `{fs}` is not supported (supported: {})",
            SUPPORTED_FS.join(", ")
        )))
    }
}

/// How the volume is presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Block,
    Mount {
        /// Empty when the CO left it to the driver.
        fs_type: String,
        mount_flags: Vec<String>,
    },
}

/// A validated capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub access: Access,
    pub mode: Mode,
}

impl Capability {
    pub fn is_block(&self) -> bool {
        matches!(self.access, Access::Block)
    }

    /// Several nodes may attach the volume at once.
    pub fn multi_node(&self) -> bool {
        matches!(
            self.mode,
            Mode::MultiNodeReaderOnly | Mode::MultiNodeSingleWriter | Mode::MultiNodeMultiWriter
        )
    }

    /// The mode itself forbids writes.
    pub fn read_only_mode(&self) -> bool {
        matches!(
            self.mode,
            Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly
        )
    }

    /// The filesystem to use: the capability's, else the parameter's, else ext4.
    pub fn fs_type<'a>(&'a self, fallback: Option<&'a str>) -> &'a str {
        match &self.access {
            Access::Mount { fs_type, .. } if !fs_type.is_empty() => fs_type,
            _ => fallback.filter(|f| !f.is_empty()).unwrap_or(DEFAULT_FS),
        }
    }

    pub fn mount_flags(&self) -> &[String] {
        match &self.access {
            Access::Mount { mount_flags, .. } => mount_flags,
            Access::Block => &[],
        }
    }
}

/// Check that a capability is well formed (INVALID_ARGUMENT otherwise).
pub fn parse_capability(cap: &VolumeCapability) -> Result<Capability> {
    let access = match &cap.access_type {
        Some(AccessType::Block(_)) => Access::Block,
        Some(AccessType::Mount(m)) => Access::Mount {
            fs_type: m.fs_type.clone(),
            mount_flags: m.mount_flags.clone(),
        },
        None => {
            return Err(CsiError::InvalidArgument(
                "volume capability has neither block nor mount access type".into(),
            ));
        }
    };
    let mode = cap
        .access_mode
        .as_ref()
        .and_then(|m| Mode::try_from(m.mode).ok())
        .unwrap_or(Mode::Unknown);
    if mode == Mode::Unknown {
        return Err(CsiError::InvalidArgument(
            "volume capability has no (or an unknown) access mode".into(),
        ));
    }
    Ok(Capability { access, mode })
}

/// Why a capability is not supported for a volume type, or None when it is.
///
/// Supported: every SINGLE_NODE_* mode (mount or block); MULTI_NODE_READER_ONLY
/// (mount or block) and MULTI_NODE_MULTI_WRITER (block only) on replicated volumes.
/// A filesystem mounted read-write on several nodes would corrupt, and
/// MULTI_NODE_SINGLE_WRITER cannot be enforced per writer, so both are refused.
pub fn unsupported_reason(cap: &Capability, kind: VolumeType) -> Option<String> {
    if let Access::Mount { fs_type, .. } = &cap.access
        && !fs_type.is_empty()
        && !SUPPORTED_FS.contains(&fs_type.as_str())
    {
        return Some(format!("filesystem `{fs_type}` is not supported"));
    }
    match cap.mode {
        Mode::SingleNodeWriter
        | Mode::SingleNodeReaderOnly
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter => None,
        _ if kind == VolumeType::Local => Some(format!(
            "access mode {:?} needs several nodes; a `type: local` volume lives on one",
            cap.mode
        )),
        Mode::MultiNodeReaderOnly => None,
        Mode::MultiNodeMultiWriter if cap.is_block() => None,
        Mode::MultiNodeMultiWriter => Some(
            "MULTI_NODE_MULTI_WRITER is only supported for block volumes (no cluster filesystem)"
                .into(),
        ),
        Mode::MultiNodeSingleWriter => Some("MULTI_NODE_SINGLE_WRITER is not supported".into()),
        Mode::Unknown => Some("unknown access mode".into()),
    }
}

/// Parse a non-empty capability list and check every entry is supported.
pub fn parse_capabilities(caps: &[VolumeCapability], kind: VolumeType) -> Result<Vec<Capability>> {
    if caps.is_empty() {
        return Err(CsiError::InvalidArgument(
            "volume_capabilities is required".into(),
        ));
    }
    caps.iter()
        .map(|c| {
            let cap = parse_capability(c)?;
            match unsupported_reason(&cap, kind) {
                Some(why) => Err(CsiError::InvalidArgument(why)),
                None => Ok(cap),
            }
        })
        .collect()
}

/// The size to create for a capacity range: required rounded up to 1 MiB.
pub fn size_for_range(range: Option<&CapacityRange>) -> Result<u64> {
    let Some(r) = range else {
        return Ok(DEFAULT_SIZE);
    };
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(CsiError::InvalidArgument(
            "capacity_range bytes must not be negative".into(),
        ));
    }
    let (required, limit) = (r.required_bytes as u64, r.limit_bytes as u64);
    if limit > 0 && limit < required {
        return Err(CsiError::OutOfRange(format!(
            "capacity_range limit_bytes {limit} is below required_bytes {required}"
        )));
    }
    let size = match (required, limit) {
        (0, 0) => DEFAULT_SIZE,
        (0, l) => DEFAULT_SIZE.min(l / MIB * MIB),
        (r, _) => r.div_ceil(MIB) * MIB,
    };
    if size == 0 || (limit > 0 && size > limit) {
        return Err(CsiError::OutOfRange(format!(
            "no size in whole MiB fits capacity_range [{required}, {limit}]"
        )));
    }
    Ok(size)
}

/// Whether an existing size satisfies a capacity range.
pub fn size_fits(size: u64, range: Option<&CapacityRange>) -> bool {
    match range {
        None => true,
        Some(r) => {
            size >= r.required_bytes.max(0) as u64
                && (r.limit_bytes <= 0 || size <= r.limit_bytes as u64)
        }
    }
}

/// The storaged volume name (and so the CSI `volume_id`) for a CreateVolume `name`.
/// A name storaged accepts ([`VolumeName`]; Kubernetes' `pvc-<uid>` always is) is used as it
/// is; any other name, which the CSI spec allows, becomes `csi-<sha256(name) in hex>`, so the
/// same name always maps to the same volume.
pub fn volume_name(csi_name: &str) -> VolumeName {
    VolumeName::parse(csi_name).unwrap_or_else(|_| {
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(csi_name.as_bytes()));
        VolumeName::parse(&format!("csi-{digest}"))
            .expect("`csi-` and 64 hex digits follow the name rule")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::csi::v1::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub(crate) fn cap(block: bool, mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(if block {
                AccessType::Block(BlockVolume {})
            } else {
                AccessType::Mount(MountVolume::default())
            }),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    #[test]
    fn defaults_are_replicated_three() {
        let p = parse_parameters(&HashMap::new()).unwrap();
        assert_eq!(
            p,
            VolumeParams {
                kind: VolumeType::Replicated,
                replicas: 3,
                fs_type: None
            }
        );
    }

    #[test]
    fn accepts_known_and_k8s_keys() {
        let p = parse_parameters(&params(&[
            ("type", "replicated"),
            ("replicas", "5"),
            ("csi.storage.k8s.io/fstype", "xfs"),
            ("csi.storage.k8s.io/pvc/name", "data"),
        ]))
        .unwrap();
        assert_eq!(p.replicas, 5);
        assert_eq!(p.fs_type.as_deref(), Some("xfs"));
        let p = parse_parameters(&params(&[("type", "local")])).unwrap();
        assert_eq!((p.kind, p.replicas), (VolumeType::Local, 1));
    }

    #[test]
    fn refuses_unknown_key_naming_it() {
        let e = parse_parameters(&params(&[("replicas", "2"), ("colour", "blue")])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn refuses_bad_values() {
        for kv in [
            ("replicas", "0"),
            ("replicas", "6"),
            ("replicas", "three"),
            ("type", "shared"),
            ("csi.storage.k8s.io/fstype", "ntfs"),
        ] {
            let e = parse_parameters(&params(&[kv])).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{kv:?}");
        }
        let e = parse_parameters(&params(&[("type", "local"), ("replicas", "3")])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(parse_parameters(&params(&[("type", "local"), ("replicas", "1")])).is_ok());
    }

    #[test]
    fn capability_matrix() {
        use Mode::*;
        let ok = |block, mode, kind| {
            unsupported_reason(&parse_capability(&cap(block, mode)).unwrap(), kind).is_none()
        };
        for m in [
            SingleNodeWriter,
            SingleNodeReaderOnly,
            SingleNodeSingleWriter,
            SingleNodeMultiWriter,
        ] {
            for block in [false, true] {
                assert!(ok(block, m, VolumeType::Replicated));
                assert!(ok(block, m, VolumeType::Local));
            }
        }
        assert!(ok(false, MultiNodeReaderOnly, VolumeType::Replicated));
        assert!(ok(true, MultiNodeReaderOnly, VolumeType::Replicated));
        assert!(ok(true, MultiNodeMultiWriter, VolumeType::Replicated));
        assert!(!ok(false, MultiNodeMultiWriter, VolumeType::Replicated));
        assert!(!ok(false, MultiNodeSingleWriter, VolumeType::Replicated));
        assert!(!ok(true, MultiNodeSingleWriter, VolumeType::Replicated));
        assert!(!ok(false, MultiNodeReaderOnly, VolumeType::Local));
        assert!(!ok(true, MultiNodeMultiWriter, VolumeType::Local));
    }

    #[test]
    fn malformed_capabilities_are_invalid() {
        let no_type = VolumeCapability {
            access_type: None,
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
        };
        assert_eq!(
            parse_capability(&no_type).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let no_mode = VolumeCapability {
            access_mode: None,
            ..cap(false, Mode::SingleNodeWriter)
        };
        assert_eq!(
            parse_capability(&no_mode).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let e = parse_capabilities(&[], VolumeType::Replicated).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let mut xfs = cap(false, Mode::SingleNodeWriter);
        if let Some(AccessType::Mount(m)) = &mut xfs.access_type {
            m.fs_type = "zfs".into();
        }
        let e = parse_capabilities(&[xfs], VolumeType::Replicated).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn fs_type_precedence() {
        let c = parse_capability(&cap(false, Mode::SingleNodeWriter)).unwrap();
        assert_eq!(c.fs_type(None), "ext4");
        assert_eq!(c.fs_type(Some("xfs")), "xfs");
        let mut m = cap(false, Mode::SingleNodeWriter);
        if let Some(AccessType::Mount(mv)) = &mut m.access_type {
            mv.fs_type = "xfs".into();
        }
        assert_eq!(parse_capability(&m).unwrap().fs_type(Some("ext4")), "xfs");
    }

    fn range(required: i64, limit: i64) -> CapacityRange {
        CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }
    }

    #[test]
    fn sizes_round_up_to_mib() {
        assert_eq!(size_for_range(None).unwrap(), DEFAULT_SIZE);
        assert_eq!(size_for_range(Some(&range(0, 0))).unwrap(), DEFAULT_SIZE);
        assert_eq!(size_for_range(Some(&range(1, 0))).unwrap(), MIB);
        assert_eq!(
            size_for_range(Some(&range(MIB as i64 + 1, 0))).unwrap(),
            2 * MIB
        );
        assert_eq!(
            size_for_range(Some(&range(10 * MIB as i64, 10 * MIB as i64))).unwrap(),
            10 * MIB
        );
        // Only a limit: the default, capped by the limit (rounded down).
        assert_eq!(
            size_for_range(Some(&range(0, 5 * MIB as i64 + 7))).unwrap(),
            5 * MIB
        );
    }

    #[test]
    fn impossible_ranges_are_out_of_range() {
        let code = |r| size_for_range(Some(&r)).unwrap_err().code();
        assert_eq!(
            code(range(10 * MIB as i64, MIB as i64)),
            tonic::Code::OutOfRange
        );
        // Exact size that is not a whole MiB.
        let odd = MIB as i64 + 512;
        assert_eq!(code(range(odd, odd)), tonic::Code::OutOfRange);
        assert_eq!(code(range(0, 1000)), tonic::Code::OutOfRange);
        assert_eq!(code(range(-1, 0)), tonic::Code::InvalidArgument);
    }

    #[test]
    fn fits_checks_both_bounds() {
        assert!(size_fits(MIB, None));
        assert!(size_fits(2 * MIB, Some(&range(MIB as i64, 0))));
        assert!(!size_fits(MIB, Some(&range(2 * MIB as i64, 0))));
        assert!(!size_fits(
            4 * MIB,
            Some(&range(MIB as i64, 2 * MIB as i64))
        ));
    }

    #[test]
    fn volume_names_storaged_accepts_are_kept_others_are_hashed() {
        let name = |s: &str| volume_name(s).into_string();
        assert_eq!(name("pvc-0b7e1c2a-9d"), "pvc-0b7e1c2a-9d");
        assert_eq!(name("a.b_c-D9"), "a.b_c-D9");
        let odd = name("sanity-vol+1 x/y");
        assert!(odd.starts_with("csi-") && odd.len() == 4 + 64, "{odd}");
        assert_eq!(odd, name("sanity-vol+1 x/y"), "deterministic");
        assert_ne!(odd, name("sanity-vol+2 x/y"));
        let long = "a".repeat(254);
        assert_eq!(name(&long).len(), 68);
        assert_eq!(name(&"a".repeat(253)), "a".repeat(253));
        assert!(name("é").starts_with("csi-"));
        assert!(
            name("..").starts_with("csi-"),
            "a path component is not a name"
        );
    }
}
