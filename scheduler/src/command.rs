//! The cell's log format: every change to its replicated state is one `Command`, committed through Raft and
//! applied by `state` on every member; `Response` is what applying one answers.
//!
//! These are stored types, the scheduler's own: entries written by any earlier build must still decode. Variants
//! are only ever added, never changed; a new field is optional with a default that means what entries without it
//! meant. Job specs travel as `spec::Spec`, converted from the REST contract's type at the edge.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use titan_api::agent::AgentState;
use titan_api::task::{Reason, TaskHealth, TaskState, TaskStatus};
use titan_api::view::JobRef;

use crate::spec::Spec;

/// Who made a change, why, and when (stamped by the member that proposed it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub who: String,
    pub why: Option<String>,
    pub at_ms: u64,
    /// Unique per proposal: a command re-proposed after an ambiguous failure (the first may have committed after
    /// all) is answered from the first application instead of applied twice. Empty: no deduplication.
    #[serde(default)]
    pub request: String,
    /// The cell whose member proposed it: the origin of the versions its writes get. Empty in entries from before
    /// federation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cell: String,
}

/// A change to the cell's state, as committed in the Raft log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    PutJob {
        id: String,
        spec: Arc<Spec>,
        idempotency_key: Option<String>,
        meta: Meta,
    },
    UpdateJob {
        id: String,
        spec: Arc<Spec>,
        if_version: Option<u64>,
        meta: Meta,
    },
    SetInstances {
        id: String,
        instances: BTreeMap<String, u32>,
        if_version: Option<u64>,
        meta: Meta,
    },
    SetEnabled {
        id: String,
        enabled: bool,
        meta: Meta,
    },
    KillJob {
        id: String,
        meta: Meta,
    },
    /// Several commands committed as one entry (proposal batching); applied in order, answered one by one.
    Batch(Vec<Command>),
    /// An agent registers or re-registers: its lease epoch goes up by one.
    RegisterAgent {
        registration: Box<crate::agent::Registration>,
        meta: Meta,
    },
    /// The leader's decisions of one scheduling round, re-validated as they apply.
    Round {
        round: Box<Round>,
        meta: Meta,
    },
    /// What an agent observed of its tasks, under the lease epoch it holds.
    TaskStatuses {
        agent: String,
        lease_epoch: u64,
        statuses: Vec<Status>,
        meta: Meta,
    },
    /// A user asks for one task to stop.
    KillTask {
        id: String,
        meta: Meta,
    },
    /// An operator drains an agent (`Draining`) or puts it back to work (`Active`).
    SetAgentState {
        id: String,
        state: AgentState,
        meta: Meta,
    },
    /// Jobs another cell pushed (federation): merged register by register, the higher version winning; the
    /// sender's outbox is then merged up to `upto`. Versions more than `max_skew_ms` ahead of `meta.at_ms` (the
    /// receiving member's time, decided before proposing) are refused.
    Merge {
        from: String,
        upto: u64,
        jobs: Vec<crate::federation::ReplicatedJob>,
        max_skew_ms: u64,
        /// How long a kill's tombstone is kept: an older one not held here is not taken in (0: no limit).
        #[serde(default)]
        tombstone_ms: u64,
        meta: Meta,
        /// Quotas, each one register.
        #[serde(default)]
        quotas: Vec<crate::quota::ReplicatedQuota>,
        /// Locations' lever records, each one register.
        #[serde(default)]
        locations: Vec<crate::location::LocationRecord>,
        /// API tokens, each one register.
        #[serde(default)]
        tokens: Vec<crate::token::TokenRecord>,
    },
    /// Sets a capacity group's quota, every location at once.
    PutQuota {
        group: String,
        locations: std::collections::BTreeMap<String, crate::quota::Limits>,
        if_version: Option<u64>,
        meta: Meta,
    },
    /// Removes a group's quota: no limit anywhere.
    DeleteQuota {
        group: String,
        if_version: Option<u64>,
        meta: Meta,
    },
    /// Pulls a lever on a location (freeze, evacuate with its plan, restore, a weight, a move completed); whether
    /// it may be pulled is decided as it applies, against the location's state then.
    Lever {
        location: String,
        lever: crate::location::Lever,
        meta: Meta,
    },
    /// The autoscaler's record of an instance group: demand samples (minute, slots) for its policy's history, kept
    /// in the replicated state so a new leader's policy knows the past, and a decision that acted, for the events.
    Fleet {
        group: String,
        samples: Vec<(u64, u32)>,
        decision: Option<FleetDecision>,
        meta: Meta,
        /// A fleet call that failed (kind: message), for the events.
        #[serde(default)]
        error: Option<String>,
    },
    /// Creates an API token: one register, replicated to every cell. Refused if the name is taken.
    PutToken {
        record: crate::token::TokenRecord,
        meta: Meta,
    },
    /// Revokes a token: a newer write of its register, kept so that every cell learns of it.
    RevokeToken {
        name: String,
        meta: Meta,
    },
}

