//! The cell's replicated state and how a committed command changes it, by noun: `jobs` (job records, their
//! commands, idempotency keys), `tasks` (task records, transitions and the derived per-job sets), `agents`
//! (registrations, leases, reachability) and `plan` (a scheduling round, re-validated as it applies).
//!
//! Pure and deterministic: everything a command needs (ids, the time, who and why) is decided before it is
//! proposed, so every member applying the same log reaches the same state. Rejections (a stale `If-Match`, a
//! killed job) are answers, not errors: they are decided here, at apply time, against the latest state.
//!
//! Persisted shapes are versioned: log entries carry `Command` (new variants are added, existing ones never
//! change), snapshots are `snapshot::SnapshotV6` behind a format number.

use std::collections::{btree_map, BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use titan_api::agent::AgentState;
use titan_api::event::{Event, Topic};
use titan_api::task::{Desired, Reason, TaskState};

use crate::command::{Command, NewTask, Placed, Rejection, Response, Round, RoundOutcome};
use crate::federation::{Clock, Hlc, JobVersions};
use crate::placement::{self, Capacity};
use crate::snapshot::SnapshotV7;
use crate::spec::Spec;
use crate::task::TaskRecord;
use titan_api::view::{JobRef, JobState, ListQuery, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};

mod agents;
mod effects;
mod federation;
mod jobs;
mod locations;
mod plan;
mod quotas;
mod tasks;
#[cfg(test)]
mod tests;
mod tokens;

pub use crate::agent::AgentRecord;
pub use crate::job::{JobRecord, Remembered, MAX_HISTORY};
pub use crate::key::{Id, Key};
pub use effects::{Changes, Effects};
pub use federation::Outgoing;
use jobs::{describe, fingerprint};
pub use jobs::{IDEMPOTENCY_TTL_MS, REQUEST_TTL_MS};
pub use tasks::JobTasks;

/// Everything the cell replicates.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CellState {
    /// Jobs and tasks (below) are shared with snapshot copies (`snapshot`) and changed through
    /// `Arc::make_mut`, so a record is copied only when it changes while a snapshot of it is being written.
    jobs: BTreeMap<String, Arc<JobRecord>>,
    idempotency: BTreeMap<String, Remembered>,
    /// (time, key) in order, to forget expired keys without scanning. Derived (JSON maps need string keys).
    idempotency_by_time: BTreeMap<(u64, String), ()>,
    /// Jobs per state, kept as jobs change so metrics need no scan; derived, so rebuilt rather than stored.
    by_state: BTreeMap<JobState, u64>,
    /// Registered agents.
    agents: BTreeMap<Key, AgentRecord>,
    /// Answers of recently applied requests by id, with when they were applied, and the same ids by time for
    /// expiry (derived). Only ever looked up by id, so hashed: every command checks and records its request id.
    applied: HashMap<String, (u64, Response)>,
    applied_by_time: BTreeMap<(u64, String), ()>,
    tasks: BTreeMap<Key, Arc<TaskRecord>>,
    /// Counts changes agents must see; an agent's `version` is its value at the agent's latest change.
    seq: u64,
    /// Events made so far, the last one's id: counted here, in the replicated state, so that an event has the
    /// same id on every member and after a restart, one of its own even when one entry makes many.
    events_made: u64,
    /// Task ids by job, and non-terminal task ids by agent (derived).
    by_job: HashMap<String, BTreeSet<String>>,
    by_agent: HashMap<String, BTreeSet<String>>,
    /// Tasks per state (derived).
    task_counts: BTreeMap<TaskState, u64>,
    /// Per job, the sets the reconciler reads every round (derived).
    job_tasks: HashMap<String, JobTasks>,
    /// Accepted tasks wanted running, oldest first: what placement looks at, in the order it takes them (derived).
    accepted: BTreeSet<(u64, String)>,
    /// Tasks in a state with a timeout (Assigned, Starting, Killing) (derived).
    transient: BTreeSet<String>,
    /// Ended tasks by when they ended, oldest first, for retention (derived).
    ended: BTreeSet<(u64, String)>,
    /// What runs where (derived).
    capacity: Capacity,
    /// The cell's hybrid logical clock: local writes to replicated registers are versioned from it.
    clock: Clock,
    /// Jobs changed (locally or by a merge), by change number: what other cells are sent, after their position.
    outbox: BTreeMap<u64, String>,
    outbox_seq: u64,
    /// Each job's change number in `outbox` (derived).
    outbox_of: HashMap<String, u64>,
    /// How far this cell has merged each other cell's outbox.
    positions: BTreeMap<String, u64>,
    /// Killed jobs by when they were killed, for their tombstone's retention (derived).
    tombstones: BTreeSet<(u64, String)>,
    /// Each capacity group's quota.
    quotas: BTreeMap<String, crate::quota::QuotaRecord>,
    /// Each group's desired usage per location, and each job's part of it (derived).
    usage: HashMap<String, BTreeMap<String, crate::quota::Demand>>,
    demand_of: HashMap<String, (String, BTreeMap<String, crate::quota::Demand>)>,
    /// Each location's lever record (those a lever was ever pulled on).
    locations: BTreeMap<String, crate::location::LocationRecord>,
    /// Each autoscaled instance group's demand history (its policy's input), bounded.
    fleet: BTreeMap<String, titan_autoscaler::policy::History>,
    /// Every API token, revoked ones too, by name.
    tokens: BTreeMap<String, crate::token::TokenRecord>,
    /// Each token's name by the hash of its secret (derived).
    token_hashes: HashMap<[u8; 32], String>,
    /// Who made the command being applied (its `meta.who`), for its events; none between commands.
    actor: Option<String>,
    /// What the command being applied did besides changing the state; empty between commands (`apply` hands it
    /// out), so it never differs between two equal states.
    fx: Effects,
}

