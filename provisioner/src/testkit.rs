//! Test fixtures: a mock API server that checks each expected request in order (tower-test,
//! kube-rs scenario style) and a fake CSI controller served on a temporary Unix socket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cairn_proto::csi::v1::{self as csi, controller_server, identity_server};
use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Status, async_trait};

use crate::context::Ctx;
use crate::csi::CsiClient;
use crate::metrics::Metrics;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Plays the API server: each `expect` consumes one request.
pub struct ApiServer(Handle);

/// One recorded request.
#[derive(Debug)]
pub struct Seen {
    /// The JSON body (Null when empty).
    pub body: Value,
    /// The query string.
    pub query: String,
}

impl ApiServer {
    /// Expects `method path`, checks it, answers `status` with `resp`, returns the request.
    pub async fn expect(&mut self, method: &str, path: &str, status: u16, resp: Value) -> Seen {
        let (req, send) = self
            .0
            .next_request()
            .await
            .expect("the client made no further request");
        assert_eq!(
            (req.method().as_str(), req.uri().path()),
            (method, path),
            "unexpected request {} {}",
            req.method(),
            req.uri()
        );
        let query = req.uri().query().unwrap_or_default().to_string();
        let bytes = req.into_body().collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("json body")
        };
        // A Null answer echoes the request body, naming a generateName object as the server would.
        let resp = if resp.is_null() && !body.is_null() {
            let mut echo = body.clone();
            if echo["metadata"]["name"].is_null()
                && let Some(g) = echo["metadata"]["generateName"].as_str()
            {
                echo["metadata"]["name"] = Value::String(format!("{g}x1"));
            }
            echo
        } else {
            resp
        };
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&resp).expect("json")))
                .expect("response"),
        );
        Seen { body, query }
    }

    /// Answers with a 404 Status object.
    pub async fn expect_404(&mut self, method: &str, path: &str) -> Seen {
        self.expect(method, path, 404, status_body(404, "NotFound"))
            .await
    }

    /// An Event POST in `ns`; returns the event body.
    pub async fn expect_event(&mut self, ns: &str) -> Value {
        let path = format!("/apis/events.k8s.io/v1/namespaces/{ns}/events");
        self.expect("POST", &path, 201, Value::Null).await.body
    }
}

/// A kube `Status` error body.
pub fn status_body(code: u16, reason: &str) -> Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": reason, "reason": reason, "code": code
    })
}

/// What the fake CSI controller saw and will answer.
#[derive(Default)]
pub struct FakeState {
    /// Every CreateVolume request.
    pub creates: Vec<csi::CreateVolumeRequest>,
    /// Every DeleteVolume id.
    pub deletes: Vec<String>,
    /// Every publish request.
    pub publishes: Vec<csi::ControllerPublishVolumeRequest>,
    /// Every unpublish (volume, node).
    pub unpublishes: Vec<(String, String)>,
    /// Every expand request.
    pub expands: Vec<csi::ControllerExpandVolumeRequest>,
    /// Every GetCapacity request.
    pub capacities: Vec<csi::GetCapacityRequest>,
    /// When set, CreateVolume fails with it.
    pub create_error: Option<Status>,
    /// Answer of ControllerExpandVolume.
    pub node_expansion_required: bool,
    /// Answer of GetCapacity.
    pub available: i64,
    /// Answers of ControllerGetVolume by volume id (NOT_FOUND for others).
    pub conditions: HashMap<String, csi::VolumeCondition>,
}

/// The fake driver, cloned into both services.
#[derive(Clone, Default)]
pub struct FakeCsi(pub Arc<Mutex<FakeState>>);

impl FakeCsi {
    /// Locks the state.
    pub fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().expect("fake state")
    }
}

type R<T> = Result<tonic::Response<T>, Status>;

