//! The crate's one error type, and how each error maps to a requeue and an Event.
//! CSI errors keep their gRPC code so callers can branch on RESOURCE_EXHAUSTED and friends.

use std::time::Duration;

/// Everything that can go wrong in a controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A CSI call answered with an error status.
    #[error("CSI {method}: {status_code:?}: {message}")]
    Csi {
        /// The RPC name.
        method: &'static str,
        /// The gRPC code.
        status_code: tonic::Code,
        /// The driver's message.
        message: String,
    },
    /// The claim or class asks for something we reject (bad parameter, bad size…).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// An object we depend on is missing or not ready yet (class, node, PV).
    #[error("waiting: {0}")]
    Waiting(String),
    /// Local I/O (discovery directory, wiping).
    #[error("I/O on {path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Bad command-line or environment configuration.
    #[error("configuration: {0}")]
    Config(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a tonic status from the named RPC.
    pub fn csi(method: &'static str, status: tonic::Status) -> Self {
        Error::Csi {
            method,
            status_code: status.code(),
            message: status.message().to_string(),
        }
    }

    /// The gRPC code when this is a CSI error.
    pub fn csi_code(&self) -> Option<tonic::Code> {
        match self {
            Error::Csi { status_code, .. } => Some(*status_code),
            _ => None,
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Csi { .. } => "csi",
            Error::Invalid(_) => "invalid",
            Error::Waiting(_) => "waiting",
            Error::Io { .. } => "io",
            Error::Config(_) => "config",
        }
    }
}

/// True when a kube error is an API answer with this HTTP code.
pub fn is_api_code(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(resp) if resp.code == code)
}

/// Exponential per-object backoff, as upstream workqueues use: 1s doubling to 5 min.
pub fn backoff(failures: u32) -> Duration {
    let secs = 1u64.checked_shl(failures.min(16)).unwrap_or(u64::MAX);
    Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(40), Duration::from_secs(300));
    }
}
