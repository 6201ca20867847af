//! The cell's replicated state and how a committed command changes it.
//!
//! Pure and deterministic: everything a command needs (ids, the time, who and why) is decided before it is
//! proposed, so every member applying the same log reaches the same state. Rejections (a stale `If-Match`, a
//! killed job) are answers, not errors: they are decided here, at apply time, against the latest state.
//!
//! Persisted shapes are versioned: log entries carry `Command` (new variants are added, existing ones never
//! change), snapshots are `snapshot::SnapshotV2` behind a format number.

use std::collections::{btree_map, BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use titan_api::agent::{AgentRegistration, AgentState};
use titan_api::event::{Event, Topic};
use titan_api::task::{Desired, Reason, TaskState, TaskStatus};

use crate::command::{Command, Meta, NewTask, Placed, Rejection, Response, Round, RoundOutcome};
use crate::placement::{self, Capacity};
use crate::snapshot::SnapshotV2;
use crate::spec::Spec;
use crate::task::TaskRecord;
use titan_api::view::{HistoryEntry, JobRef, JobState, JobView, ListQuery, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// How long applied request ids are remembered: longer than any proposer retries a command.
pub const REQUEST_TTL_MS: u64 = 60 * 1000;
/// History entries kept per job; older ones are dropped first.
pub const MAX_HISTORY: usize = 1_000;

/// A job with its state and history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub spec: Arc<Spec>,
    /// Instances per location: what the cells run. Resolved once from the spec's `location` or `locations`
    /// (the user's form, kept for display) when the spec or the counts are written.
    pub counts: BTreeMap<String, u32>,
    pub version: u64,
    pub state: JobState,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub history: Vec<HistoryEntry>,
    /// For a scheduled job: the latest tick handled (run or skipped), and the run whose tasks count now.
    #[serde(default)]
    pub last_tick_ms: Option<u64>,
    #[serde(default)]
    pub current_run: Option<u64>,
    /// The job version at which the spec itself last changed (not counts or state): tasks made from an older
    /// one are rolled over to it. 0 in records from before rolling updates: nothing rolls.
    #[serde(default)]
    pub spec_version: u64,
    /// Earlier specs that tasks not yet ended were made from, by spec version: a task is run as the spec it was
    /// made from said, not as a later one does (dropped once no such task is left).
    pub older_specs: BTreeMap<u64, Arc<Spec>>,
}

impl JobRecord {
    pub fn view(&self) -> JobView {
        JobView {
            id: self.id.clone(),
            version: self.version,
            state: self.state,
            instances: self.counts.clone(),
            spec: titan_api::job::JobSpec::from(self.spec.as_ref()),
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            tasks: None,
            current_run_ms: self.current_run,
        }
    }

    /// The spec a task made at `spec_version` runs as: an older one while tasks made from it live, else the
    /// current one.
    pub fn spec_for(&self, spec_version: u64) -> &Spec {
        self.older_specs.get(&spec_version).unwrap_or(&self.spec)
    }

    fn change(&mut self, meta: &Meta, what: String) -> JobRef {
        self.version += 1;
        self.updated_at_ms = meta.at_ms;
        self.history.push(HistoryEntry {
            version: self.version,
            at_ms: meta.at_ms,
            who: meta.who.clone(),
            why: meta.why.clone(),
            what,
        });
        if self.history.len() > MAX_HISTORY {
            let excess = self.history.len() - MAX_HISTORY;
            self.history.drain(..excess);
        }
        JobRef { id: self.id.clone(), version: self.version }
    }
}

/// What an `Idempotency-Key` was used for: the job it made, a hash of the spec it came with, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub job: JobRef,
    pub fingerprint: u64,
    pub at_ms: u64,
}

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
    agents: BTreeMap<String, AgentRecord>,
    /// Answers of recently applied requests by id, with when they were applied, and the same ids by time for
    /// expiry (derived). Only ever looked up by id, so hashed: every command checks and records its request id.
    applied: HashMap<String, (u64, Response)>,
    applied_by_time: BTreeMap<(u64, String), ()>,
    tasks: BTreeMap<String, Arc<TaskRecord>>,
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
    /// Raised whenever a task that did not fit might fit now: capacity freed, an agent added, back or put to
    /// work, a job's spec changed. The leader re-places pending tasks only when it moved (transient: a new
    /// leader re-places everything once anyway).
    capacity_seq: Transient<u64>,
    /// Jobs changed (themselves or their tasks) since the leader last took them: a round looks at these, and at
    /// every job only now and then.
    dirty_jobs: Transient<BTreeSet<String>>,
    /// What runs where (derived).
    capacity: Capacity,
    /// Agents whose assignments changed since the last `take_touched`, with their new version.
    touched: Transient<Vec<(String, u64)>>,
    /// Events of the commands applied since the last `take_events`, their index not yet stamped.
    events: Transient<Vec<Event>>,
}

/// One job's tasks as the reconciler needs them, kept as tasks change so a round need not scan them all.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobTasks {
    /// Not ended, and wanted running.
    pub live: BTreeSet<String>,
    /// Ended or being stopped, and not replaced: each may call for a replacement.
    pub open: BTreeSet<String>,
    /// Live tasks their agent reports unhealthy.
    pub unhealthy: BTreeSet<String>,
    /// Live tasks by the job version they were made from, oldest first (a rolling update takes them in order).
    pub live_by_version: BTreeSet<(u64, String)>,
    /// Tasks not yet ended by the spec version they were made from: which older specs must be kept.
    pub unended_by_spec: BTreeSet<(u64, String)>,
}

impl JobTasks {
    /// Whether a task not yet ended was made from spec version `v`.
    fn uses_spec(&self, v: u64) -> bool {
        self.unended_by_spec.range((v, String::new())..).next().is_some_and(|(at, _)| *at == v)
    }
}

fn member(set: &mut BTreeSet<String>, id: &str, is: bool) {
    if is {
        if !set.contains(id) {
            set.insert(id.to_string());
        }
    } else {
        set.remove(id);
    }
}

/// What the applier hands on after each batch (to long-polls, to the event stream); not part of the state's value.
#[derive(Clone, Debug, Default)]
struct Transient<T>(T);

impl<T> PartialEq for Transient<T> {
    fn eq(&self, _: &Transient<T>) -> bool {
        true
    }
}

/// An agent as the cell stores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub registration: AgentRegistration,
    pub state: AgentState,
    pub lease_epoch: u64,
    pub registered_at_ms: u64,
    /// False while its lease is expired (decided by the leader, committed in a round).
    #[serde(default = "reachable_default")]
    pub reachable: bool,
    /// Raised whenever what the agent must run changes: its assignments long-poll waits on it.
    #[serde(default)]
    pub version: u64,
}

