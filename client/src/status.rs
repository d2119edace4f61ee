//! What a storaged answer means for the client: leader hints, refusals made before
//! executing, connections that never came up, and which calls may be sent again.

use tonic::{Code, Status};

pub use cairn_proto::wire::{LEADER_HINT_KEY, NOT_EXECUTED_KEY};

/// Whether a call may be re-sent after an ambiguous failure (the server may have executed it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Retry {
    /// Re-executing gives the same result (create-by-name, delete, reads), or storaged
    /// deduplicates it (writes and discards carry a `WriteTicket`).
    Idempotent,
    /// Only re-sent when the server certainly did not execute it (not-leader, connect failure).
    OnlyUnexecuted,
}

pub(crate) fn normalise(addr: &str) -> String {
    addr.trim()
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string()
}

pub(crate) fn leader_hint(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_HINT_KEY)
        .and_then(|v| v.to_str().ok())
        .map(normalise)
        .filter(|s| !s.is_empty())
}

/// A refusal the server made before executing anything, or a connection that never came up:
/// safe to resend anything.
pub(crate) fn unexecuted(status: &Status) -> bool {
    leader_hint(status).is_some()
        || status.metadata().get(NOT_EXECUTED_KEY).is_some()
        || never_connected(status)
}

/// Whether the connection itself failed (refused, no route), so no server saw the request:
/// tonic attaches the transport error as the status' source, down to the socket's
/// `io::Error`; a status a server sent has no source. A timeout is not proof: the request
/// may have been sent.
pub(crate) fn never_connected(status: &Status) -> bool {
    use std::io::ErrorKind::{
        AddrNotAvailable, ConnectionRefused, HostUnreachable, NetworkUnreachable,
    };
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ConnectionRefused | NetworkUnreachable | HostUnreachable | AddrNotAvailable
            );
        }
        cause = e.source();
    }
    false
}

/// Whether nothing listens at the peer's address any more (connection refused): its process
/// is gone, though its host answers. A stronger sign than silence, which may be a pause.
pub fn refused(status: &Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        cause = e.source();
    }
    false
}

/// Whether a call's error proves the call was never executed: set on the error a call gives
/// up with when every attempt it made was refused before executing (see `NOT_EXECUTED_KEY`).
pub fn never_executed(status: &Status) -> bool {
    status.metadata().get(NOT_EXECUTED_KEY).is_some()
}

/// ABORTED ("still copying into that volume; ask again") is not retried here: the caller
/// decides how long to wait, with progress (cairnctl) or its own backoff (a CO).
pub(crate) fn retryable(status: &Status, retry: Retry) -> bool {
    match retry {
        Retry::OnlyUnexecuted => unexecuted(status),
        Retry::Idempotent => matches!(
            status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refused_connection_means_the_process_is_gone() {
        let refused_io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let gone = Status::from_error(Box::new(refused_io));
        assert!(refused(&gone));
        assert!(never_connected(&gone));
        let unreachable = std::io::Error::from(std::io::ErrorKind::HostUnreachable);
        assert!(!refused(&Status::from_error(Box::new(unreachable))));
        assert!(!refused(&Status::unavailable("no quorum")));
    }
}
