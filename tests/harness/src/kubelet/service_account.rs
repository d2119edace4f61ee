//! In-cluster config for pods: the service account's token, the CA and the namespace at
//! `/var/run/secrets/kubernetes.io/serviceaccount`, and the `KUBERNETES_SERVICE_*` env.

use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};

use super::Kubelet;
use super::runtime::{Mount, Propagation};
use super::volumes::{Prepared, write_files};
use crate::apiserver::auth::{Binding, ObjectRef};
use crate::error::{Error, Result};
use crate::in_cluster::InCluster;

/// Where clients look for the files (client-go's `rest.InClusterConfig`, kube-rs).
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The `Prepared` name of the projected files: not a valid volume name, so no volume of
/// the pod's own is taken for it.
const VOLUME: &str = "kube-api-access:serviceaccount";

/// The Service environment of the `kubernetes` Service, pointing at the real listener
/// (the harness routes no ClusterIP): `KUBERNETES_SERVICE_*` and the docker-link
/// `KUBERNETES_PORT*` variables, as the kubelet sets them in every container.
pub fn env(ic: &InCluster) -> Vec<(String, String)> {
    let (host, port) = (ic.addr.ip().to_string(), ic.addr.port());
    let url = format!("tcp://{host}:{port}");
    let link = format!("KUBERNETES_PORT_{port}_TCP");
    [
        ("KUBERNETES_SERVICE_HOST".to_string(), host.clone()),
        ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.to_string()),
        ("KUBERNETES_PORT".into(), url.clone()),
        (link.clone(), url),
        (format!("{link}_PROTO"), "tcp".into()),
        (format!("{link}_PORT"), port.to_string()),
        (format!("{link}_ADDR"), host),
    ]
    .into()
}

/// Whether `pod` gets a token: its own `automountServiceAccountToken`, else its service
/// account's, else yes (upstream's ServiceAccount admission plugin).
fn automounts(pod: &Pod, sa: Option<&ServiceAccount>) -> bool {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.automount_service_account_token)
        .or_else(|| sa.and_then(|sa| sa.automount_service_account_token))
        .unwrap_or(true)
}

fn service_account_name(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.service_account_name.clone())
        .or_else(|| spec.and_then(|s| s.service_account.clone()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into())
}

impl Kubelet {
    /// Writes the pod's token, `ca.crt` and `namespace` (a token bound to the pod and its
    /// service account, as the kubelet's TokenRequest) unless the pod opts out; a missing
    /// service account fails the setup, retried as any volume's.
    pub(crate) fn project_service_account(&self, pod: &Pod) -> Result<Option<Prepared>> {
        let Some(ic) = &self.cfg.in_cluster else {
            return Ok(None);
        };
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.automount_service_account_token)
            == Some(false)
        {
            return Ok(None);
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = service_account_name(pod);
        let fail = |msg: String| {
            Error::BadRequest(format!(
                "MountVolume.SetUp failed for volume \"kube-api-access\" : {msg}"
            ))
        };
        let sa = self
            .client
            .get::<ServiceAccount>(Some(&ns), &name)
            .map_err(|e| fail(e.to_string()))?
            .ok_or_else(|| fail(format!("serviceaccounts \"{name}\" not found")))?;
        if !automounts(pod, Some(&sa)) {
            return Ok(None);
        }
        let object = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| ObjectRef {
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
        };
        let token = ic.tokens.issue(&Binding {
            namespace: ns.clone(),
            serviceaccount: object(&sa.metadata),
            pod: Some(object(&pod.metadata)),
        });
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let dir = self
            .pod_dir(&uid)
            .join("volumes/kubernetes.io~projected/kube-api-access");
        let files = [
            ("token".to_string(), token.into_bytes(), 0o644),
            ("ca.crt".into(), ic.ca_pem.clone(), 0o644),
            ("namespace".into(), ns.into_bytes(), 0o644),
        ];
        let host_path = write_files(&dir, &files).map_err(|e| fail(e.to_string()))?;
        tracing::debug!(node = %self.node, pod_uid = %uid, service_account = %name, "service account token projected");
        Ok(Some(Prepared {
            name: VOLUME.into(),
            host_path,
            csi: None,
        }))
    }

    /// Adds the service-account mount to a container's `mounts`, unless the pod opted out
    /// or mounts something of its own there.
    pub(crate) fn mount_service_account(&self, volumes: &[Prepared], mounts: &mut Vec<Mount>) {
        let Some(v) = volumes.iter().find(|v| v.name == VOLUME) else {
            return;
        };
        let view = self
            .namespaces()
            .map_or_else(|| PathBuf::from("/"), |n| n.root());
        let target = resolve(&view, MOUNT_PATH);
        let taken = mounts.iter().any(|m| resolve(&view, &m.target) == target);
        if !taken {
            mounts.push(Mount {
                source: v.host_path.clone(),
                target: target.to_string_lossy().into_owned(),
                read_only: true,
                propagation: Propagation::Private,
            });
        }
    }
}

/// `path` with its symlinked ancestors resolved in the node whose `/` is `view`
/// (`/var/run` → `/run` on most systems): the runtime binds onto directories it makes
/// on its own tmpfs, which it cannot do through a symlink to the node's.
fn resolve(view: &Path, path: &str) -> PathBuf {
    let mut cur = PathBuf::from("/");
    let mut todo: Vec<PathBuf> = Path::new(path)
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut links = 0;
    while let Some(comp) = todo.pop() {
        match Path::new(&comp).components().next() {
            Some(Component::Normal(_)) => {}
            Some(Component::ParentDir) => {
                cur.pop();
                continue;
            }
            _ => continue,
        }
        let next = cur.join(&comp);
        let seen = view.join(next.strip_prefix("/").unwrap_or(&next));
        match std::fs::read_link(&seen) {
            Ok(target) if links < 16 => {
                links += 1;
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                todo.extend(
                    target
                        .components()
                        .rev()
                        .map(|c| PathBuf::from(c.as_os_str())),
                );
            }
            _ => cur = next,
        }
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinked_ancestors_resolve_inside_the_view() {
        let view = tempfile::tempdir().unwrap();
        let v = view.path();
        std::fs::create_dir_all(v.join("run")).unwrap();
        std::fs::create_dir_all(v.join("var/lib")).unwrap();
        std::os::unix::fs::symlink("/run", v.join("var/run")).unwrap();
        std::os::unix::fs::symlink("../var/./lib", v.join("var/rel")).unwrap();
        assert_eq!(
            resolve(v, MOUNT_PATH),
            Path::new("/run/secrets/kubernetes.io/serviceaccount")
        );
        assert_eq!(resolve(v, "/var/rel/x"), Path::new("/var/lib/x"));
        assert_eq!(resolve(v, "/data/x"), Path::new("/data/x"));
    }

    #[test]
    fn the_pod_setting_wins_over_the_service_account() {
        let pod = |a: Option<bool>| Pod {
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                automount_service_account_token: a,
                ..Default::default()
            }),
            ..Default::default()
        };
        let sa = |a: Option<bool>| ServiceAccount {
            automount_service_account_token: a,
            ..Default::default()
        };
        assert!(automounts(&pod(None), Some(&sa(None))));
        assert!(!automounts(&pod(None), Some(&sa(Some(false)))));
        assert!(automounts(&pod(Some(true)), Some(&sa(Some(false)))));
        assert!(!automounts(&pod(Some(false)), Some(&sa(Some(true)))));
    }
}