fn reachable_default() -> bool {
    true
}

impl AgentRecord {
    /// Whether new tasks may be placed on it.
    pub fn takes_work(&self) -> bool {
        self.state == AgentState::Active && self.reachable
    }
}

fn fingerprint(spec: &Spec) -> u64 {
    fenzo::fnv1a(&serde_json::to_vec(spec).expect("a Spec always serializes"))
}

fn describe(instances: &BTreeMap<String, u32>) -> String {
    instances.iter().map(|(l, n)| format!("{l}={n}")).collect::<Vec<_>>().join(",")
}

impl CellState {
    pub fn apply(&mut self, cmd: &Command) -> Response {
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

    fn apply_counted(&mut self, cmd: &Command) -> Response {
        let before = self.touched(cmd);
        let response = self.apply_inner(cmd);
        let Some((id, was)) = before else { return response };
        self.dirty_jobs.0.insert(id.clone());
        // One look at the job after the command: its new history entry, if its version moved, and its state.
        let Some(job) = self.jobs.get(&id) else { return response };
        let now = job.state;
        let changed =
            if Some(job.version) != was.map(|(_, version)| version) { job.history.last().cloned() } else { None };
        if let Some(h) = changed {
            self.event(Topic::Job, &h.what, &id, Some(&id), None, h.why.as_deref(), h.at_ms);
        }
        let was = was.map(|(state, _)| state);
        if was != Some(now) {
            if let Some(n) = was.and_then(|w| self.by_state.get_mut(&w)) {
                *n = n.saturating_sub(1);
            }
            self.by_state.retain(|_, n| *n > 0);
            *self.by_state.entry(now).or_insert(0) += 1;
        }
        response
    }

    /// The job a (non-batch) command touches, and its state and version before.
    fn touched(&self, cmd: &Command) -> Option<(String, Option<(JobState, u64)>)> {
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
            | Command::SetAgentState { .. } => return None,
        };
        Some((id.clone(), self.jobs.get(id).map(|j| (j.state, j.version))))
    }