impl CellState {
    /// Applies one command: its answer, and what it did besides changing the state.
    pub fn apply(&mut self, cmd: &Command) -> (Response, Effects) {
        let response = self.apply_one(cmd);
        self.actor = None;
        (response, std::mem::take(&mut self.fx))
    }

    fn apply_one(&mut self, cmd: &Command) -> Response {
        if let Some(m) = cmd.meta() {
            self.actor = Some(m.who.clone());
        }
        let Some(meta) = cmd.meta().filter(|m| !m.request.is_empty()) else { return self.apply_counted(cmd) };
        let horizon = meta.at_ms.saturating_sub(REQUEST_TTL_MS);
        while let Some(((at, id), ())) = self.applied_by_time.first_key_value() {
            if *at >= horizon {
                break;
            }
            let id = id.clone();
            self.applied_by_time.pop_first();
            self.applied.remove(&id);
        }
        if let Some((_, first)) = self.applied.get(&meta.request) {
            return first.clone();
        }
        let response = self.apply_counted(cmd);
        self.applied.insert(meta.request.clone(), (meta.at_ms, response.clone()));
        self.applied_by_time.insert((meta.at_ms, meta.request.clone()), ());
        response
    }

    pub(super) fn apply_counted(&mut self, cmd: &Command) -> Response {
        let before = self.touched(cmd);
        let response = self.apply_inner(cmd);
        if let Some((id, was)) = before {
            self.job_changed(&id, was);
        }
        response
    }

    /// A job's bookkeeping after a command changed it (`was`: its state and version before): the changed-jobs
    /// effect, an event for its new history entry and its state change, the per-state counts.
    pub(super) fn job_changed(&mut self, id: &str, was: Option<(JobState, u64)>) {
        let id = id.to_string();
        self.fx.dirty_jobs.insert(id.clone());
        self.note_demand(&id);
        // One look at the job after the command: its new history entry, if its version moved, and its state.
        let Some(job) = self.jobs.get(&id) else { return };
        let now = job.state;
        let moved = Some(job.version) != was.map(|(_, version)| version);
        let changed = if moved { job.history.last().cloned() } else { None };
        let killed = job.versions.killed.as_ref().filter(|_| now == JobState::Killed).map(|k| k.ms);
        if let Some(h) = changed {
            self.event(Topic::Job, &h.what, &id, Some(&id), None, h.why.as_deref(), h.at_ms);
            if let Some(e) = self.fx.events.last_mut().filter(|_| !h.cell.is_empty()) {
                e.cell = Some(h.cell.clone());
            }
        }
        let was = was.map(|(state, _)| state);
        if was != Some(now) {
            if let Some(n) = was.and_then(|w| self.by_state.get_mut(&w)) {
                *n = n.saturating_sub(1);
            }
            self.by_state.retain(|_, n| *n > 0);
            *self.by_state.entry(now).or_insert(0) += 1;
        }
        if let Some(ms) = killed {
            self.tombstones.insert((ms, id.clone()));
        }
        if moved {
            self.note_outbox(&id);
        }
    }

