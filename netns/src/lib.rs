//! Network namespaces for the harness's nodes and the chaos runs' storaged nodes: the `ip`
//! commands, a private /24 with its bridge, veth links into a namespace, and its processes.

mod cmd;
mod procs;
mod subnet;

pub use cmd::{ip, link_exists, run};
pub use procs::{kill_until_gone, ns_id, processes_in, signal_all, wait_gone};
pub use subnet::{Bridge, attach_veth, host_routes, overlaps, parse_cidr};

/// Why a namespace, link or rule could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program is not installed (or could not start): the package to install is named.
    #[error("{program}: {source} (install {package})")]
    Spawn {
        program: String,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The program ran and failed; its stderr.
    #[error("{command}: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No /24 of the range is free (every bridge name taken or routed by the host).
    #[error("no free subnet: {0}")]
    NoSubnet(String),
}

pub type Result<T> = std::result::Result<T, Error>;
