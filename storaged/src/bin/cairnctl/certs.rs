//! `cairnctl certs`: the cluster CA (`init`) and certificates for each identity (`issue`),
//! written in the `--tls-dir` layout every Cairn binary reads.

use std::net::IpAddr;
use std::path::PathBuf;

use cairn_storaged::tls::Identity;
use cairn_storaged::tls::certs::{self, Issue};
use clap::Subcommand;
use tonic::Status;

#[derive(Subcommand)]
pub enum CertsCmd {
    /// Create a cluster CA: DIR/ca.crt and DIR/ca.key (keep ca.key secret).
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a certificate for one identity: OUT/ca.crt, OUT/tls.crt and OUT/tls.key.
    Issue {
        /// The CA directory made by `certs init`.
        #[arg(long)]
        ca_dir: PathBuf,
        /// `node:<id>`, `csi-node:<node name>`, `controller` or `admin`.
        #[arg(long)]
        identity: String,
        /// An IP address to add as a subject alternative name (repeatable).
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// A DNS name to add as a subject alternative name (repeatable).
        #[arg(long = "dns")]
        dns: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cmd: CertsCmd) -> Result<(), Status> {
    match cmd {
        CertsCmd::Init { dir } => {
            certs::init_ca(&dir)?;
            println!("CA written to {}", dir.display());
        }
        CertsCmd::Issue {
            ca_dir,
            identity,
            ips,
            dns,
            out,
        } => {
            let identity: Identity = identity
                .parse()
                .map_err(|e: String| Status::invalid_argument(format!("--identity: {e}")))?;
            let issue = Issue { identity, ips, dns };
            certs::issue(&ca_dir, &issue, &out)?;
            println!(
                "certificate for `{}` written to {}",
                issue.identity,
                out.display()
            );
        }
    }
    Ok(())
}
