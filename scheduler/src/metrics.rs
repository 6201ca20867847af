//! Every metric a cell member exports, in one catalogue: what dashboards and alert rules may query. Each is
//! registered through a `Registrar` that adds the member's `cell` and `node` labels (`registrar`).

use prometheus::Registry;
use titan_api::metrics::{Def, Registrar};

/// The registrar of a member: its metrics carry its cell and node.
pub fn registrar<'a>(registry: &'a Registry, cell: &str, node: u64) -> Registrar<'a> {
    Registrar::new(registry, &[("cell", cell), ("node", &node.to_string())])
}

const SUB_MS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Raft: terms, leaders, the log and its commits.
pub mod raft {
    use super::*;

    pub const TERM: Def = Def::gauge("titan_raft_term", "Current Raft term");
    pub const IS_LEADER: Def = Def::gauge("titan_raft_is_leader", "1 on the leader");
    pub const LEADER_CHANGES: Def = Def::counter("titan_raft_leader_changes_total", "Times the known leader changed");
    pub const COMMIT_SECONDS: Def =
        Def::histogram("titan_raft_commit_latency_seconds", "Time from proposing a command to its commit", SUB_MS);
    pub const LAST_LOG_INDEX: Def = Def::gauge("titan_raft_last_log_index", "Index of the last log entry");
    pub const APPLIED_INDEX: Def = Def::gauge("titan_raft_applied_index", "Index of the last applied entry");
    pub const COMMIT_INDEX: Def = Def::gauge("titan_raft_commit_index", "Index of the last entry known committed");
    pub const APPLY_LAG: Def = Def::gauge("titan_raft_apply_lag_entries", "Committed entries not yet applied");
    pub const LOG_ENTRIES: Def = Def::gauge("titan_raft_log_entries", "Entries in the log (not yet compacted)");
    pub const SNAPSHOTS: Def = Def::counter("titan_raft_snapshots_total", "Snapshots built or installed");
    pub const SNAPSHOT_BYTES: Def = Def::gauge("titan_raft_snapshot_bytes", "Size of the current snapshot file");
    pub const SNAPSHOT_SECONDS: Def = Def::histogram(
        "titan_raft_snapshot_seconds",
        "Time to build a snapshot, by phase (copy, write)",
        &[0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
    )
    .by(&["phase"]);
    pub const STORE_BYTES: Def = Def::gauge("titan_store_size_bytes", "Bytes the store occupies on disk");
    pub const FLUSH_SECONDS: Def = Def::histogram(
        "titan_raft_log_flush_seconds",
        "Raft log writes made durable, one flush each",
        &[0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 1.0],
    );
    pub const BATCH_SIZE: Def = Def::histogram(
        "titan_raft_proposal_batch_size",
        "Commands per Raft proposal",
        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
    );
    pub const FORWARDED: Def = Def::counter("titan_raft_forwarded_writes_total", "Writes forwarded to the leader");
    pub const MEMBERSHIP_CHANGES: Def = Def::counter(
        "titan_membership_changes_total",
        "Membership requests by outcome (add_learner, promote, left_learner, remove, refused)",
    )
    .by(&["outcome"]);
    pub const TIMED_OUT: Def =
        Def::counter("titan_writes_timed_out_total", "Writes answered `timeout`: not committed in time").by(&["kind"]);
    pub const IN_FLIGHT: Def = Def::gauge("titan_raft_proposals_in_flight", "Proposals this member is waiting on");

    const RPC_BUCKETS: &[f64] = &[0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
    pub const RPC_SECONDS: Def =
        Def::histogram("titan_raft_rpc_seconds", "Raft calls to peers, from sending to the answer", RPC_BUCKETS)
            .by(&["rpc"]);
    pub const ANSWER_SECONDS: Def =
        Def::histogram("titan_raft_answer_seconds", "Raft calls from peers, from reading to answering", RPC_BUCKETS)
            .by(&["rpc"]);
    pub const PEER_CONNECTS: Def =
        Def::counter("titan_raft_peer_connects_total", "Raft stream connections opened to a peer").by(&["peer"]);
    pub const RPC_FAILURES: Def =
        Def::counter("titan_raft_rpc_failures_total", "Raft calls to a peer that got no answer").by(&["peer", "rpc"]);
    pub const EARLY_APPENDS: Def = Def::counter(
        "titan_raft_early_appends_total",
        "Appends a leader sent its followers before its own sync, by outcome (sent, no_idle_connection, busy)",
    )
    .by(&["outcome"]);
    pub const EARLY_ANSWERS_USED: Def = Def::counter(
        "titan_raft_early_answers_used_total",
        "Raft's own appends answered by the answer to an early append of the same bytes, so not sent again",
    );
}

/// The cell's jobs and tasks, and the scheduler's rounds.
pub mod scheduling {
    use super::*;

    pub const JOBS: Def = Def::gauge("titan_jobs", "Jobs by state").by(&["state"]);
    pub const TASKS: Def = Def::gauge("titan_tasks", "Tasks by state").by(&["state"]);
    pub const ROUND_SECONDS: Def = Def::histogram(
        "titan_scheduling_round_seconds",
        "Reconcile and placement time of one round",
        &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
    );
    pub const PLACEMENTS: Def = Def::counter("titan_placements_total", "Tasks placed on agents");
    pub const PLAN_REJECTIONS: Def =
        Def::counter("titan_plan_rejections_total", "Placements the state machine refused when re-validating a plan");
    pub const RETRIES_PLACED: Def = Def::counter(
        "titan_retries_placed_total",
        "Replacements of tasks that failed on an agent, by where they went: elsewhere, or where_failed when no \
         other agent fitted",
    )
    .by(&["agent"]);
    pub const CREATED: Def = Def::counter("titan_tasks_created_total", "Tasks created (new or replacements)");
    pub const STOPPED: Def =
        Def::counter("titan_tasks_stopped_total", "Tasks asked to stop, by reason").by(&["reason"]);
    pub const LOST: Def = Def::counter("titan_tasks_lost_total", "Tasks declared lost, by reason").by(&["reason"]);
    pub const AGENTS_LOST: Def = Def::counter("titan_agents_lost_total", "Agents whose tasks were declared lost");
    pub const BREAKER_OPEN: Def =
        Def::gauge("titan_agent_loss_breaker_open", "1 while too many agents are silent at once to declare any lost");
    pub const PENDING: Def = Def::gauge("titan_tasks_pending", "Accepted tasks the latest round could not place");
    pub const PENDING_AGE: Def = Def::gauge("titan_tasks_pending_oldest_seconds", "Age of the oldest Accepted task");
    pub const PENDING_BY_REASON: Def = Def::gauge(
        "titan_tasks_pending_by_reason",
        "Accepted tasks the latest round could not place, by why: quota (a capacity group at its limit here) or no_fit",
    )
    .by(&["reason"]);
}

/// The member's background loops.
pub mod workers {
    use super::*;

    pub const STEPS: Def = Def::counter("titan_worker_steps_total", "Worker steps done").by(&["worker"]);
    pub const ERRORS: Def = Def::counter("titan_worker_errors_total", "Worker steps that failed").by(&["worker"]);
}

/// Federation: the other cells (label `peer`; `cell` is the member's own), and the jobs pushed to and merged from
/// them.
pub mod federation {
    use super::*;

    pub const CELL_UP: Def =
        Def::gauge("titan_federation_cell_up", "1 while another cell is heard within its suspect time").by(&["peer"]);
    pub const LAG_SECONDS: Def = Def::gauge(
        "titan_federation_replication_lag_seconds",
        "From a write in another cell to its merge here, for the latest batch merged from it",
    )
    .by(&["peer"]);
    pub const PENDING_CHANGES: Def = Def::gauge(
        "titan_federation_pending_changes",
        "Jobs changed here that another cell has not merged yet (on the leader)",
    )
    .by(&["peer"]);
    pub const PUSHES: Def =
        Def::counter("titan_federation_pushes_total", "Batches pushed to another cell and merged there").by(&["peer"]);
    pub const PUSH_BYTES: Def =
        Def::counter("titan_federation_push_bytes_total", "Bytes of the batches pushed to another cell").by(&["peer"]);
    pub const MERGED: Def =
        Def::counter("titan_federation_merged_total", "Jobs merged from another cell that changed here").by(&["peer"]);
    pub const REFUSED: Def = Def::counter(
        "titan_federation_refused_total",
        "Pushes or jobs from other cells refused, by reason (unknown_cell, skew, malformed)",
    )
    .by(&["reason"]);
    pub const CONFLICTS: Def = Def::counter(
        "titan_federation_conflicts_total",
        "Registers where a write from another cell lost to a newer write here (last writer wins; late relays count too)",
    )
    .by(&["peer"]);
    pub const DIGESTS: Def = Def::counter(
        "titan_federation_digests_total",
        "Anti-entropy digests sent to another cell and answered, by whether they matched (result=match|differ)",
    )
    .by(&["peer", "result"]);
    pub const REPAIRED: Def = Def::counter(
        "titan_federation_repaired_jobs_total",
        "Jobs an anti-entropy digest found another cell lacked or held older, and pushed to it",
    )
    .by(&["peer"]);
}

pub mod quota {
    use super::*;

    pub const LIMIT: Def = Def::gauge(
        "titan_quota_limit",
        "A capacity group's quota in a location, per resource (instances, cpus, memoryMiB, diskGiB)",
    )
    .by(&["group", "location", "resource"]);
    pub const USED: Def = Def::gauge(
        "titan_quota_used",
        "A capacity group's desired usage in a location: instances times resources of its enabled jobs",
    )
    .by(&["group", "location", "resource"]);
    pub const RUNNING: Def = Def::gauge(
        "titan_quota_running",
        "What a capacity group's tasks on agents take in this cell's location, per resource",
    )
    .by(&["group", "location", "resource"]);
    pub const REJECTIONS: Def = Def::counter(
        "titan_quota_rejections_total",
        "Job writes refused for exceeding a quota, by group, location and resource",
    )
    .by(&["group", "location", "resource"]);
}

pub mod location {
    use super::*;

    pub const STATE: Def = Def::gauge(
        "titan_location_state",
        "1 for a location's lever state (active, frozen, evacuating, evacuated, restoring), 0 for the others",
    )
    .by(&["location", "state"]);
    pub const WEIGHT: Def =
        Def::gauge("titan_location_weight", "A location's traffic weight (0-100) as routers read it").by(&["location"]);
    pub const EVACUATION: Def = Def::gauge(
        "titan_evacuation_instances",
        "A move out of a location, by phase (to_move, started_elsewhere, stopped_in_location, left_behind)",
    )
    .by(&["location", "phase"]);
    pub const ACTIONS: Def = Def::counter(
        "titan_failover_actions_total",
        "Levers pulled by this cell, by kind (freeze, unfreeze, evacuate, restore, weight, evacuated, restored) \
         and whether auto-failover pulled it",
    )
    .by(&["kind", "automatic"]);
}

pub mod capacity {
    use super::*;

    pub const CAPACITY: Def = Def::gauge(
        "titan_capacity",
        "The cell's working agents per instance group and resource (cpus, memory_bytes, disk_bytes, ports): \
         total, allocated to tasks, and free",
    )
    .by(&["instance_group", "resource", "state"]);
    pub const STRANDED: Def = Def::gauge(
        "titan_capacity_stranded",
        "Free capacity on agents where the smallest pending task fits nowhere, per instance group and resource",
    )
    .by(&["instance_group", "resource"]);
}

/// Per application (the jobs' `applicationName`): series per application, never per job or task.
pub mod application {
    use super::*;

    pub const INSTANCES: Def =
        Def::gauge("titan_application_instances", "Desired instances of an application's enabled jobs, per location")
            .by(&["application", "location"]);
    pub const TASKS: Def = Def::gauge("titan_application_tasks", "An application's tasks held in this cell, by state")
        .by(&["application", "state"]);
    pub const PENDING: Def = Def::gauge(
        "titan_application_pending_tasks",
        "An application's Accepted tasks the latest round could not place, by why (quota, no_fit; on the leader)",
    )
    .by(&["application", "reason"]);
    pub const RESTARTS: Def = Def::counter(
        "titan_application_restarts_total",
        "Replacement tasks created for an application's tasks that failed, were lost or were stopped (on the leader)",
    )
    .by(&["application"]);
    pub const AGENTS: Def = Def::gauge(
        "titan_agents",
        "The cell's agents by state (active, draining, drained, unreachable: lease expired, whatever the state)",
    )
    .by(&["state"]);
    pub const LEASE: Def = Def::gauge(
        "titan_agent_lease_seconds",
        "The lease agents are given now: the configured lease, or longer so the fleet beats within max_heartbeats_per_second",
    );
}

pub mod fleet {
    use super::*;

    pub const DESIRED: Def =
        Def::gauge("titan_fleet_desired", "The size an instance group's policy wants").by(&["group"]);
    pub const INSTANCES: Def = Def::gauge(
        "titan_fleet_instances",
        "An instance group's instances by state (pending, running, terminating, booting: no agent yet)",
    )
    .by(&["group", "state"]);
    pub const MAX: Def =
        Def::gauge("titan_fleet_max_instances", "The most instances an instance group may have (its max)")
            .by(&["group"]);
    pub const SHORTFALL: Def =
        Def::gauge("titan_fleet_shortfall_slots", "Slots the group's pending tasks need that it lacks").by(&["group"]);
    pub const IDLE: Def =
        Def::gauge("titan_fleet_idle_slots", "Slots of the group's agents with no task").by(&["group"]);
    pub const FORECAST: Def =
        Def::gauge("titan_fleet_forecast_slots", "Slots the group's policy expects within its boot delay")
            .by(&["group"]);
    pub const DECISIONS: Def = Def::counter(
        "titan_autoscaler_decisions_total",
        "Decisions that changed a group's size or drains, by direction (up, down) and policy",
    )
    .by(&["group", "direction", "policy"]);
    pub const LAUNCHES: Def = Def::counter("titan_fleet_launches_total", "Instances launched").by(&["group"]);
    pub const TERMINATIONS: Def =
        Def::counter("titan_fleet_terminations_total", "Instances removed (drained and empty)").by(&["group"]);
    pub const ERRORS: Def = Def::counter(
        "titan_fleet_errors_total",
        "Fleet calls that failed, by kind (throttled, not_found, auth, timeout, other)",
    )
    .by(&["group", "kind"]);
}

/// Every metric of a member but the API's (`titan_api::metrics::http`).
pub const ALL: &[Def] = &[
    raft::TERM,
    raft::IS_LEADER,
    raft::LEADER_CHANGES,
    raft::COMMIT_SECONDS,
    raft::LAST_LOG_INDEX,
    raft::APPLIED_INDEX,
    raft::COMMIT_INDEX,
    raft::APPLY_LAG,
    raft::LOG_ENTRIES,
    raft::SNAPSHOTS,
    raft::SNAPSHOT_BYTES,
    raft::SNAPSHOT_SECONDS,
    raft::STORE_BYTES,
    raft::FLUSH_SECONDS,
    raft::BATCH_SIZE,
    raft::FORWARDED,
    raft::MEMBERSHIP_CHANGES,
    raft::TIMED_OUT,
    raft::IN_FLIGHT,
    raft::RPC_SECONDS,
    raft::ANSWER_SECONDS,
    raft::PEER_CONNECTS,
    raft::RPC_FAILURES,
    raft::EARLY_APPENDS,
    raft::EARLY_ANSWERS_USED,
    scheduling::JOBS,
    scheduling::TASKS,
    scheduling::ROUND_SECONDS,
    scheduling::PLACEMENTS,
    scheduling::PLAN_REJECTIONS,
    scheduling::RETRIES_PLACED,
    scheduling::CREATED,
    scheduling::STOPPED,
    scheduling::LOST,
    scheduling::AGENTS_LOST,
    scheduling::BREAKER_OPEN,
    scheduling::PENDING,
    scheduling::PENDING_AGE,
    scheduling::PENDING_BY_REASON,
    workers::STEPS,
    workers::ERRORS,
    federation::CELL_UP,
    federation::LAG_SECONDS,
    federation::PENDING_CHANGES,
    federation::PUSHES,
    federation::PUSH_BYTES,
    federation::MERGED,
    federation::REFUSED,
    federation::CONFLICTS,
    federation::DIGESTS,
    federation::REPAIRED,
    quota::LIMIT,
    quota::USED,
    quota::RUNNING,
    quota::REJECTIONS,
    location::STATE,
    location::WEIGHT,
    location::EVACUATION,
    location::ACTIONS,
    capacity::CAPACITY,
    capacity::STRANDED,
    application::INSTANCES,
    application::TASKS,
    application::PENDING,
    application::RESTARTS,
    application::AGENTS,
    application::LEASE,
    fleet::DESIRED,
    fleet::INSTANCES,
    fleet::MAX,
    fleet::SHORTFALL,
    fleet::IDLE,
    fleet::FORECAST,
    fleet::DECISIONS,
    fleet::LAUNCHES,
    fleet::TERMINATIONS,
    fleet::ERRORS,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_every_one_registers() {
        let mut names: Vec<&str> = ALL.iter().map(|d| d.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a name twice in the catalogue");
        assert!(names.iter().all(|n| n.starts_with("titan_")));
        let registry = Registry::new();
        let r = registrar(&registry, "dc1", 1);
        for d in ALL {
            let registered = match (d.kind, d.labels.is_empty()) {
                (titan_api::metrics::Kind::Gauge, false) if d.name.ends_with("_seconds") => {
                    r.float_gauge_vec(d).map(drop)
                }
                (titan_api::metrics::Kind::Counter, true) => r.counter(d).map(drop),
                (titan_api::metrics::Kind::Counter, false) => r.counter_vec(d).map(drop),
                (titan_api::metrics::Kind::Gauge, true) => r.gauge(d).map(drop),
                (titan_api::metrics::Kind::Gauge, false) => r.gauge_vec(d).map(drop),
                (titan_api::metrics::Kind::Histogram(_), true) => r.histogram(d).map(drop),
                (titan_api::metrics::Kind::Histogram(_), false) => r.histogram_vec(d).map(drop),
            };
            registered.unwrap_or_else(|e| panic!("{}: {e}", d.name));
        }
    }
}
