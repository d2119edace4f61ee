//! Tests of the outbound transport against a scripted peer on loopback: fallback to
//! unary calls, silent and departed followers, and dead peers waited out, not spun on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_proto::cairn::v1::raft_service_server::{RaftService, RaftServiceServer};
use cairn_proto::cairn::v1::{RaftMessage, RaftReply, SnapshotChunk};
use futures::StreamExt;
use openraft::errors::RPCError;
use openraft::network::{RPCOption, RaftNetworkV2};
use openraft::raft::AppendEntriesResponse;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use super::append_stream::append_ttl;
use super::{AppendEntriesRequest, PeerConn, StreamAppendResult, TypeConfig, Vote};
use crate::raft::{decode, encode};

/// How the test peer answers `AppendStream`.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// UNIMPLEMENTED: a storaged from before it.
    Old,
    /// Opens it and never answers.
    Silent,
    /// Takes a request and ends the stream, answering nothing.
    Ends,
}

struct Peer {
    mode: Mode,
    unary: AtomicU64,
}

type Replies = crate::service::raft_api::ReplyStream;

#[tonic::async_trait]
impl RaftService for Peer {
    type AppendStreamStream = Replies;
    async fn append_stream(
        &self,
        r: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Replies>, Status> {
        match self.mode {
            Mode::Old => Err(Status::unimplemented("AppendStream")),
            Mode::Silent => Ok(Response::new(Box::pin(futures::stream::pending()))),
            Mode::Ends => {
                // Take a request (it is then outstanding at the sender), answer nothing
                // and end the stream.
                let mut input = r.into_inner();
                let ends = futures::stream::once(async move {
                    let _ = input.message().await;
                })
                .filter_map(|()| async { None::<Result<RaftReply, Status>> });
                Ok(Response::new(Box::pin(ends)))
            }
        }
    }
    async fn append_entries(&self, r: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        let _: AppendEntriesRequest = decode(&r.into_inner().payload).unwrap();
        self.unary.fetch_add(1, Ordering::SeqCst);
        let ok = AppendEntriesResponse::<TypeConfig>::Success;
        Ok(Response::new(RaftReply {
            payload: encode(&ok).unwrap().into(),
            ..Default::default()
        }))
    }
    async fn vote(&self, _: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        Err(Status::unimplemented("vote"))
    }
    async fn pre_vote(&self, _: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        Err(Status::unimplemented("pre_vote"))
    }
    async fn change_members(&self, _: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        Err(Status::unimplemented("change_members"))
    }
    async fn install_snapshot(
        &self,
        _: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        Err(Status::unimplemented("install_snapshot"))
    }
    async fn snapshot_held(&self, _: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        Err(Status::unimplemented("snapshot_held"))
    }
    async fn group_status(&self, _: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        Err(Status::unimplemented("group_status"))
    }
    async fn read_index(&self, _: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        Err(Status::unimplemented("read_index"))
    }
    async fn transfer_leader(
        &self,
        _: Request<RaftMessage>,
    ) -> Result<Response<RaftReply>, Status> {
        Err(Status::unimplemented("transfer_leader"))
    }
    async fn ping(
        &self,
        _: Request<cairn_proto::cairn::v1::PingRequest>,
    ) -> Result<Response<cairn_proto::cairn::v1::PingReply>, Status> {
        Err(Status::unimplemented("ping"))
    }
}

/// Serves `peer` on a loopback port; a connection to it from group 7 as node 2.
async fn serve(peer: Arc<Peer>) -> PeerConn {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftServiceServer::from_arc(peer))
            .serve_with_incoming(incoming),
    );
    PeerConn::for_test(addr)
}

fn heartbeat() -> AppendEntriesRequest {
    AppendEntriesRequest {
        vote: Vote::new_committed(1, 1),
        prev_log_id: None,
        leader_commit: None,
        entries: vec![],
    }
}

fn opt() -> RPCOption {
    RPCOption::new(Duration::from_millis(100))
}

#[tokio::test]
async fn a_peer_without_append_stream_gets_append_entries() {
    let peer = Arc::new(Peer {
        mode: Mode::Old,
        unary: AtomicU64::new(0),
    });
    let mut conn = serve(peer.clone()).await;
    let two = || futures::stream::iter(vec![heartbeat(), heartbeat()]);
    let first = conn.stream_append(two(), opt()).await.err();
    assert!(
        matches!(first, Some(RPCError::Unreachable(_))),
        "UNIMPLEMENTED is an error the first time"
    );
    assert!(!conn.streams, "and the peer is then sent AppendEntries");
    assert!(
        conn.health.backing_off().is_none(),
        "a peer that answered UNIMPLEMENTED is reachable"
    );
    let replies: Vec<_> = conn
        .stream_append(two(), opt())
        .await
        .expect("the fallback opens")
        .collect()
        .await;
    assert_eq!(replies.len(), 2);
    assert!(
        replies.iter().all(|r| matches!(r, Ok(Ok(_)))),
        "{replies:?}"
    );
    assert_eq!(peer.unary.load(Ordering::SeqCst), 2);
}

