//! The scheduling loop: on the leader, after every change and at least every `max_round_interval_ms`, run the
//! reconciler on the applied state and commit its round. The thin async shell around `reconcile`.
//!
//! Rounds run one at a time and each waits for its commit, so the next round sees the previous one applied.
//! Every placement is re-validated by the state machine as it applies; what it refuses is counted as a plan
//! rejection and retried in a later round.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use titan_api::task::TaskState;

use crate::command::{Command, Meta};
use crate::reconcile::{self, Observed};
use crate::worker::{Next, Worker};

/// What only the leader knows about scheduling, reset when leadership changes.
#[derive(Default)]
pub struct Local {
    /// Why each Accepted task is not placed, from the latest round.
    pub pending: Mutex<BTreeMap<String, String>>,
    /// When agents were declared lost (ms), for the rate limit.
    lost_at: Mutex<VecDeque<u64>>,
    /// The state's capacity sequence when pending tasks last failed to fit, and when that was: they are tried
    /// again once it moves (or a while has passed, as a safety net).
    unplaced_at: Mutex<Option<(u64, Instant)>>,
    /// When a round last looked at every job; between those, rounds look at the jobs that changed.
    full_at: Mutex<Option<Instant>>,
    /// When a round last checked every agent's lease; between those, rounds leave reachability alone.
    leases_at: Mutex<Option<Instant>>,
}

/// How often a round checks every agent's lease: a tenth of the lease, and at least once per longest round
/// interval. Checking in every round cost a pass over every agent each time (a tenth of the leader's CPU with
/// 10,000 agents under load); a tenth of the lease later is still well within the grace before anything is lost.
fn lease_check_every(config: &crate::config::SchedulerConfig) -> Duration {
    Duration::from_millis((config.lease_ms / 10).clamp(1, config.max_round_interval_ms.max(1)))
}

/// Pending tasks are tried again at least this often even if nothing seems to have changed.
const RETRY_PENDING_EVERY: Duration = Duration::from_secs(10);

impl Local {
    pub fn pending(&self, task: &str) -> Option<String> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).get(task).cloned()
    }
}

#[derive(Clone)]
pub struct SchedulingMetrics {
    pub tasks: IntGaugeVec,
    rounds: Histogram,
    placements: IntCounter,
    plan_rejections: IntCounter,
    retries_placed: IntCounterVec,
    created: IntCounter,
    stopped: IntCounterVec,
    lost: IntCounterVec,
    agents_lost: IntCounter,
    breaker_open: IntGauge,
    pub(crate) pending: IntGauge,
    pub(crate) pending_by_reason: prometheus::IntGaugeVec,
    pub pending_age: IntGauge,
    app_pending: IntGaugeVec,
    pub(crate) app_restarts: IntCounterVec,
}

impl SchedulingMetrics {
    pub fn new(registry: &Registry, cell: &str, node: u64) -> Result<SchedulingMetrics, prometheus::Error> {
        use crate::metrics::scheduling::*;
        let r = crate::metrics::registrar(registry, cell, node);
        Ok(SchedulingMetrics {
            tasks: r.gauge_vec(&TASKS)?,
            rounds: r.histogram(&ROUND_SECONDS)?,
            placements: r.counter(&PLACEMENTS)?,
            plan_rejections: r.counter(&PLAN_REJECTIONS)?,
            retries_placed: r.counter_vec(&RETRIES_PLACED)?,
            created: r.counter(&CREATED)?,
            stopped: r.counter_vec(&STOPPED)?,
            lost: r.counter_vec(&LOST)?,
            agents_lost: r.counter(&AGENTS_LOST)?,
            breaker_open: r.gauge(&BREAKER_OPEN)?,
            pending: r.gauge(&PENDING)?,
            pending_by_reason: r.gauge_vec(&PENDING_BY_REASON)?,
            app_pending: r.gauge_vec(&crate::metrics::application::PENDING)?,
            app_restarts: r.counter_vec(&crate::metrics::application::RESTARTS)?,
            pending_age: r.gauge(&PENDING_AGE)?,
        })
    }
}

