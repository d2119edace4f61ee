//! The kubelet's volume manager: turns each pod volume into a host directory
//! (emptyDir, hostPath, configMap, secret, local/hostPath PVs, CSI) and back.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
};

use super::Kubelet;
use crate::error::{Error, Result};

/// A volume ready to be bound into containers.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub name: String,
    pub host_path: PathBuf,
    /// Set for CSI volumes: (driver, volumeHandle, pv name); kept for diagnostics.
    #[allow(dead_code)]
    pub csi: Option<(String, String, String)>,
}

fn mount_error(volume: &str, msg: impl std::fmt::Display) -> Error {
    Error::BadRequest(format!(
        "MountVolume.SetUp failed for volume \"{volume}\" : {msg}"
    ))
}

impl Kubelet {
    pub(crate) fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }

    /// Sets up every volume of the pod; the first failure is returned.
    pub(crate) async fn setup_volumes(&self, pod: &Pod) -> Result<Vec<Prepared>> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let mut out = Vec::new();
        for v in pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default()
        {
            out.push(self.setup_volume(&ns, &uid, pod, &v).await?);
        }
        out.extend(self.project_service_account(pod)?);
        Ok(out)
    }

    async fn setup_volume(&self, ns: &str, uid: &str, pod: &Pod, v: &Volume) -> Result<Prepared> {
        let plugin_dir =
            |plugin: &str| self.pod_dir(uid).join("volumes").join(plugin).join(&v.name);
        let prepared = |p: PathBuf| Prepared {
            name: v.name.clone(),
            host_path: p,
            csi: None,
        };
        if v.empty_dir.is_some() {
            let dir = plugin_dir("kubernetes.io~empty-dir");
            std::fs::create_dir_all(&dir).map_err(|e| mount_error(&v.name, e))?;
            return Ok(prepared(dir));
        }
        if let Some(hp) = &v.host_path {
            let ty = hp.type_.as_deref().unwrap_or_default();
            return host_path(&v.name, &hp.path, ty, &self.node_path(&hp.path)).map(prepared);
        }
        if let Some(cm) = &v.config_map {
            let obj = self
                .client
                .get::<ConfigMap>(Some(ns), &cm.name)
                .ok()
                .flatten();
            let Some(obj) = obj else {
                if cm.optional == Some(true) {
                    let dir = plugin_dir("kubernetes.io~configmap");
                    std::fs::create_dir_all(&dir).map_err(|e| mount_error(&v.name, e))?;
                    return Ok(prepared(dir));
                }
                return Err(mount_error(
                    &v.name,
                    format!("configmap \"{}\" not found", cm.name),
                ));
            };
            let data: Vec<(String, Vec<u8>)> = obj
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .chain(
                    obj.binary_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0)),
                )
                .collect();
            let files = project(
                "configmap",
                data,
                cm.items.as_deref(),
                cm.default_mode,
                cm.optional == Some(true),
            )
            .map_err(|e| mount_error(&v.name, e))?;
            return write_files(&plugin_dir("kubernetes.io~configmap"), &files)
                .map(prepared)
                .map_err(|e| mount_error(&v.name, e));
        }
        if let Some(sec) = &v.secret {
            let name = sec.secret_name.clone().unwrap_or_default();
            let obj = self.client.get::<Secret>(Some(ns), &name).ok().flatten();
            let Some(obj) = obj else {
                if sec.optional == Some(true) {
                    let dir = plugin_dir("kubernetes.io~secret");
                    std::fs::create_dir_all(&dir).map_err(|e| mount_error(&v.name, e))?;
                    return Ok(prepared(dir));
                }
                return Err(mount_error(&v.name, format!("secret \"{name}\" not found")));
            };
            let data: Vec<(String, Vec<u8>)> = obj
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            let files = project(
                "secret",
                data,
                sec.items.as_deref(),
                sec.default_mode,
                sec.optional == Some(true),
            )
            .map_err(|e| mount_error(&v.name, e))?;
            return write_files(&plugin_dir("kubernetes.io~secret"), &files)
                .map(prepared)
                .map_err(|e| mount_error(&v.name, e));
        }
        if let Some(src) = &v.persistent_volume_claim {
            let claim = self
                .client
                .get::<PersistentVolumeClaim>(Some(ns), &src.claim_name)
                .ok()
                .flatten();
            let claim = claim.ok_or_else(|| {
                mount_error(
                    &v.name,
                    format!("persistentvolumeclaim \"{}\" not found", src.claim_name),
                )
            })?;
            let pv_name = claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .unwrap_or_default();
            if claim.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound")
                || pv_name.is_empty()
            {
                return Err(mount_error(
                    &v.name,
                    format!("persistentvolumeclaim \"{}\" is not bound", src.claim_name),
                ));
            }
            let pv = self
                .client
                .get::<PersistentVolume>(None, &pv_name)
                .ok()
                .flatten();
            let pv = pv.ok_or_else(|| {
                mount_error(&v.name, format!("persistentvolume \"{pv_name}\" not found"))
            })?;
            let spec = pv.spec.clone().unwrap_or_default();
            if let Some(local) = &spec.local {
                let p = PathBuf::from(&local.path);
                if !self.node_path(&local.path).is_dir() {
                    return Err(mount_error(
                        &v.name,
                        format!("local volume path \"{}\" does not exist", local.path),
                    ));
                }
                return Ok(prepared(p));
            }
            if let Some(hp) = &spec.host_path {
                let ty = hp.type_.as_deref().unwrap_or_default();
                return host_path(&v.name, &hp.path, ty, &self.node_path(&hp.path)).map(prepared);
            }
            if let Some(csi) = &spec.csi {
                let target = self
                    .csi_publish(pod, &pv, csi, src.read_only.unwrap_or(false))
                    .await
                    .map_err(|e| mount_error(&v.name, e))?;
                return Ok(Prepared {
                    name: v.name.clone(),
                    host_path: target,
                    csi: Some((csi.driver.clone(), csi.volume_handle.clone(), pv_name)),
                });
            }
            return Err(mount_error(&v.name, "unsupported persistent volume source"));
        }
        Err(mount_error(&v.name, "unsupported volume type"))
    }

    /// Reverses setup: CSI unpublish (and unstage when unused), pod directory removal.
    /// A volume that fails stays recorded in the pod directory, so calling this again
    /// retries it (the caller does, as the kubelet's reconciler does).
    pub(crate) async fn teardown_volumes(&self, pod: &Pod) -> Result<(), String> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let csi_dir = self.pod_dir(&uid).join("volumes").join("kubernetes.io~csi");
        let mut first_err = None;
        if let Ok(entries) = std::fs::read_dir(&csi_dir) {
            for e in entries.flatten() {
                let pv = e.file_name().to_string_lossy().to_string();
                if let Err(err) = self.csi_unpublish(&uid, &pv).await {
                    tracing::warn!(node = %self.node, pod_uid = %uid, pv = %pv, error = %err, "unpublish failed");
                    first_err
                        .get_or_insert(format!("UnmountVolume failed for volume {pv:?}: {err}"));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => {
                let _ = std::fs::remove_dir_all(self.pod_dir(&uid));
                Ok(())
            }
        }
    }
}

