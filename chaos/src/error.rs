//! The crate's one error type: a history that cannot be read, or one that breaks the recording
//! rules the checker relies on (for example two writes of the same value on one key).

/// Why a history could not be read or checked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("history i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("history line {line}: {source}")]
    Parse {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("history operation {index}: {reason}")]
    InvalidOp { index: usize, reason: String },
}
