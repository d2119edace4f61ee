//! Local volumes: a sparse pool file attached with a loop device directly, with real dd.

mod frontend_support;

use std::sync::Arc;

use cairn_proto::cairn::v1::Frontend;
use cairn_storaged::Error;
use cairn_storaged::frontend::attach::AttachManager;
use cairn_storaged::frontend::local_pool::{LocalPool, PoolFile, PoolKey};

const VOL: PoolKey<'static> = PoolKey {
    id: 1,
    name: "vol-local",
};
use frontend_support::{Cleanup, FakeOpener, random_bytes, sh};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_volume_is_a_loop_device_on_the_pool_file() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = LocalPool::new(tmp.path().join("pool"));
    let path = pool.create(VOL, 16 * MIB).await.unwrap();
    let opener = Arc::new(FakeOpener::default());
    opener.add_local("vol-local", path.clone(), 16 * MIB);
    let mgr = AttachManager::new(opener.clone(), tmp.path().join("run"));
    let _cleanup = Cleanup::new(tmp.path());

    let a = mgr
        .attach("vol-local", Frontend::Unspecified, false, 0)
        .await
        .unwrap();
    assert!(a.device_path.starts_with("/dev/loop"), "{a:?}");
    assert_eq!(
        a.frontend(),
        Frontend::Unspecified,
        "local volumes report no frontend"
    );
    assert_eq!(a.size_bytes, 16 * MIB);
    let size: u64 = sh(&format!("blockdev --getsize64 {}", a.device_path))
        .await
        .trim()
        .parse()
        .unwrap();
    assert_eq!(size, std::fs::metadata(&path).unwrap().len());
    let back = sh(&format!("losetup -n -O BACK-FILE {}", a.device_path)).await;
    assert_eq!(back.trim(), path.to_str().unwrap());
    assert_eq!(
        mgr.attach("vol-local", Frontend::Fuse, false, 0)
            .await
            .unwrap(),
        a,
        "FUSE request is the same attach"
    );
    assert!(matches!(
        mgr.attach("vol-local", Frontend::Nbd, false, 0).await,
        Err(Error::FailedPrecondition(_))
    ));

    let src = tmp.path().join("src.bin");
    let content = random_bytes(3 * MIB as usize);
    std::fs::write(&src, &content).unwrap();
    sh(&format!(
        "dd if={} of={} bs=1M seek=2 oflag=direct conv=fsync status=none",
        src.display(),
        a.device_path
    ))
    .await;
    let file = std::fs::read(&path).unwrap();
    assert!(
        file[2 * MIB as usize..5 * MIB as usize] == content[..],
        "pool file differs from what dd wrote"
    );
    assert!(file[..2 * MIB as usize].iter().all(|&b| b == 0));

    pool.grow(VOL, 32 * MIB).await.unwrap();
    let b = mgr.refresh_size("vol-local").await.unwrap();
    assert_eq!(b.size_bytes, 32 * MIB);
    assert_eq!(
        sh(&format!("blockdev --getsize64 {}", a.device_path))
            .await
            .trim(),
        (32 * MIB).to_string()
    );

    mgr.detach("vol-local").await.unwrap();
    assert_eq!(
        sh(&format!("losetup -j {}", path.display())).await,
        "",
        "loop device left behind"
    );
    pool.delete(&PoolFile::Current {
        id: VOL.id,
        name: VOL.name.into(),
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_readonly_attach() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = LocalPool::new(tmp.path().join("pool"));
    let path = pool
        .create(
            PoolKey {
                id: 2,
                name: "vol-local-ro",
            },
            4 * MIB,
        )
        .await
        .unwrap();
    let opener = Arc::new(FakeOpener::default());
    opener.add_local("vol-local-ro", path.clone(), 4 * MIB);
    let mgr = AttachManager::new(opener.clone(), tmp.path().join("run"));
    let _cleanup = Cleanup::new(tmp.path());
    let a = mgr
        .attach("vol-local-ro", Frontend::Fuse, true, 0)
        .await
        .unwrap();
    assert_eq!(
        sh(&format!("blockdev --getro {}", a.device_path))
            .await
            .trim(),
        "1"
    );
    assert!(matches!(
        mgr.attach("vol-local-ro", Frontend::Fuse, false, 0).await,
        Err(Error::FailedPrecondition(_))
    ));
    mgr.detach("vol-local-ro").await.unwrap();
}
