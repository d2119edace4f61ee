//! Service-account tokens: issuing them (HS256 JWTs, the key kept in the data directory)
//! and authenticating the HTTPS listener's requests by their `Authorization: Bearer`.

use std::path::Path;

use axum::http::{HeaderMap, Method, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::resources;

/// The issuer and audience of the tokens, as kube-apiserver's default.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// A token's lifetime: kube-apiserver extends the kubelet's tokens to a year
/// (`--service-account-extend-token-expiration`), so the kubelet never needs to refresh.
const LIFETIME_SECS: i64 = 365 * 24 * 3600;
/// Paths anyone may read (upstream's `system:public-info-viewer` role).
const PUBLIC_PATHS: [&str; 4] = ["/healthz", "/livez", "/readyz", "/version"];

/// An object a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

/// The `kubernetes.io` claim: whose token it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub namespace: String,
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Vec<String>,
    iat: i64,
    nbf: i64,
    exp: i64,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Binding,
}

/// Who a request speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    Anonymous,
    ServiceAccount { namespace: String, name: String },
}

impl User {
    pub fn name(&self) -> String {
        match self {
            User::Anonymous => "system:anonymous".into(),
            User::ServiceAccount { namespace, name } => {
                format!("system:serviceaccount:{namespace}:{name}")
            }
        }
    }
}

/// The signing key of a cluster's tokens.
pub struct Tokens {
    key: hmac::Key,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Tokens {
    /// The key in `path`, made (32 random bytes, owner-only) if absent, so tokens
    /// survive a restart on the same data directory.
    pub fn load_or_create(path: &Path) -> Result<Tokens> {
        let bytes = match std::fs::read(path) {
            Ok(b) => hex::decode(b.trim_ascii()).map_err(Error::internal)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut key = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
                    .map_err(|_| Error::Internal("no random bytes for the token key".into()))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(Error::internal)?;
                f.write_all(hex::encode(key).as_bytes())
                    .map_err(Error::internal)?;
                key.to_vec()
            }
            Err(e) => return Err(Error::internal(e)),
        };
        Ok(Tokens {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        })
    }

    /// A token naming `binding`'s service account (and pod), valid for a year.
    pub fn issue(&self, binding: &Binding) -> String {
        let iat = now();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: format!(
                "system:serviceaccount:{}:{}",
                binding.namespace, binding.serviceaccount.name
            ),
            aud: vec![ISSUER.into()],
            iat,
            nbf: iat,
            exp: iat + LIFETIME_SECS,
            kubernetes: binding.clone(),
        };
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signed = format!("{header}.{body}");
        let sig = hmac::sign(&self.key, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    /// The binding of a token this key signed, unexpired; why not otherwise.
    fn verify(&self, token: &str) -> std::result::Result<Binding, &'static str> {
        let (signed, sig) = token.rsplit_once('.').ok_or("not a JWT")?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| "bad signature encoding")?;
        hmac::verify(&self.key, signed.as_bytes(), &sig).map_err(|_| "bad signature")?;
        let (_, body) = signed.split_once('.').ok_or("not a JWT")?;
        let body = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| "bad claims encoding")?;
        let claims: Claims = serde_json::from_slice(&body).map_err(|_| "bad claims")?;
        let t = now();
        if claims.exp <= t || claims.nbf > t + 60 {
            return Err("expired or not yet valid");
        }
        Ok(claims.kubernetes)
    }
}

/// Whether the objects `b` names still exist as issued (upstream's check of bound tokens).
fn still_bound(reg: &Registry, b: &Binding) -> std::result::Result<(), &'static str> {
    let uid_of = |rt, name: &str| {
        reg.get(rt, Some(&b.namespace), name)
            .ok()
            .and_then(|o| o["metadata"]["uid"].as_str().map(String::from))
    };
    if uid_of(&resources::SERVICEACCOUNTS, &b.serviceaccount.name).as_deref()
        != Some(b.serviceaccount.uid.as_str())
    {
        return Err("service account gone");
    }
    if let Some(p) = &b.pod
        && uid_of(&resources::PODS, &p.name).as_deref() != Some(p.uid.as_str())
    {
        return Err("pod gone");
    }
    Ok(())
}

/// Authenticates a request to the HTTPS listener: a valid bearer token is its service
/// account; a bad one is 401, as kube-apiserver; none is `system:anonymous`, which may read
/// only the public paths (403 elsewhere, as upstream's RBAC would answer).
pub fn authenticate(
    tokens: &Tokens,
    reg: &Registry,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
) -> Result<User> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let Some(token) = bearer else {
        if PUBLIC_PATHS.contains(&path) {
            return Ok(User::Anonymous);
        }
        let verb = method.as_str().to_ascii_lowercase();
        return Err(Error::Forbidden(format!(
            "forbidden: User \"system:anonymous\" cannot {verb} path \"{path}\""
        )));
    };
    let checked = tokens
        .verify(token)
        .and_then(|b| still_bound(reg, &b).map(|()| b));
    match checked {
        Ok(b) => Ok(User::ServiceAccount {
            namespace: b.namespace,
            name: b.serviceaccount.name,
        }),
        Err(why) => {
            tracing::debug!(%path, reason = why, "bearer token refused");
            Err(Error::Unauthorized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_under_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tokens::load_or_create(&dir.path().join("a")).unwrap();
        let b = Tokens::load_or_create(&dir.path().join("b")).unwrap();
        let binding = Binding {
            namespace: "default".into(),
            serviceaccount: ObjectRef {
                name: "default".into(),
                uid: "u1".into(),
            },
            pod: None,
        };
        let t = a.issue(&binding);
        assert_eq!(a.verify(&t), Ok(binding.clone()));
        assert_eq!(b.verify(&t), Err("bad signature"));
        // The same key file gives the same key (a restart keeps tokens valid).
        let again = Tokens::load_or_create(&dir.path().join("a")).unwrap();
        assert_eq!(again.verify(&t), Ok(binding));
        let (signed, _) = t.rsplit_once('.').unwrap();
        assert!(a.verify(&format!("{signed}.AAAA")).is_err());
        assert!(a.verify("garbage").is_err());
    }
}