/// What the scheduler needs of its member (`member::Handle`): declared here, so that scheduling depends on no
/// member type and the member, which starts the worker, is the one that names scheduling.
pub(crate) trait Host: Send + Sync + 'static {
    fn raft(&self) -> &crate::raft::Raft;
    fn config(&self) -> &crate::config::CellConfig;
    fn is_leader(&self) -> bool;
    fn read(&self) -> std::sync::RwLockReadGuard<'_, crate::state::CellState>;
    /// The jobs changed since the last call.
    fn take_dirty_jobs(&self) -> std::collections::BTreeSet<String>;
    /// Raised whenever a task that did not fit might fit now; read under the state's read lock, it goes with
    /// that state.
    fn capacity_seq(&self) -> u64;
    /// When this member (as leader) last heard from each agent.
    fn heartbeats(&self) -> HashMap<String, crate::lease::Heard>;
    /// Resolves once a job changed or capacity moved since it last resolved.
    fn changed(&self) -> impl std::future::Future<Output = ()> + Send + '_;
    /// Runs `f` with the other locations' figures as this member heard them.
    fn with_elsewhere<T>(&self, f: impl FnOnce(&dyn crate::location::Elsewhere) -> T) -> T;
    /// Commits a round, settling after a timeout (see `Proposer::commit_command`).
    fn commit_round(
        &self,
        cmd: Command,
    ) -> impl std::future::Future<Output = Result<crate::command::RoundOutcome, titan_api::ApiError>> + Send;
}

/// The scheduler worker: while this member leads, after every change and at least every
/// `max_round_interval_ms` (never more often than `min_round_interval_ms`), one round.
pub(crate) struct Scheduler<H> {
    handle: H,
    local: Arc<Local>,
    metrics: SchedulingMetrics,
    changes: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, openraft::BasicNode>>,
    /// When this member started scheduling as the leader (ms), while it does.
    leader_since: Option<u64>,
    /// The leader and the member's Raft role as last seen: a change of either wakes the worker.
    seen: (Option<u64>, openraft::ServerState),
    last_round: Instant,
    rounds: u64,
}

impl<H: Host> Scheduler<H> {
    pub(crate) fn new(handle: H, local: Arc<Local>, metrics: SchedulingMetrics) -> Scheduler<H> {
        let changes = handle.raft().metrics();
        let seen = (None, openraft::ServerState::Learner);
        Scheduler { handle, local, metrics, changes, leader_since: None, seen, last_round: Instant::now(), rounds: 0 }
    }
}

impl<H: Host> Worker for Scheduler<H> {
    fn name(&self) -> String {
        "scheduler".into()
    }

    fn status(&self) -> String {
        match self.leader_since {
            Some(_) => format!("leading: {} rounds, {} tasks pending", self.rounds, self.metrics.pending.get()),
            None => "following".into(),
        }
    }

    async fn wait(&mut self) -> Next {
        let s = &self.handle.config().scheduler;
        let (min, max) =
            (Duration::from_millis(s.min_round_interval_ms), Duration::from_millis(s.max_round_interval_ms));
        // A round after a change to jobs or capacity, or to who leads; otherwise every `max` (leases, retries, the
        // other cells' figures). Raft's other metrics (replication progress, heartbeats) wake nothing: at 10,000
        // agents each needless round costs a pass over every lease.
        let sleep = tokio::time::sleep(max.saturating_sub(self.last_round.elapsed()));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        return Next::Done;
                    }
                    let now = {
                        let m = self.changes.borrow_and_update();
                        (m.current_leader, m.state)
                    };
                    if now != self.seen {
                        self.seen = now;
                        break;
                    }
                }
                () = self.handle.changed() => break,
                () = &mut sleep => break,
            }
        }
        tokio::time::sleep(min.saturating_sub(self.last_round.elapsed())).await;
        Next::Busy
    }

    async fn step(&mut self) -> Result<Next, String> {
        self.last_round = Instant::now();
        let handle = &self.handle;
        if !handle.is_leader() {
            if self.leader_since.take().is_some() {
                self.local.pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
            // Nothing here reads the changed jobs: let them go, or the set would grow to every job changed while
            // following and make each apply's insert into it slower. A member that takes over starts with a full
            // round anyway.
            handle.take_dirty_jobs();
            return Ok(Next::Idle);
        }
        if self.leader_since.is_none() {
            // Act only on a state that includes everything committed before this member took over.
            if let Err(e) = handle.raft().ensure_linearizable().await {
                tracing::debug!(error = %e, "not yet able to schedule as leader");
                return Ok(Next::Idle);
            }
            self.leader_since = Some(crate::clock::now_ms());
            *self.local.full_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
            *self.local.leases_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::info!("scheduling as leader");
        }
        round(handle, &self.local, &self.metrics, self.leader_since.unwrap_or(0)).await;
        self.rounds += 1;
        Ok(Next::Idle)
    }
}