    /// The job a (non-batch) command touches, and its state and version before.
    pub(super) fn touched(&self, cmd: &Command) -> Option<(String, Option<(JobState, u64)>)> {
        let id = match cmd {
            Command::PutJob { id, .. }
            | Command::UpdateJob { id, .. }
            | Command::SetInstances { id, .. }
            | Command::SetEnabled { id, .. }
            | Command::KillJob { id, .. } => id,
            Command::Batch(_)
            | Command::RegisterAgent { .. }
            | Command::Round { .. }
            | Command::TaskStatuses { .. }
            | Command::KillTask { .. }
            | Command::SetAgentState { .. }
            | Command::Merge { .. }
            | Command::PutQuota { .. }
            | Command::DeleteQuota { .. }
            | Command::Lever { .. }
            | Command::Fleet { .. }
            | Command::PutToken { .. }
            | Command::RevokeToken { .. } => return None,
        };
        Some((id.clone(), self.jobs.get(id).map(|j| (j.state, j.version))))
    }

    /// What a snapshot holds: the replicated records, without the derived fields. Records are shared, so this
    /// costs a fraction of a clone, and it is taken while applying waits. Every field is named, so a field added to
    /// `CellState` has to be placed on one side or the other here.
    pub fn snapshot(&self) -> SnapshotV7 {
        let CellState {
            jobs,
            idempotency,
            agents,
            applied,
            tasks,
            seq,
            events_made,
            idempotency_by_time: _,
            by_state: _,
            applied_by_time: _,
            by_job: _,
            by_agent: _,
            task_counts: _,
            job_tasks: _,
            accepted: _,
            transient: _,
            ended: _,
            tombstones: _,
            capacity: _,
            fx: _,
            outbox_of: _,
            clock,
            outbox,
            outbox_seq,
            positions,
            quotas,
            usage: _,
            demand_of: _,
            locations,
            fleet,
            tokens,
            token_hashes: _,
            actor: _,
        } = self;
        SnapshotV7 {
            tokens: tokens.clone(),
            locations: locations.clone(),
            fleet: fleet.clone(),
            quotas: quotas.clone(),
            clock: clock.clone(),
            outbox: outbox.clone(),
            outbox_seq: *outbox_seq,
            positions: positions.clone(),
            jobs: jobs.clone(),
            idempotency: idempotency.clone(),
            agents: agents.clone(),
            applied: applied.clone(),
            tasks: tasks.clone(),
            seq: *seq,
            events_made: *events_made,
        }
    }

    /// The state a snapshot holds, with everything derived rebuilt.
    pub fn from_snapshot(s: SnapshotV7) -> CellState {
        let SnapshotV7 {
            jobs,
            idempotency,
            agents,
            applied,
            tasks,
            seq,
            events_made,
            clock,
            outbox,
            outbox_seq,
            positions,
            quotas,
            locations,
            fleet,
            tokens,
        } = s;
        let mut state = CellState {
            tokens,
            locations,
            fleet,
            quotas,
            jobs,
            idempotency,
            agents,
            applied,
            tasks,
            seq,
            events_made,
            clock,
            outbox,
            outbox_seq,
            positions,
            ..CellState::default()
        };
        state.reindex();
        state
    }