/// An `AppendStream` to a peer answering in `mode`, sent two requests and left open
/// (openraft's replication keeps its stream open), and the first thing it yields.
async fn first_reply(mode: Mode) -> Option<Result<StreamAppendResult, RPCError<TypeConfig>>> {
    let mut conn = serve(Arc::new(Peer {
        mode,
        unary: AtomicU64::new(0),
    }))
    .await;
    let input =
        futures::stream::iter(vec![heartbeat(), heartbeat()]).chain(futures::stream::pending());
    let mut replies = conn.open_stream(input, opt()).await.expect("stream opens");
    let first = tokio::time::timeout(Duration::from_secs(10), replies.next())
        .await
        .expect("a silent or departed follower must not hang replication");
    if first.as_ref().is_some_and(|r| r.is_err()) {
        assert!(
            replies.next().await.is_none(),
            "the stream ends after an error"
        );
        assert!(
            conn.health.backing_off().is_some(),
            "a peer that stopped answering is backed off"
        );
    }
    first
}

#[tokio::test]
async fn an_append_stream_without_replies_ends_with_an_error() {
    let started = Instant::now();
    let first = first_reply(Mode::Silent).await;
    assert!(
        matches!(first, Some(Err(RPCError::Network(_)))),
        "no reply in time is a network error: {first:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= append_ttl(Duration::from_millis(100), 0),
        "not before the deadline: {waited:?}"
    );
}

#[tokio::test]
async fn an_append_stream_ended_with_requests_unanswered_is_an_error() {
    let first = first_reply(Mode::Ends).await;
    assert!(
        matches!(first, Some(Err(RPCError::Unreachable(_)))),
        "requests went unanswered, so not a clean end: {first:?}"
    );
}

/// A request stream that counts how often openraft's generator would be asked for a
/// request (each one a read of log entries).
fn counted(polls: Arc<AtomicU64>) -> impl futures::Stream<Item = AppendEntriesRequest> + Unpin {
    Box::pin(futures::stream::unfold(polls, |polls| async move {
        polls.fetch_add(1, Ordering::SeqCst);
        Some((heartbeat(), polls))
    }))
}

/// Replication to `conn` retried as openraft does after each failure, for `window`:
/// how many sessions were tried, and how often log entries were read.
async fn retry_for(conn: &mut PeerConn, window: Duration) -> (u64, u64) {
    let polls = Arc::new(AtomicU64::new(0));
    let mut sessions = 0;
    let end = Instant::now() + window;
    while Instant::now() < end {
        sessions += 1;
        let r = conn.stream_append(counted(polls.clone()), opt()).await;
        assert!(r.is_err(), "the peer cannot be reached");
    }
    (sessions, polls.load(Ordering::SeqCst))
}

#[tokio::test]
async fn a_dead_peer_is_retried_with_backoff_and_costs_no_log_reads() {
    // A port with nothing listening: every connect is refused at once.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut conn = PeerConn::for_test(addr);
    let (sessions, reads) = retry_for(&mut conn, Duration::from_secs(3)).await;
    // 50 + 100 + 200 + 400 + 800 + 1600 ms (±20 %) fill 3 s: about 6 tries, where a
    // loop without backoff makes thousands.
    assert!(sessions <= 10, "{sessions} attempts in 3 s");
    assert_eq!(reads, 0, "no log entries read for a peer that is down");
    let hb = futures::stream::iter(vec![heartbeat()]);
    let started = Instant::now();
    let r = conn.stream_append(hb, opt()).await;
    assert!(r.is_err() && started.elapsed() < Duration::from_millis(20));
}

#[tokio::test]
async fn a_peer_that_accepts_but_never_answers_is_backed_off() {
    // Listening but never accepting: the kernel completes the TCP handshake, as for a
    // process stopped with SIGSTOP, and nothing ever answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut conn = PeerConn::for_test(listener.local_addr().unwrap().to_string());
    let (sessions, reads) = retry_for(&mut conn, Duration::from_secs(4)).await;
    assert!(sessions <= 8, "{sessions} attempts in 4 s");
    assert_eq!(
        reads, 0,
        "no log entries read for a peer that never answers"
    );
    drop(listener);
}

#[tokio::test]
async fn a_peer_back_from_the_dead_is_reached_within_the_ceiling() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let mut conn = PeerConn::for_test(addr.to_string());
    retry_for(&mut conn, Duration::from_secs(2)).await;
    assert!(conn.health.backing_off().is_some());
    // The peer comes back on the same address.
    let peer = Arc::new(Peer {
        mode: Mode::Old,
        unary: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftServiceServer::from_arc(peer.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let back = Instant::now();
    let bound = super::BACKOFF_CEILING.mul_f64(1.2) + Duration::from_secs(1);
    loop {
        let two = futures::stream::iter(vec![heartbeat(), heartbeat()]);
        if let Ok(s) = conn.stream_append(two, opt()).await {
            let replies: Vec<_> = s.collect().await;
            if replies.iter().all(|r| matches!(r, Ok(Ok(_)))) {
                break;
            }
        }
        assert!(back.elapsed() < bound, "not reached within {bound:?}");
    }
    assert!(back.elapsed() < bound, "{:?}", back.elapsed());
}
