//! The crate's one error type: a history that cannot be read or breaks the checker's recording
//! rules, or a chaos run whose cluster, network, fault filesystem or fault could not be set up.

/// Why a history could not be read or checked, or a run could not go on.
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
    #[error("fault filesystem: {0}")]
    Faultfs(#[from] cairn_faultfs::Error),
    /// The cluster could not be brought up, reached or recovered within its bound.
    #[error("cluster: {0}")]
    Cluster(String),
    /// A namespace, link or nftables rule of the run's network could not be made or removed.
    #[error("network: {0}")]
    Net(#[from] cairn_netns::Error),
    #[error("run configuration: {0}")]
    Config(String),
}