    /// Rebuilds what is derived (counts, time indexes).
    pub(crate) fn reindex(&mut self) {
        self.by_state.clear();
        self.tombstones.clear();
        for j in self.jobs.values() {
            *self.by_state.entry(j.state).or_insert(0) += 1;
            if let (JobState::Killed, Some(k)) = (j.state, &j.versions.killed) {
                self.tombstones.insert((k.ms, j.id.clone()));
            }
        }
        self.idempotency_by_time = self.idempotency.iter().map(|(k, r)| ((r.at_ms, k.clone()), ())).collect();
        self.applied_by_time = self.applied.iter().map(|(k, (at, _))| ((*at, k.clone()), ())).collect();
        self.by_job.clear();
        self.by_agent.clear();
        self.task_counts.clear();
        self.job_tasks.clear();
        self.accepted.clear();
        self.transient.clear();
        self.ended.clear();
        let ids: Vec<String> = self.tasks.keys().map(|k| k.to_string()).collect();
        for id in &ids {
            self.index_task(id);
        }
        for t in self.tasks.values() {
            if !t.is_terminal() {
                let sets = self.job_tasks.entry(t.job_id.clone()).or_default();
                sets.unended_by_spec.insert((t.spec_version, t.id.clone()));
            }
            self.by_job.entry(t.job_id.clone()).or_default().insert(t.id.clone());
            *self.task_counts.entry(t.state).or_insert(0) += 1;
            if let (true, Some(a)) = (t.state.on_agent(), &t.agent) {
                self.by_agent.entry(a.clone()).or_default().insert(t.id.clone());
            }
        }
        self.outbox_of = self.outbox.iter().map(|(seq, id)| (id.clone(), *seq)).collect();
        self.reindex_usage();
        self.reindex_tokens();
        self.rebuild_capacity();
        // Derived, not applied: nothing to hand on (whoever loads a state treats everything as changed).
        self.fx = Effects::default();
    }

    /// Rebuilds fenzo's view from the agents and the tasks on them. Every agent is added eligible first so the
    /// tasks already on a draining or unreachable one are counted, then eligibility is set.
    pub(super) fn rebuild_capacity(&mut self) {
        self.fx.capacity_moved = true;
        let mut cap = fenzo::ClusterSnapshot::new();
        for a in self.agents.values() {
            if let Err(e) = cap.add_agent(placement::agent(a, true)) {
                tracing::error!(error = %e, "agent not added to the capacity view");
            }
        }
        for t in self.tasks.values().filter(|t| t.state.on_agent()) {
            let (Some(agent), Some(job)) = (&t.agent, self.jobs.get(&t.job_id)) else { continue };
            if let Err(e) =
                cap.assign(&placement::request(t, &job.spec, self.placement_group(&job.spec)), agent, Some(&t.ports))
            {
                // An agent that re-registered smaller than what runs on it: the tasks keep running, the
                // overcommitted part is simply not counted.
                tracing::warn!(task = %t.id, error = %e, "task not counted in the capacity view");
            }
        }
        for a in self.agents.values() {
            let _ = cap.set_eligible(&a.registration.id, a.takes_work());
        }
        self.capacity = Capacity(cap);
    }

    /// The counter agents' versions are taken from.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// fenzo's view of the cell: agents, what runs on them, and which take new work.
    pub fn capacity(&self) -> &fenzo::ClusterSnapshot {
        &self.capacity.0
    }