async fn round(cell: &impl Host, local: &Local, metrics: &SchedulingMetrics, leader_since_ms: u64) {
    let started = Instant::now();
    let config = cell.config().scheduler.clone();
    let now_ms = crate::clock::now_ms();
    let lost_last_minute = {
        let mut lost = local.lost_at.lock().unwrap_or_else(|p| p.into_inner());
        while lost.front().is_some_and(|t| now_ms.saturating_sub(*t) > 60_000) {
            lost.pop_front();
        }
        lost.len() as u32
    };
    let check_leases = {
        let mut at = local.leases_at.lock().unwrap_or_else(|p| p.into_inner());
        let due = at.is_none_or(|t| t.elapsed() >= lease_check_every(&config));
        if due {
            *at = Some(Instant::now());
        }
        due
    };
    let heartbeats = check_leases.then(|| cell.heartbeats());
    let unplaced_at = *local.unplaced_at.lock().unwrap_or_else(|p| p.into_inner());
    let dirty = cell.take_dirty_jobs();
    let full = {
        let mut at = local.full_at.lock().unwrap_or_else(|p| p.into_inner());
        let due = at.is_none_or(|t| t.elapsed() >= Duration::from_millis(config.max_round_interval_ms));
        if due {
            *at = Some(Instant::now());
        }
        due
    };
    let (mut decision, capacity_seq, retry_pending) = {
        let state = cell.read();
        let seq = cell.capacity_seq();
        // Re-placing tasks that did not fit costs a full placement each round; only worth it when something
        // changed that could make them fit.
        let retry_pending = unplaced_at.is_none_or(|(s, at)| s != seq || at.elapsed() >= RETRY_PENDING_EVERY);
        let jobs = if full { None } else { Some(&dirty) };
        let ids = &mut || uuid::Uuid::new_v4().to_string();
        let decision = cell.with_elsewhere(|elsewhere| {
            let seen = Observed {
                now_ms,
                leader_since_ms,
                heartbeats: heartbeats.as_ref(),
                lost_last_minute,
                retry_pending,
                jobs,
                elsewhere: reconcile::Seen(elsewhere),
            };
            reconcile::reconcile(&state, &cell.config().cell, &seen, &config, ids)
        });
        (decision, seq, retry_pending)
    };
    metrics.rounds.observe(started.elapsed().as_secs_f64());
    if check_leases {
        metrics.breaker_open.set(i64::from(decision.breaker_open));
    }
    if decision.breaker_open {
        tracing::warn!(
            unreachable = decision.round.unreachable.len(),
            "too many agents silent at once: none declared lost"
        );
    }
    {
        let mut pending = local.pending.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = std::mem::take(&mut decision.pending);
        if retry_pending {
            *pending = fresh;
            let stays =
                if pending.is_empty() || decision.truncated { None } else { Some((capacity_seq, Instant::now())) };
            *local.unplaced_at.lock().unwrap_or_else(|p| p.into_inner()) = stays;
        } else {
            // Earlier reasons stand for the tasks not tried again; new tasks add theirs. Entries of tasks placed
            // since are ignored by readers (only an Accepted task shows one) and go at the next full round.
            pending.extend(fresh);
        }
        metrics.pending.set(pending.len() as i64);
        let quota = pending.values().filter(|why| why.starts_with("quota")).count();
        metrics.pending_by_reason.with_label_values(&["quota"]).set(quota as i64);
        metrics.pending_by_reason.with_label_values(&["no_fit"]).set((pending.len() - quota) as i64);
        let state = cell.read();
        let per_app = pending_by_application(&state, pending.iter().map(|(t, why)| (t.as_str(), why.as_str())));
        metrics.app_pending.reset();
        for ((app, reason), n) in per_app {
            metrics.app_pending.with_label_values(&[app, reason]).set(n as i64);
        }
    }
    if decision.round.is_empty() {
        return;
    }
    for agent in &decision.lost_agents {
        tracing::warn!(agent = %agent, "agent lost: its tasks are declared lost and will be replaced");
        local.lost_at.lock().unwrap_or_else(|p| p.into_inner()).push_back(now_ms);
        metrics.agents_lost.inc();
    }
    let r = &decision.round;
    for (_, reason) in &r.stop {
        metrics.stopped.with_label_values(&[reason.as_str()]).inc();
    }
    for (_, reason) in &r.lose {
        metrics.lost.with_label_values(&[reason.as_str()]).inc();
    }
    for a in &r.unreachable {
        tracing::warn!(agent = %a, "agent unreachable: lease expired");
    }
    for a in &r.reachable {
        tracing::info!(agent = %a, "agent reachable again");
    }
    let restarts = restarts_by_application(&cell.read(), &decision.round.create);
    let retries = decision.retries_placed;
    let counts = (r.create.len(), r.place.len(), r.stop.len(), r.lose.len());
    let meta = Meta {
        who: "scheduler".into(),
        why: None,
        at_ms: now_ms,
        request: uuid::Uuid::new_v4().to_string(),
        cell: cell.config().cell.clone(),
    };
    let cmd = Command::Round { round: Box::new(decision.round), meta };
    match cell.commit_round(cmd).await {
        Ok(outcome) => {
            metrics.created.inc_by(u64::from(outcome.created));
            for (app, n) in &restarts {
                metrics.app_restarts.with_label_values(&[app.as_str()]).inc_by(*n);
            }
            metrics.placements.inc_by(u64::from(outcome.placed));
            metrics.plan_rejections.inc_by(outcome.refused.len() as u64);
            // Counted as decided: a placement refused on re-validation is decided again next round.
            metrics.retries_placed.with_label_values(&["elsewhere"]).inc_by(u64::from(retries.elsewhere));
            metrics.retries_placed.with_label_values(&["where_failed"]).inc_by(u64::from(retries.where_failed));
            for (task, why) in outcome.refused.iter().take(5) {
                tracing::info!(task = %task, why = %why, "placement refused on re-validation; retried next round");
            }
            tracing::debug!(
                create = counts.0,
                place = counts.1,
                stop = counts.2,
                lose = counts.3,
                placed = outcome.placed,
                ms = started.elapsed().as_millis() as u64,
                "round committed"
            );
        }
        Err(e) => tracing::warn!(error = %e, "round not committed; the next one decides again"),
    }
}

