//! Container environment and command lines: env, envFrom, fieldRef and
//! configMap/secret key references, and `$(VAR)` expansion.

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};

use super::{Kubelet, service_account};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The kubeconfig every node has (the API server's bridge address, plain HTTP), mounted in
/// its pods but not named by `KUBECONFIG`: pods use in-cluster config, as upstream's.
pub const NODE_KUBECONFIG: &str = "/etc/cairn/kubeconfig";

/// Puts an image's directory of executables first on `PATH`, as an image's own `PATH`
/// names where its binaries are, unless the container sets `PATH` itself.
pub fn image_path(env: &mut [(String, String)], dir: &std::path::Path, c: &Container) {
    if c.env.iter().flatten().any(|e| e.name == "PATH") {
        return;
    }
    if let Some((_, v)) = env.iter_mut().find(|(k, _)| k == "PATH") {
        *v = format!("{}:{v}", dir.display());
    }
}

/// Expands `$(NAME)` from `env`; `$$(NAME)` escapes to a literal `$(NAME)`.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(end) = tail.strip_prefix("$(").and_then(|t| t.find(')')) {
            let name = &tail[2..2 + end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&tail[..end + 3]),
            }
            rest = &tail[end + 3..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn field(pod: &Pod, path: &str, node_ip: &str) -> String {
    let v = serde_json::to_value(pod).unwrap_or_default();
    if let Some(key) = path
        .strip_prefix("metadata.labels['")
        .and_then(|k| k.strip_suffix("']"))
    {
        return v["metadata"]["labels"][key]
            .as_str()
            .unwrap_or_default()
            .to_string();
    }
    if let Some(key) = path
        .strip_prefix("metadata.annotations['")
        .and_then(|k| k.strip_suffix("']"))
    {
        return v["metadata"]["annotations"][key]
            .as_str()
            .unwrap_or_default()
            .to_string();
    }
    let mut cur = &v;
    for seg in path.split('.') {
        cur = &cur[seg];
    }
    match path {
        "status.podIP" | "status.hostIP" => node_ip.into(),
        _ => cur.as_str().unwrap_or_default().to_string(),
    }
}

/// The container's environment, in upstream order (envFrom, then env).
pub fn build(kl: &Kubelet, pod: &Pod, c: &Container) -> Result<Vec<(String, String)>, String> {
    let client = &kl.client;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let hostname = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOSTNAME".into(), hostname),
    ];
    if let Some(ic) = kl.in_cluster() {
        env.extend(service_account::env(ic));
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match client.get::<ConfigMap>(Some(&ns), &r.name).ok().flatten() {
                Some(cm) => env.extend(
                    cm.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (format!("{prefix}{k}"), v)),
                ),
                None if r.optional == Some(true) => {}
                None => return Err(format!("configmap \"{}\" not found", r.name)),
            }
        }
        if let Some(r) = &from.secret_ref {
            match client.get::<Secret>(Some(&ns), &r.name).ok().flatten() {
                Some(s) => env.extend(s.data.unwrap_or_default().into_iter().map(|(k, v)| {
                    (
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v.0).to_string(),
                    )
                })),
                None if r.optional == Some(true) => {}
                None => return Err(format!("secret \"{}\" not found", r.name)),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            expand(v, &env)
        } else if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                field(pod, &f.field_path, &kl.address())
            } else if let Some(r) = &from.config_map_key_ref {
                let cm = client.get::<ConfigMap>(Some(&ns), &r.name).ok().flatten();
                match cm.and_then(|cm| cm.data.and_then(|d| d.get(&r.key).cloned())) {
                    Some(v) => v,
                    None if r.optional == Some(true) => continue,
                    None => {
                        return Err(format!(
                            "couldn't find key {} in ConfigMap {ns}/{}",
                            r.key, r.name
                        ));
                    }
                }
            } else if let Some(r) = &from.secret_key_ref {
                let s = client.get::<Secret>(Some(&ns), &r.name).ok().flatten();
                match s.and_then(|s| s.data.and_then(|d| d.get(&r.key).cloned())) {
                    Some(v) => String::from_utf8_lossy(&v.0).to_string(),
                    None if r.optional == Some(true) => continue,
                    None => {
                        return Err(format!(
                            "couldn't find key {} in Secret {ns}/{}",
                            r.key, r.name
                        ));
                    }
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        env.retain(|(k, _)| *k != e.name);
        env.push((e.name.clone(), value));
    }
    Ok(env)
}

/// command + args with `$(VAR)` expanded.
pub fn argv(c: &Container, env: &[(String, String)]) -> Vec<String> {
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .map(|s| expand(s, env))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_variables() {
        let env = vec![("A".to_string(), "1".to_string())];
        assert_eq!(expand("x$(A)y$(B)$$(A)", &env), "x1y$(B)$(A)");
    }
}
