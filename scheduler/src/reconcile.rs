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

/// What the leader knows that is not in the replicated state.
#[derive(Clone, Debug, Default)]
pub struct Observed<'a> {
    pub now_ms: u64,
    /// When this member became leader: no agent is judged silent before a full lease has passed since.
    pub leader_since_ms: u64,
    /// When the leader last heard from each agent.
    pub heartbeats: Option<&'a HashMap<String, u64>>,
    /// Agents declared lost in the last minute.
    pub lost_last_minute: u32,
    /// Whether to try again the Accepted tasks that did not fit before (capacity may have changed since); when
    /// false, only this round's new tasks are placed.
    pub retry_pending: bool,
    /// Only these jobs changed since the last round: the others are left alone. `None`: look at every job
    /// (timers, backoffs, cron ticks and retention need that now and then).
    pub jobs: Option<&'a BTreeSet<String>>,
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
    let lost: BTreeMap<String, u64> = agents(state, seen, config, &mut d);
    let mut doomed: BTreeSet<String> = BTreeSet::new();
    for (agent, &quiet) in &lost {
        for t in state.tasks_on_agent(agent).filter(|t| overdue(state, t, quiet, config)) {
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
        let target = crate::desired::count(job, cell) as usize;
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
    place(state, config, seen.retry_pending, &mut d);
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
}

/// Most missed ticks a scheduled job catches up on at once: only the latest due one runs.
const MAX_MISSED_TICKS: usize = 10_000;

/// A scheduled job's tick, when one is due: starts a run of `target` tasks (stopping the previous run's tasks
/// under `replace`), or records it skipped (`skip`, previous run still going). True when it decided the job's
/// round.
fn tick(
    state: &CellState,
    job: &crate::state::JobRecord,
    sets: &crate::state::JobTasks,
    target: usize,
    now_ms: u64,
    new_id: &mut dyn FnMut() -> String,
    d: &mut Decision,
) -> bool {
    let Some(cron) = job.spec.schedule.as_deref().and_then(|s| titan_api::cron::Cron::parse(s).ok()) else {
        return false;
    };
    let since = job.last_tick_ms.unwrap_or(job.created_at_ms);
    let Some(mut due) = cron.next_after(since).filter(|t| *t <= now_ms) else { return false };
    // Ticks missed while no leader ran collapse into the latest one.
    for _ in 0..MAX_MISSED_TICKS {
        match cron.next_after(due) {
            Some(next) if next <= now_ms => due = next,
            _ => break,
        }
    }
    let previous: Vec<&TaskRecord> =
        sets.live.iter().filter_map(|id| state.task(id)).filter(|t| t.run == job.current_run).collect();
    let replace = job.spec.overlap == Some(Overlap::Replace);
    if !previous.is_empty() && !replace {
        d.round.ticks.push(crate::command::Tick { job_id: job.id.clone(), at_ms: due, start: false });
        return true;
    }
    for t in previous {
        d.round.stop.push((t.id.clone(), Reason::ScaledDown));
    }
    d.round.ticks.push(crate::command::Tick { job_id: job.id.clone(), at_ms: due, start: true });
    for _ in 0..target {
        d.round.create.push(NewTask::fresh(new_id(), &job.id, Some(due)));
    }
    true
}

/// Whether a task on an agent silent for `quiet` ms is to be declared lost: its job's grace has passed.
fn overdue(state: &CellState, t: &TaskRecord, quiet: u64, config: &SchedulerConfig) -> bool {
    quiet > config.lose_after_ms(state.job(&t.job_id).map(|j| &*j.spec))
}

/// The unreachable original a live replacement `t` may run beside: its predecessor, lost with an agent that is
/// still unreachable, of a job that does not stop its tasks on a disconnect. That agent, once back, stops what
/// the cell no longer lists; until then both may run.
pub fn may_run_beside(state: &CellState, t: &TaskRecord) -> Option<String> {
    if t.is_terminal() {
        return None;
    }
    let original = state.task(t.replaces.as_deref()?)?;
    if original.state != TaskState::Lost || original.reason != Some(Reason::AgentLost) {
        return None;
    }
    if state.job(&t.job_id).is_some_and(|j| j.spec.disconnect.is_some()) {
        return None;
    }
    let agent = state.agent(original.agent.as_deref()?)?;
    (!agent.reachable).then(|| original.id.clone())
}

/// Agents that went silent, came back, or have tasks to be declared lost now (returned, with how long each has
/// been silent).
fn agents(state: &CellState, seen: &Observed<'_>, config: &SchedulerConfig, d: &mut Decision) -> BTreeMap<String, u64> {
    let mut silent = 0usize;
    let mut total = 0usize;
    let mut due: Vec<(u64, String, u64)> = Vec::new();
    for a in state.agents() {
        let id = &a.registration.id;
        total += 1;
        let heard = seen.heartbeats.and_then(|h| h.get(id)).copied().unwrap_or(0).max(seen.leader_since_ms);
        let quiet = seen.now_ms.saturating_sub(heard);
        if quiet <= config.lease_ms {
            if !a.reachable {
                d.round.reachable.push(id.clone());
            }
            continue;
        }
        silent += 1;
        if a.reachable {
            d.round.unreachable.push(id.clone());
        }
        if quiet > config.lease_ms + config.lost_grace_ms
            && state.tasks_on_agent(id).any(|t| overdue(state, t, quiet, config))
        {
            due.push((heard, id.clone(), quiet));
        }
    }
    // A few silent agents are failures; many at once are more likely a partition between them and us. One alone
    // is never a partition.
    d.breaker_open = silent > 1 && silent as f64 > config.breaker_fraction * total as f64;
    if d.breaker_open {
        return BTreeMap::new();
    }
    due.sort();
    let allowed = config.max_lost_agents_per_minute.saturating_sub(seen.lost_last_minute) as usize;
    let lost: BTreeMap<String, u64> = due.into_iter().take(allowed).map(|(_, id, quiet)| (id, quiet)).collect();
    d.lost_agents = lost.keys().cloned().collect();
    lost
}

/// What to do with a task that ended (or is being stopped) and has not been replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum After {
    /// Replace it once `not_before_ms` has passed, with `retries_used` user failures spent.
    Retry { not_before_ms: u64, retries_used: u32 },
    /// It counts as one of the job's instances, done.
    Done,
    /// It does not count (scaled down).
    Gone,
}