/// A decision of the autoscaler that acted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetDecision {
    pub desired: u32,
    /// up or down.
    pub direction: String,
    pub reason: String,
    pub actions: Vec<String>,
}

/// A task the reconciler wants: a new one (attempt 0) or the replacement of a terminal one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTask {
    pub id: String,
    pub job_id: String,
    pub attempt: u32,
    pub replaces: Option<String>,
    pub retries_used: u32,
    /// For a scheduled job: the run (tick, ms) the task belongs to.
    #[serde(default)]
    pub run: Option<u64>,
}

impl NewTask {
    /// A first task (not a replacement), of run `run` for a scheduled job.
    pub fn fresh(id: String, job_id: &str, run: Option<u64>) -> NewTask {
        NewTask { id, job_id: job_id.to_string(), attempt: 0, replaces: None, retries_used: 0, run }
    }
}

/// A scheduled job's tick: a new run starts, or is skipped because the previous one is still going.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    pub job_id: String,
    pub at_ms: u64,
    pub start: bool,
}

/// A placement of an Accepted task on an agent, at the agent's lease epoch, with its ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub task_id: String,
    pub agent: String,
    pub lease_epoch: u64,
    pub ports: Vec<u16>,
}

/// Everything one scheduling round decided. Applied in field order: new tasks, placements, stops, losses,
/// then agents' reachability.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Round {
    /// Scheduled jobs' ticks, applied first.
    #[serde(default)]
    pub ticks: Vec<Tick>,
    pub create: Vec<NewTask>,
    pub place: Vec<Placed>,
    /// Tasks to stop, and why.
    pub stop: Vec<(String, Reason)>,
    /// Tasks declared lost, and why.
    pub lose: Vec<(String, Reason)>,
    /// Agents whose lease expired.
    pub unreachable: Vec<String>,
    /// Agents heard from again.
    pub reachable: Vec<String>,
    /// Draining agents with nothing left on them.
    #[serde(default)]
    pub drained: Vec<String>,
    /// Ended tasks past their retention that nothing needs any more: dropped from the state.
    #[serde(default)]
    pub forget: Vec<String>,
    /// Killed jobs past their tombstone's retention with no task left: dropped from the state.
    #[serde(default)]
    pub forget_jobs: Vec<String>,
}

impl Round {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.ticks.is_empty()
            && self.place.is_empty()
            && self.stop.is_empty()
            && self.lose.is_empty()
            && self.unreachable.is_empty()
            && self.reachable.is_empty()
            && self.drained.is_empty()
            && self.forget.is_empty()
            && self.forget_jobs.is_empty()
    }
}

/// What a round did: counts, and the placements refused at apply time with why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundOutcome {
    pub created: u32,
    pub placed: u32,
    pub refused: Vec<(String, String)>,
    /// Killed jobs dropped past their tombstone's retention.
    #[serde(default)]
    pub jobs_forgotten: u32,
}

