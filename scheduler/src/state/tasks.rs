//! Tasks in the state: their records, every transition (counts, indexes and capacity kept in step), the derived
//! per-job sets the reconciler reads, and agents' status reports.

use super::*;

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
    pub(super) fn uses_spec(&self, v: u64) -> bool {
        self.unended_by_spec.range((v, String::new())..).next().is_some_and(|(at, _)| *at == v)
    }
}

pub(super) fn member(set: &mut BTreeSet<String>, id: &str, is: bool) {
    if is {
        if !set.contains(id) {
            set.insert(id.to_string());
        }
    } else {
        set.remove(id);
    }
}

impl CellState {
    /// Puts a task in the derived sets its current fields call for; called after every change to a task.
    pub(super) fn index_task(&mut self, id: &str) {
        let Some(t) = self.tasks.get(Id::of(id)) else { return };
        if !self.fx.dirty_jobs.contains(&t.job_id) {
            self.fx.dirty_jobs.insert(t.job_id.clone());
        }
        let live = !t.is_terminal() && t.desired == Desired::Run;
        let open = (t.is_terminal() || t.desired == Desired::Stop) && t.replaced_by.is_none();
        let unhealthy = live && t.health == titan_api::task::TaskHealth::Unhealthy;
        let accepted = t.state == TaskState::Accepted && t.desired == Desired::Run;
        let transient = matches!(t.state, TaskState::Assigned | TaskState::Starting | TaskState::Killing);
        let version = t.job_version;
        let (spec_version, ended) = (t.spec_version, t.is_terminal());
        let created = t.created_at_ms;
        if !self.job_tasks.contains_key(&t.job_id) {
            self.job_tasks.insert(t.job_id.clone(), JobTasks::default());
        }
        let Some(job) = self.job_tasks.get_mut(&t.job_id) else { return };
        // `live` and `live_by_version` hold the same tasks (a task's job version never changes), so the first,
        // looked up by the id alone, says whether the second needs a change: most calls need none.
        let was_live = job.live.contains(id);
        if live && !was_live {
            job.live_by_version.insert((version, id.to_string()));
        } else if !live && was_live {
            job.live_by_version.remove(&(version, id.to_string()));
        }
        // Entered once, when the task is made (or the state rebuilt), and left once, when it ends: not on every
        // change in between, which this is called for too.
        if ended {
            job.unended_by_spec.remove(&(spec_version, id.to_string()));
        } else if t.state == TaskState::Accepted && t.transitions.len() == 1 {
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
    pub(super) fn forget_task(&mut self, id: &str) -> bool {
        let Some(t) = self.tasks.get(Id::of(id)).filter(|t| t.is_terminal()) else { return false };
        let (job, at, state) = (t.job_id.clone(), t.updated_at_ms, t.state);
        self.tasks.remove(Id::of(id));
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
        self.tasks.get(Id::of(id)).map(Arc::as_ref)
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

    /// Moves a task, keeping counts, indexes and capacity in step; false when the move is not allowed. Its agent's
    /// assignments version is raised: the agent is woken to see the change.
    pub(super) fn transition(&mut self, id: &str, to: TaskState, reason: Option<Reason>, at_ms: u64) -> bool {
        self.transition_waking(id, to, reason, at_ms, true)
    }

    /// `transition`, waking the task's agent only if `wake`: a move the agent itself reported changes nothing in
    /// its assignments (they carry no task state; an ended task just leaves them), so it is not woken for it.
    fn transition_waking(&mut self, id: &str, to: TaskState, reason: Option<Reason>, at_ms: u64, wake: bool) -> bool {
        let Some(t) = self.tasks.get_mut(Id::of(id)).map(Arc::make_mut) else { return false };
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
                self.fx.capacity_moved = true;
                let _ = self.capacity.0.release(id);
                if let Some(set) = self.by_agent.get_mut(&a) {
                    set.remove(id);
                }
            }
            if wake {
                self.bump(&a);
            }
        }
        true
    }

    /// Forgets an older spec of a job once no task made from it is left running.
    pub(super) fn drop_unused_spec(&mut self, job: &str, spec_version: u64) {
        let in_use = self.job_tasks.get(job).is_some_and(|sets| sets.uses_spec(spec_version));
        let kept = self.jobs.get(job).is_some_and(|j| j.older_specs.contains_key(&spec_version));
        if kept && !in_use {
            if let Some(j) = self.jobs.get_mut(job).map(Arc::make_mut) {
                j.older_specs.remove(&spec_version);
            }
        }
    }

    pub(super) fn create_task(&mut self, n: &NewTask, at_ms: u64) -> bool {
        if self.tasks.contains_key(Id::of(&n.id)) {
            return false;
        }
        let Some(job) = self.jobs.get(&n.job_id).filter(|j| j.state != JobState::Killed) else { return false };
        if let Some(old) = &n.replaces {
            match self.tasks.get(Id::of(old)) {
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
        if let Some(old) = n.replaces.as_ref().and_then(|o| self.tasks.get_mut(Id::of(o)).map(Arc::make_mut)) {
            old.replaced_by = Some(n.id.clone());
        }
        self.tasks.insert(Key::from(n.id.as_str()), Arc::new(record));
        self.by_job.entry(n.job_id.clone()).or_default().insert(n.id.clone());
        *self.task_counts.entry(TaskState::Accepted).or_insert(0) += 1;
        self.index_task(&n.id);
        if let Some(old) = &n.replaces {
            self.index_task(old);
        }
        self.event(Topic::Task, "accepted", &n.id, Some(&n.job_id), None, None, at_ms);
        true
    }

    /// Asks for a task to stop: an unplaced one is killed at once, a placed one is killed by its agent.
    pub(super) fn stop_task(&mut self, id: &str, reason: Reason, at_ms: u64) -> bool {
        let Some(t) = self.tasks.get_mut(Id::of(id)).map(Arc::make_mut) else { return false };
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

    pub(super) fn apply_statuses(
        &mut self,
        agent: &str,
        lease_epoch: u64,
        statuses: &[crate::command::Status],
        at_ms: u64,
    ) -> Response {
        let Some(a) = self.agents.get(Id::of(agent)) else {
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

    pub(super) fn apply_status(&mut self, agent: &str, s: &crate::command::Status, at_ms: u64) -> bool {
        let Some(t) = self.tasks.get_mut(Id::of(&s.task_id)).map(Arc::make_mut) else { return false };
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
                self.transition_waking(&id, TaskState::Starting, None, at_ms, false)
            }
            TaskState::Running => match t.state {
                TaskState::Assigned | TaskState::Starting => {
                    self.transition_waking(&id, TaskState::Running, None, at_ms, false)
                }
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
                self.transition_waking(&id, s.state, reason, at_ms, false)
            }
            _ => false,
        };
        if health_changed && !moved {
            // The agent reported it: its assignments are unchanged, it is not woken.
            self.index_task(&id);
        }
        moved || health_changed
    }
}