fn after(t: &TaskRecord, spec: &Spec, config: &SchedulerConfig) -> After {
    // Tasks that died with their agent, or were moved or killed on purpose, are replaced at once; anything that
    // could fail again the same way (a crash, a launch error, a stuck start) waits, longer each attempt.
    let at_once = matches!(
        t.reason,
        Some(
            Reason::AgentLost
                | Reason::AgentRestarted
                | Reason::Drained
                | Reason::KilledByUser
                | Reason::Duplicate
                | Reason::Superseded
                | Reason::Disconnected
        )
    );
    let not_before_ms = t.updated_at_ms + if at_once { 0 } else { config.backoff_ms(t.attempt) };
    let retry = |retries_used| After::Retry { not_before_ms, retries_used };
    let user_failure = || {
        if spec.restart_on_failure && t.retries_used < spec.num_retries {
            retry(t.retries_used + 1)
        } else {
            After::Done
        }
    };
    let batch = spec.job_type == JobType::Batch;
    match (t.state, t.reason) {
        // A task being stopped, or stopped, on purpose: by reason, whatever its state.
        (_, Some(Reason::ScaledDown)) => After::Gone,
        (_, Some(Reason::KilledByUser)) if batch => After::Done,
        (_, Some(Reason::Unhealthy)) => user_failure(),
        (TaskState::Finished, _) if !batch && spec.restart_on_success => retry(t.retries_used),
        (TaskState::Finished, _) => After::Done,
        (_, Some(r)) if r.is_system() || r == Reason::KilledByUser => retry(t.retries_used),
        (TaskState::Failed, _) => user_failure(),
        _ => user_failure(),
    }
}

/// One job's part of a round.
struct JobRound<'a> {
    state: &'a CellState,
    job_id: &'a str,
    spec: &'a Spec,
    target: usize,
    /// Why surplus tasks are stopped (scaled down, or the job killed).
    why: Reason,
    sets: &'a crate::state::JobTasks,
    doomed: &'a BTreeSet<String>,
    /// Whether any agent is draining (only then are live tasks looked at one by one for it).
    draining: bool,
    /// For a scheduled job, the run whose tasks count (others are ignored).
    run: Option<u64>,
    scheduled: bool,
    /// Tasks made from an older job version than this are rolled over.
    spec_version: u64,
}

impl JobRound<'_> {
    /// A task of the job that counts this round: for a scheduled job, one of the current run.
    fn task(&self, id: &str) -> Option<&TaskRecord> {
        self.state.task(id).filter(|t| !self.scheduled || t.run == self.run)
    }

    fn run(&self, now_ms: u64, config: &SchedulerConfig, new_id: &mut dyn FnMut() -> String, d: &mut Decision) {
        let (spec, target) = (self.spec, self.target);
        let mut done = 0usize;
        let mut retries: Vec<(&TaskRecord, u64, u32)> = Vec::new();
        // Lost this round: replaced (and linked to) in the next round, so they hold their place until then.
        let mut held = 0usize;
        let mut live = 0usize;
        for id in self.sets.live.iter().filter(|id| !self.scheduled || self.task(id).is_some()) {
            if self.doomed.contains(id) {
                held += 1;
            } else {
                live += 1;
            }
        }
        for t in self.sets.open.iter().filter_map(|id| self.task(id)) {
            // A task being stopped for a reason that calls for a replacement gets it now (make before break).
            match after(t, spec, config) {
                // Lost this round: its replacement comes next round, linked to it.
                After::Retry { .. } if self.doomed.contains(&t.id) => held += 1,
                After::Retry { not_before_ms, retries_used } => retries.push((t, not_before_ms, retries_used)),
                After::Done => done += 1,
                After::Gone => {}
            }
        }
        let wanted = target.saturating_sub(done);
        let stop = |d: &mut Decision, id: &str, reason: Reason, stopped: &mut BTreeSet<String>| {
            d.round.stop.push((id.to_string(), reason));
            stopped.insert(id.to_string());
        };
        let mut stopped: BTreeSet<String> = BTreeSet::new();
        // Unhealthy running tasks of a service are stopped; their replacement spends a retry.
        if spec.job_type == JobType::Service {
            for t in self.sets.unhealthy.iter().filter_map(|id| self.task(id)) {
                if t.state == TaskState::Running && !self.doomed.contains(&t.id) {
                    // Replaced next round (linked, spending a retry): it holds its place until then.
                    stop(d, &t.id, Reason::Unhealthy, &mut stopped);
                    live -= 1;
                    held += 1;
                }
            }
        }
        // Voluntary disruptions (drains, rolling updates) share the job's budget: at most that many of its
        // instances unavailable at once.
        let mut cached: Option<usize> = None;
        let mut allowance = |this: &Self, stopped: &BTreeSet<String>| -> usize {
            *cached.get_or_insert_with(|| {
                let available = this
                    .sets
                    .live
                    .iter()
                    .filter(|id| !this.doomed.contains(*id) && !stopped.contains(*id))
                    .filter_map(|id| this.task(id))
                    .filter(|t| t.state == TaskState::Running && t.health != TaskHealth::Unhealthy)
                    .count();
                budget(spec, target).saturating_sub(target.saturating_sub(available))
            })
        };
        let mut spent = 0usize;
        // Tasks on draining agents move, as many at a time as the job's disruption budget allows; those not
        // running yet cost nothing to move.
        if self.draining {
            let on_draining = |t: &TaskRecord| {
                t.agent
                    .as_ref()
                    .and_then(|a| self.state.agent(a))
                    .is_some_and(|a| a.state == titan_api::agent::AgentState::Draining)
            };
            let allowed = allowance(self, &stopped);
            let mut moving: Vec<&TaskRecord> = self
                .sets
                .live
                .iter()
                .filter(|id| !self.doomed.contains(*id) && !stopped.contains(*id))
                .filter_map(|id| self.task(id))
                .filter(|t| on_draining(t))
                .collect();
            moving.sort_by_key(|t| (t.state == TaskState::Running, t.id.clone()));
            for t in moving {
                if t.state == TaskState::Running {
                    if spent == allowed {
                        break;
                    }
                    spent += 1;
                }
                stop(d, &t.id, Reason::Drained, &mut stopped);
                live -= 1;
                held += 1;
            }
        }
        // A rolling update: tasks made from an older version of a service's spec are replaced, oldest first,
        // within the same budget. Batch tasks run to their end on the version they started with.
        let outdated = |t: &(u64, String)| t.0 < self.spec_version;
        if spec.job_type == JobType::Service && self.sets.live_by_version.first().is_some_and(outdated) {
            let allowed = allowance(self, &stopped);
            let mut rolling: Vec<&TaskRecord> = self
                .sets
                .live_by_version
                .iter()
                .take_while(|t| outdated(t))
                .filter(|(_, id)| !self.doomed.contains(id) && !stopped.contains(id))
                .filter_map(|(_, id)| self.task(id))
                .collect();
            rolling.sort_by_key(|t| (t.state == TaskState::Running, t.job_version, t.id.clone()));
            for t in rolling {
                if t.state == TaskState::Running {
                    if spent == allowed {
                        break;
                    }
                    spent += 1;
                }
                stop(d, &t.id, Reason::Superseded, &mut stopped);
                live -= 1;
                held += 1;
            }
        }
        if live + held > wanted {
            let mut victims: Vec<&TaskRecord> = self
                .sets
                .live
                .iter()
                .filter(|id| !self.doomed.contains(*id) && !stopped.contains(*id))
                .filter_map(|id| self.task(id))
                .collect();
            victims.sort_by_key(|t| victim_rank(self.state, t));
            for t in victims.into_iter().take(live + held - wanted) {
                d.round.stop.push((t.id.clone(), self.why));
            }
            return;
        }
        let mut missing = wanted - live - held;
        retries.sort_by_key(|(t, at, _)| (*at, t.id.clone()));
        for (t, not_before_ms, retries_used) in retries {
            if missing == 0 {
                break;
            }
            missing -= 1;
            if now_ms >= not_before_ms {
                d.round.create.push(NewTask {
                    id: new_id(),
                    job_id: self.job_id.to_string(),
                    attempt: t.attempt + 1,
                    replaces: Some(t.id.clone()),
                    retries_used,
                    run: self.run,
                });
            }
        }
        for _ in 0..missing {
            d.round.create.push(NewTask::fresh(new_id(), self.job_id, self.run));
        }
    }
}

