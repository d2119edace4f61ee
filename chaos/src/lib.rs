//! Cairn's chaos library: the operation history that workloads record under faults, and the
//! linearizability checker that replays it and says whether any acknowledged write was lost.

pub mod checker;
mod error;
pub mod history;

pub use checker::{Config, Report, check, check_final_reads};
pub use error::Error;
pub use history::{Key, Op, OpKind, Outcome, Recorder, Value};

#[cfg(test)]
mod sim;
