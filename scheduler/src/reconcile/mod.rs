//! The reconciler: what the cell should do next, decided from its state, the leader's view of agent heartbeats
//! and the time. Pure: no IO, no clock, no randomness (new task ids come from the caller), so every rule is
//! tested directly and the async loop around it (`scheduling`) only gathers inputs and commits the answer.
//!
//! One round decides, in order: which agents went silent or came back; which of their tasks are lost (rate
//! limited, and not at all while the breaker is open); which tasks are stuck; then, job by job, the tasks to
//! create (new or replacing terminal ones, after a backoff) and to stop (scale-down, disable, kill, unhealthy);
//! and last, through fenzo, where the Accepted tasks go.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::spec::{JobType, Overlap, Spec};
use fenzo::{Pending, PlacementConfig, TaskRequest};
use titan_api::task::{Reason, TaskHealth, TaskState};
use titan_api::view::JobState;

use crate::command::{NewTask, Placed, Round};
pub use crate::config::SchedulerConfig;
use crate::placement;
use crate::state::CellState;
use crate::task::TaskRecord;

mod job_round;
mod lost;
mod placing;
#[cfg(test)]
mod tests;

use job_round::*;
pub use lost::may_run_beside;
use lost::*;
use placing::*;

/// What the leader knows that is not in the replicated state.
#[derive(Clone, Debug, Default)]
pub struct Observed<'a> {
    pub now_ms: u64,
    /// When this member became leader: no agent is judged silent before a full lease has passed since.
    pub leader_since_ms: u64,
    /// When the leader last heard from each agent; `None`: leases are not checked this round (the leader checks
    /// them every tenth of a lease, not in every round), so no agent changes reachability and none is lost.
    pub heartbeats: Option<&'a HashMap<String, crate::lease::Heard>>,
    /// Agents declared lost in the last minute.
    pub lost_last_minute: u32,
    /// Whether to try again the Accepted tasks that did not fit before (capacity may have changed since); when
    /// false, only this round's new tasks are placed.
    pub retry_pending: bool,
    /// Only these jobs changed since the last round: the others are left alone. `None`: look at every job
    /// (timers, backoffs, cron ticks and retention need that now and then).
    pub jobs: Option<&'a BTreeSet<String>>,
    /// The other locations' figures, as federation heartbeats last brought them (for evacuation moves).
    pub elsewhere: Seen<'a>,
}

/// The other locations' running figures (none heard by default).
#[derive(Clone, Copy)]
pub struct Seen<'a>(pub &'a dyn crate::location::Elsewhere);

impl Default for Seen<'_> {
    fn default() -> Self {
        Seen(&crate::location::Nowhere)
    }
}

impl std::fmt::Debug for Seen<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seen")
    }
}

/// A round's decisions, and what the loop reports about them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub round: Round,
    /// Agents whose tasks this round declares lost.
    pub lost_agents: Vec<String>,
    /// Silent agents beyond the breaker's share: nothing is lost while it is open.
    pub breaker_open: bool,
    /// Why Accepted tasks stay unplaced, by task id.
    pub pending: BTreeMap<String, String>,
    /// fenzo's statistics for the round's placement.
    pub placement: Option<fenzo::PlacementStats>,
    /// More tasks waited than one round places: the rest are tried next round whatever happens.
    pub truncated: bool,
    /// Replacements of tasks that failed on an agent, placed this round.
    pub retries_placed: RetriesPlaced,
}

/// Where replacements of tasks that failed on an agent went: elsewhere, or back to an agent where one failed
/// (nothing else fitted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetriesPlaced {
    pub elsewhere: u32,
    pub where_failed: u32,
}

