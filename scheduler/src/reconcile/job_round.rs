//! One job's part of a round: what to create and stop (retries with backoff, scale-down order, drains and rolling
//! updates within the disruption budget, unhealthy replacement), and a scheduled job's ticks.

use super::*;

/// Most missed ticks a scheduled job catches up on at once: only the latest due one runs.
pub(super) const MAX_MISSED_TICKS: usize = 10_000;

/// A scheduled job's tick, when one is due: starts a run of `target` tasks (stopping the previous run's tasks
/// under `replace`), or records it skipped (`skip`, previous run still going). True when it decided the job's
/// round.
pub(super) fn tick(
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

/// What to do with a task that ended (or is being stopped) and has not been replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum After {
    /// Replace it once `not_before_ms` has passed, with `retries_used` user failures spent.
    Retry { not_before_ms: u64, retries_used: u32 },
    /// It counts as one of the job's instances, done.
    Done,
    /// It does not count (scaled down).
    Gone,
}

pub(super) fn after(t: &TaskRecord, spec: &Spec, config: &SchedulerConfig) -> After {
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
pub(super) struct JobRound<'a> {
    pub(super) state: &'a CellState,
    pub(super) job_id: &'a str,
    pub(super) spec: &'a Spec,
    pub(super) target: usize,
    /// Why surplus tasks are stopped (scaled down, or the job killed).
    pub(super) why: Reason,
    pub(super) sets: &'a crate::state::JobTasks,
    pub(super) doomed: &'a BTreeSet<String>,
    /// Whether any agent is draining (only then are live tasks looked at one by one for it).
    pub(super) draining: bool,
    /// For a scheduled job, the run whose tasks count (others are ignored).
    pub(super) run: Option<u64>,
    pub(super) scheduled: bool,
    /// Tasks made from an older job version than this are rolled over.
    pub(super) spec_version: u64,
}

impl JobRound<'_> {
    /// A task of the job that counts this round: for a scheduled job, one of the current run.
    pub(super) fn task(&self, id: &str) -> Option<&TaskRecord> {
        self.state.task(id).filter(|t| !self.scheduled || t.run == self.run)
    }

    pub(super) fn run(
        &self,
        now_ms: u64,
        config: &SchedulerConfig,
        new_id: &mut dyn FnMut() -> String,
        d: &mut Decision,
    ) {
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
pub(super) fn budget(spec: &Spec, target: usize) -> usize {
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
pub(super) fn victim_rank(state: &CellState, t: &TaskRecord) -> (u8, usize, std::cmp::Reverse<u64>) {
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
