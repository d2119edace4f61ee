//! The NBD server fed arbitrary bytes, at the handshake and after it: it answers or hangs
//! up, and no task of it panics (a panic hook counts them) or allocates past its caps.

mod frontend_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cairn_storaged::frontend::nbd::NbdServer;
use frontend_support::MemDevice;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static PANICS: AtomicUsize = AtomicUsize::new(0);

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Client flags (fixed newstyle, no zeroes) then OPT_EXPORT_NAME for the default export.
fn valid_handshake() -> Vec<u8> {
    let mut b = 3u32.to_be_bytes().to_vec();
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&1u32.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    b
}

/// Sends `bytes` after the greeting, closes the write side, reads until the server hangs
/// up; the server has a bounded time to do so.
async fn feed(server: &NbdServer, bytes: &[u8]) {
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).await.unwrap();
    assert_eq!(
        u64::from_be_bytes(greeting[..8].try_into().unwrap()),
        NBDMAGIC
    );
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    let mut sink = Vec::new();
    let drained = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
    assert!(drained.is_ok(), "the server neither answered nor hung up");
}

fn run(bytes: Vec<u8>, handshake_first: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = NbdServer::start("vol", MemDevice::new(1 << 20), false)
            .await
            .unwrap();
        let mut input = if handshake_first {
            valid_handshake()
        } else {
            Vec::new()
        };
        input.extend_from_slice(&bytes);
        feed(&server, &input).await;
        // Still serving: a later, valid client gets its greeting.
        feed(&server, &valid_handshake()).await;
        server.stop().await;
    });
}

/// A request header: magic, then arbitrary flags, command, cookie, offset and length.
fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u16>(),
        0u16..8,
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(|(flags, cmd, cookie, offset, len)| {
            let mut b = 0x2560_9513u32.to_be_bytes().to_vec();
            b.extend_from_slice(&flags.to_be_bytes());
            b.extend_from_slice(&cmd.to_be_bytes());
            b.extend_from_slice(&cookie.to_be_bytes());
            b.extend_from_slice(&offset.to_be_bytes());
            // Writes carry no payload here: a length over the cap must be refused before
            // any buffer is allocated for it.
            b.extend_from_slice(&len.to_be_bytes());
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_handshake_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..256)) {
        install_hook();
        run(b, false);
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn arbitrary_requests_never_panic(
        reqs in proptest::collection::vec(request(), 1..6),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        install_hook();
        let mut b: Vec<u8> = reqs.concat();
        b.extend_from_slice(&tail);
        run(b, true);
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    }
}

fn install_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}
