//! Pipelined replication: openraft's request stream sent as one `AppendStream`, each
//! request due by a payload-sized deadline; log entries are read only once it is open.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::cairn::v1::RaftMessage;
use futures::StreamExt;
use openraft::base::BoxStream;
use openraft::errors::{NetworkError, RPCError};
use openraft::network::RPCOption;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::backoff::is_transport_failure;
use super::{
    AppendEntriesRequest, Msg, PeerConn, StreamAppendResult, TypeConfig, decode_reply,
    status_error, unreachable,
};
use crate::raft::{encode_sized, entry_size_hint};

pub use cairn_proto::wire::GROUP_METADATA;

/// An AppendEntries encoded into a buffer sized for its entries up front.
pub(super) fn encode_append(rpc: &AppendEntriesRequest) -> std::io::Result<Vec<u8>> {
    let hint = 256 + rpc.entries.iter().map(entry_size_hint).sum::<usize>();
    encode_sized(rpc, hint)
}

/// How long one AppendEntries may take. openraft suggests its heartbeat interval,
/// but a batch of block writes (up to `max_payload_entries` × 1 MiB) must also be
/// sent, decoded and fsynced by the follower: too short a bound makes every retry
/// time out and the group stalls. Allow 0.5 s plus 20 MB/s of payload.
pub(super) fn append_ttl(suggested: Duration, payload_bytes: usize) -> Duration {
    suggested.max(Duration::from_millis(500)) + payload_time(payload_bytes)
}

/// The time allowed for a payload to be sent, decoded and fsynced: 20 MB/s.
fn payload_time(bytes: usize) -> Duration {
    Duration::from_nanos(bytes as u64 * 50)
}

/// Deadlines of the requests of an `AppendStream` sent and not yet answered, oldest
/// first; `sent` wakes a reader waiting with none outstanding.
#[derive(Default)]
struct Outstanding {
    deadlines: Mutex<VecDeque<Instant>>,
    sent: Notify,
}

impl Outstanding {
    /// A request of `bytes` sent at `at`, with `ttl` (`append_ttl`) for it alone. Replies
    /// come in order, so it is also due no sooner than the request before it plus the
    /// time for its own payload: the follower handles them one after the other.
    fn push(&self, at: Instant, ttl: Duration, bytes: usize) {
        let mut d = self.deadlines.lock().expect("outstanding lock poisoned");
        let own = at + ttl;
        let due = match d.back() {
            Some(prev) => own.max(*prev + payload_time(bytes)),
            None => own,
        };
        d.push_back(due);
        drop(d);
        self.sent.notify_one();
    }
    fn oldest(&self) -> Option<Instant> {
        self.deadlines
            .lock()
            .expect("outstanding lock poisoned")
            .front()
            .copied()
    }
    fn unanswered(&self) -> usize {
        self.deadlines
            .lock()
            .expect("outstanding lock poisoned")
            .len()
    }
    fn answered(&self) {
        self.deadlines
            .lock()
            .expect("outstanding lock poisoned")
            .pop_front();
    }
}

type Replies = BoxStream<'static, Result<StreamAppendResult, RPCError<TypeConfig>>>;

