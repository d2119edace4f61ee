//! The crate's one error type, for mounting, the control interface and command parsing;
//! filesystem callbacks answer errnos to the kernel instead.

use std::path::PathBuf;

/// Everything the library and the binary can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting at {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad command: {0}")]
    Command(String),
    #[error("control socket: {0}")]
    Control(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