/// How many of a job's `target` tasks voluntary disruptions may take down at once: its budget, or one in ten
/// (at least one) when it has none.
fn budget(spec: &Spec, target: usize) -> usize {
    match &spec.disruption_budget {
        Some(b) => match (b.max_unavailable, b.max_unavailable_percent) {
            (Some(n), _) => n as usize,
            (None, Some(p)) => (target * p as usize / 100).max(1),
            (None, None) => 1,
        },
        None => (target / 10).max(1),
    }
}

/// Scale-down order: tasks not placed yet, then unhealthy ones, then ones not running yet, then those on the
/// agents with the fewest tasks (their removal frees whole agents), newest first.
fn victim_rank(state: &CellState, t: &TaskRecord) -> (u8, usize, std::cmp::Reverse<u64>) {
    let class = match (t.state, t.health) {
        (TaskState::Accepted, _) => 0,
        (_, TaskHealth::Unhealthy) => 1,
        (TaskState::Unreachable, _) => 2,
        (TaskState::Assigned | TaskState::Starting, _) => 3,
        _ => 4,
    };
    let neighbours = t.agent.as_ref().map(|a| state.tasks_on_agent(a).count()).unwrap_or(0);
    (class, neighbours, std::cmp::Reverse(t.created_at_ms))
}

/// How far back a replacement chain is followed to find where a job's persistent volumes live.
const MAX_PIN_CHAIN: usize = 16;

/// A replacement of a task with persistent volumes goes where its predecessor ran, since the volumes are there;
/// unless that agent takes no work any more (lost, draining, gone), where the volume is given up for a fresh one.
fn pinned(state: &CellState, request: TaskRequest, replaces: Option<&str>, spec: &Spec) -> TaskRequest {
    if !spec.volumes.iter().any(|v| v.persistent) {
        return request;
    }
    let mut at = replaces;
    for _ in 0..MAX_PIN_CHAIN {
        let Some(t) = at.and_then(|id| state.task(id)) else { return request };
        if let Some(agent) = &t.agent {
            return match state.agent(agent) {
                Some(a) if a.takes_work() => request.constraint(fenzo::Constraint::AttributeEquals {
                    name: placement::AGENT_ATTRIBUTE.to_string(),
                    value: agent.clone(),
                }),
                _ => request,
            };
        }
        at = t.replaces.as_deref();
    }
    request
}

/// How much an agent where a task's predecessor failed loses from its score for the replacement: as much as the
/// best fit earns, so any other agent that fits is taken first (Nomad's reschedule node penalty).
const FAILED_HERE_PENALTY: f64 = 1.0;

/// Whether a task ended in a way that could repeat on the same agent: it failed there (exit, OOM, health) or the
/// agent could not start or keep it (a port held by something else, a missing image, a stuck start).
fn failed_on_its_agent(t: &TaskRecord) -> bool {
    matches!(t.state, TaskState::Failed | TaskState::Rejected)
        || matches!(
            t.reason,
            Some(
                Reason::LaunchError
                    | Reason::InsufficientResources
                    | Reason::StuckTimeout
                    | Reason::Unhealthy
                    | Reason::OomKilled
                    | Reason::Vanished
            )
        )
}

/// The agents where a task's predecessors failed (`replaces` and its own predecessors, newest first).
fn failed_agents<'a>(state: &'a CellState, replaces: Option<&'a str>) -> Vec<&'a str> {
    let mut agents: Vec<&str> = Vec::new();
    let mut at = replaces;
    for _ in 0..MAX_PIN_CHAIN {
        let Some(t) = at.and_then(|id| state.task(id)) else { break };
        if let Some(agent) = t.agent.as_deref().filter(|a| failed_on_its_agent(t) && !agents.contains(a)) {
            agents.push(agent);
        }
        at = t.replaces.as_deref();
    }
    agents
}

/// A replacement's request: where its volumes are, and preferring agents other than those where its predecessors
/// failed, so that a cause tied to one agent (a host port held outside Titan, a broken runtime) does not fail every
/// retry the same way. A preference, not a rule: when only such agents fit, the task still goes to one of them.
fn replacement(
    state: &CellState,
    mut request: TaskRequest,
    replaces: Option<&str>,
    spec: &Spec,
    avoiding: &mut HashMap<String, Vec<String>>,
) -> TaskRequest {
    let failed = failed_agents(state, replaces);
    for agent in &failed {
        let not_there = fenzo::Constraint::AttributeNotEquals {
            name: placement::AGENT_ATTRIBUTE.to_string(),
            value: agent.to_string(),
        };
        request = request.prefer(not_there, FAILED_HERE_PENALTY);
    }
    if !failed.is_empty() {
        avoiding.insert(request.id.clone(), failed.iter().map(|a| a.to_string()).collect());
    }
    pinned(state, request, replaces, spec)
}

