//! The attach manager's contract: idempotency, conflicts, validation over real gRPC, the
//! persisted table, and recovery after the owning process dies (a real child process).

mod frontend_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_proto::cairn::v1::node_service_client::NodeServiceClient;
use cairn_proto::cairn::v1::{
    AttachVolumeRequest, DetachVolumeRequest, Frontend, ListAttachmentsRequest, RefreshSizeRequest,
};
use cairn_storaged::Error;
use cairn_storaged::frontend::attach::AttachManager;
use cairn_storaged::frontend::local_pool::{LocalPool, PoolKey};
use cairn_storaged::service::node_api::NodeServiceImpl;
use frontend_support::{Cleanup, FakeOpener, MemDevice, sh};
use tonic::Code;

const MIB: u64 = 1 << 20;
const CHILD_ENV: &str = "CAIRN_FRONTEND_RECOVERY_CHILD";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attach_and_detach_are_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let opener = Arc::new(FakeOpener::default());
    opener.add_replicated("vol-a", MemDevice::new(8 * MIB));
    let mgr = Arc::new(AttachManager::new(opener.clone(), tmp.path().join("run")));
    let _cleanup = Cleanup::new(tmp.path());

    // Concurrent attaches of one volume serialise and agree.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let mgr = mgr.clone();
            tokio::spawn(async move { mgr.attach("vol-a", Frontend::Fuse, false, 0).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap().unwrap());
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
    let a = results.remove(0);
    let disk = tmp.path().join("run/fuse/vol-a/disk");
    assert_eq!(
        sh(&format!("losetup -j {} | wc -l", disk.display()))
            .await
            .trim(),
        "1"
    );
    assert_eq!(
        mgr.attach("vol-a", Frontend::Unspecified, false, 0)
            .await
            .unwrap(),
        a
    );
    assert!(matches!(
        mgr.attach("vol-a", Frontend::Nbd, false, 0).await,
        Err(Error::FailedPrecondition(_))
    ));
    assert!(matches!(
        mgr.attach("vol-a", Frontend::Fuse, true, 0).await,
        Err(Error::FailedPrecondition(_))
    ));
    assert_eq!(mgr.list(), vec![a.clone()]);
    let table = std::fs::read_to_string(tmp.path().join("run/attachments.json")).unwrap();
    assert!(
        table.contains("vol-a") && table.contains(&a.device_path),
        "{table}"
    );

    assert!(matches!(
        mgr.attach("missing", Frontend::Fuse, false, 0).await,
        Err(Error::NotFound { .. })
    ));
    for bad in ["", "a/b", ".."] {
        assert!(
            matches!(
                mgr.attach(bad, Frontend::Fuse, false, 0).await,
                Err(Error::InvalidArgument {
                    field: "volume",
                    ..
                })
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        mgr.refresh_size("missing").await,
        Err(Error::NotFound { .. })
    ));

    mgr.detach("vol-a").await.unwrap();
    mgr.detach("vol-a").await.unwrap();
    mgr.detach("never-attached").await.unwrap();
    assert!(mgr.list().is_empty());
    assert_eq!(sh(&format!("losetup -j {}", disk.display())).await, "");
    assert!(
        !std::fs::read_to_string(tmp.path().join("run/attachments.json"))
            .unwrap()
            .contains("vol-a")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_service_over_grpc_validates_and_attaches() {
    let tmp = tempfile::tempdir().unwrap();
    let opener = Arc::new(FakeOpener::default());
    opener.add_replicated("vol-g", MemDevice::new(4 * MIB));
    let mgr = Arc::new(AttachManager::new(opener.clone(), tmp.path().join("run")));
    let _cleanup = Cleanup::new(tmp.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodeServiceImpl::new(mgr.clone()).into_server())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut client = NodeServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let err = client
        .attach_volume(AttachVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("`volume`"), "{}", err.message());
    let err = client
        .attach_volume(AttachVolumeRequest {
            volume: "vol-g".into(),
            frontend: 42,
            readonly: false,
            generation: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("`frontend`"), "{}", err.message());
    let err = client
        .attach_volume(AttachVolumeRequest {
            volume: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .detach_volume(DetachVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .refresh_size(RefreshSizeRequest {
            volume: "vol-g".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let req = AttachVolumeRequest {
        volume: "vol-g".into(),
        frontend: Frontend::Nbd as i32,
        readonly: false,
        generation: 0,
    };
    let a = client
        .attach_volume(req.clone())
        .await
        .unwrap()
        .into_inner()
        .attachment
        .unwrap();
    assert!(a.nbd_uri.starts_with("nbd://"));
    let err = client
        .attach_volume(AttachVolumeRequest {
            frontend: Frontend::Fuse as i32,
            ..req.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let list = client
        .list_attachments(ListAttachmentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .attachments;
    assert_eq!(list, vec![a.clone()]);
    let r = client
        .refresh_size(RefreshSizeRequest {
            volume: "vol-g".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.attachment.unwrap().size_bytes, 4 * MIB);
    client
        .detach_volume(DetachVolumeRequest {
            volume: "vol-g".into(),
        })
        .await
        .unwrap();
    client
        .detach_volume(DetachVolumeRequest {
            volume: "vol-g".into(),
        })
        .await
        .unwrap();
    assert!(
        client
            .list_attachments(ListAttachmentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .attachments
            .is_empty()
    );
    server.abort();
}

/// While the attachments a previous process left are being recovered, NodeService calls
/// wait (bounded by `RECOVERY_WAIT`, then UNAVAILABLE), bad input is refused at once, and
/// calls are served once recovery ends (its task gone: the flag stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_service_waits_for_attachment_recovery() {
    use cairn_storaged::service::node_api::RECOVERY_WAIT;
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let opener = Arc::new(FakeOpener::default());
    let mgr = Arc::new(AttachManager::new(opener, tmp.path().join("run")));
    let _cleanup = Cleanup::new(tmp.path());
    let (recovered, rx) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodeServiceImpl::gated(mgr, rx).into_server())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut client = NodeServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let started = Instant::now();
    let err = client
        .detach_volume(DetachVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(started.elapsed() < RECOVERY_WAIT, "bad input waited");

    let err = client
        .list_attachments(ListAttachmentsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("recovering"), "{}", err.message());
    assert!(started.elapsed() >= RECOVERY_WAIT);

    recovered.send_replace(true);
    drop(recovered);
    let list = tokio::time::timeout(
        Duration::from_secs(2),
        client.list_attachments(ListAttachmentsRequest {}),
    )
    .await
    .expect("served at once after recovery")
    .unwrap();
    assert!(list.into_inner().attachments.is_empty());
    server.abort();
}

const LOCAL: PoolKey<'static> = PoolKey {
    id: 1,
    name: "vol-local",
};

/// Not a test on its own: the body of the child process of `recovery_after_the_process_dies`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let opener = Arc::new(FakeOpener::default());
    opener.add_replicated("vol-fuse", MemDevice::new(8 * MIB));
    let pool = LocalPool::new(dir.join("pool"));
    opener.add_local("vol-local", pool.path_for(LOCAL).unwrap(), 8 * MIB);
    let mgr = AttachManager::new(opener, dir.join("run"));
    mgr.attach("vol-fuse", Frontend::Fuse, false, 0)
        .await
        .unwrap();
    mgr.attach("vol-local", Frontend::Fuse, false, 0)
        .await
        .unwrap();
    // Die without any cleanup, like a crash or SIGKILL.
    std::process::abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovery_after_the_process_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup::new(tmp.path());
    let dir = tmp.path().canonicalize().unwrap();
    let pool = LocalPool::new(dir.join("pool"));
    let local_path = pool.create(LOCAL, 8 * MIB).await.unwrap();
    let status = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "recovery_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &dir)
        .output()
        .await
        .unwrap();
    assert!(!status.status.success(), "the child must have aborted");
    let fuse_disk = dir.join("run/fuse/vol-fuse/disk");
    let loops_on = |p: &Path| sh_sync(&format!("losetup -j {}", p.display()));
    assert!(
        !loops_on(&fuse_disk).is_empty(),
        "child left a loop device on its FUSE file: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let old_local = loops_on(&local_path);
    assert!(!old_local.is_empty());
    let err = std::fs::metadata(&fuse_disk).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(nix::libc::ENOTCONN),
        "the FUSE mount should be dead"
    );

    let opener = Arc::new(FakeOpener::default());
    opener.add_replicated("vol-fuse", MemDevice::new(8 * MIB));
    opener.add_local("vol-local", local_path.clone(), 8 * MIB);
    let mgr = AttachManager::new(opener, dir.join("run"));
    let report = mgr.recover().await.unwrap();
    assert_eq!(report.adopted, vec!["vol-local".to_string()]);
    assert_eq!(report.dropped, vec!["vol-fuse".to_string()]);
    assert_eq!(report.detached_loops.len(), 1, "{report:?}");
    assert_eq!(report.unmounted, vec![dir.join("run/fuse/vol-fuse")]);
    assert!(loops_on(&fuse_disk).is_empty());
    assert_eq!(
        loops_on(&local_path),
        old_local,
        "the local loop device is kept"
    );

    let local = mgr.get("vol-local").unwrap();
    assert!(
        old_local.starts_with(&format!("{}:", local.device_path)),
        "{old_local} vs {local:?}"
    );
    assert_eq!(
        mgr.attach("vol-local", Frontend::Unspecified, false, 0)
            .await
            .unwrap(),
        local
    );
    let fresh = mgr
        .attach("vol-fuse", Frontend::Fuse, false, 0)
        .await
        .unwrap();
    sh(&format!(
        "dd if=/dev/zero of={} bs=4k count=16 oflag=direct status=none",
        fresh.device_path
    ))
    .await;
    mgr.detach("vol-fuse").await.unwrap();
    mgr.detach("vol-local").await.unwrap();
    assert!(loops_on(&local_path).is_empty());
    assert_eq!(
        mgr.recover().await.unwrap(),
        Default::default(),
        "a second recovery finds nothing"
    );
}

fn sh_sync(script: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
