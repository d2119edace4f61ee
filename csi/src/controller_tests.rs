//! Controller logic against the in-memory storaged fake, asserting the exact gRPC codes
//! the CSI spec asks for (through the tonic trait, as on the wire).

use super::*;
use crate::storaged::fake::FakeVolumes;
use csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume, access_mode::Mode};

fn cap(block: bool, mode: Mode) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(if block {
            AccessType::Block(BlockVolume {})
        } else {
            AccessType::Mount(MountVolume::default())
        }),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn svc() -> (Arc<FakeVolumes>, ControllerService) {
    let fake = Arc::new(FakeVolumes::with_nodes(&[
        ("node-1", Some("a")),
        ("node-2", Some("b")),
        ("node-3", Some("b")),
    ]));
    (fake.clone(), ControllerService::new(fake))
}

fn create_req(name: &str, size: i64, params: &[(&str, &str)]) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: size,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap(false, Mode::SingleNodeWriter)],
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

async fn create(
    s: &ControllerService,
    r: csi::CreateVolumeRequest,
) -> std::result::Result<csi::Volume, Code> {
    s.create_volume(Request::new(r))
        .await
        .map(|r| r.into_inner().volume.unwrap())
        .map_err(|e| e.code())
}

fn publish_req(id: &str, node: &str, mode: Mode) -> csi::ControllerPublishVolumeRequest {
    csi::ControllerPublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        volume_capability: Some(cap(false, mode)),
        ..Default::default()
    }
}

async fn publish(
    s: &ControllerService,
    r: csi::ControllerPublishVolumeRequest,
) -> std::result::Result<HashMap<String, String>, Code> {
    s.controller_publish_volume(Request::new(r))
        .await
        .map(|r| r.into_inner().publish_context)
        .map_err(|e| e.code())
}

#[tokio::test]
async fn create_rounds_size_and_reports_topology() {
    let (_, s) = svc();
    let v = create(&s, create_req("pvc-1", 1_000_001, &[]))
        .await
        .unwrap();
    assert_eq!(v.volume_id, "pvc-1");
    assert_eq!(v.capacity_bytes, 1 << 20);
    assert_eq!(v.volume_context["type"], "replicated");
    assert_eq!(v.volume_context["replicas"], "3");
    let mut nodes: Vec<_> = v
        .accessible_topology
        .iter()
        .map(|t| t.segments[TOPOLOGY_NODE_KEY].clone())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["node-1", "node-2", "node-3"]);
}

#[tokio::test]
async fn create_is_idempotent_and_refuses_mismatches() {
    let (_, s) = svc();
    let a = create(&s, create_req("pvc-1", 10 << 20, &[]))
        .await
        .unwrap();
    let b = create(&s, create_req("pvc-1", 10 << 20, &[]))
        .await
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(
        create(&s, create_req("pvc-1", 20 << 20, &[])).await,
        Err(Code::AlreadyExists)
    );
    assert_eq!(
        create(&s, create_req("pvc-1", 10 << 20, &[("replicas", "2")])).await,
        Err(Code::AlreadyExists)
    );
}