/// Checks (and with `*OrCreate` makes) a hostPath: `path` as the node sees it, which this
/// process reaches at `seen`; containers bind `path` from inside the node.
fn host_path(volume: &str, path: &str, ty: &str, seen: &Path) -> Result<PathBuf> {
    let p = seen;
    match ty {
        "DirectoryOrCreate" => std::fs::create_dir_all(p).map_err(|e| mount_error(volume, e))?,
        "Directory" if !p.is_dir() => {
            return Err(mount_error(
                volume,
                format!("hostPath type check failed: {path} is not a directory"),
            ));
        }
        "FileOrCreate" if !p.exists() => {
            std::fs::File::create(p).map_err(|e| mount_error(volume, e))?;
        }
        "File" if !p.is_file() => {
            return Err(mount_error(
                volume,
                format!("hostPath type check failed: {path} is not a file"),
            ));
        }
        _ => {}
    }
    Ok(PathBuf::from(path))
}

/// A configMap or secret volume's files as upstream's volume plugins lay them out: every key
/// (or, with `items`, those keys at their paths), each with its item's `mode`, else
/// `defaultMode`, else 0644. A key `items` names that the object lacks fails the mount
/// unless the volume is `optional`.
pub(crate) fn project(
    what: &str,
    data: Vec<(String, Vec<u8>)>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> std::result::Result<Vec<(String, Vec<u8>, u32)>, String> {
    let default = default_mode.map_or(0o644, |m| m as u32 & 0o777);
    let Some(items) = items.filter(|i| !i.is_empty()) else {
        return Ok(data.into_iter().map(|(k, v)| (k, v, default)).collect());
    };
    let mut out = Vec::new();
    for it in items {
        let rel = Path::new(&it.path);
        if it.path.is_empty()
            || rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!(
                "items path {:?} must be relative and must not contain '..'",
                it.path
            ));
        }
        match data.iter().find(|(k, _)| *k == it.key) {
            Some((_, v)) => {
                let mode = it.mode.map_or(default, |m| m as u32 & 0o777);
                out.push((it.path.clone(), v.clone(), mode));
            }
            None if optional => {}
            None => {
                return Err(format!(
                    "{what} references non-existent {what} key: {}",
                    it.key
                ));
            }
        }
    }
    Ok(out)
}

