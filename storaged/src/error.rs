//! The storaged error type and its single mapping to the wire (`tonic::Status`).
//! Every module returns `Error`; gRPC handlers convert with `From<Error> for Status`.

use tonic::{Code, Status};

pub use cairn_proto::wire::{LEADER_HINT_KEY, NOT_EXECUTED_KEY};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing or malformed; names the field.
    #[error("invalid argument `{field}`: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{what} `{name}` not found")]
    NotFound { what: &'static str, name: String },
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// This node is not the leader of the group; `leader` is the leader's address if known.
    #[error("not the leader of group {group}")]
    NotLeader { group: u64, leader: Option<String> },
    /// No quorum, unreachable peers, or a timeout while waiting for one.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("operation in progress: {0}")]
    Aborted(String),
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("internal: {0}")]
    Internal(String),
    /// This node's own state on disk cannot be used (e.g. its meta group does not open):
    /// it cannot serve until an operator repairs or replaces its data dir.
    #[error("{0}")]
    Corrupt(String),
    /// Another storaged's answer to a call made on the client's behalf, code kept.
    #[error("{message}")]
    Peer { code: Code, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    pub fn not_found(what: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound {
            what,
            name: name.into(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::NotLeader { .. } | Error::Unavailable(_) => Code::Unavailable,
            Error::Aborted(_) => Code::Aborted,
            Error::Engine(_) | Error::Io(_) | Error::Internal(_) => Code::Internal,
            Error::Corrupt(_) => Code::DataLoss,
            Error::Peer { code, .. } => *code,
        }
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Error {
        Error::Peer {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let mut status = Status::new(e.code(), e.to_string());
        if matches!(e, Error::NotLeader { .. }) {
            status.metadata_mut().insert(
                NOT_EXECUTED_KEY,
                tonic::metadata::MetadataValue::from_static("1"),
            );
        }
        if let Error::NotLeader {
            leader: Some(addr), ..
        } = &e
            && let Ok(v) = addr.parse()
        {
            status.metadata_mut().insert(LEADER_HINT_KEY, v);
        }
        status
    }
}

#[cfg(feature = "rocks")]
impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Engine(e.to_string())
    }
}
