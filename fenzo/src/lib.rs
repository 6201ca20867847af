//! fenzo: Titan's placement engine.
//!
//! A pure function over a snapshot: `place(&ClusterSnapshot, &[TaskRequest], &PlacementConfig) -> Placement`.
//! No IO, no clock, no async, no global state; the same inputs (and seed) give the same placement.
//!
//! The pipeline (see `pipeline`): the queue orders tasks by tier and fair share and applies quotas; hard filters
//! run cheapest first; scorers rank feasible agents in 0.0..=1.0; a search over the capacity index stops as soon
//! as nothing unvisited can win. Tasks that do not fit come back with an explanation, not an error.
//!
//! Architecture invariant: fenzo knows nothing of tokio, sled, bollard, HTTP or AWS, and depends on no other
//! Titan crate.

mod agent;
mod autoscale;
mod config;
mod constraint;
mod explain;
mod filter;
mod index;
mod pack;
mod pipeline;
mod placement;
mod ports;
mod queue;
mod request;
mod resources;
mod score;
mod snapshot;
mod state;
mod verify;
mod work;

pub use agent::Agent;
pub use config::{AutoscaleConfig, ConfigError, Mode, PlacementConfig, DEFAULT_GOOD_ENOUGH};
pub use constraint::{By, Constraint, Preference, Scope};
pub use explain::Explanation;
pub use filter::Rejection;
pub use pipeline::place;
pub use placement::{Assignment, GroupHint, Pending, Placement, PlacementStats, Unplaced};
pub use queue::CapacityGroup;
pub use request::TaskRequest;
pub use resources::{cpus_to_milli, ResourceKind, Resources, Scalars, MILLI};
pub use score::Fitness;
pub use snapshot::{ClusterSnapshot, SnapshotError};
pub use state::fnv1a;
pub use state::{AgentIdx, GroupUsage};
pub use verify::{verify, Violation};