impl Command {
    /// Who, why and when, for every command but a batch.
    pub fn meta(&self) -> Option<&Meta> {
        match self {
            Command::PutJob { meta, .. }
            | Command::UpdateJob { meta, .. }
            | Command::SetInstances { meta, .. }
            | Command::SetEnabled { meta, .. }
            | Command::KillJob { meta, .. }
            | Command::RegisterAgent { meta, .. }
            | Command::Round { meta, .. }
            | Command::TaskStatuses { meta, .. }
            | Command::KillTask { meta, .. }
            | Command::SetAgentState { meta, .. }
            | Command::Merge { meta, .. }
            | Command::PutQuota { meta, .. }
            | Command::DeleteQuota { meta, .. }
            | Command::Lever { meta, .. }
            | Command::Fleet { meta, .. }
            | Command::PutToken { meta, .. }
            | Command::RevokeToken { meta, .. } => Some(meta),
            Command::Batch(_) => None,
        }
    }
}

/// Why a command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    NotFound {
        id: String,
    },
    VersionMismatch {
        id: String,
        expected: u64,
        current: u64,
    },
    Killed {
        id: String,
    },
    /// The key was used before for a different spec.
    IdempotencyKeyReused {
        key: String,
    },
    TaskNotFound {
        id: String,
    },
    /// The task already ended.
    TaskTerminal {
        id: String,
        state: TaskState,
    },
    AgentNotFound {
        id: String,
    },
    /// A report under a lease epoch that is no longer the agent's.
    StaleEpoch {
        agent: String,
        given: u64,
        current: u64,
    },
    /// The write would take its group over a location's quota.
    QuotaExceeded(crate::quota::Exceeded),
    QuotaNotFound {
        group: String,
    },
    QuotaVersionMismatch {
        group: String,
        expected: u64,
        current: u64,
    },
    /// The lever may not be pulled from the location's current state.
    LeverIllegal(crate::location::Illegal),
    /// A write would raise a count in a location whose lever freezes counts.
    LocationFrozen {
        location: String,
        state: crate::location::LeverState,
    },
    TokenExists {
        name: String,
    },
    TokenNotFound {
        name: String,
    },
    /// Revoking it would leave no admin token that works: nobody could make tokens any more.
    LastAdminToken {
        name: String,
    },
}

/// What applying a command answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Job(JobRef),
    Rejected(Rejection),
    /// The answers to a `Command::Batch`, in its order.
    Batch(Vec<Response>),
    /// An agent's registration took effect at this lease epoch.
    Agent {
        id: String,
        lease_epoch: u64,
    },
    Round(RoundOutcome),
    /// How many of an agent's statuses changed a task, and how many were stale.
    Statuses {
        applied: u32,
        ignored: u32,
    },
    Task {
        id: String,
    },
    /// What a merge of another cell's jobs did.
    Merged(MergeOutcome),
    /// Blank and membership entries.
    None,
    /// A quota write took effect: the group's quota is at this version (0: deleted).
    Quota {
        group: String,
        version: u64,
    },
    /// A lever took effect: the location is in this state, at this version.
    Location {
        name: String,
        state: crate::location::LeverState,
        version: u64,
    },
    /// A token write took effect.
    Token {
        name: String,
    },
}

/// What an agent observed of one task, as log entries carry it: owned here, in the shape entries have always had,
/// converted from the REST form at the edge. The state names, reasons and health are the wire's enums, whose
/// serialized names are part of the API and never change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub task_id: String,
    pub state: TaskState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default = "unknown_health")]
    pub health: TaskHealth,
    /// When the agent saw it (its clock).
    pub at_ms: u64,
}

fn unknown_health() -> TaskHealth {
    TaskHealth::Unknown
}

impl From<TaskStatus> for Status {
    fn from(s: TaskStatus) -> Status {
        let TaskStatus { task_id, state, reason, message, exit_code, health, at_ms } = s;
        Status { task_id, state, reason, message, exit_code, health, at_ms }
    }
}

/// What merging one pushed batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeOutcome {
    /// Jobs where at least one register took the incoming write.
    pub changed: u32,
    /// Jobs that changed nothing here (already as new, or newer).
    pub unchanged: u32,
    /// Jobs refused, with why (a version too far ahead).
    pub refused: Vec<(String, String)>,
    /// How far this cell has now merged the sender's outbox.
    pub position: u64,
    /// Registers whose incoming write lost to a newer one here from another cell (last writer wins).
    #[serde(default)]
    pub conflicts: u32,
}