/// Decides one round. `new_id` names new tasks.
pub fn reconcile(
    state: &CellState,
    cell: &str,
    seen: &Observed<'_>,
    config: &SchedulerConfig,
    new_id: &mut dyn FnMut() -> String,
) -> Decision {
    let mut d = Decision::default();
    let lost: BTreeMap<String, (u64, u64)> = agents(state, seen, config, &mut d);
    let mut doomed: BTreeSet<String> = BTreeSet::new();
    for (agent, &(quiet, lease)) in &lost {
        for t in state.tasks_on_agent(agent).filter(|t| overdue(state, t, quiet, lease, config)) {
            d.round.lose.push((t.id.clone(), Reason::AgentLost));
            doomed.insert(t.id.clone());
        }
    }
    let mut stuck = Vec::new();
    for t in state.transient_tasks().filter(|t| !doomed.contains(&t.id)) {
        let limit = match t.state {
            TaskState::Assigned => config.assigned_timeout_ms,
            TaskState::Starting => config.starting_timeout_ms,
            TaskState::Killing => config.killing_timeout_ms,
            _ => continue,
        };
        if seen.now_ms.saturating_sub(t.updated_at_ms) > limit {
            stuck.push(t.id.clone());
        }
    }
    for id in stuck {
        d.round.lose.push((id.clone(), Reason::StuckTimeout));
        doomed.insert(id);
    }
    let draining = state.agents().any(|a| a.state == titan_api::agent::AgentState::Draining);
    let every: Box<dyn Iterator<Item = &crate::state::JobRecord>> = match seen.jobs {
        Some(ids) => Box::new(ids.iter().filter_map(|id| state.job(id))),
        None => Box::new(state.jobs()),
    };
    for job in every {
        let sets = state.job_tasks(&job.id);
        if sets.is_none_or(|s| s.live.is_empty() && s.open.is_empty()) && job.state != JobState::Enabled {
            continue;
        }
        let target = crate::desired::count(state, job, cell, seen.elsewhere.0) as usize;
        let why = if job.state == JobState::Killed { Reason::KilledByUser } else { Reason::ScaledDown };
        let empty = crate::state::JobTasks::default();
        let sets = sets.unwrap_or(&empty);
        let scheduled = job.spec.schedule.is_some();
        if scheduled && job.state == JobState::Enabled && tick(state, job, sets, target, seen.now_ms, new_id, &mut d) {
            continue;
        }
        // A scheduled job has work only between a run's start and its end.
        let target = if scheduled && job.current_run.is_none() { 0 } else { target };
        let round = JobRound {
            state,
            job_id: &job.id,
            spec: &job.spec,
            target,
            why,
            sets,
            doomed: &doomed,
            draining,
            run: job.current_run,
            scheduled,
            spec_version: job.spec_version,
        };
        round.run(seen.now_ms, config, new_id, &mut d);
    }
    if seen.jobs.is_none() {
        forget(state, seen.now_ms, config, &mut d);
    }
    for a in state.agents().filter(|a| a.state == titan_api::agent::AgentState::Draining) {
        let id = &a.registration.id;
        if state.tasks_on_agent(id).next().is_none() {
            d.round.drained.push(id.clone());
        }
    }
    place(state, cell, config, seen.retry_pending, &mut d);
    d
}

/// Most ended tasks dropped in one round.
const MAX_FORGET_PER_ROUND: usize = 10_000;

/// Ended tasks past their retention that nothing needs: replaced ones, scaled-away ones, and any of a killed job.
/// Those that still count toward their job (completed batch tasks, exhausted retries) are kept.
fn forget(state: &CellState, now_ms: u64, config: &SchedulerConfig, d: &mut Decision) {
    let horizon = now_ms.saturating_sub(config.task_retention_ms);
    for t in state.ended_before(horizon) {
        if d.round.forget.len() == MAX_FORGET_PER_ROUND {
            break;
        }
        let needed = match state.job(&t.job_id) {
            None => false,
            Some(j) if j.state == JobState::Killed => false,
            Some(_) if t.replaced_by.is_some() => false,
            Some(j) => {
                let stale_run = j.spec.schedule.is_some() && t.run != j.current_run;
                !stale_run && after(t, &j.spec, config) != After::Gone
            }
        };
        if !needed {
            d.round.forget.push(t.id.clone());
        }
    }
    d.round.forget_jobs = state.forgettable_jobs(now_ms, config.tombstone_retention_ms, MAX_FORGET_PER_ROUND);
}