    /// What a snapshot holds: the replicated records, without the derived fields. Records are shared, so this
    /// costs a fraction of a clone, and it is taken while applying waits. Every field is named, so a field added to
    /// `CellState` has to be placed on one side or the other here.
    pub fn snapshot(&self) -> SnapshotV2 {
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
            capacity_seq: _,
            dirty_jobs: _,
            capacity: _,
            touched: _,
            events: _,
        } = self;
        SnapshotV2 {
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
    pub fn from_snapshot(s: SnapshotV2) -> CellState {
        let SnapshotV2 { jobs, idempotency, agents, applied, tasks, seq, events_made } = s;
        let mut state =
            CellState { jobs, idempotency, agents, applied, tasks, seq, events_made, ..CellState::default() };
        state.reindex();
        state
    }

    /// Rebuilds what is derived (counts, time indexes).
    pub(crate) fn reindex(&mut self) {
        self.by_state.clear();
        for j in self.jobs.values() {
            *self.by_state.entry(j.state).or_insert(0) += 1;
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
        let ids: Vec<String> = self.tasks.keys().cloned().collect();
        for id in &ids {
            self.index_task(id);
        }
        for t in self.tasks.values() {
            self.by_job.entry(t.job_id.clone()).or_default().insert(t.id.clone());
            *self.task_counts.entry(t.state).or_insert(0) += 1;
            if let (true, Some(a)) = (t.state.on_agent(), &t.agent) {
                self.by_agent.entry(a.clone()).or_default().insert(t.id.clone());
            }
        }
        self.rebuild_capacity();
    }

    /// Rebuilds fenzo's view from the agents and the tasks on them. Every agent is added eligible first so the
    /// tasks already on a draining or unreachable one are counted, then eligibility is set.
    fn rebuild_capacity(&mut self) {
        self.capacity_seq.0 += 1;
        let mut cap = fenzo::ClusterSnapshot::new();
        for a in self.agents.values() {
            if let Err(e) = cap.add_agent(placement::agent(a, true)) {
                tracing::error!(error = %e, "agent not added to the capacity view");
            }
        }
        for t in self.tasks.values().filter(|t| t.state.on_agent()) {
            let (Some(agent), Some(job)) = (&t.agent, self.jobs.get(&t.job_id)) else { continue };
            if let Err(e) = cap.assign(&placement::request(t, &job.spec), agent, Some(&t.ports)) {
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

    /// Puts a task in the derived sets its current fields call for; called after every change to a task.
    fn index_task(&mut self, id: &str) {
        let Some(t) = self.tasks.get(id) else { return };
        if !self.dirty_jobs.0.contains(&t.job_id) {
            self.dirty_jobs.0.insert(t.job_id.clone());
        }
        let live = !t.is_terminal() && t.desired == Desired::Run;
        let open = (t.is_terminal() || t.desired == Desired::Stop) && t.replaced_by.is_none();
        let unhealthy = live && t.health == titan_api::task::TaskHealth::Unhealthy;
        let accepted = t.state == TaskState::Accepted && t.desired == Desired::Run;
        let transient = matches!(t.state, TaskState::Assigned | TaskState::Starting | TaskState::Killing);
        let version = t.job_version;
        let (spec_version, ended) = (t.spec_version, t.is_terminal());
        let created = t.created_at_ms;
        let job = self.job_tasks.entry(t.job_id.clone()).or_default();
        if live {
            job.live_by_version.insert((version, id.to_string()));
        } else {
            job.live_by_version.remove(&(version, id.to_string()));
        }
        if ended {
            job.unended_by_spec.remove(&(spec_version, id.to_string()));
        } else {
            job.unended_by_spec.insert((spec_version, id.to_string()));
        }
        member(&mut job.live, id, live);
        member(&mut job.open, id, open);
        member(&mut job.unhealthy, id, unhealthy);
        if accepted {
            self.accepted.insert((created, id.to_string()));
        } else {
            self.accepted.remove(&(created, id.to_string()));
        }
        member(&mut self.transient, id, transient);
        if t.is_terminal() {
            self.ended.insert((t.updated_at_ms, id.to_string()));
        }
    }

    /// Ended tasks that ended before `before_ms`, oldest first.
    pub fn ended_before(&self, before_ms: u64) -> impl Iterator<Item = &TaskRecord> {
        self.ended.iter().take_while(move |(at, _)| *at < before_ms).filter_map(|(_, id)| self.task(id))
    }

    /// Drops an ended task from the state (retention); false for a task that is not ended.
    fn forget_task(&mut self, id: &str) -> bool {
        let Some(t) = self.tasks.get(id).filter(|t| t.is_terminal()) else { return false };
        let (job, at, state) = (t.job_id.clone(), t.updated_at_ms, t.state);
        self.tasks.remove(id);
        self.ended.remove(&(at, id.to_string()));
        if let Some(set) = self.by_job.get_mut(&job) {
            set.remove(id);
        }
        if let Some(sets) = self.job_tasks.get_mut(&job) {
            sets.open.remove(id);
        }
        if let Some(n) = self.task_counts.get_mut(&state) {
            *n = n.saturating_sub(1);
        }
        true
    }

    /// The reconciler's sets for a job.
    pub fn job_tasks(&self, job: &str) -> Option<&JobTasks> {
        self.job_tasks.get(job)
    }

    /// Accepted tasks wanted running, oldest first (ties in id order).
    pub fn accepted_tasks(&self) -> impl Iterator<Item = &TaskRecord> {
        self.accepted.iter().filter_map(|(_, id)| self.task(id))
    }

    /// When the oldest Accepted task wanted running was created.
    pub fn oldest_accepted_ms(&self) -> Option<u64> {
        self.accepted.first().map(|(at, _)| *at)
    }

    /// Tasks in Assigned, Starting or Killing, in id order.
    pub fn transient_tasks(&self) -> impl Iterator<Item = &TaskRecord> {
        self.transient.iter().filter_map(|id| self.task(id))
    }

    /// Tasks in a state.
    pub fn task_count(&self, state: TaskState) -> u64 {
        self.task_counts.get(&state).copied().unwrap_or(0)
    }

    pub fn task(&self, id: &str) -> Option<&TaskRecord> {
        self.tasks.get(id).map(Arc::as_ref)
    }

    pub fn tasks(&self) -> impl Iterator<Item = &TaskRecord> {
        self.tasks.values().map(Arc::as_ref)
    }

    /// Every task of a job, terminal ones included, in id order.
    pub fn tasks_of_job<'a>(&'a self, job: &str) -> impl Iterator<Item = &'a TaskRecord> + 'a {
        self.by_job.get(job).into_iter().flatten().filter_map(|id| self.task(id))
    }

    /// The non-terminal tasks placed on an agent, in id order.
    pub fn tasks_on_agent<'a>(&'a self, agent: &str) -> impl Iterator<Item = &'a TaskRecord> + 'a {
        self.by_agent.get(agent).into_iter().flatten().filter_map(|id| self.task(id))
    }

    /// fenzo's view of the cell: agents, what runs on them, and which take new work.
    pub fn capacity(&self) -> &fenzo::ClusterSnapshot {
        &self.capacity.0
    }

    /// Tasks matching the query, in id order, one page at a time.
    pub fn list_tasks(&self, q: &titan_api::task::TaskQuery) -> (Vec<&TaskRecord>, Option<String>) {
        let limit = q.limit.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE) as usize;
        let state = q.state.as_deref();
        let matches = |t: &TaskRecord| {
            q.agent.as_ref().is_none_or(|a| t.agent.as_ref() == Some(a))
                && q.job.as_ref().is_none_or(|j| &t.job_id == j)
                && match state {
                    Some("active") => !t.is_terminal(),
                    Some(s) => t.state.as_str() == s,
                    None => true,
                }
                && q.page_token.as_ref().is_none_or(|p| &t.id > p)
        };
        let candidates: Box<dyn Iterator<Item = &TaskRecord>> = match (&q.job, &q.agent) {
            (Some(j), _) => Box::new(self.tasks_of_job(j)),
            (None, Some(a)) => Box::new(self.tasks_on_agent(a)),
            (None, None) => Box::new(self.tasks.values().map(Arc::as_ref)),
        };
        let mut page: Vec<&TaskRecord> = Vec::new();
        let mut more = false;
        for t in candidates.filter(|t| matches(t)) {
            if page.len() == limit {
                more = true;
                break;
            }
            page.push(t);
        }
        let next = if more { page.last().map(|t| t.id.clone()) } else { None };
        (page, next)
    }

    /// The jobs changed since the last call (see the `dirty_jobs` field).
    pub fn take_dirty_jobs(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.dirty_jobs.0)
    }

    /// See the `capacity_seq` field.
    pub fn capacity_seq(&self) -> u64 {
        self.capacity_seq.0
    }

    /// The counter agents' versions are taken from.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    fn bump(&mut self, agent: &str) {
        self.seq += 1;
        if let Some(a) = self.agents.get_mut(agent) {
            a.version = self.seq;
            self.touched.0.push((agent.to_string(), self.seq));
        }
    }