impl PeerConn {
    /// Opens a pipelined `AppendStream`: openraft's requests are sent as it makes them,
    /// without waiting for replies, and the replies come back in order. Each request must
    /// be answered by its deadline (`Outstanding::push`), or the stream ends with an error.
    /// openraft's requests (each a read of log entries) are pulled only once the peer
    /// has accepted the stream, so a peer that is down costs no log reads.
    pub(super) async fn open_stream<S>(
        &mut self,
        input: S,
        option: RPCOption,
    ) -> Result<Replies, RPCError<TypeConfig>>
    where
        S: futures::Stream<Item = AppendEntriesRequest> + Send + Unpin + 'static,
    {
        let mut client = self
            .channels
            .stream_client(&self.addr)
            .map_err(|e| RPCError::Unreachable(unreachable(e)))?;
        let (group, target, base) = (self.group, self.target, option.hard_ttl());
        let outstanding = Arc::new(Outstanding::default());
        let (tx, rx) = tokio::sync::mpsc::channel::<AppendEntriesRequest>(1);
        let sent = outstanding.clone();
        let requests = tokio_stream::StreamExt::map_while(
            ReceiverStream::new(rx),
            move |rpc: AppendEntriesRequest| match encode_append(&rpc) {
                Ok(payload) => {
                    let len = payload.len();
                    sent.push(Instant::now(), append_ttl(base, len), len);
                    Some(RaftMessage {
                        group_id: group,
                        payload: payload.into(),
                    })
                }
                Err(e) => {
                    tracing::error!(group, target, error = %e, "cannot encode AppendEntries");
                    None
                }
            },
        );
        let mut req = super::addressed(requests, target);
        req.metadata_mut().insert(
            GROUP_METADATA,
            group
                .to_string()
                .parse()
                .expect("a number is valid metadata"),
        );
        let attempt = self.health.attempt();
        let opened = tokio::time::timeout(append_ttl(base, 0), client.append_stream(req)).await;
        let replies = match opened {
            Err(_) => {
                let why = format!("node {target} did not open an append stream in time");
                attempt.failed(&why);
                return Err(RPCError::Network(NetworkError::new(&Msg(why))));
            }
            Ok(Err(status)) => {
                attempt.observe::<()>(&Err(status.clone()));
                self.refusals.refused();
                if status.code() == tonic::Code::Unimplemented {
                    tracing::info!(
                        group,
                        target,
                        "peer has no AppendStream: sending AppendEntries"
                    );
                    self.streams = false;
                }
                return Err(status_error(target, &status));
            }
            Ok(Ok(r)) => {
                attempt.answered();
                self.refusals.accepted();
                r.into_inner()
            }
        };
        let closed_tx = forward_requests(input, tx);
        let health = self.health.clone();
        let state = Some((replies, outstanding, closed_tx));
        Ok(Box::pin(futures::stream::unfold(state, move |state| {
            let health = health.clone();
            async move {
                let (mut replies, outstanding, closed_tx) = state?;
                let next = loop {
                    match outstanding.oldest() {
                        Some(deadline) => {
                            match tokio::time::timeout_at(deadline, replies.message()).await {
                                Ok(r) => break r,
                                Err(_) => {
                                    let why = format!(
                                        "no reply from node {target} in time (append stream)"
                                    );
                                    health.no_answer(&why);
                                    let e = NetworkError::new(&Msg(why));
                                    return Some((Err(RPCError::Network(e)), None));
                                }
                            }
                        }
                        // Nothing outstanding: wait for a reply or for the next request to go.
                        None => tokio::select! {
                            r = replies.message() => break r,
                            _ = outstanding.sent.notified() => {}
                        },
                    }
                };
                let item = match next {
                    // The follower ended the stream: a clean end only if all was answered.
                    Ok(None) => match outstanding.unanswered() {
                        0 => return None,
                        n => {
                            let why = format!(
                                "node {target} ended the append stream with {n} unanswered"
                            );
                            health.no_answer(&why);
                            Err(RPCError::Unreachable(unreachable(why)))
                        }
                    },
                    Err(status) => {
                        if is_transport_failure(&status) {
                            health.no_answer(status.message());
                        }
                        Err(status_error(target, &status))
                    }
                    Ok(Some(reply)) => {
                        health.answered();
                        match decode_reply::<StreamAppendResult>(reply) {
                            Ok(r) => {
                                outstanding.answered();
                                return Some((Ok(r), Some((replies, outstanding, closed_tx))));
                            }
                            Err(e) => Err(e),
                        }
                    }
                };
                Some((item, None))
            }
        })))
    }
}

/// Pulls openraft's requests into `tx` in a task of its own, until the returned sender
/// is dropped (openraft ends the session) or the input ends. hyper stops polling a body
/// it cannot send (a follower not reading), and openraft's generator may be parked
/// holding its replication lock, which must not wait for the connection.
fn forward_requests<S>(
    input: S,
    tx: tokio::sync::mpsc::Sender<AppendEntriesRequest>,
) -> oneshot::Sender<()>
where
    S: futures::Stream<Item = AppendEntriesRequest> + Send + Unpin + 'static,
{
    let (closed_tx, mut closed_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut input = input;
        loop {
            let rpc = tokio::select! {
                biased;
                _ = &mut closed_rx => return,
                r = input.next() => match r {
                    Some(rpc) => rpc,
                    None => return,
                },
            };
            tokio::select! {
                biased;
                _ = &mut closed_rx => return,
                r = tx.send(rpc) => if r.is_err() { return },
            }
        }
    });
    closed_tx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_appends_are_due_one_after_the_other() {
        let o = Outstanding::default();
        let t0 = Instant::now();
        let hb = Duration::from_millis(100);
        let big = 64 << 20;
        // Two large batches sent at once: the second is answered after the first is
        // handled, so it is due its own payload's time after the first.
        o.push(t0, append_ttl(hb, big), big);
        o.push(t0, append_ttl(hb, big), big);
        // A small one sent much later is due by its own deadline.
        let later = t0 + Duration::from_secs(60);
        o.push(later, append_ttl(hb, 0), 0);
        let d: Vec<_> = o.deadlines.lock().unwrap().iter().copied().collect();
        assert_eq!(d[0], t0 + append_ttl(hb, big));
        assert_eq!(d[1], d[0] + payload_time(big));
        assert_eq!(d[2], later + append_ttl(hb, 0));
    }

    #[test]
    fn append_ttl_grows_with_the_payload() {
        let hb = Duration::from_millis(100);
        assert_eq!(append_ttl(hb, 0), Duration::from_millis(500));
        // 64 entries of 1 MiB: several seconds, not the heartbeat interval.
        assert!(append_ttl(hb, 64 << 20) > Duration::from_secs(3));
        assert_eq!(
            append_ttl(Duration::from_secs(2), 0),
            Duration::from_secs(2)
        );
    }
}