#[async_trait]
impl identity_server::Identity for FakeCsi {
    async fn get_plugin_info(
        &self,
        _: tonic::Request<csi::GetPluginInfoRequest>,
    ) -> R<csi::GetPluginInfoResponse> {
        Ok(tonic::Response::new(csi::GetPluginInfoResponse {
            name: crate::names::DRIVER.into(),
            vendor_version: "test".into(),
            manifest: HashMap::new(),
        }))
    }
    async fn get_plugin_capabilities(
        &self,
        _: tonic::Request<csi::GetPluginCapabilitiesRequest>,
    ) -> R<csi::GetPluginCapabilitiesResponse> {
        Ok(tonic::Response::new(Default::default()))
    }
    async fn probe(&self, _: tonic::Request<csi::ProbeRequest>) -> R<csi::ProbeResponse> {
        Ok(tonic::Response::new(csi::ProbeResponse {
            ready: Some(true),
        }))
    }
}

#[async_trait]
impl controller_server::Controller for FakeCsi {
    async fn create_volume(
        &self,
        r: tonic::Request<csi::CreateVolumeRequest>,
    ) -> R<csi::CreateVolumeResponse> {
        let req = r.into_inner();
        let mut s = self.state();
        s.creates.push(req.clone());
        if let Some(e) = s.create_error.clone() {
            return Err(e);
        }
        let topo = req
            .accessibility_requirements
            .as_ref()
            .and_then(|a| a.preferred.first().cloned())
            .into_iter()
            .collect();
        Ok(tonic::Response::new(csi::CreateVolumeResponse {
            volume: Some(csi::Volume {
                capacity_bytes: req
                    .capacity_range
                    .map(|c| c.required_bytes)
                    .unwrap_or_default(),
                volume_id: req.name,
                volume_context: [("type".to_string(), "replicated".to_string())].into(),
                content_source: None,
                accessible_topology: topo,
            }),
        }))
    }
    async fn delete_volume(
        &self,
        r: tonic::Request<csi::DeleteVolumeRequest>,
    ) -> R<csi::DeleteVolumeResponse> {
        self.state().deletes.push(r.into_inner().volume_id);
        Ok(tonic::Response::new(csi::DeleteVolumeResponse {}))
    }
    async fn controller_publish_volume(
        &self,
        r: tonic::Request<csi::ControllerPublishVolumeRequest>,
    ) -> R<csi::ControllerPublishVolumeResponse> {
        let req = r.into_inner();
        self.state().publishes.push(req.clone());
        Ok(tonic::Response::new(csi::ControllerPublishVolumeResponse {
            publish_context: [("volume".to_string(), req.volume_id)].into(),
        }))
    }
    async fn controller_unpublish_volume(
        &self,
        r: tonic::Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> R<csi::ControllerUnpublishVolumeResponse> {
        let req = r.into_inner();
        self.state().unpublishes.push((req.volume_id, req.node_id));
        Ok(tonic::Response::new(
            csi::ControllerUnpublishVolumeResponse {},
        ))
    }
    async fn validate_volume_capabilities(
        &self,
        _: tonic::Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> R<csi::ValidateVolumeCapabilitiesResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_volumes(
        &self,
        _: tonic::Request<csi::ListVolumesRequest>,
    ) -> R<csi::ListVolumesResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_capacity(
        &self,
        r: tonic::Request<csi::GetCapacityRequest>,
    ) -> R<csi::GetCapacityResponse> {
        let mut s = self.state();
        s.capacities.push(r.into_inner());
        Ok(tonic::Response::new(csi::GetCapacityResponse {
            available_capacity: s.available,
            maximum_volume_size: Some(s.available),
            minimum_volume_size: None,
        }))
    }
    async fn controller_get_capabilities(
        &self,
        _: tonic::Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> R<csi::ControllerGetCapabilitiesResponse> {
        use csi::controller_service_capability::{Rpc, Type, rpc::Type as T};
        let caps = [
            T::CreateDeleteVolume,
            T::PublishUnpublishVolume,
            T::ExpandVolume,
            T::SingleNodeMultiWriter,
            T::GetVolume,
            T::VolumeCondition,
        ]
        .into_iter()
        .map(|t| csi::ControllerServiceCapability {
            r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
        })
        .collect();
        Ok(tonic::Response::new(
            csi::ControllerGetCapabilitiesResponse { capabilities: caps },
        ))
    }
    async fn create_snapshot(
        &self,
        _: tonic::Request<csi::CreateSnapshotRequest>,
    ) -> R<csi::CreateSnapshotResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn delete_snapshot(
        &self,
        _: tonic::Request<csi::DeleteSnapshotRequest>,
    ) -> R<csi::DeleteSnapshotResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_snapshots(
        &self,
        _: tonic::Request<csi::ListSnapshotsRequest>,
    ) -> R<csi::ListSnapshotsResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_snapshot(
        &self,
        _: tonic::Request<csi::GetSnapshotRequest>,
    ) -> R<csi::GetSnapshotResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn controller_expand_volume(
        &self,
        r: tonic::Request<csi::ControllerExpandVolumeRequest>,
    ) -> R<csi::ControllerExpandVolumeResponse> {
        let req = r.into_inner();
        let mut s = self.state();
        s.expands.push(req.clone());
        Ok(tonic::Response::new(csi::ControllerExpandVolumeResponse {
            capacity_bytes: req
                .capacity_range
                .map(|c| c.required_bytes)
                .unwrap_or_default(),
            node_expansion_required: s.node_expansion_required,
        }))
    }
    async fn controller_get_volume(
        &self,
        r: tonic::Request<csi::ControllerGetVolumeRequest>,
    ) -> R<csi::ControllerGetVolumeResponse> {
        let id = r.into_inner().volume_id;
        let condition = self
            .state()
            .conditions
            .get(&id)
            .cloned()
            .ok_or_else(|| Status::not_found(id.clone()))?;
        Ok(tonic::Response::new(csi::ControllerGetVolumeResponse {
            volume: Some(csi::Volume {
                volume_id: id,
                ..Default::default()
            }),
            status: Some(csi::controller_get_volume_response::VolumeStatus {
                published_node_ids: Vec::new(),
                volume_condition: Some(condition),
            }),
        }))
    }
    async fn controller_modify_volume(
        &self,
        _: tonic::Request<csi::ControllerModifyVolumeRequest>,
    ) -> R<csi::ControllerModifyVolumeResponse> {
        Err(Status::unimplemented("fake"))
    }
}

/// A running fixture: the context under test, the API server script, the fake driver.
pub struct Fixture {
    /// The context to pass to reconcile.
    pub ctx: Arc<Ctx>,
    /// The fake driver's state.
    pub csi: FakeCsi,
    /// Keeps the socket directory alive.
    _dir: tempfile::TempDir,
    api: Option<ApiServer>,
}

impl Fixture {
    /// Starts the fake driver on a fresh socket and a mock API server.
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("csi.sock");
        let fake = FakeCsi::default();
        fake.state().available = 10 << 30;
        let listener = UnixListener::bind(&path).expect("bind socket");
        let server = tonic::transport::Server::builder()
            .add_service(identity_server::IdentityServer::new(fake.clone()))
            .add_service(controller_server::ControllerServer::new(fake.clone()))
            .serve_with_incoming(UnixListenerStream::new(listener));
        tokio::spawn(server);
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let metrics = Metrics::default();
        let endpoint = format!("unix://{}", path.display());
        let csi_client = CsiClient::connect_lazy(&endpoint, crate::names::DRIVER, metrics.clone())
            .expect("csi client");
        let ctx = Arc::new(Ctx::new(client, csi_client, metrics, Some("test".into())));
        Fixture {
            ctx,
            csi: fake,
            _dir: dir,
            api: Some(ApiServer(handle)),
        }
    }

    /// Runs `script` as the API server while `work` runs as the client, both under a deadline.
    pub async fn run<S, SF, W, WF, T>(&mut self, script: S, work: W) -> T
    where
        S: FnOnce(ApiServer) -> SF,
        SF: std::future::Future<Output = ApiServer> + Send + 'static,
        W: FnOnce(Arc<Ctx>) -> WF,
        WF: std::future::Future<Output = T>,
    {
        let api = self.api.take().expect("fixture api already in use");
        let server = tokio::spawn(script(api));
        let out = tokio::time::timeout(std::time::Duration::from_secs(10), work(self.ctx.clone()))
            .await
            .expect("the code under test did not finish: it waited for a request the script did not answer");
        let api = tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .expect("the script did not finish: an expected request never came")
            .expect("the script panicked");
        self.api = Some(api);
        out
    }
}
