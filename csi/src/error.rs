//! The driver's one error type and its one mapping to a gRPC `Status`.
//! Every RPC returns `Result<_, CsiError>`; the code chosen here is what the CSI spec asks.

use tonic::{Code, Status};

/// Everything that can go wrong inside the driver.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// A required field is missing or a field has a value the driver refuses.
    #[error("{0}")]
    InvalidArgument(String),
    /// The volume (or node, or path) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A volume with the same name/path exists but is incompatible.
    #[error("{0}")]
    AlreadyExists(String),
    /// The operation is not allowed in the current state (fencing, staged elsewhere, ...).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The capacity range cannot be satisfied.
    #[error("{0}")]
    OutOfRange(String),
    /// A limit is reached (volumes per node).
    #[error("{0}")]
    ResourceExhausted(String),
    /// Another operation on the same volume is in flight, or a page token is stale.
    #[error("{0}")]
    Aborted(String),
    /// The RPC is not implemented (snapshots, modify).
    #[error("{0}")]
    Unimplemented(String),
    /// A dependency (storaged) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The caller's deadline (`grpc-timeout`) ran out before the answer was known.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A local system call failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// An external tool (mkfs, blkid, resize2fs, ...) failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// An error from storaged, with the action that produced it.
    #[error("{context}: {}", status.message())]
    Storaged { context: String, status: Status },
    /// Anything else that is the driver's own fault.
    #[error("{0}")]
    Internal(String),
}

/// Shorthand used across the crate.
pub type Result<T, E = CsiError> = std::result::Result<T, E>;

impl CsiError {
    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CsiError::Io {
            context: context.into(),
            source,
        }
    }

    /// Wrap a storaged status with what was being done; the code is kept.
    pub fn storaged(context: impl Into<String>, status: Status) -> Self {
        CsiError::Storaged {
            context: context.into(),
            status,
        }
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            CsiError::InvalidArgument(_) => Code::InvalidArgument,
            CsiError::NotFound(_) => Code::NotFound,
            CsiError::AlreadyExists(_) => Code::AlreadyExists,
            CsiError::FailedPrecondition(_) => Code::FailedPrecondition,
            CsiError::OutOfRange(_) => Code::OutOfRange,
            CsiError::ResourceExhausted(_) => Code::ResourceExhausted,
            CsiError::Aborted(_) => Code::Aborted,
            CsiError::Unimplemented(_) => Code::Unimplemented,
            CsiError::Unavailable(_) => Code::Unavailable,
            CsiError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            CsiError::Io { .. } | CsiError::Command { .. } | CsiError::Internal(_) => {
                Code::Internal
            }
            CsiError::Storaged { status, .. } => match status.code() {
                // Transport trouble and timeouts are retryable for the CO.
                Code::Unknown | Code::Cancelled => Code::Unavailable,
                c => c,
            },
        }
    }

    /// The storaged code behind this error, if it came from storaged.
    pub fn storaged_code(&self) -> Option<Code> {
        match self {
            CsiError::Storaged { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

impl From<CsiError> for Status {
    fn from(e: CsiError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storaged_codes_pass_through_except_transport_errors() {
        let e = CsiError::storaged("create", Status::already_exists("x"));
        assert_eq!(Status::from(e).code(), Code::AlreadyExists);
        let e = CsiError::storaged("create", Status::unknown("transport"));
        assert_eq!(Status::from(e).code(), Code::Unavailable);
        let e = CsiError::storaged("create", Status::resource_exhausted("full"));
        let s = Status::from(e);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("create") && s.message().contains("full"));
    }

    #[test]
    fn local_failures_are_internal() {
        let e = CsiError::io("mkdir /x", std::io::Error::other("boom"));
        assert_eq!(Status::from(e).code(), Code::Internal);
        let e = CsiError::Command {
            command: "mkfs.ext4".into(),
            status: "exit 1".into(),
            stderr: "bad".into(),
        };
        assert_eq!(Status::from(e).code(), Code::Internal);
    }
}