#[tokio::test]
async fn names_storaged_refuses_map_to_a_stable_volume_id() {
    let (fake, s) = svc();
    let a = create(&s, create_req("vol+1 of/2", 4 << 20, &[]))
        .await
        .unwrap();
    assert_eq!(
        a.volume_id,
        crate::params::volume_name("vol+1 of/2").as_str()
    );
    assert!(a.volume_id.starts_with("csi-"));
    assert_eq!(
        create(&s, create_req("vol+1 of/2", 4 << 20, &[])).await,
        Ok(a.clone()),
        "idempotent by the CSI name"
    );
    assert!(fake.get_volume(&a.volume_id).await.is_ok());
    s.delete_volume(Request::new(csi::DeleteVolumeRequest {
        volume_id: a.volume_id.clone(),
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(
        fake.get_volume(&a.volume_id).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn create_validation_codes() {
    let (_, s) = svc();
    assert_eq!(
        create(&s, create_req("", 1 << 20, &[])).await,
        Err(Code::InvalidArgument)
    );
    let mut r = create_req("pvc-1", 1 << 20, &[]);
    r.volume_capabilities.clear();
    assert_eq!(create(&s, r).await, Err(Code::InvalidArgument));
    assert_eq!(
        create(&s, create_req("pvc-1", 1 << 20, &[("bogus", "1")])).await,
        Err(Code::InvalidArgument)
    );
    let mut r = create_req("pvc-1", 1 << 20, &[]);
    r.volume_capabilities = vec![cap(false, Mode::MultiNodeMultiWriter)];
    assert_eq!(create(&s, r).await, Err(Code::InvalidArgument));
    let mut r = create_req("pvc-1", 1 << 20, &[]);
    r.capacity_range = Some(csi::CapacityRange {
        required_bytes: 10 << 20,
        limit_bytes: 5 << 20,
    });
    assert_eq!(create(&s, r).await, Err(Code::OutOfRange));
    let mut r = create_req("pvc-1", 1 << 20, &[]);
    r.volume_content_source = Some(csi::VolumeContentSource::default());
    assert_eq!(create(&s, r).await, Err(Code::InvalidArgument));
    // RWX block is fine on a replicated volume.
    let mut r = create_req("pvc-2", 1 << 20, &[]);
    r.volume_capabilities = vec![cap(true, Mode::MultiNodeMultiWriter)];
    assert!(create(&s, r).await.is_ok());
}

#[tokio::test]
async fn create_passes_topology_and_maps_exhaustion() {
    let (_, s) = svc();
    let mut r = create_req("pvc-l", 1 << 20, &[("type", "local")]);
    r.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![csi::Topology {
            segments: [(TOPOLOGY_NODE_KEY.to_string(), "node-2".to_string())].into(),
        }],
        preferred: vec![],
    });
    let v = create(&s, r).await.unwrap();
    assert_eq!(v.volume_context["type"], "local");
    assert_eq!(v.accessible_topology.len(), 1);
    assert_eq!(
        v.accessible_topology[0].segments[TOPOLOGY_NODE_KEY],
        "node-2"
    );
    // Three replicas cannot fit in zone b (two nodes).
    let mut r = create_req("pvc-z", 1 << 20, &[]);
    r.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![csi::Topology {
            segments: [(params::TOPOLOGY_ZONE_KEY.to_string(), "b".to_string())].into(),
        }],
        preferred: vec![],
    });
    assert_eq!(create(&s, r).await, Err(Code::ResourceExhausted));
}

#[tokio::test]
async fn delete_is_idempotent() {
    let (_, s) = svc();
    create(&s, create_req("pvc-1", 1 << 20, &[])).await.unwrap();
    let del = |id: &str| {
        s.delete_volume(Request::new(csi::DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        }))
    };
    assert!(del("pvc-1").await.is_ok());
    assert!(del("pvc-1").await.is_ok());
    assert!(del("never-existed").await.is_ok());
    assert_eq!(del("").await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn publish_fences_single_node_volumes() {
    let (_, s) = svc();
    create(&s, create_req("pvc-1", 1 << 20, &[])).await.unwrap();
    let a = publish(&s, publish_req("pvc-1", "node-1", Mode::SingleNodeWriter))
        .await
        .unwrap();
    let again = publish(&s, publish_req("pvc-1", "node-1", Mode::SingleNodeWriter))
        .await
        .unwrap();
    assert_eq!(a, again);
    assert_eq!(a[CTX_READONLY], "false");
    assert_eq!(
        publish(&s, publish_req("pvc-1", "node-2", Mode::SingleNodeWriter)).await,
        Err(Code::FailedPrecondition)
    );
    // Same node, now read-only: incompatible with the existing publication.
    let mut ro = publish_req("pvc-1", "node-1", Mode::SingleNodeWriter);
    ro.readonly = true;
    assert_eq!(publish(&s, ro).await, Err(Code::AlreadyExists));
    let unpub = |id: &str, node: &str| {
        s.controller_unpublish_volume(Request::new(csi::ControllerUnpublishVolumeRequest {
            volume_id: id.into(),
            node_id: node.into(),
            ..Default::default()
        }))
    };
    assert!(unpub("pvc-1", "node-1").await.is_ok());
    assert!(unpub("pvc-1", "node-1").await.is_ok());
    assert!(unpub("unknown", "node-1").await.is_ok());
    assert!(unpub("pvc-1", "unknown-node").await.is_ok());
    assert_eq!(
        unpub("", "node-1").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert!(
        publish(&s, publish_req("pvc-1", "node-2", Mode::SingleNodeWriter))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn publish_validation_and_not_found() {
    let (_, s) = svc();
    create(&s, create_req("pvc-1", 1 << 20, &[])).await.unwrap();
    assert_eq!(
        publish(&s, publish_req("", "node-1", Mode::SingleNodeWriter)).await,
        Err(Code::InvalidArgument)
    );
    assert_eq!(
        publish(&s, publish_req("pvc-1", "", Mode::SingleNodeWriter)).await,
        Err(Code::InvalidArgument)
    );
    let mut nocap = publish_req("pvc-1", "node-1", Mode::SingleNodeWriter);
    nocap.volume_capability = None;
    assert_eq!(publish(&s, nocap).await, Err(Code::InvalidArgument));
    assert_eq!(
        publish(&s, publish_req("nope", "node-1", Mode::SingleNodeWriter)).await,
        Err(Code::NotFound)
    );
    assert_eq!(
        publish(&s, publish_req("pvc-1", "node-9", Mode::SingleNodeWriter)).await,
        Err(Code::NotFound)
    );
}

#[tokio::test]
async fn multi_node_reader_only_attaches_everywhere() {
    let (_, s) = svc();
    create(&s, create_req("pvc-ro", 1 << 20, &[]))
        .await
        .unwrap();
    for n in ["node-1", "node-2", "node-3"] {
        let ctx = publish(&s, publish_req("pvc-ro", n, Mode::MultiNodeReaderOnly))
            .await
            .unwrap();
        assert_eq!(ctx[CTX_READONLY], "true");
    }
    let v = s
        .controller_get_volume(Request::new(csi::ControllerGetVolumeRequest {
            volume_id: "pvc-ro".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.status.unwrap().published_node_ids.len(), 3);
}

#[tokio::test]
async fn local_volume_only_publishes_to_its_node() {
    let (_, s) = svc();
    let v = create(&s, create_req("pvc-l", 1 << 20, &[("type", "local")]))
        .await
        .unwrap();
    let home = v.accessible_topology[0].segments[TOPOLOGY_NODE_KEY].clone();
    let other = if home == "node-1" { "node-2" } else { "node-1" };
    assert_eq!(
        publish(&s, publish_req("pvc-l", other, Mode::SingleNodeWriter)).await,
        Err(Code::FailedPrecondition)
    );
    assert!(
        publish(&s, publish_req("pvc-l", &home, Mode::SingleNodeWriter))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn validate_capabilities() {
    let (_, s) = svc();
    create(&s, create_req("pvc-1", 1 << 20, &[])).await.unwrap();
    let validate = |id: &str, caps: Vec<csi::VolumeCapability>| {
        s.validate_volume_capabilities(Request::new(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: id.into(),
            volume_capabilities: caps,
            ..Default::default()
        }))
    };
    let ok = validate("pvc-1", vec![cap(false, Mode::SingleNodeWriter)])
        .await
        .unwrap()
        .into_inner();
    assert!(ok.confirmed.is_some());
    let no = validate("pvc-1", vec![cap(false, Mode::MultiNodeMultiWriter)])
        .await
        .unwrap()
        .into_inner();
    assert!(no.confirmed.is_none() && !no.message.is_empty());
    assert_eq!(
        validate("nope", vec![cap(false, Mode::SingleNodeWriter)])
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        validate("pvc-1", vec![]).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        validate("", vec![cap(false, Mode::SingleNodeWriter)])
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn list_pages_with_tokens_and_aborts_bad_ones() {
    let (_, s) = svc();
    for i in 0..5 {
        create(&s, create_req(&format!("pvc-{i}"), 1 << 20, &[]))
            .await
            .unwrap();
    }
    let list = |max: i32, token: String| {
        s.list_volumes(Request::new(csi::ListVolumesRequest {
            max_entries: max,
            starting_token: token,
        }))
    };
    let mut seen = vec![];
    let mut token = String::new();
    loop {
        let page = list(2, token.clone()).await.unwrap().into_inner();
        assert!(page.entries.len() <= 2);
        seen.extend(
            page.entries
                .iter()
                .map(|e| e.volume.as_ref().unwrap().volume_id.clone()),
        );
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(seen, ["pvc-0", "pvc-1", "pvc-2", "pvc-3", "pvc-4"]);
    assert_eq!(
        list(0, "garbage-token".into()).await.unwrap_err().code(),
        Code::Aborted
    );
    assert_eq!(
        list(-1, String::new()).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        list(0, String::new())
            .await
            .unwrap()
            .into_inner()
            .entries
            .len(),
        5
    );
}

#[tokio::test]
async fn capacity_honours_topology_and_parameters() {
    let (fake, s) = svc();
    let cap_of = |topo: Option<(&str, &str)>, params: &[(&str, &str)]| {
        s.get_capacity(Request::new(csi::GetCapacityRequest {
            volume_capabilities: vec![],
            parameters: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            accessible_topology: topo.map(|(k, v)| csi::Topology {
                segments: [(k.to_string(), v.to_string())].into(),
            }),
        }))
    };
    let all = cap_of(None, &[]).await.unwrap().into_inner();
    assert_eq!(all.available_capacity as u64, fake.available);
    let none = cap_of(Some((TOPOLOGY_NODE_KEY, "node-9")), &[])
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none.available_capacity, 0);
    assert_eq!(
        cap_of(None, &[("bogus", "x")]).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn get_volume_reports_condition() {
    let (fake, s) = svc();
    create(&s, create_req("pvc-1", 1 << 20, &[])).await.unwrap();
    let get = |id: &str| {
        s.controller_get_volume(Request::new(csi::ControllerGetVolumeRequest {
            volume_id: id.into(),
        }))
    };
    let st = get("pvc-1").await.unwrap().into_inner().status.unwrap();
    assert!(!st.volume_condition.unwrap().abnormal);
    fake.set_health("pvc-1", pb::VolumeHealth::Degraded);
    let st = get("pvc-1").await.unwrap().into_inner().status.unwrap();
    let c = st.volume_condition.unwrap();
    assert!(c.abnormal && c.message.starts_with("degraded"), "{c:?}");
    assert_eq!(get("nope").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(get("").await.unwrap_err().code(), Code::InvalidArgument);
}

#[test]
fn conditions_say_what_is_rebuilt_and_how_far() {
    let replica = |id: u64, state: pb::ReplicaState| pb::Replica {
        node_id: id,
        node_name: format!("node-{id}"),
        state: state as i32,
        ..Default::default()
    };
    let mut v = pb::Volume {
        replicas: 3,
        health: pb::VolumeHealth::Healthy as i32,
        members: vec![
            replica(1, pb::ReplicaState::Leader),
            replica(2, pb::ReplicaState::Follower),
            replica(4, pb::ReplicaState::Rebuilding),
        ],
        ..Default::default()
    };
    let c = crate::controller::condition(&v);
    assert_eq!((c.abnormal, c.message.as_str()), (false, "healthy"));
    v.health = pb::VolumeHealth::Degraded as i32;
    v.members[2].rebuild = Some(pb::RebuildProgress {
        copied_bytes: 42,
        total_bytes: 100,
        percent: 42,
        eta_seconds: 3,
    });
    let c = crate::controller::condition(&v);
    assert!(c.abnormal);
    assert_eq!(c.message, "degraded: rebuilding replica on node-4, 42 %");
    // Catching up the log after the snapshot: progress by log index.
    v.members[2].rebuild = None;
    v.members[2].matched_index = 30;
    v.members[2].target_index = 120;
    assert_eq!(
        crate::controller::condition(&v).message,
        "degraded: rebuilding replica on node-4, 25 %"
    );
    // A member lost, not yet replaced.
    v.members[2] = replica(3, pb::ReplicaState::Unreachable);
    assert_eq!(
        crate::controller::condition(&v).message,
        "degraded: replica on node-3 unreachable"
    );
    // A member whose node cannot open the group: the reason is passed on.
    v.members[2] = pb::Replica {
        reason: "io: bad spool".into(),
        ..replica(3, pb::ReplicaState::Failed)
    };
    assert_eq!(
        crate::controller::condition(&v).message,
        "degraded: replica on node-3 failed to open: io: bad spool"
    );
    v.health = pb::VolumeHealth::Unavailable as i32;
    v.members = vec![replica(1, pb::ReplicaState::Follower)];
    assert_eq!(
        crate::controller::condition(&v).message,
        "unavailable: 1 of 3 replicas up to date"
    );
}

#[tokio::test]
async fn expand_grows_and_never_shrinks() {
    let (_, s) = svc();
    create(&s, create_req("pvc-1", 10 << 20, &[]))
        .await
        .unwrap();
    let expand = |id: &str, req: i64, lim: i64| {
        s.controller_expand_volume(Request::new(csi::ControllerExpandVolumeRequest {
            volume_id: id.into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: req,
                limit_bytes: lim,
            }),
            ..Default::default()
        }))
    };
    let r = expand("pvc-1", 20 << 20, 0).await.unwrap().into_inner();
    assert_eq!(r.capacity_bytes, 20 << 20);
    assert!(r.node_expansion_required);
    // Asking for less than the current size is a no-op...
    assert_eq!(
        expand("pvc-1", 5 << 20, 0)
            .await
            .unwrap()
            .into_inner()
            .capacity_bytes,
        20 << 20
    );
    // ...unless the limit forbids the current size.
    assert_eq!(
        expand("pvc-1", 5 << 20, 6 << 20).await.unwrap_err().code(),
        Code::OutOfRange
    );
    assert_eq!(
        expand("nope", 5 << 20, 0).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        expand("", 5 << 20, 0).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let no_range = s
        .controller_expand_volume(Request::new(csi::ControllerExpandVolumeRequest {
            volume_id: "pvc-1".into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(no_range.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn snapshot_calls_check_their_fields_and_snapshots_are_advertised() {
    let (_, s) = svc();
    let code = |r: Result<(), Status>| r.unwrap_err().code();
    let no_name = csi::CreateSnapshotRequest {
        source_volume_id: "pvc-1".into(),
        ..Default::default()
    };
    assert_eq!(
        code(s.create_snapshot(Request::new(no_name)).await.map(|_| ())),
        Code::InvalidArgument
    );
    let no_source = csi::CreateSnapshotRequest {
        name: "snap".into(),
        ..Default::default()
    };
    assert_eq!(
        code(s.create_snapshot(Request::new(no_source)).await.map(|_| ())),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            s.delete_snapshot(Request::new(csi::DeleteSnapshotRequest::default()))
                .await
                .map(|_| ())
        ),
        Code::InvalidArgument
    );
    let bad_token = csi::ListSnapshotsRequest {
        starting_token: "7".into(),
        ..Default::default()
    };
    assert_eq!(
        code(s.list_snapshots(Request::new(bad_token)).await.map(|_| ())),
        Code::Aborted
    );
    let negative = csi::ListSnapshotsRequest {
        max_entries: -1,
        ..Default::default()
    };
    assert_eq!(
        code(s.list_snapshots(Request::new(negative)).await.map(|_| ())),
        Code::InvalidArgument
    );
    let caps = s
        .controller_get_capabilities(Request::new(csi::ControllerGetCapabilitiesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    assert_eq!(caps.len(), 13);
    use csi::controller_service_capability::{Type, rpc::Type as T};
    let has = |t: T| {
        caps.iter()
            .any(|c| matches!(&c.r#type, Some(Type::Rpc(r)) if r.r#type == t as i32))
    };
    assert!(has(T::CreateDeleteVolume) && has(T::GetVolume) && has(T::SingleNodeMultiWriter));
    assert!(has(T::CreateDeleteSnapshot) && has(T::ListSnapshots) && has(T::CloneVolume));
    assert!(has(T::PublishReadonly));
    assert!(!has(T::ModifyVolume) && !has(T::GetSnapshot));
}

#[tokio::test]
async fn storaged_down_is_unavailable() {
    let (fake, s) = svc();
    fake.down.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        create(&s, create_req("pvc-1", 1 << 20, &[])).await,
        Err(Code::Unavailable)
    );
}

#[tokio::test]
async fn concurrent_operation_on_same_volume_is_aborted() {
    let (_, s) = svc();
    let _held = s.limiter.try_acquire("pvc-busy").unwrap();
    assert_eq!(
        create(&s, create_req("pvc-busy", 1 << 20, &[])).await,
        Err(Code::Aborted)
    );
    assert!(
        create(&s, create_req("pvc-free", 1 << 20, &[]))
            .await
            .is_ok()
    );
}

#[test]
fn tokens_round_trip() {
    assert_eq!(decode_token(&encode_token("pvc-9")).unwrap(), "pvc-9");
    assert_eq!(encode_token(""), "");
    assert_eq!(decode_token("").unwrap(), "");
    for bad in ["zz", "c1zz", "c1", "pvc-1"] {
        assert_eq!(
            decode_token(bad).unwrap_err().code(),
            Code::Aborted,
            "{bad}"
        );
    }
}

#[tokio::test]
async fn publish_enforces_the_per_node_volume_limit() {
    let (fake, _) = svc();
    let s = ControllerService::new(fake).with_max_volumes_per_node(2);
    for id in ["pvc-a", "pvc-b", "pvc-c"] {
        create(&s, create_req(id, 1 << 20, &[])).await.unwrap();
    }
    for id in ["pvc-a", "pvc-b"] {
        publish(&s, publish_req(id, "node-1", Mode::SingleNodeWriter))
            .await
            .unwrap();
    }
    assert_eq!(
        publish(&s, publish_req("pvc-c", "node-1", Mode::SingleNodeWriter)).await,
        Err(Code::ResourceExhausted)
    );
    // Re-publishing what is already there is not a new attachment; other nodes have room.
    publish(&s, publish_req("pvc-a", "node-1", Mode::SingleNodeWriter))
        .await
        .unwrap();
    publish(&s, publish_req("pvc-c", "node-2", Mode::SingleNodeWriter))
        .await
        .unwrap();
}
