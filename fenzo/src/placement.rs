//! What one placement round returns: the assignments in the order they were made, the tasks left pending with
//! the reason why, autoscaling hints, and counts of the work done for the caller's metrics.

use crate::explain::Explanation;
use crate::resources::ResourceKind;

/// One task put on one agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub task_id: String,
    pub agent_id: String,
    /// The concrete ports allocated from the agent's ranges, one per requested dynamic port.
    pub ports: Vec<u16>,
}

/// Why a task stays pending.
#[derive(Clone, Debug, PartialEq)]
pub enum Pending {
    /// Its capacity group's limit on `resource` would be exceeded.
    Quota { group: String, resource: ResourceKind },
    /// No agent could take it; the explanation counts why.
    NoFit(Explanation),
}

/// A task that was not placed.
#[derive(Clone, Debug, PartialEq)]
pub struct Unplaced {
    pub task_id: String,
    pub reason: Pending,
}

/// The result of one placement round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Placement {
    /// In the order they were made: `ClusterSnapshot::apply` replays them in this order, so each is re-validated
    /// against the state the engine saw when it made it.
    pub assignments: Vec<Assignment>,
    /// In request order.
    pub unplaced: Vec<Unplaced>,
    pub autoscale: Vec<GroupHint>,
    pub stats: PlacementStats,
}

/// What a placement round did, for the caller's metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlacementStats {
    /// Best-first searches of the capacity index (one per task placed that way).
    pub searches: u64,
    /// Index entries those searches looked at.
    pub agents_examined: u64,
    /// Feasible agents they scored.
    pub agents_scored: u64,
    /// Runs of the batch packer (more than one per tier when the tier does not fit).
    pub pack_runs: u64,
    /// Tasks the batch packer placed.
    pub packed: u64,
}

/// What one instance group should do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupHint {
    pub group: String,
    /// Eligible agents in the group.
    pub agents: u32,
    /// Idle eligible agents, in the order to release them.
    pub idle: Vec<String>,
    /// More agents of this group's shape the pending tasks need.
    pub shortfall: u32,
    /// Pending tasks that those new agents would take.
    pub pending_tasks: u32,
}
