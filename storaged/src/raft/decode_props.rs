//! Property tests of the decoders reachable from the network: Raft messages and snapshot
//! headers, snapshot pages and spool files. Arbitrary bytes give an error, never a panic.

use std::io::Write;

use bytes::Bytes;
use openraft::raft::{TransferLeaderRequest, VoteRequest};
use proptest::prelude::*;

use super::snapshot::{Page, SpoolReader, SpoolWriter};
use super::{AppendEntriesRequest, SnapshotMeta, TypeConfig, Vote, decode, encode};

/// Every message type `RaftService` decodes from a peer's payload.
fn decode_every_message(b: &[u8]) {
    let _ = decode::<AppendEntriesRequest>(b);
    let _ = decode::<VoteRequest<TypeConfig>>(b);
    let _ = decode::<TransferLeaderRequest<TypeConfig>>(b);
    let _ = decode::<(Vote, SnapshotMeta)>(b);
    let _ = decode::<u64>(b);
    if let Ok(p) = decode::<Page>(b) {
        let _ = p.validate(None);
    }
}

fn chunk_page() -> Vec<u8> {
    encode(&Page::Chunks(vec![
        (1, Bytes::from(vec![7u8; 4096])),
        (5, Bytes::from(vec![9u8; 512])),
    ]))
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn raft_messages_from_arbitrary_bytes_are_errors_not_panics(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_every_message(&b);
    }

    /// Mutated valid pages reach deeper than random bytes: lengths and indices that lie.
    #[test]
    fn mutated_pages_decode_to_an_error_or_a_checked_page(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut b = chunk_page();
        for (at, v) in flips {
            let i = at.index(b.len());
            b[i] = v;
        }
        decode_every_message(&b);
        decode_every_message(&b[..cut.index(b.len())]);
    }

    /// A spool file is read back from disk: any bytes there give pages or an error.
    #[test]
    fn spool_files_of_arbitrary_bytes_are_errors_not_panics(b in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&b).unwrap();
        let mut r = SpoolReader::open(f.path()).unwrap();
        for _ in 0..64 {
            match r.next_page() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

#[test]
fn malformed_chunk_pages_are_refused() {
    let oversized = Page::Chunks(vec![(0, Bytes::from(vec![0u8; 4097]))]);
    assert!(oversized.validate(None).is_err());
    let descending = Page::Chunks(vec![(4, Bytes::new()), (3, Bytes::new())]);
    assert!(descending.validate(None).is_err());
    let repeated = Page::Chunks(vec![(4, Bytes::new()), (4, Bytes::new())]);
    assert!(repeated.validate(None).is_err());
    let past_any_volume = Page::Chunks(vec![(u64::MAX / 2, Bytes::new())]);
    assert!(past_any_volume.validate(None).is_err());
    let after_previous = Page::Chunks(vec![(2, Bytes::new())]);
    assert!(after_previous.validate(Some(2)).is_err());
    assert_eq!(after_previous.validate(Some(1)).unwrap(), Some(2));
}

#[tokio::test]
async fn a_spool_refuses_a_page_that_goes_back_over_an_earlier_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = SpoolWriter::create(dir.path(), 3).await.unwrap();
    w.page(&chunk_page()).await.unwrap();
    let back = encode(&Page::Chunks(vec![(5, Bytes::new())])).unwrap();
    let err = w.page(&back).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
}
