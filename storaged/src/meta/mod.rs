//! The meta group's catalogue: volumes, placements, nodes with capacity and
//! labels, and controller attachments; plus the placement policy.

pub mod catalog;
pub mod moves;
pub mod placement;
pub mod stored;