pub(super) fn write_files(
    dir: &Path,
    files: &[(String, Vec<u8>, u32)],
) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    for (k, v, mode) in files {
        let path = dir.join(k);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, v)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))?;
    }
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn data() -> Vec<(String, Vec<u8>)> {
        vec![
            ("ca.crt".into(), b"ca".to_vec()),
            ("tls.key".into(), b"key".to_vec()),
        ]
    }

    fn item(key: &str, path: &str, mode: Option<i32>) -> KeyToPath {
        KeyToPath {
            key: key.into(),
            path: path.into(),
            mode,
        }
    }

    #[test]
    fn default_mode_and_item_modes_are_honoured_on_disk() {
        let all = project("secret", data(), None, Some(0o400), false).unwrap();
        assert_eq!(
            all.iter().map(|f| (f.0.as_str(), f.2)).collect::<Vec<_>>(),
            [("ca.crt", 0o400), ("tls.key", 0o400)]
        );
        let plain = project("configmap", data(), None, None, false).unwrap();
        assert!(plain.iter().all(|f| f.2 == 0o644), "upstream's default");
        let items = [
            item("tls.key", "keys/tls.key", Some(0o600)),
            item("ca.crt", "ca", None),
        ];
        let some = project("secret", data(), Some(&items), Some(0o440), false).unwrap();
        assert_eq!(
            some.iter().map(|f| (f.0.as_str(), f.2)).collect::<Vec<_>>(),
            [("keys/tls.key", 0o600), ("ca", 0o440)]
        );
        let tmp = tempfile::tempdir().unwrap();
        let dir = write_files(&tmp.path().join("vol"), &some).unwrap();
        let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode("keys/tls.key"), mode("ca")), (0o600, 0o440));
        assert_eq!(std::fs::read(dir.join("ca")).unwrap(), b"ca");
        assert!(!dir.join("tls.key").exists(), "only the items are written");
    }

    #[test]
    fn missing_keys_and_escaping_paths_are_refused() {
        let missing = [item("nope", "nope", None)];
        let e = project("secret", data(), Some(&missing), None, false).unwrap_err();
        assert_eq!(e, "secret references non-existent secret key: nope");
        assert!(
            project("secret", data(), Some(&missing), None, true)
                .unwrap()
                .is_empty()
        );
        for bad in ["../x", "/etc/passwd", ""] {
            let items = [item("ca.crt", bad, None)];
            let e = project("configmap", data(), Some(&items), None, false).unwrap_err();
            assert!(e.contains("must be relative"), "{bad}: {e}");
        }
    }
}
