//! StorageClass parameters: validation of Cairn's keys and removal of the sidecar's
//! `csi.storage.k8s.io/*` keys before they reach the driver, as external-provisioner does.

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};
use crate::names::{CSI_PARAM_PREFIX, PARAM_FSTYPE};

/// The `csi.storage.k8s.io/` keys the sidecar understands (upstream's list).
const KNOWN_PREFIXED: [&str; 15] = [
    "fstype",
    "provisioner-secret-name",
    "provisioner-secret-namespace",
    "controller-publish-secret-name",
    "controller-publish-secret-namespace",
    "node-stage-secret-name",
    "node-stage-secret-namespace",
    "node-publish-secret-name",
    "node-publish-secret-namespace",
    "controller-expand-secret-name",
    "controller-expand-secret-namespace",
    "node-expand-secret-name",
    "node-expand-secret-namespace",
    "provisioner-secret-name-template",
    "controller-publish-secret-name-template",
];

/// Class parameters split into what the driver gets and what the sidecar keeps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClassParams {
    /// Sent as CreateVolume/GetCapacity parameters.
    pub driver: HashMap<String, String>,
    /// From `csi.storage.k8s.io/fstype`, empty when unset.
    pub fs_type: String,
}

/// Validates a class's parameters. Unknown keys are an error naming the key.
pub fn parse(params: Option<&BTreeMap<String, String>>) -> Result<ClassParams> {
    let mut out = ClassParams::default();
    for (k, v) in params.into_iter().flatten() {
        if let Some(rest) = k.strip_prefix(CSI_PARAM_PREFIX) {
            if !KNOWN_PREFIXED.contains(&rest) {
                return Err(Error::Invalid(format!(
                    "unknown StorageClass parameter {k:?}"
                )));
            }
            if k == PARAM_FSTYPE {
                out.fs_type = v.clone();
            }
            continue;
        }
        match k.as_str() {
            "type" => {
                if v != "replicated" && v != "local" {
                    return Err(Error::Invalid(format!(
                        "parameter type={v:?}: must be \"replicated\" or \"local\""
                    )));
                }
            }
            "replicas" => match v.parse::<u32>() {
                Ok(1..=5) => {}
                _ => {
                    return Err(Error::Invalid(format!(
                        "parameter replicas={v:?}: must be an integer from 1 to 5"
                    )));
                }
            },
            _ => {
                return Err(Error::Invalid(format!(
                    "unknown StorageClass parameter {k:?}"
                )));
            }
        }
        out.driver.insert(k.clone(), v.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn strips_sidecar_keys_and_keeps_ours() {
        let p = parse(Some(&m(&[
            ("type", "local"),
            ("replicas", "1"),
            ("csi.storage.k8s.io/fstype", "xfs"),
        ])))
        .unwrap();
        assert_eq!(p.fs_type, "xfs");
        assert_eq!(p.driver.len(), 2);
        assert_eq!(p.driver["type"], "local");
    }

    #[test]
    fn rejects_unknown_and_out_of_range() {
        assert!(parse(Some(&m(&[("colour", "blue")]))).is_err());
        assert!(parse(Some(&m(&[("replicas", "6")]))).is_err());
        assert!(parse(Some(&m(&[("replicas", "x")]))).is_err());
        assert!(parse(Some(&m(&[("type", "raid")]))).is_err());
        assert!(parse(Some(&m(&[("csi.storage.k8s.io/bogus", "1")]))).is_err());
        assert_eq!(parse(None).unwrap(), ClassParams::default());
    }
}