/// Refreshes the task gauges from the state's counts.
/// Pending tasks per application and reason (`quota` or `no_fit`, as `titan_tasks_pending_by_reason`), from the
/// round's task -> reason map: O(pending). Tasks placed since the map was made are left out.
fn pending_by_application<'s, 'p>(
    state: &'s crate::state::CellState,
    pending: impl Iterator<Item = (&'p str, &'p str)>,
) -> BTreeMap<(&'s str, &'static str), u64> {
    let mut out = BTreeMap::new();
    for (task, why) in pending {
        let Some(t) = state.task(task).filter(|t| t.state == TaskState::Accepted) else { continue };
        let Some(j) = state.job(&t.job_id) else { continue };
        let reason = if why.starts_with("quota") { "quota" } else { "no_fit" };
        *out.entry((j.spec.application_name.as_str(), reason)).or_insert(0) += 1;
    }
    out
}

/// Replacements a round creates, per application: O(created).
fn restarts_by_application(
    state: &crate::state::CellState,
    create: &[crate::command::NewTask],
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for n in create.iter().filter(|n| n.replaces.is_some()) {
        if let Some(j) = state.job(&n.job_id) {
            *out.entry(j.spec.application_name.clone()).or_insert(0) += 1;
        }
    }
    out
}

pub(crate) fn observe_tasks(metrics: &SchedulingMetrics, state: &crate::state::CellState, now_ms: u64) {
    for s in TaskState::ALL {
        metrics.tasks.with_label_values(&[s.as_str()]).set(state.task_count(s) as i64);
    }
    let oldest = state.oldest_accepted_ms();
    metrics.pending_age.set(oldest.map(|t| now_ms.saturating_sub(t) / 1000).unwrap_or(0) as i64);
}