    /// The id of the last event made: events up to it came before this state.
    pub fn events_made(&self) -> u64 {
        self.events_made
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn event(
        &mut self,
        topic: Topic,
        kind: &str,
        id: &str,
        job_id: Option<&str>,
        agent_id: Option<&str>,
        reason: Option<&str>,
        at_ms: u64,
    ) {
        self.events_made += 1;
        self.fx.events.push(Event {
            event_id: self.events_made,
            index: 0,
            topic,
            kind: kind.to_string(),
            id: id.to_string(),
            job_id: job_id.map(String::from),
            agent_id: agent_id.map(String::from),
            reason: reason.map(String::from),
            at_ms,
            cell: None,
            who: self.actor.clone(),
        });
    }

    /// An autoscaled instance group's demand history, as its leader recorded it.
    pub fn fleet_history(&self, group: &str) -> Option<&titan_autoscaler::policy::History> {
        self.fleet.get(group)
    }

    /// How many jobs are in each state.
    pub fn count(&self, state: JobState) -> u64 {
        self.by_state.get(&state).copied().unwrap_or(0)
    }

    pub(super) fn apply_inner(&mut self, cmd: &Command) -> Response {
        match cmd {
            Command::PutJob { id, spec, idempotency_key, meta } => {
                self.forget_expired(meta.at_ms);
                let replay = self.jobs.contains_key(id)
                    || idempotency_key.as_ref().is_some_and(|k| self.idempotency.contains_key(k));
                let counts = spec.counts();
                if !replay {
                    if let Err(r) = self.check_frozen(None, &counts) {
                        return Response::Rejected(r);
                    }
                    if let Err(e) = self.admit(id, spec, &counts, true) {
                        return Response::Rejected(Rejection::QuotaExceeded(e));
                    }
                }
                let v = self.stamp(meta);
                // A proposal retried after an ambiguous failure carries the same id: it must not create twice.
                let slot = match self.jobs.entry(id.clone()) {
                    btree_map::Entry::Occupied(existing) => {
                        return Response::Job(JobRef {
                            id: id.clone(),
                            version: existing.get().version,
                            unseen_locations: Vec::new(),
                        })
                    }
                    btree_map::Entry::Vacant(slot) => slot,
                };
                // Only keyed submissions pay for the fingerprint (a serialization of the whole spec).
                let print = idempotency_key.as_ref().map(|_| fingerprint(spec)).unwrap_or(0);
                if let Some(key) = idempotency_key {
                    if let Some(r) = self.idempotency.get(key) {
                        return if r.fingerprint == print {
                            Response::Job(r.job.clone())
                        } else {
                            Response::Rejected(Rejection::IdempotencyKeyReused { key: key.clone() })
                        };
                    }
                }
                let versions = JobVersions {
                    spec: v.clone(),
                    counts: counts.keys().map(|l| (l.clone(), v.clone())).collect(),
                    enabled: v,
                    killed: None,
                };
                let mut record = JobRecord::new(
                    id,
                    spec.clone(),
                    counts,
                    JobState::Enabled,
                    meta.at_ms,
                    meta.at_ms,
                    versions,
                    &meta.cell,
                );
                let job = record.change(meta, "created".into());
                slot.insert(Arc::new(record));
                if let Some(key) = idempotency_key {
                    self.idempotency
                        .insert(key.clone(), Remembered { job: job.clone(), fingerprint: print, at_ms: meta.at_ms });
                    self.idempotency_by_time.insert((meta.at_ms, key.clone()), ());
                }
                Response::Job(job)
            }
            Command::UpdateJob { id, spec, if_version, meta } => {
                if let Some(job) = self.jobs.get(id) {
                    let after = job.counts_after_update(spec);
                    if let Err(r) = self.check_frozen(Some(&job.counts), &after) {
                        return Response::Rejected(r);
                    }
                    if let Err(e) = self.admit(id, spec, &after, job.state == JobState::Enabled) {
                        return Response::Rejected(Rejection::QuotaExceeded(e));
                    }
                }
                self.fx.capacity_moved = true;
                // Tasks made from the spec being replaced keep running as it said until they end.
                let current = self.jobs.get(id).map(|j| j.spec_version);
                let keep = current.is_some_and(|v| self.job_tasks.get(id).is_some_and(|s| s.uses_spec(v)));
                let v = self.stamp(meta);
                self.modify(id, *if_version, |job| {
                    let old = std::mem::replace(&mut job.spec, spec.clone());
                    if keep {
                        job.older_specs.insert(job.spec_version, old);
                    }
                    // The spec register, and the count register of every location it or the one before names.
                    let counts = job.counts_after_update(spec);
                    for location in counts.keys() {
                        job.versions.counts.insert(location.clone(), v.clone());
                    }
                    job.versions.spec = v;
                    job.counts = counts;
                    let r = job.change(meta, "spec updated".into());
                    job.spec_version = job.version;
                    r
                })
            }
            Command::SetInstances { id, instances, if_version, meta } => {
                if let Some(job) = self.jobs.get(id) {
                    let counts = job.counts_after_scale(instances);
                    if let Err(r) = self.check_frozen(Some(&job.counts), &counts) {
                        return Response::Rejected(r);
                    }
                    if let Err(e) = self.admit(id, &job.spec, &counts, job.state == JobState::Enabled) {
                        return Response::Rejected(Rejection::QuotaExceeded(e));
                    }
                }
                let v = self.stamp(meta);
                self.modify(id, *if_version, |job| {
                    for (location, n) in instances {
                        job.counts.insert(location.clone(), *n);
                        job.versions.counts.insert(location.clone(), v.clone());
                    }
                    let counts = job.counts.clone();
                    Arc::make_mut(&mut job.spec).set_counts(&counts);
                    job.change(meta, format!("instances {}", describe(instances)))
                })
            }
            Command::SetEnabled { id, enabled, meta } => {
                if let (true, Some(job)) = (*enabled, self.jobs.get(id)) {
                    // Enabling raises every count from nothing.
                    if job.state == JobState::Disabled {
                        if let Err(r) = self.check_frozen(None, &job.counts) {
                            return Response::Rejected(r);
                        }
                    }
                    if let Err(e) = self.admit(id, &job.spec, &job.counts, job.state != JobState::Killed) {
                        return Response::Rejected(Rejection::QuotaExceeded(e));
                    }
                }
                let v = self.stamp(meta);
                self.modify(id, None, |job| {
                    job.state = if *enabled { JobState::Enabled } else { JobState::Disabled };
                    job.versions.enabled = v;
                    job.change(meta, if *enabled { "enabled".into() } else { "disabled".into() })
                })
            }
            Command::KillJob { id, meta } => {
                let v = self.stamp(meta);
                self.modify(id, None, |job| {
                    job.state = JobState::Killed;
                    job.versions.killed = Some(v);
                    job.change(meta, "killed".into())
                })
            }
            Command::PutQuota { group, locations, if_version, meta } => {
                self.put_quota(group, locations, *if_version, meta)
            }
            Command::DeleteQuota { group, if_version, meta } => self.delete_quota(group, *if_version, meta),
            Command::Merge { from, upto, jobs, max_skew_ms, tombstone_ms, meta, quotas, locations, tokens } => {
                Response::Merged(self.merge_jobs(
                    from,
                    *upto,
                    (jobs, quotas, locations, tokens),
                    (*max_skew_ms, *tombstone_ms),
                    meta,
                ))
            }
            Command::Lever { location, lever, meta } => self.pull_lever(location, lever, meta),
            Command::PutToken { record, meta } => self.put_token(record, meta),
            Command::RevokeToken { name, meta } => self.revoke_token(name, meta),
            Command::Fleet { group, samples, decision, meta, error } => {
                if let Some(e) = error {
                    self.event(Topic::Fleet, "fleet call failed", group, None, None, Some(e), meta.at_ms);
                }
                let history = self.fleet.entry(group.clone()).or_default();
                for (minute, slots) in samples {
                    history.record(*minute, *slots);
                }
                if let Some(d) = decision {
                    let kind = format!("scaled {} to {}: {}", d.direction, d.desired, d.actions.join("; "));
                    self.event(Topic::Fleet, &kind, group, None, None, Some(&d.reason), meta.at_ms);
                }
                Response::None
            }
            Command::Batch(cmds) => Response::Batch(cmds.iter().map(|c| self.apply_one(c)).collect()),
            Command::RegisterAgent { registration, meta } => self.register_agent(registration, meta.at_ms),
            Command::Round { round, meta } => Response::Round(self.apply_round(round, meta.at_ms)),
            Command::TaskStatuses { agent, lease_epoch, statuses, meta } => {
                self.apply_statuses(agent, *lease_epoch, statuses, meta.at_ms)
            }
            Command::SetAgentState { id, state, meta } => match self.agents.get_mut(Id::of(id)) {
                None => Response::Rejected(Rejection::AgentNotFound { id: id.clone() }),
                Some(a) => {
                    a.state = *state;
                    self.fx.capacity_moved = true;
                    let jobs: Vec<String> = self.tasks_on_agent(id).map(|t| t.job_id.clone()).collect();
                    self.fx.dirty_jobs.extend(jobs);
                    let Some(a) = self.agents.get_mut(Id::of(id)) else { return Response::None };
                    let (epoch, eligible) = (a.lease_epoch, a.takes_work());
                    let _ = self.capacity.0.set_eligible(id, eligible);
                    self.bump(id);
                    self.event(Topic::Agent, state.as_str(), id, None, Some(id), meta.why.as_deref(), meta.at_ms);
                    Response::Agent { id: id.clone(), lease_epoch: epoch }
                }
            },
            Command::KillTask { id, meta } => match self.tasks.get(Id::of(id)) {
                None => Response::Rejected(Rejection::TaskNotFound { id: id.clone() }),
                Some(t) if t.is_terminal() => {
                    Response::Rejected(Rejection::TaskTerminal { id: id.clone(), state: t.state })
                }
                Some(_) => {
                    self.stop_task(id, Reason::KilledByUser, meta.at_ms);
                    Response::Task { id: id.clone() }
                }
            },
        }
    }
}
