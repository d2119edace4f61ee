//! Scenario tests: each replays the API calls a reconcile must make against a mock API
//! server, with a fake CSI controller on a Unix socket, and asserts the requests' contents.

mod attach;
mod capacity;
mod fixtures;
mod health;
mod leader;
mod provision;
mod resize_delete;
