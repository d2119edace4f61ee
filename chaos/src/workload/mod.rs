//! Workloads: clients that drive a cluster while faults run and record what they saw (`block`:
//! versioned 4 KiB blocks through the volume client; `fs`: fsynced records on ext4 on a volume).

pub mod block;
pub mod fs;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A workload, named as `--workload` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    Block,
    Fs,
}

impl Workload {
    pub const ALL: [Workload; 2] = [Workload::Block, Workload::Fs];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Block => "block",
            Workload::Fs => "fs",
        }
    }

    /// A comma-separated list of names, at least one.
    pub fn parse_list(s: &str) -> Result<Vec<Workload>, Error> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let w = Workload::ALL
                .into_iter()
                .find(|w| w.name() == name)
                .ok_or_else(|| {
                    Error::Config(format!("workload: unknown workload {name:?} (block, fs)"))
                })?;
            if !out.contains(&w) {
                out.push(w);
            }
        }
        match out.is_empty() {
            true => Err(Error::Config("workload: none named (block, fs)".into())),
            false => Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_lists_parse_and_unknown_names_are_refused() {
        assert_eq!(Workload::parse_list("block").unwrap(), [Workload::Block]);
        assert_eq!(
            Workload::parse_list("fs, block,fs").unwrap(),
            [Workload::Fs, Workload::Block]
        );
        assert_eq!(
            Workload::parse_list("block,disk").unwrap_err().to_string(),
            "run configuration: workload: unknown workload \"disk\" (block, fs)"
        );
        assert!(Workload::parse_list(" , ").is_err());
    }
}