    /// The events of the commands applied since the last call, for the applier to stamp with their log index.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events.0)
    }

    /// The id of the last event made: events up to it came before this state.
    pub fn events_made(&self) -> u64 {
        self.events_made
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
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
        self.events.0.push(Event {
            event_id: self.events_made,
            index: 0,
            topic,
            kind: kind.to_string(),
            id: id.to_string(),
            job_id: job_id.map(String::from),
            agent_id: agent_id.map(String::from),
            reason: reason.map(String::from),
            at_ms,
        });
    }

    /// The agents whose assignments changed since the last call, each with its latest version.
    pub fn take_touched(&mut self) -> Vec<(String, u64)> {
        let mut all = std::mem::take(&mut self.touched.0);
        all.sort();
        all.reverse();
        all.dedup_by(|a, b| a.0 == b.0);
        all
    }

    /// Moves a task, keeping counts, indexes and capacity in step; false when the move is not allowed.
    fn transition(&mut self, id: &str, to: TaskState, reason: Option<Reason>, at_ms: u64) -> bool {
        let Some(t) = self.tasks.get_mut(id).map(Arc::make_mut) else { return false };
        let from = t.state;
        if !t.move_to(to, reason, at_ms) {
            return false;
        }
        if to.is_terminal() {
            t.before_unreachable = None;
        }
        let agent = t.agent.clone();
        let spec_version = t.spec_version;
        let (job, why) = (t.job_id.clone(), t.reason.filter(|_| to.is_terminal() || to == TaskState::Killing));
        self.event(Topic::Task, to.as_str(), id, Some(&job), agent.as_deref(), why.map(Reason::as_str), at_ms);
        self.index_task(id);
        if to.is_terminal() {
            self.drop_unused_spec(&job, spec_version);
        }
        if let Some(n) = self.task_counts.get_mut(&from) {
            *n = n.saturating_sub(1);
        }
        *self.task_counts.entry(to).or_insert(0) += 1;
        if let Some(a) = agent {
            if to.is_terminal() && from.on_agent() {
                self.capacity_seq.0 += 1;
                let _ = self.capacity.0.release(id);
                if let Some(set) = self.by_agent.get_mut(&a) {
                    set.remove(id);
                }
            }
            self.bump(&a);
        }
        true
    }

    /// Forgets an older spec of a job once no task made from it is left running.
    fn drop_unused_spec(&mut self, job: &str, spec_version: u64) {
        let in_use = self.job_tasks.get(job).is_some_and(|sets| sets.uses_spec(spec_version));
        let kept = self.jobs.get(job).is_some_and(|j| j.older_specs.contains_key(&spec_version));
        if kept && !in_use {
            if let Some(j) = self.jobs.get_mut(job).map(Arc::make_mut) {
                j.older_specs.remove(&spec_version);
            }
        }
    }

    fn create_task(&mut self, n: &NewTask, at_ms: u64) -> bool {
        if self.tasks.contains_key(&n.id) {
            return false;
        }
        let Some(job) = self.jobs.get(&n.job_id).filter(|j| j.state != JobState::Killed) else { return false };
        if let Some(old) = &n.replaces {
            match self.tasks.get(old) {
                // A task is replaced once it ended, or as soon as it is being stopped.
                Some(o)
                    if (o.is_terminal() || o.desired == Desired::Stop)
                        && o.replaced_by.is_none()
                        && o.job_id == n.job_id => {}
                _ => return false,
            }
        }
        let mut record = TaskRecord::accepted(
            n.id.clone(),
            n.job_id.clone(),
            job.version,
            placement::ask(&job.spec),
            n.attempt,
            n.replaces.clone(),
            n.retries_used,
            at_ms,
        );
        record.run = n.run;
        record.spec_version = job.spec_version;
        if let Some(old) = n.replaces.as_ref().and_then(|o| self.tasks.get_mut(o).map(Arc::make_mut)) {
            old.replaced_by = Some(n.id.clone());
        }
        self.tasks.insert(n.id.clone(), Arc::new(record));
        self.by_job.entry(n.job_id.clone()).or_default().insert(n.id.clone());
        *self.task_counts.entry(TaskState::Accepted).or_insert(0) += 1;
        self.index_task(&n.id);
        if let Some(old) = &n.replaces {
            self.index_task(old);
        }
        self.event(Topic::Task, "accepted", &n.id, Some(&n.job_id), None, None, at_ms);
        true
    }

    fn place_task(&mut self, p: &Placed, at_ms: u64) -> Result<(), String> {
        let task = self.tasks.get(&p.task_id).ok_or("no such task")?;
        if task.state != TaskState::Accepted || task.desired != Desired::Run {
            return Err(format!("the task is {} and wanted {:?}", task.state.as_str(), task.desired));
        }
        let agent = self.agents.get(&p.agent).ok_or("no such agent")?;
        if !agent.takes_work() {
            return Err(format!("agent is {} and reachable={}", agent.state.as_str(), agent.reachable));
        }
        if agent.lease_epoch != p.lease_epoch {
            return Err(format!("agent lease epoch is {}, the plan has {}", agent.lease_epoch, p.lease_epoch));
        }
        let job = self.jobs.get(&task.job_id).ok_or("no such job")?;
        let request = placement::request(task, &job.spec);
        self.capacity.0.assign(&request, &p.agent, Some(&p.ports)).map_err(|e| e.to_string())?;
        if let Some(t) = self.tasks.get_mut(&p.task_id).map(Arc::make_mut) {
            t.agent = Some(p.agent.clone());
            t.ports = p.ports.clone();
            t.lease_epoch = p.lease_epoch;
        }
        self.by_agent.entry(p.agent.clone()).or_default().insert(p.task_id.clone());
        self.transition(&p.task_id, TaskState::Assigned, None, at_ms);
        Ok(())
    }

    /// Asks for a task to stop: an unplaced one is killed at once, a placed one is killed by its agent.
    fn stop_task(&mut self, id: &str, reason: Reason, at_ms: u64) -> bool {
        let Some(t) = self.tasks.get_mut(id).map(Arc::make_mut) else { return false };
        if t.is_terminal() || t.desired == Desired::Stop {
            return false;
        }
        if t.state == TaskState::Accepted {
            t.desired = Desired::Stop;
            return self.transition(id, TaskState::Killed, Some(reason), at_ms);
        }
        t.desired = Desired::Stop;
        t.before_unreachable = None;
        let moved = self.transition(id, TaskState::Killing, Some(reason), at_ms);
        self.index_task(id);
        moved
    }

    fn set_reachable(&mut self, agent: &str, reachable: bool, at_ms: u64) {
        let Some(a) = self.agents.get_mut(agent) else { return };
        if a.reachable == reachable {
            return;
        }
        self.capacity_seq.0 += 1;
        a.reachable = reachable;
        let eligible = a.takes_work();
        let kind = if reachable { "reachable" } else { "unreachable" };
        self.event(Topic::Agent, kind, agent, None, Some(agent), None, at_ms);
        let _ = self.capacity.0.set_eligible(agent, eligible);
        let ids: Vec<String> = self.by_agent.get(agent).into_iter().flatten().cloned().collect();
        for id in ids {
            let Some(t) = self.tasks.get_mut(&id).map(Arc::make_mut) else { continue };
            if !reachable && t.state != TaskState::Unreachable {
                t.before_unreachable = Some(t.state);
                self.transition(&id, TaskState::Unreachable, None, at_ms);
            } else if reachable && t.state == TaskState::Unreachable {
                let back = match (t.desired, t.before_unreachable.take()) {
                    (Desired::Stop, _) => TaskState::Killing,
                    (Desired::Run, Some(s)) => s,
                    (Desired::Run, None) => TaskState::Running,
                };
                self.transition(&id, back, None, at_ms);
            }
        }
        self.bump(agent);
    }

    fn apply_round(&mut self, round: &Round, at_ms: u64) -> RoundOutcome {
        let mut out = RoundOutcome::default();
        for t in &round.ticks {
            let Some(job) = self.jobs.get_mut(&t.job_id).map(Arc::make_mut) else { continue };
            if job.last_tick_ms.is_some_and(|last| last >= t.at_ms) {
                continue;
            }
            job.last_tick_ms = Some(t.at_ms);
            if t.start {
                job.current_run = Some(t.at_ms);
            }
            let kind = if t.start { "run started" } else { "run skipped: the previous one is still going" };
            self.event(Topic::Job, kind, &t.job_id, Some(&t.job_id), None, None, t.at_ms);
        }
        for n in &round.create {
            if self.create_task(n, at_ms) {
                out.created += 1;
            }
        }
        for p in &round.place {
            match self.place_task(p, at_ms) {
                Ok(()) => out.placed += 1,
                Err(why) => out.refused.push((p.task_id.clone(), why)),
            }
        }
        for (id, reason) in &round.stop {
            self.stop_task(id, *reason, at_ms);
        }
        for (id, reason) in &round.lose {
            // A task already being stopped keeps the reason it was stopped for (a scaled-down task lost with its
            // agent is still not to be replaced).
            let stopping = self.tasks.get(id).is_some_and(|t| t.desired == Desired::Stop && t.reason.is_some());
            self.transition(id, TaskState::Lost, if stopping { None } else { Some(*reason) }, at_ms);
        }
        for a in &round.unreachable {
            self.set_reachable(a, false, at_ms);
        }
        for a in &round.reachable {
            self.set_reachable(a, true, at_ms);
        }
        for id in &round.forget {
            self.forget_task(id);
        }
        for a in &round.drained {
            let empty = self.tasks_on_agent(a).next().is_none();
            if let Some(rec) = self.agents.get_mut(a).filter(|r| r.state == AgentState::Draining && empty) {
                rec.state = AgentState::Drained;
                self.bump(a);
                self.event(Topic::Agent, "drained", a, None, Some(a), None, at_ms);
            }
        }
        out
    }

    fn apply_statuses(&mut self, agent: &str, lease_epoch: u64, statuses: &[TaskStatus], at_ms: u64) -> Response {
        let Some(a) = self.agents.get(agent) else {
            return Response::Rejected(Rejection::AgentNotFound { id: agent.to_string() });
        };
        if a.lease_epoch != lease_epoch {
            return Response::Rejected(Rejection::StaleEpoch {
                agent: agent.to_string(),
                given: lease_epoch,
                current: a.lease_epoch,
            });
        }
        let (mut applied, mut ignored) = (0, 0);
        for s in statuses {
            if self.apply_status(agent, s, at_ms) {
                applied += 1;
            } else {
                ignored += 1;
            }
        }
        Response::Statuses { applied, ignored }
    }

    fn apply_status(&mut self, agent: &str, s: &TaskStatus, at_ms: u64) -> bool {
        let Some(t) = self.tasks.get_mut(&s.task_id).map(Arc::make_mut) else { return false };
        if t.agent.as_deref() != Some(agent) || t.is_terminal() {
            return false;
        }
        let health_changed = t.health != s.health;
        t.health = s.health;
        if s.message.is_some() {
            t.message = s.message.clone();
        }
        let id = s.task_id.clone();
        let moved = match s.state {
            TaskState::Starting if t.state == TaskState::Assigned => {
                self.transition(&id, TaskState::Starting, None, at_ms)
            }
            TaskState::Running => match t.state {
                TaskState::Assigned | TaskState::Starting => self.transition(&id, TaskState::Running, None, at_ms),
                TaskState::Unreachable => {
                    t.before_unreachable = Some(TaskState::Running);
                    false
                }
                _ => false,
            },
            TaskState::Finished | TaskState::Failed | TaskState::Killed | TaskState::Rejected => {
                t.exit_code = s.exit_code;
                // A task stopped on request keeps the reason it was stopped for.
                let reason = match (s.state, t.desired) {
                    (TaskState::Killed, Desired::Stop) => t.reason,
                    _ => s.reason.or(t.reason),
                };
                self.transition(&id, s.state, reason, at_ms)
            }
            _ => false,
        };
        if health_changed && !moved {
            self.index_task(&id);
            self.bump(agent);
        }
        moved || health_changed
    }

    fn register_agent(&mut self, registration: &AgentRegistration, at_ms: u64) -> Response {
        self.capacity_seq.0 += 1;
        let id = registration.id.clone();
        let previous = self.agents.get(&id);
        let (epoch, state) = match previous {
            // A gone agent that comes back is active again; a draining one stays draining.
            Some(a) => (a.lease_epoch + 1, if a.state == AgentState::Gone { AgentState::Active } else { a.state }),
            None => (1, AgentState::Active),
        };
        let reshaped = previous.is_some_and(|a| {
            a.registration.resources != registration.resources
                || a.registration.attributes != registration.attributes
                || a.registration.hostname != registration.hostname
        });
        let is_new = previous.is_none();
        let version = previous.map(|a| a.version).unwrap_or(0);
        let record = AgentRecord {
            registration: registration.clone(),
            state,
            lease_epoch: epoch,
            registered_at_ms: at_ms,
            reachable: true,
            version,
        };
        if is_new {
            if let Err(e) = self.capacity.0.add_agent(placement::agent(&record, record.takes_work())) {
                tracing::error!(agent = %id, error = %e, "agent not added to the capacity view");
            }
        }
        self.agents.insert(id.clone(), record);
        // Its tasks: those it still runs (or has not started) carry on under the new epoch; the others died
        // with the agent's previous life.
        let running: BTreeSet<&String> = registration.running.iter().collect();
        let ids: Vec<String> = self.by_agent.get(&id).into_iter().flatten().cloned().collect();
        for tid in ids {
            let Some(t) = self.tasks.get_mut(&tid).map(Arc::make_mut) else { continue };
            let before = t.before_unreachable.take();
            if running.contains(&tid) || t.state == TaskState::Assigned || before == Some(TaskState::Assigned) {
                t.lease_epoch = epoch;
                if t.state == TaskState::Unreachable {
                    let back = if t.desired == Desired::Stop {
                        TaskState::Killing
                    } else {
                        before.unwrap_or(TaskState::Running)
                    };
                    self.transition(&tid, back, None, at_ms);
                }
            } else if t.desired == Desired::Stop {
                self.transition(&tid, TaskState::Killed, None, at_ms);
            } else {
                self.transition(&tid, TaskState::Lost, Some(Reason::AgentRestarted), at_ms);
            }
        }
        self.event(Topic::Agent, "registered", &id, None, Some(&id), None, at_ms);
        if reshaped {
            self.rebuild_capacity();
        } else if let Some(a) = self.agents.get(&id) {
            let _ = self.capacity.0.set_eligible(&id, a.takes_work());
        }
        self.bump(&id);
        Response::Agent { id, lease_epoch: epoch }
    }

    /// How many jobs are in each state.
    pub fn count(&self, state: JobState) -> u64 {
        self.by_state.get(&state).copied().unwrap_or(0)
    }

    fn apply_inner(&mut self, cmd: &Command) -> Response {
        match cmd {
            Command::PutJob { id, spec, idempotency_key, meta } => {
                self.forget_expired(meta.at_ms);
                // A proposal retried after an ambiguous failure carries the same id: it must not create twice.
                let slot = match self.jobs.entry(id.clone()) {
                    btree_map::Entry::Occupied(existing) => {
                        return Response::Job(JobRef { id: id.clone(), version: existing.get().version })
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
                let mut record = JobRecord {
                    id: id.clone(),
                    spec: spec.clone(),
                    counts: spec.counts(),
                    version: 0,
                    state: JobState::Enabled,
                    created_at_ms: meta.at_ms,
                    updated_at_ms: meta.at_ms,
                    history: Vec::new(),
                    last_tick_ms: None,
                    current_run: None,
                    spec_version: 1,
                    older_specs: BTreeMap::new(),
                };
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
                self.capacity_seq.0 += 1;
                // Tasks made from the spec being replaced keep running as it said until they end.
                let current = self.jobs.get(id).map(|j| j.spec_version);
                let keep = current.is_some_and(|v| self.job_tasks.get(id).is_some_and(|s| s.uses_spec(v)));
                self.modify(id, *if_version, |job| {
                    let old = std::mem::replace(&mut job.spec, spec.clone());
                    if keep {
                        job.older_specs.insert(job.spec_version, old);
                    }
                    job.counts = spec.counts();
                    let r = job.change(meta, "spec updated".into());
                    job.spec_version = job.version;
                    r
                })
            }
            Command::SetInstances { id, instances, if_version, meta } => self.modify(id, *if_version, |job| {
                Arc::make_mut(&mut job.spec).set_counts(instances);
                job.counts = instances.clone();
                job.change(meta, format!("instances {}", describe(instances)))
            }),
            Command::SetEnabled { id, enabled, meta } => self.modify(id, None, |job| {
                job.state = if *enabled { JobState::Enabled } else { JobState::Disabled };
                job.change(meta, if *enabled { "enabled".into() } else { "disabled".into() })
            }),
            Command::KillJob { id, meta } => self.modify(id, None, |job| {
                job.state = JobState::Killed;
                job.change(meta, "killed".into())
            }),
            Command::Batch(cmds) => Response::Batch(cmds.iter().map(|c| self.apply(c)).collect()),
            Command::RegisterAgent { registration, meta } => self.register_agent(registration, meta.at_ms),
            Command::Round { round, meta } => Response::Round(self.apply_round(round, meta.at_ms)),
            Command::TaskStatuses { agent, lease_epoch, statuses, meta } => {
                self.apply_statuses(agent, *lease_epoch, statuses, meta.at_ms)
            }
            Command::SetAgentState { id, state, meta } => match self.agents.get_mut(id) {
                None => Response::Rejected(Rejection::AgentNotFound { id: id.clone() }),
                Some(a) => {
                    a.state = *state;
                    self.capacity_seq.0 += 1;
                    let jobs: Vec<String> = self.tasks_on_agent(id).map(|t| t.job_id.clone()).collect();
                    self.dirty_jobs.0.extend(jobs);
                    let Some(a) = self.agents.get_mut(id) else { return Response::None };
                    let (epoch, eligible) = (a.lease_epoch, a.takes_work());
                    let _ = self.capacity.0.set_eligible(id, eligible);
                    self.bump(id);
                    self.event(Topic::Agent, state.as_str(), id, None, Some(id), meta.why.as_deref(), meta.at_ms);
                    Response::Agent { id: id.clone(), lease_epoch: epoch }
                }
            },
            Command::KillTask { id, meta } => match self.tasks.get(id) {
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

    fn modify(&mut self, id: &str, if_version: Option<u64>, f: impl FnOnce(&mut JobRecord) -> JobRef) -> Response {
        let Some(job) = self.jobs.get_mut(id).map(Arc::make_mut) else {
            return Response::Rejected(Rejection::NotFound { id: id.to_string() });
        };
        if job.state == JobState::Killed {
            return Response::Rejected(Rejection::Killed { id: id.to_string() });
        }
        if let Some(expected) = if_version {
            if expected != job.version {
                return Response::Rejected(Rejection::VersionMismatch {
                    id: id.to_string(),
                    expected,
                    current: job.version,
                });
            }
        }
        Response::Job(f(job))
    }

    fn forget_expired(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(IDEMPOTENCY_TTL_MS);
        while let Some(((at, key), ())) = self.idempotency_by_time.first_key_value() {
            if *at >= horizon {
                break;
            }
            let key = key.clone();
            self.idempotency_by_time.pop_first();
            self.idempotency.remove(&key);
        }
    }

    pub fn job(&self, id: &str) -> Option<&JobRecord> {
        self.jobs.get(id).map(Arc::as_ref)
    }

    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    pub fn jobs(&self) -> impl Iterator<Item = &JobRecord> {
        self.jobs.values().map(Arc::as_ref)
    }

    pub fn agent(&self, id: &str) -> Option<&AgentRecord> {
        self.agents.get(id)
    }

    pub fn agents(&self) -> impl Iterator<Item = &AgentRecord> {
        self.agents.values()
    }

    /// Jobs matching the query's filters, in id order, one page at a time.
    pub fn list(&self, q: &ListQuery) -> (Vec<&JobRecord>, Option<String>) {
        let limit = q.limit.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE) as usize;
        let state = q.state.as_deref().and_then(JobState::parse);
        let matches = |j: &JobRecord| {
            q.application.as_ref().is_none_or(|a| &j.spec.application_name == a)
                && q.owner.as_ref().is_none_or(|o| j.spec.owner.as_ref() == Some(o))
                && q.capacity_group.as_ref().is_none_or(|c| j.spec.capacity_group.as_ref() == Some(c))
                && match state {
                    Some(s) => j.state == s,
                    None => j.state != JobState::Killed,
                }
        };
        let from = match &q.page_token {
            Some(t) => std::ops::Bound::Excluded(t.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let mut page: Vec<&JobRecord> = Vec::new();
        let mut more = false;
        for (_, j) in self.jobs.range::<String, _>((from, std::ops::Bound::Unbounded)) {
            if !matches(j) {
                continue;
            }
            if page.len() == limit {
                more = true;
                break;
            }
            page.push(j);
        }
        let next = if more { page.last().map(|j| j.id.clone()) } else { None };
        (page, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use titan_api::job::{BodyFormat, JobSpec};

    fn spec(name: &str, app: &str) -> Arc<Spec> {
        let body = format!(
            r#"{{"name":"{name}","applicationName":"{app}","location":"dc1:2,dc2:1","cpus":1,"memory":512,"image":"busybox"}}"#
        );
        Arc::new(Spec::from(&JobSpec::parse(body.as_bytes(), BodyFormat::Json).expect("valid spec")))
    }

    fn meta(at_ms: u64) -> Meta {
        Meta { who: "alice".into(), why: Some("test".into()), at_ms, request: String::new() }
    }

    fn put(id: &str, key: Option<&str>, at: u64) -> Command {
        Command::PutJob {
            id: id.into(),
            spec: spec("web", "shop"),
            idempotency_key: key.map(String::from),
            meta: meta(at),
        }
    }

    fn job(id: &str, version: u64) -> Response {
        Response::Job(JobRef { id: id.into(), version })
    }

    #[test]
    fn a_task_runs_as_the_spec_it_was_made_from_until_it_ends() {
        let mut state = CellState::default();
        state.apply(&put("j1", None, 1));
        let create = |ids: &[&str]| Command::Round {
            round: Box::new(Round {
                create: ids.iter().map(|id| NewTask::fresh(id.to_string(), "j1", None)).collect(),
                ..Round::default()
            }),
            meta: meta(2),
        };
        state.apply(&create(&["t1"]));
        let mut v2 = (*spec("web", "shop")).clone();
        v2.image = "busybox:2".into();
        state.apply(&Command::UpdateJob { id: "j1".into(), spec: Arc::new(v2), if_version: None, meta: meta(3) });
        state.apply(&create(&["t2"]));
        let job = state.job("j1").expect("job");
        let image = |task: &str| state.task(task).map(|t| job.spec_for(t.spec_version).image.clone());
        assert_eq!(image("t1").as_deref(), Some("busybox"), "made from version 1, not started: still version 1");
        assert_eq!(image("t2").as_deref(), Some("busybox:2"));
        assert_eq!(job.older_specs.keys().collect::<Vec<_>>(), [&1]);
        // Once no task of version 1 is left, its spec is not kept.
        let stop = Round { stop: vec![("t1".into(), Reason::ScaledDown)], ..Round::default() };
        state.apply(&Command::Round { round: Box::new(stop), meta: meta(4) });
        assert!(state.job("j1").is_some_and(|j| j.older_specs.is_empty()));
        // t2 (spec version 2) keeps version 2 through the next update; with t2 gone, an update keeps nothing.
        let update =
            |at| Command::UpdateJob { id: "j1".into(), spec: spec("web", "shop"), if_version: None, meta: meta(at) };
        state.apply(&update(5));
        assert_eq!(state.job("j1").map(|j| j.older_specs.keys().copied().collect::<Vec<_>>()), Some(vec![2]));
        let stop = Round { stop: vec![("t2".into(), Reason::ScaledDown)], ..Round::default() };
        state.apply(&Command::Round { round: Box::new(stop), meta: meta(6) });
        state.apply(&update(7));
        assert!(state.job("j1").is_some_and(|j| j.older_specs.is_empty()));
    }

    #[test]
    fn accepted_tasks_come_oldest_first_and_the_oldest_is_known_without_a_scan() {
        let mut state = CellState::default();
        state.apply(&put("j1", None, 1));
        let round = |ids: &[&str]| {
            Box::new(Round {
                create: ids.iter().map(|id| NewTask::fresh(id.to_string(), "j1", None)).collect(),
                ..Round::default()
            })
        };
        // Ids sort the other way round from their ages.
        state.apply(&Command::Round { round: round(&["t-z"]), meta: meta(100) });
        state.apply(&Command::Round { round: round(&["t-m", "t-a"]), meta: meta(200) });
        let order: Vec<&str> = state.accepted_tasks().map(|t| t.id.as_str()).collect();
        assert_eq!(order, ["t-z", "t-a", "t-m"], "oldest first, ties by id");
        assert_eq!(state.oldest_accepted_ms(), Some(100));
        state.apply(&Command::Round {
            round: Box::new(Round { stop: vec![("t-z".into(), Reason::ScaledDown)], ..Round::default() }),
            meta: meta(300),
        });
        assert_eq!(state.oldest_accepted_ms(), Some(200), "a stopped task is no longer pending");
        state.reindex();
        assert_eq!(state.accepted_tasks().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["t-a", "t-m"]);
    }

    #[test]
    fn jobs_are_created_changed_and_killed_with_history() {
        let mut s = CellState::default();
        assert_eq!(s.apply(&put("j1", None, 1)), job("j1", 1));
        assert_eq!(s.apply(&put("j1", None, 1)), job("j1", 1), "a re-proposed create changes nothing");
        let scale = |v| Command::SetInstances {
            id: "j1".into(),
            instances: BTreeMap::from([("dc1".to_string(), 5)]),
            if_version: v,
            meta: meta(2),
        };
        assert_eq!(s.apply(&scale(Some(1))), job("j1", 2));
        assert_eq!(
            s.apply(&scale(Some(1))),
            Response::Rejected(Rejection::VersionMismatch { id: "j1".into(), expected: 1, current: 2 })
        );
        assert_eq!(s.job("j1").map(|j| j.view().instances), Some(BTreeMap::from([("dc1".to_string(), 5)])));
        let form = s.job("j1").map(|j| (j.spec.location.clone(), j.spec.locations.clone()));
        assert_eq!(form, Some((Some("dc1:5".to_string()), None)), "the shorthand the job was written with stays");
        let off = Command::SetEnabled { id: "j1".into(), enabled: false, meta: meta(3) };
        assert_eq!(s.apply(&off), job("j1", 3));
        assert_eq!(s.apply(&Command::KillJob { id: "j1".into(), meta: meta(4) }), job("j1", 4));
        assert_eq!(s.apply(&off), Response::Rejected(Rejection::Killed { id: "j1".into() }));
        let what: Vec<&str> =
            s.job("j1").map(|j| j.history.iter().map(|h| h.what.as_str()).collect()).unwrap_or_default();
        assert_eq!(what, vec!["created", "instances dc1=5", "disabled", "killed"]);
        assert_eq!((s.count(JobState::Enabled), s.count(JobState::Disabled), s.count(JobState::Killed)), (0, 0, 1));
        let mut rebuilt = s.clone();
        rebuilt.by_state.clear();
        rebuilt.reindex();
        assert_eq!(rebuilt.count(JobState::Killed), 1, "counts are rebuilt from the jobs");
        assert_eq!(
            s.apply(&Command::KillJob { id: "nope".into(), meta: meta(5) }),
            Response::Rejected(Rejection::NotFound { id: "nope".into() })
        );
    }

    #[test]
    fn idempotency_keys_return_the_first_answer_until_they_expire() {
        let mut s = CellState::default();
        assert_eq!(s.apply(&put("j1", Some("k"), 10)), job("j1", 1));
        assert_eq!(s.apply(&put("j2", Some("k"), 20)), job("j1", 1), "a retry gets the first job");
        assert_eq!(s.job_count(), 1);
        let other = Command::PutJob {
            id: "j3".into(),
            spec: spec("api", "shop"),
            idempotency_key: Some("k".into()),
            meta: meta(30),
        };
        assert_eq!(s.apply(&other), Response::Rejected(Rejection::IdempotencyKeyReused { key: "k".into() }));
        assert_eq!(
            s.apply(&put("j4", Some("k"), 10 + IDEMPOTENCY_TTL_MS + 1)),
            job("j4", 1),
            "expired keys are forgotten"
        );
    }

    #[test]
    fn a_batch_applies_in_order_and_answers_each_command() {
        let mut s = CellState::default();
        let batch = Command::Batch(vec![
            put("j1", None, 1),
            Command::KillJob { id: "j1".into(), meta: meta(2) },
            Command::KillJob { id: "j1".into(), meta: meta(3) },
        ]);
        assert_eq!(
            s.apply(&batch),
            Response::Batch(vec![
                job("j1", 1),
                job("j1", 2),
                Response::Rejected(Rejection::Killed { id: "j1".into() })
            ])
        );
    }

    #[test]
    fn every_event_of_a_batch_has_its_own_id_and_a_snapshot_goes_on_counting() {
        let mut s = CellState::default();
        let round = Box::new(Round {
            create: ["t1", "t2", "t3"].iter().map(|id| NewTask::fresh(id.to_string(), "j1", None)).collect(),
            ..Round::default()
        });
        s.apply(&Command::Batch(vec![put("j1", None, 1), Command::Round { round, meta: meta(2) }]));
        let ids: Vec<u64> = s.take_events().iter().map(|e| e.event_id).collect();
        assert_eq!(ids, vec![1, 2, 3, 4], "one entry, four events, four ids");
        let mut copy = Vec::new();
        crate::snapshot::write(&mut copy, &s.snapshot()).expect("serializes");
        let mut back = CellState::from_snapshot(crate::snapshot::read(&copy).expect("deserializes"));
        assert_eq!(back.events_made(), 4);
        back.apply(&Command::KillJob { id: "j1".into(), meta: meta(3) });
        assert_eq!(back.take_events().first().map(|e| e.event_id), Some(5), "the count is replicated");
    }

    #[test]
    fn agents_register_and_every_registration_raises_the_epoch() {
        let mut s = CellState::default();
        let reg = titan_api::agent::AgentRegistration {
            id: "a1".into(),
            hostname: "h".into(),
            addr: "127.0.0.1:1".into(),
            resources: titan_api::agent::AgentResources { cpus: 1.0, memory_mib: 1, disk_mib: 0, port_ranges: vec![] },
            attributes: Default::default(),
            running: vec![],
        };
        let cmd = Command::RegisterAgent { registration: Box::new(reg), meta: meta(5) };
        assert_eq!(s.apply(&cmd), Response::Agent { id: "a1".into(), lease_epoch: 1 });
        assert_eq!(s.apply(&cmd), Response::Agent { id: "a1".into(), lease_epoch: 2 });
        assert_eq!(s.agent("a1").map(|a| (a.state, a.registered_at_ms)), Some((AgentState::Active, 5)));
    }

    #[test]
    fn a_re_proposed_request_is_answered_not_applied_again() {
        let mut s = CellState::default();
        s.apply(&put("j1", None, 1));
        let kill = |request: &str, at| Command::SetEnabled {
            id: "j1".into(),
            enabled: false,
            meta: Meta { request: request.into(), ..meta(at) },
        };
        assert_eq!(s.apply(&kill("r1", 10)), job("j1", 2));
        assert_eq!(s.apply(&kill("r1", 10)), job("j1", 2), "the same request again: the first answer");
        assert_eq!(s.job("j1").map(|j| j.history.len()), Some(2), "applied once");
        assert_eq!(s.apply(&kill("r2", 20)), job("j1", 3), "a new request is applied");
        // Remembered ids expire, so the memory they take is bounded by the rate of writes.
        s.apply(&kill("r3", 20 + REQUEST_TTL_MS + 1));
        assert!(!s.applied.contains_key("r1"));
    }

    #[test]
    fn state_survives_a_snapshot_round_trip() {
        let mut s = CellState::default();
        s.apply(&put("j1", Some("key-1"), 1));
        s.apply(&Command::KillJob { id: "j1".into(), meta: Meta { request: "r1".into(), ..meta(2) } });
        let mut bytes = Vec::new();
        crate::snapshot::write(&mut bytes, &s.snapshot()).expect("a snapshot serializes");
        let mut back = CellState::from_snapshot(crate::snapshot::read(&bytes).expect("and deserializes"));
        assert_eq!(back, s, "derived indexes are rebuilt");
        // Expiry still works on the restored state.
        let later = Meta { request: "r9".into(), ..meta(10 + IDEMPOTENCY_TTL_MS) };
        back.apply(&Command::PutJob { id: "j2".into(), spec: spec("api", "shop"), idempotency_key: None, meta: later });
        assert!(back.idempotency.is_empty(), "the idempotency key expired");
        assert_eq!(back.applied.keys().collect::<Vec<_>>(), vec!["r9"], "r1 expired");
    }

    #[test]
    fn listing_filters_and_pages() {
        let mut s = CellState::default();
        for (i, app) in ["a", "b", "a", "a"].iter().enumerate() {
            let c =
                Command::PutJob { id: format!("j{i}"), spec: spec("web", app), idempotency_key: None, meta: meta(1) };
            s.apply(&c);
        }
        s.apply(&Command::KillJob { id: "j2".into(), meta: meta(2) });
        let q = ListQuery { application: Some("a".into()), limit: Some(1), ..ListQuery::default() };
        let (page, next) = s.list(&q);
        assert_eq!((page[0].id.as_str(), next.as_deref()), ("j0", Some("j0")));
        let (page, next) = s.list(&ListQuery { page_token: next, ..q.clone() });
        assert_eq!((page[0].id.as_str(), next.as_deref()), ("j3", None), "killed j2 is left out");
        let killed = ListQuery { state: Some("killed".into()), ..ListQuery::default() };
        assert_eq!(s.list(&killed).0.len(), 1);
    }
}