/// Places the Accepted tasks (those in the state and those created this round) with fenzo, on the committed
/// capacity view.
fn place(state: &CellState, config: &SchedulerConfig, retry_pending: bool, d: &mut Decision) {
    let stopping: BTreeSet<&str> = d.round.stop.iter().map(|(id, _)| id.as_str()).collect();
    let mut requests: Vec<TaskRequest> = Vec::new();
    let mut avoiding: HashMap<String, Vec<String>> = HashMap::new();
    let earlier = if retry_pending { Some(state.accepted_tasks()) } else { None };
    for t in earlier.into_iter().flatten() {
        if stopping.contains(t.id.as_str()) {
            continue;
        }
        if let Some(job) = state.job(&t.job_id) {
            let r = placement::request(t, &job.spec);
            requests.push(replacement(state, r, t.replaces.as_deref(), &job.spec, &mut avoiding));
        }
    }
    for n in &d.round.create {
        if let Some(job) = state.job(&n.job_id) {
            let r = placement::request_for(&n.id, &n.job_id, &placement::ask(&job.spec), &job.spec);
            requests.push(replacement(state, r, n.replaces.as_deref(), &job.spec, &mut avoiding));
        }
    }
    if requests.is_empty() {
        return;
    }
    d.truncated = requests.len() > config.max_placements_per_round;
    requests.truncate(config.max_placements_per_round);
    let capacity = state.capacity();
    let placed = fenzo::place(capacity, &requests, &PlacementConfig::default());
    for a in placed.assignments {
        let epoch = state.agent(&a.agent_id).map(|r| r.lease_epoch).unwrap_or(0);
        if let Some(failed) = avoiding.get(&a.task_id) {
            if failed.contains(&a.agent_id) {
                d.retries_placed.where_failed += 1;
            } else {
                d.retries_placed.elsewhere += 1;
            }
        }
        d.round.place.push(Placed { task_id: a.task_id, agent: a.agent_id, lease_epoch: epoch, ports: a.ports });
    }
    for u in placed.unplaced {
        let why = match u.reason {
            Pending::Quota { group, resource } => format!("capacity group {group} is at its {resource:?} quota"),
            Pending::NoFit(e) => e.to_string(),
        };
        d.pending.insert(u.task_id, why);
    }
    d.placement = Some(placed.stats);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use titan_api::agent::{AgentRegistration, AgentResources};
    use titan_api::job::{BodyFormat, JobSpec};
    use titan_api::task::TaskStatus;

    use super::*;
    use crate::command::{Command, Meta, Response};
    use crate::state::Effects;

    const CELL: &str = "dc1";

    fn meta(at_ms: u64) -> Meta {
        Meta { who: "test".into(), why: None, at_ms, request: String::new() }
    }

    fn spec(extra: &str) -> Arc<Spec> {
        let location = if extra.contains("location") { "" } else { r#","location":"dc1:3,dc2:5""# };
        let body = format!(
            r#"{{"name":"web","applicationName":"shop"{location},"cpus":1,"memory":256,"image":"busybox"{extra}}}"#
        );
        Arc::new(Spec::from(&JobSpec::parse(body.as_bytes(), BodyFormat::Json).expect("valid spec")))
    }

    fn register(s: &mut CellState, id: &str, cpus: f64, running: Vec<String>, at: u64) -> u64 {
        register_with_effects(s, id, cpus, running, at).0
    }

    fn register_with_effects(s: &mut CellState, id: &str, cpus: f64, running: Vec<String>, at: u64) -> (u64, Effects) {
        let registration = AgentRegistration {
            id: id.into(),
            hostname: id.into(),
            addr: "127.0.0.1:1".into(),
            resources: AgentResources { cpus, memory_mib: 4096, disk_mib: 100_000, port_ranges: vec![(31000, 31999)] },
            attributes: Default::default(),
            running,
        };
        match s.apply(&Command::RegisterAgent { registration: Box::new(registration), meta: meta(at) }) {
            (Response::Agent { lease_epoch, .. }, fx) => (lease_epoch, fx),
            (other, _) => panic!("{other:?}"),
        }
    }

    struct World {
        state: CellState,
        config: SchedulerConfig,
        beats: HashMap<String, u64>,
        next: u64,
    }

    impl World {
        fn new(agents: &[(&str, f64)], job: Arc<Spec>) -> World {
            let mut state = CellState::default();
            for (id, cpus) in agents {
                register(&mut state, id, *cpus, vec![], 0);
            }
            state.apply(&Command::PutJob { id: "j1".into(), spec: job, idempotency_key: None, meta: meta(0) });
            let config = SchedulerConfig { lease_ms: 100, lost_grace_ms: 1_000, ..SchedulerConfig::default() };
            let beats = agents.iter().map(|(id, _)| (id.to_string(), 0)).collect();
            World { state, config, beats, next: 0 }
        }

        /// One round at `now`, applied; returns the decision.
        fn round(&mut self, now_ms: u64) -> Decision {
            let seen = Observed {
                now_ms,
                leader_since_ms: 0,
                heartbeats: Some(&self.beats),
                lost_last_minute: 0,
                retry_pending: true,
                jobs: None,
            };
            let mut next = self.next;
            let d = reconcile(&self.state, CELL, &seen, &self.config, &mut || {
                next += 1;
                format!("t{next:03}")
            });
            self.next = next;
            let (r, _) = self.state.apply(&Command::Round { round: Box::new(d.round.clone()), meta: meta(now_ms) });
            assert!(matches!(&r, Response::Round(o) if o.refused.is_empty()), "{r:?}");
            d
        }

        fn beat(&mut self, now_ms: u64) {
            for v in self.beats.values_mut() {
                *v = now_ms;
            }
        }

        fn report(&mut self, task: &str, state: TaskState, exit_code: Option<i64>, at: u64) -> Effects {
            let status = TaskStatus {
                task_id: task.into(),
                state,
                reason: exit_code.map(|_| Reason::Exited),
                message: None,
                exit_code,
                health: TaskHealth::Unknown,
                at_ms: at,
            };
            self.apply_status(status)
        }

        /// The task's agent reports `status` under its current epoch.
        fn apply_status(&mut self, status: TaskStatus) -> Effects {
            let agent = self.state.task(&status.task_id).and_then(|t| t.agent.clone()).expect("placed");
            let epoch = self.state.agent(&agent).map(|a| a.lease_epoch).unwrap_or(0);
            let at = status.at_ms;
            let cmd = Command::TaskStatuses { agent, lease_epoch: epoch, statuses: vec![status], meta: meta(at) };
            let (answer, fx) = self.state.apply(&cmd);
            assert_eq!(answer, Response::Statuses { applied: 1, ignored: 0 });
            fx
        }

        fn in_state(&self, state: TaskState) -> Vec<String> {
            self.state.tasks().filter(|t| t.state == state).map(|t| t.id.clone()).collect()
        }
    }

    #[test]
    fn a_snapshot_of_the_state_loads_back_to_it() {
        let mut w = World::new(&[("a1", 4.0), ("a2", 4.0)], spec(""));
        w.round(10);
        assert_eq!(w.state.tasks().count(), 3, "a state with agents, a job and placed tasks");
        let mut bytes = Vec::new();
        crate::snapshot::write(&mut bytes, &w.state.snapshot()).expect("writes");
        let back = CellState::from_snapshot(crate::snapshot::read(&bytes).expect("reads"));
        // Its derived fields are the whole state's, rebuilt the same way (the live state keeps counts that went to
        // zero, which a rebuild leaves out).
        let mut whole = w.state.clone();
        whole.reindex();
        assert_eq!(back, whole, "the derived fields come back from the replicated ones");
    }
    #[test]
    fn a_job_gets_its_count_for_this_cell_placed_and_nothing_more() {
        let mut w = World::new(&[("a1", 2.0), ("a2", 2.0)], spec(""));
        let d = w.round(10);
        assert_eq!((d.round.create.len(), d.round.place.len()), (3, 3), "dc1:3; dc2 is another cell's");
        assert_eq!(w.in_state(TaskState::Assigned).len(), 3);
        let d = w.round(20);
        assert!(d.round.is_empty(), "a second round changes nothing: {:?}", d.round);
        // Placements respect capacity: 4 cpus for 3 one-cpu tasks, at most 2 per agent.
        for a in ["a1", "a2"] {
            assert!(w.state.tasks_on_agent(a).count() <= 2);
        }
    }

    #[test]
    fn what_does_not_fit_stays_accepted_with_a_reason() {
        let mut w = World::new(&[("a1", 2.0)], spec(""));
        let d = w.round(10);
        assert_eq!((d.round.create.len(), d.round.place.len(), d.pending.len()), (3, 2, 1));
        let pending = w.in_state(TaskState::Accepted);
        assert_eq!(pending.len(), 1);
        assert!(d.pending[&pending[0]].contains("cpu"), "{:?}", d.pending);
        assert!(w.round(20).round.create.is_empty(), "the accepted task counts: no second copy");
        register(&mut w.state, "a2", 2.0, vec![], 30);
        w.beats.insert("a2".into(), 30);
        let d = w.round(40);
        assert_eq!(d.round.place.len(), 1, "placed once capacity arrives");
    }

    #[test]
    fn scale_down_stops_the_surplus_unplaced_first_and_disable_stops_all() {
        let mut w = World::new(&[("a1", 2.0)], spec(""));
        w.round(10);
        let unplaced = w.in_state(TaskState::Accepted);
        let set = |n: u32, at| Command::SetInstances {
            id: "j1".into(),
            instances: BTreeMap::from([(CELL.to_string(), n)]),
            if_version: None,
            meta: meta(at),
        };
        w.state.apply(&set(2, 20));
        let d = w.round(30);
        assert_eq!(d.round.stop, vec![(unplaced[0].clone(), Reason::ScaledDown)]);
        assert_eq!(w.state.task(&unplaced[0]).map(|t| t.state), Some(TaskState::Killed), "never placed: killed");
        w.state.apply(&Command::SetEnabled { id: "j1".into(), enabled: false, meta: meta(40) });
        let d = w.round(50);
        assert_eq!(d.round.stop.len(), 2);
        assert_eq!(w.in_state(TaskState::Killing).len(), 2, "placed tasks are killed by their agent");
        assert!(w.round(60).round.is_empty(), "killing tasks are not stopped twice");
    }

    /// The agent rejects a task (as Docker does when a host port is held by a process outside Titan).
    fn reject(w: &mut World, task: &str, at: u64) {
        w.apply_status(TaskStatus {
            task_id: task.into(),
            state: TaskState::Rejected,
            reason: Some(Reason::LaunchError),
            message: Some("Bind for 127.0.0.1:31000 failed: port is already allocated".into()),
            exit_code: None,
            health: TaskHealth::Unknown,
            at_ms: at,
        });
    }

    #[test]
    fn a_replacement_goes_to_another_agent_than_where_its_predecessors_failed_while_one_fits() {
        let mut w = World::new(&[("a1", 2.0), ("a2", 2.0), ("a3", 2.0)], spec(r#","location":"dc1:1""#));
        w.round(10);
        let first = w.in_state(TaskState::Assigned)[0].clone();
        let first_agent = w.state.task(&first).and_then(|t| t.agent.clone()).expect("placed");
        reject(&mut w, &first, 20);
        let mut at = 20 + w.config.backoff_ms(0);
        w.beat(at);
        let d = w.round(at);
        let second = &d.round.create[0].id;
        let second_agent = d.round.place.iter().find(|p| &p.task_id == second).map(|p| p.agent.clone());
        assert!(second_agent.is_some() && second_agent.as_ref() != Some(&first_agent), "{second_agent:?}");
        assert_eq!(d.retries_placed, RetriesPlaced { elsewhere: 1, where_failed: 0 });
        // Failing on the second agent too: the third goes to the one left.
        reject(&mut w, &second.clone(), at + 10);
        at += 10 + w.config.backoff_ms(1);
        w.beat(at);
        let d = w.round(at);
        let third = &d.round.create[0].id;
        let third_agent = d.round.place.iter().find(|p| &p.task_id == third).map(|p| p.agent.clone());
        let failed = [Some(first_agent.clone()), second_agent.clone()];
        assert!(third_agent.is_some() && !failed.contains(&third_agent), "{third_agent:?} after {failed:?}");
    }

    #[test]
    fn a_replacement_still_goes_where_its_predecessor_failed_when_nothing_else_fits() {
        let mut w = World::new(&[("a1", 2.0)], spec(r#","location":"dc1:1""#));
        w.round(10);
        let first = w.in_state(TaskState::Assigned)[0].clone();
        reject(&mut w, &first, 20);
        let at = 20 + w.config.backoff_ms(0);
        w.beat(at);
        let d = w.round(at);
        assert_eq!(d.round.place.len(), 1, "a preference, not a rule: {:?}", d.pending);
        assert_eq!(d.round.place[0].agent, "a1");
        assert_eq!(d.retries_placed, RetriesPlaced { elsewhere: 0, where_failed: 1 });
    }

    #[test]
    fn failures_are_retried_with_backoff_until_retries_run_out() {
        let mut w = World::new(&[("a1", 8.0)], spec(r#","location":"dc1:1","numRetries":1"#));
        w.round(10);
        let first = w.in_state(TaskState::Assigned)[0].clone();
        w.report(&first, TaskState::Running, None, 20);
        w.report(&first, TaskState::Failed, Some(3), 30);
        let backoff = w.config.backoff_ms(0);
        assert!(w.round(31).round.create.is_empty(), "waits for the backoff");
        let d = w.round(30 + backoff);
        assert_eq!(d.round.create.len(), 1);
        let second = &d.round.create[0];
        assert_eq!((second.attempt, second.replaces.as_deref(), second.retries_used), (1, Some(first.as_str()), 1));
        w.report(&second.id.clone(), TaskState::Failed, Some(3), 40 + backoff);
        let d = w.round(1_000_000);
        assert!(d.round.create.is_empty(), "numRetries 1 is spent: {:?}", d.round.create);
    }

    #[test]
    fn a_silent_agent_goes_unreachable_then_lost_and_its_tasks_are_replaced() {
        let mut w = World::new(&[("a1", 2.0), ("a2", 2.0), ("a3", 2.0), ("a4", 2.0)], spec(""));
        w.round(10);
        let on_a1: Vec<String> = w.state.tasks_on_agent("a1").map(|t| t.id.clone()).collect();
        assert!(!on_a1.is_empty());
        // Everyone but a1 keeps beating.
        let beat_others = |w: &mut World, now| {
            for a in ["a2", "a3", "a4"] {
                w.beats.insert(a.into(), now);
            }
        };
        beat_others(&mut w, 150);
        let d = w.round(150);
        assert_eq!(d.round.unreachable, vec!["a1".to_string()]);
        assert!(on_a1.iter().all(|t| w.state.task(t).map(|t| t.state) == Some(TaskState::Unreachable)));
        beat_others(&mut w, 1_200);
        let d = w.round(1_200);
        assert_eq!(d.lost_agents, vec!["a1".to_string()]);
        assert!(on_a1.iter().all(|t| w.state.task(t).map(|t| t.state) == Some(TaskState::Lost)));
        beat_others(&mut w, 1_300);
        let d = w.round(1_300);
        assert_eq!(d.round.create.len(), on_a1.len(), "replaced: a system failure, so right away");
        assert!(d.round.create.iter().all(|n| n.retries_used == 0 && n.replaces.is_some()));
        assert!(d.round.place.iter().all(|p| p.agent != "a1"), "not on the unreachable agent");
    }

    #[test]
    fn a_job_that_stops_on_disconnect_is_replaced_only_after_its_agent_stopped_it() {
        let stopping = spec(r#","location":"dc1:1","disconnect":{"stopAfterSeconds":5}"#);
        let mut w = World::new(&[("a1", 2.0)], stopping.clone());
        let plain = spec(r#","location":"dc1:1""#);
        w.state.apply(&Command::PutJob { id: "j2".into(), spec: plain, idempotency_key: None, meta: meta(0) });
        w.round(10);
        let task_of = |w: &World, job: &str| {
            w.state.tasks().find(|t| t.job_id == job && t.replaces.is_none()).map(|t| t.id.clone()).expect("created")
        };
        let (waits, plain_task) = (task_of(&w, "j1"), task_of(&w, "j2"));
        assert_eq!(w.state.task(&waits).and_then(|t| t.agent.clone()).as_deref(), Some("a1"));
        assert_eq!(w.state.task(&plain_task).and_then(|t| t.agent.clone()).as_deref(), Some("a1"));
        // Others join, where the replacements can go (three, so one silent agent is not a partition).
        for a in ["a2", "a3", "a4"] {
            register(&mut w.state, a, 2.0, vec![], 20);
        }
        let beat_others = |w: &mut World, now| {
            for a in ["a2", "a3", "a4"] {
                w.beats.insert(a.into(), now);
            }
        };
        // a1 last heard at 0. The plain job's task goes after lease + loss grace, and its replacement may run
        // beside it while a1 stays unreachable.
        let state = |w: &World, id: &str| w.state.task(id).map(|t| t.state);
        let plain_after = w.config.lease_ms + w.config.lost_grace_ms;
        beat_others(&mut w, plain_after + 1);
        w.round(plain_after + 1);
        assert_eq!(state(&w, &plain_task), Some(TaskState::Lost));
        assert_eq!(state(&w, &waits), Some(TaskState::Unreachable), "its agent has not stopped it yet");
        beat_others(&mut w, plain_after + 2);
        w.round(plain_after + 2);
        let replacement = w.state.task(&plain_task).and_then(|t| t.replaced_by.clone()).expect("replaced");
        let replacement = w.state.task(&replacement).expect("exists");
        assert_eq!(may_run_beside(&w.state, replacement), Some(plain_task.clone()));
        // The job that asked waits for lease + stop-after + kill grace + margin: not a millisecond less.
        let deadline = w.config.lease_ms + 5_000 + crate::config::KILL_GRACE_MS + w.config.disconnect_margin_ms;
        assert_eq!(w.config.lose_after_ms(Some(&stopping)), deadline);
        beat_others(&mut w, deadline);
        let d = w.round(deadline);
        assert!(d.round.lose.is_empty() && d.round.create.is_empty(), "{:?}", d.round);
        assert_eq!(state(&w, &waits), Some(TaskState::Unreachable));
        beat_others(&mut w, deadline + 1);
        let d = w.round(deadline + 1);
        assert_eq!(d.round.lose, vec![(waits.clone(), Reason::AgentLost)]);
        beat_others(&mut w, deadline + 2);
        let d = w.round(deadline + 2);
        assert_eq!(d.round.create.len(), 1, "replaced once the original is surely stopped");
        let replacement = w.state.task(&d.round.create[0].id).expect("exists");
        assert_eq!(may_run_beside(&w.state, replacement), None, "its original was stopped by its agent");
        // The grace never falls below the loss grace.
        w.config.lost_grace_ms = 60_000;
        assert_eq!(w.config.lose_after_ms(Some(&stopping)), 60_100);
    }

    #[test]
    fn a_task_its_agent_stopped_on_disconnect_is_replaced_at_once() {
        let mut w = World::new(&[("a1", 2.0)], spec(r#","location":"dc1:1","disconnect":{"stopAfterSeconds":5}"#));
        w.round(10);
        let first = w.in_state(TaskState::Assigned)[0].clone();
        w.apply_status(TaskStatus {
            task_id: first.clone(),
            state: TaskState::Killed,
            reason: Some(Reason::Disconnected),
            message: None,
            exit_code: None,
            health: TaskHealth::Unknown,
            at_ms: 20,
        });
        assert_eq!(w.state.task(&first).and_then(|t| t.reason), Some(Reason::Disconnected));
        w.beat(21);
        let d = w.round(21);
        assert_eq!(d.round.create.len(), 1, "a system failure: no backoff, no retry spent");
        assert_eq!(d.round.create[0].retries_used, 0);
    }

    #[test]
    fn the_breaker_declares_nothing_lost_when_many_agents_go_silent_at_once() {
        let mut w = World::new(&[("a1", 2.0), ("a2", 2.0), ("a3", 2.0)], spec(""));
        w.round(10);
        w.beats.insert("a3".into(), 5_000);
        let d = w.round(5_000);
        assert!(d.breaker_open);
        assert!(d.round.lose.is_empty() && d.lost_agents.is_empty());
        assert_eq!(w.in_state(TaskState::Lost).len(), 0);
        // They come back: their tasks carry on.
        w.beat(5_050);
        let d = w.round(5_050);
        assert_eq!(d.round.reachable.len(), 2);
        assert_eq!(w.in_state(TaskState::Unreachable).len(), 0);
    }

    #[test]
    fn the_loss_rate_limit_caps_agents_lost_per_minute() {
        let mut w = World::new(&[("a1", 1.0), ("a2", 1.0), ("a3", 1.0), ("a4", 1.0)], spec(""));
        w.config.breaker_fraction = 1.0;
        w.config.max_lost_agents_per_minute = 1;
        w.round(10);
        w.beats.insert("a4".into(), 2_000);
        let d = w.round(2_000);
        assert_eq!(d.lost_agents.len(), 1, "three overdue, one allowed");
    }

    #[test]
    fn a_restarted_agent_keeps_what_it_still_runs_and_loses_the_rest() {
        let mut w = World::new(&[("a1", 4.0)], spec(""));
        w.round(10);
        let tasks = w.in_state(TaskState::Assigned);
        w.report(&tasks[0], TaskState::Running, None, 20);
        w.report(&tasks[1], TaskState::Running, None, 20);
        let epoch = register(&mut w.state, "a1", 4.0, vec![tasks[0].clone()], 30);
        assert_eq!(epoch, 2);
        let state = |id: &str| w.state.task(id).map(|t| (t.state, t.lease_epoch, t.reason));
        assert_eq!(state(&tasks[0]), Some((TaskState::Running, 2, None)), "re-adopted");
        assert_eq!(state(&tasks[1]), Some((TaskState::Lost, 1, Some(Reason::AgentRestarted))));
        assert_eq!(state(&tasks[2]), Some((TaskState::Assigned, 2, None)), "not started yet: still to start");
    }

    #[test]
    fn a_plan_for_an_old_epoch_or_a_full_agent_is_refused_at_apply() {
        let mut w = World::new(&[("a1", 1.0)], spec(r#","location":"dc1:2""#));
        let seen = Observed {
            now_ms: 10,
            leader_since_ms: 0,
            heartbeats: Some(&w.beats),
            lost_last_minute: 0,
            retry_pending: true,
            jobs: None,
        };
        let mut n = 0;
        let d = reconcile(&w.state, CELL, &seen, &w.config, &mut || {
            n += 1;
            format!("x{n}")
        });
        assert_eq!(d.round.place.len(), 1, "one cpu: one task");
        // The agent re-registers between the plan and its commit.
        register(&mut w.state, "a1", 1.0, vec![], 11);
        let mut stale = d.round.clone();
        stale.place.push(Placed { task_id: "x2".into(), agent: "a1".into(), lease_epoch: 2, ports: vec![] });
        match w.state.apply(&Command::Round { round: Box::new(stale), meta: meta(12) }).0 {
            Response::Round(o) => {
                assert_eq!(o.placed, 1, "the second, fresh-epoch placement of x2 fits");
                assert_eq!(o.refused.len(), 1);
                assert!(o.refused[0].1.contains("epoch"), "{:?}", o.refused);
            }
            other => panic!("{other:?}"),
        }
        // Capacity holds: nothing more fits.
        let over = Round {
            place: vec![Placed { task_id: "x1".into(), agent: "a1".into(), lease_epoch: 2, ports: vec![] }],
            ..Round::default()
        };
        match w.state.apply(&Command::Round { round: Box::new(over), meta: meta(13) }).0 {
            Response::Round(o) => assert_eq!((o.placed, o.refused.len()), (0, 1)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unhealthy_service_task_is_replaced_once_spending_a_retry() {
        let mut w = World::new(&[("a1", 8.0)], spec(r#","location":"dc1:2","numRetries":3"#));
        w.round(10);
        let tasks = w.in_state(TaskState::Assigned);
        w.report(&tasks[0], TaskState::Running, None, 20);
        w.report(&tasks[1], TaskState::Running, None, 20);
        let t = w.state.task(&tasks[0]).expect("task").clone();
        let sick = TaskStatus {
            task_id: t.id.clone(),
            state: TaskState::Running,
            reason: None,
            message: None,
            exit_code: None,
            health: TaskHealth::Unhealthy,
            at_ms: 30,
        };
        let cmd = Command::TaskStatuses { agent: "a1".into(), lease_epoch: 1, statuses: vec![sick], meta: meta(30) };
        w.state.apply(&cmd);
        let d = w.round(40);
        assert_eq!(d.round.stop, vec![(t.id.clone(), Reason::Unhealthy)]);
        assert!(d.round.create.is_empty(), "no second task while the first is replaced: {:?}", d.round.create);
        let d = w.round(40 + w.config.backoff_ms(0));
        assert_eq!(d.round.create.len(), 1);
        assert_eq!((d.round.create[0].replaces.as_deref(), d.round.create[0].retries_used), (Some(t.id.as_str()), 1));
        assert!(w.round(1_000_000).round.create.is_empty());
    }

    #[test]
    fn a_scaled_down_task_lost_with_its_agent_is_not_replaced() {
        let mut w = World::new(&[("a1", 1.0), ("a2", 1.0)], spec(r#","location":"dc1:2""#));
        w.round(10);
        let scale = Command::SetInstances {
            id: "j1".into(),
            instances: BTreeMap::from([(CELL.to_string(), 1)]),
            if_version: None,
            meta: meta(20),
        };
        w.state.apply(&scale);
        // Whichever task scale-down picks, its agent dies before it has stopped it.
        let d = w.round(30);
        let victim = d.round.stop[0].0.clone();
        let agent = w.state.task(&victim).and_then(|t| t.agent.clone()).expect("placed");
        let other = if agent == "a1" { "a2" } else { "a1" };
        w.beats.insert(other.into(), 2_000);
        w.round(2_000);
        assert_eq!(
            w.state.task(&victim).map(|t| (t.state, t.reason)),
            Some((TaskState::Lost, Some(Reason::ScaledDown)))
        );
        w.beats.insert(other.into(), 2_100);
        let d = w.round(2_100);
        assert!(d.round.create.is_empty() && d.round.stop.is_empty(), "{:?}", d.round);
        assert_eq!(w.state.job_tasks("j1").map(|s| s.live.len()), Some(1));
    }

    #[test]
    fn a_replacement_with_a_persistent_volume_goes_back_to_its_agent() {
        let volume = r#","location":"dc1:1","volumes":[{"name":"data","path":"/data","sizeGib":1,"persistent":true}]"#;
        let mut w = World::new(&[("a1", 4.0), ("a2", 4.0), ("a3", 4.0)], spec(volume));
        w.round(10);
        let first = w.in_state(TaskState::Assigned)[0].clone();
        let home = w.state.task(&first).and_then(|t| t.agent.clone()).expect("placed");
        w.report(&first, TaskState::Running, None, 20);
        for attempt in 0..4 {
            let current = w.state.tasks().find(|t| !t.is_terminal()).map(|t| t.id.clone()).expect("a live task");
            w.state.apply(&Command::KillTask { id: current.clone(), meta: meta(30 + attempt) });
            let d = w.round(40 + attempt);
            assert_eq!(d.round.place.len(), 1, "{d:?}");
            assert_eq!(d.round.place[0].agent, home, "attempt {attempt} stays with its volume");
            w.report(&current, TaskState::Killed, None, 50 + attempt);
        }
    }

    #[test]
    fn a_scheduled_job_runs_on_each_tick_and_skips_or_replaces_an_overlapping_run() {
        let batch =
            |overlap: &str| spec(&format!(r#","location":"dc1:2","type":"batch","schedule":"* * * * *"{overlap}"#));
        let mut w = World::new(&[("a1", 8.0)], batch(""));
        w.beat(1_000_000);
        assert!(w.round(30_000).round.create.is_empty(), "nothing before the first tick");
        let d = w.round(60_000);
        assert_eq!(d.round.ticks.len(), 1);
        assert_eq!(d.round.create.len(), 2);
        assert!(d.round.create.iter().all(|n| n.run == Some(60_000)));
        let run1 = w.in_state(TaskState::Assigned);
        for t in &run1 {
            w.report(t, TaskState::Running, None, 61_000);
        }
        assert!(w.round(90_000).round.is_empty(), "a running run is left alone");
        let d = w.round(120_000);
        assert_eq!((d.round.ticks[0].start, d.round.create.len()), (false, 0), "skip: the previous run still goes");
        for t in &run1 {
            w.report(t, TaskState::Finished, Some(0), 130_000);
        }
        assert!(w.round(150_000).round.create.is_empty(), "done tasks of the run are not restarted");
        let d = w.round(185_000);
        assert_eq!(d.round.create.len(), 2, "the next tick starts a new run");
        assert!(d.round.create.iter().all(|n| n.run == Some(180_000)));

        let mut w = World::new(&[("a1", 8.0)], batch(r#","overlap":"replace""#));
        w.beat(1_000_000);
        w.round(60_000);
        let run1 = w.in_state(TaskState::Assigned);
        let d = w.round(125_000);
        let stopped: Vec<&String> = d.round.stop.iter().map(|(id, _)| id).collect();
        assert_eq!(stopped.len(), 2, "replace: the old run is stopped");
        assert!(run1.iter().all(|t| stopped.contains(&t)));
        assert!(d.round.create.iter().all(|n| n.run == Some(120_000)) && d.round.create.len() == 2);
        // Missed ticks collapse into the latest.
        let d = w.round(600_000);
        assert_eq!(d.round.ticks.iter().map(|t| t.at_ms).collect::<Vec<_>>(), vec![600_000]);
    }

    #[test]
    fn ended_tasks_are_forgotten_after_their_retention_unless_they_still_count() {
        let mut w = World::new(&[("a1", 8.0)], spec(r#","location":"dc1:2","type":"batch","numRetries":0"#));
        w.beat(100_000_000);
        w.config.task_retention_ms = 1_000;
        w.round(10);
        let tasks = w.in_state(TaskState::Assigned);
        w.report(&tasks[0], TaskState::Finished, Some(0), 20);
        w.report(&tasks[1], TaskState::Failed, Some(1), 20);
        // A user kills... nothing; both ended and count (done, retries spent): kept past the retention.
        let d = w.round(5_000);
        assert!(d.round.forget.is_empty() && d.round.create.is_empty(), "{:?}", d.round);
        assert_eq!(w.state.tasks().count(), 2);
        // Once the job is killed, nothing needs them.
        w.state.apply(&Command::KillJob { id: "j1".into(), meta: meta(6_000) });
        let d = w.round(7_000);
        assert_eq!(d.round.forget.len(), 2);
        assert_eq!(w.state.tasks().count(), 0);
        assert_eq!(w.state.task_count(TaskState::Finished), 0);
        assert!(w.state.job_tasks("j1").is_some_and(|s| s.open.is_empty()));
        // And they do not come back after a snapshot.
        let mut back = w.state.clone();
        back.reindex();
        assert_eq!(back.tasks().count(), 0);
    }

    #[test]
    fn a_spec_update_rolls_a_service_over_within_its_budget() {
        let budget = r#","location":"dc1:4","disruptionBudget":{"maxUnavailable":1}"#;
        let mut w = World::new(&[("a1", 8.0)], spec(budget));
        w.beat(1_000_000);
        w.round(10);
        for t in w.in_state(TaskState::Assigned) {
            w.report(&t, TaskState::Running, None, 20);
        }
        let old: BTreeSet<String> = w.in_state(TaskState::Running).into_iter().collect();
        let update = Command::UpdateJob {
            id: "j1".into(),
            spec: spec(&format!(r#"{budget},"env":{{"V":"2"}}"#)),
            if_version: None,
            meta: meta(30),
        };
        w.state.apply(&update);
        let mut now = 40;
        for _ in 0..20 {
            let d = w.round(now);
            let stops: Vec<&(String, Reason)> = d.round.stop.iter().collect();
            assert!(stops.len() <= 1, "one unavailable at a time: {stops:?}");
            assert!(stops.iter().all(|(_, r)| *r == Reason::Superseded));
            now += 10;
            // Agents do what they are told: stopped tasks end, new ones run.
            for t in w.in_state(TaskState::Killing) {
                w.report(&t, TaskState::Killed, None, now);
            }
            for t in w.in_state(TaskState::Assigned) {
                w.report(&t, TaskState::Running, None, now);
            }
            now += 10;
        }
        let running: BTreeSet<String> = w.in_state(TaskState::Running).into_iter().collect();
        assert_eq!(running.len(), 4);
        assert!(running.is_disjoint(&old), "every task rolled over");
        let version = w.state.job("j1").map(|j| j.spec_version).unwrap_or(0);
        assert!(w.state.tasks().filter(|t| t.state == TaskState::Running).all(|t| t.job_version == version));
        assert!(w.round(now).round.is_empty(), "and then it rests");
    }

    #[test]
    fn pending_tasks_are_tried_again_only_when_capacity_may_have_changed() {
        let mut w = World::new(&[("a1", 2.0)], spec(""));
        w.beat(1_000_000);
        let d = w.round(10);
        assert_eq!(d.pending.len(), 1, "three one-cpu tasks, two cpus");
        let seen = Observed {
            now_ms: 20,
            leader_since_ms: 0,
            heartbeats: Some(&w.beats),
            lost_last_minute: 0,
            retry_pending: false,
            jobs: None,
        };
        let d = reconcile(&w.state, CELL, &seen, &w.config, &mut || "x".into());
        assert!(d.round.place.is_empty() && d.pending.is_empty() && d.placement.is_none(), "nothing tried");
        // Capacity frees up: applying says so, which is what makes the leader try again.
        let running = w.in_state(TaskState::Assigned)[0].clone();
        assert!(w.report(&running, TaskState::Finished, Some(0), 30).capacity_moved);
        let (_, fx) = register_with_effects(&mut w.state, "a2", 1.0, vec![], 40);
        assert!(fx.capacity_moved, "a new agent moves it too");
    }
}
