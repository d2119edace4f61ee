//! Cairn's chaos library: a nemesis and workloads that break a storaged cluster on a seeded
//! schedule and record what clients saw, and the linearizability checker that judges the history.

pub mod audit;
pub mod budget;
pub mod catchup;
pub mod checker;
pub mod clock;
pub mod cluster;
mod cpu;
mod error;
pub mod history;
pub mod lookahead;
pub mod nemesis;
pub mod net;
pub mod overlap;
pub mod partition;
pub mod plot;
pub mod report;
pub mod run;
pub mod schedule;
pub mod usage;
pub mod views;
pub mod workload;

pub use checker::{Config, Report, check, check_final_reads};
pub use error::Error;
pub use history::{Key, Op, OpKind, Outcome, Recorder, Value};
pub use nemesis::{FaultKind, FaultRecord, Target};
pub use report::RunReport;
pub use run::{RunConfig, RunOutcome, run};
pub use schedule::Targets;

#[cfg(test)]
mod sim;
