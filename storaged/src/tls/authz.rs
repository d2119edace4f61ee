//! Authorization per API, as one tower layer over storaged's router: reads the caller's
//! identity from its (already CA-verified) client certificate and checks it against the service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::codegen::{Service, http};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::identity::Identity;

/// Who may call what on one node. Built once per server.
#[derive(Debug, Clone)]
pub struct Policy {
    /// This node's name: only `csi-node:<name>` may attach and detach here.
    pub node_name: String,
}

impl Policy {
    /// Whether `who` may call `method` of `service` (`cairn.v1.VolumeService`, ...).
    pub fn allows(&self, who: &Identity, service: &str, method: &str) -> bool {
        match (service, who) {
            ("cairn.v1.RaftService", Identity::Node(_) | Identity::StorageNode(_)) => true,
            ("cairn.v1.NodeService", Identity::CsiNode(name)) => *name == self.node_name,
            ("cairn.v1.VolumeService", Identity::Controller | Identity::Admin) => true,
            // A node registers itself in the catalogue at start.
            ("cairn.v1.VolumeService", Identity::Node(_) | Identity::StorageNode(_)) => {
                method == "AddNode"
            }
            // The CSI node plugin reads a volume's size and its node's zone, and probes the cluster.
            ("cairn.v1.VolumeService", Identity::CsiNode(_)) => {
                matches!(method, "GetVolume" | "ClusterStatus" | "ListNodes")
            }
            (
                "cairn.v1.BlockService",
                Identity::Node(_) | Identity::StorageNode(_) | Identity::Admin,
            ) => true,
            _ => false,
        }
    }

    /// The refusal for a call, or the caller's identity.
    fn check<B>(&self, req: &http::Request<B>) -> Result<Identity, Status> {
        let (service, method) = req
            .uri()
            .path()
            .trim_start_matches('/')
            .rsplit_once('/')
            .unwrap_or(("", ""));
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs());
        let Some(who) = certs
            .as_ref()
            .and_then(|c| c.first())
            .and_then(|c| Identity::from_cert_der(c))
        else {
            return Err(Status::unauthenticated(
                "the client certificate carries no cairn identity",
            ));
        };
        if self.allows(&who, service, method) {
            Ok(who)
        } else {
            Err(Status::permission_denied(format!(
                "identity `{who}` may not call {service}/{method}"
            )))
        }
    }
}

/// Wraps a tonic router (`Server::builder().layer(AuthzLayer::new(policy))`).
#[derive(Debug, Clone)]
pub struct AuthzLayer {
    policy: Option<Policy>,
}

impl AuthzLayer {
    pub fn new(policy: Policy) -> Self {
        AuthzLayer {
            policy: Some(policy),
        }
    }

    /// Lets every call through, with no identity: a plaintext (`--insecure`) server.
    pub fn open() -> Self {
        AuthzLayer { policy: None }
    }
}

impl<S> tower_layer::Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service [`AuthzLayer`] builds. Handlers find the caller's [`Identity`] in the
/// request's extensions.
#[derive(Debug, Clone)]
pub struct Authz<S> {
    inner: S,
    policy: Option<Policy>,
}

impl<S, B, R> Service<http::Request<B>> for Authz<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let Some(policy) = &self.policy else {
            return Box::pin(self.inner.call(req));
        };
        match policy.check(&req) {
            Ok(who) => {
                req.extensions_mut().insert(who);
                let call = self.inner.call(req);
                Box::pin(call)
            }
            Err(status) => {
                tracing::warn!(
                    path = req.uri().path(),
                    error = status.message(),
                    "call refused"
                );
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_service_admits_only_its_identities() {
        let p = Policy {
            node_name: "node-a".into(),
        };
        let raft = "cairn.v1.RaftService";
        let vol = "cairn.v1.VolumeService";
        let blk = "cairn.v1.BlockService";
        let nod = "cairn.v1.NodeService";
        assert!(p.allows(&Identity::Node(2), raft, "Vote"));
        assert!(!p.allows(&Identity::Admin, raft, "Vote"));
        assert!(!p.allows(&Identity::CsiNode("node-a".into()), raft, "Append"));
        assert!(p.allows(&Identity::CsiNode("node-a".into()), nod, "AttachVolume"));
        assert!(!p.allows(&Identity::CsiNode("node-b".into()), nod, "AttachVolume"));
        assert!(!p.allows(&Identity::Admin, nod, "AttachVolume"));
        assert!(p.allows(&Identity::Controller, vol, "CreateVolume"));
        assert!(p.allows(&Identity::Admin, vol, "DeleteVolume"));
        assert!(p.allows(&Identity::Node(1), vol, "AddNode"));
        assert!(!p.allows(&Identity::Node(1), vol, "DeleteVolume"));
        let host = Identity::StorageNode("node-b".into());
        assert!(p.allows(&host, raft, "Vote") && p.allows(&host, vol, "AddNode"));
        assert!(!p.allows(&host, vol, "DeleteVolume") && !p.allows(&host, nod, "AttachVolume"));
        assert!(p.allows(&Identity::CsiNode("node-b".into()), vol, "GetVolume"));
        assert!(!p.allows(&Identity::CsiNode("node-a".into()), vol, "PublishVolume"));
        assert!(p.allows(&Identity::Node(1), blk, "Write"));
        assert!(p.allows(&Identity::Admin, blk, "Read"));
        assert!(!p.allows(&Identity::Controller, blk, "Write"));
        assert!(!p.allows(&Identity::Admin, "grpc.health.v1.Health", "Check"));
    }
}
