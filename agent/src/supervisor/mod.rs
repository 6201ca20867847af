//! The task supervisor: turns the cell's assignments into running tasks and their lives into status reports.
//!
//! `plan` decides, purely, what an assignments answer means for the tasks this agent holds; this module is the
//! thin shell that carries the actions out: it keeps the table of local tasks, checks a new task fits, and gives
//! each task a worker (`task`) that launches or adopts it, watches it (exit, OOM, health checks), stops it, and
//! cleans up after it. Workers queue their statuses (`status`); the daemon's reporter sends them.

pub mod plan;
pub mod status;
mod task;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter, IntGauge, IntGaugeVec, Registry};
use titan_api::agent::AgentResources;
use titan_api::task::{Assignment, Assignments, Reason, TaskHealth, TaskState, TaskStatus};
use tokio::sync::{watch, Notify};

use crate::runtime::{Runtime, RuntimeError};
use crate::volume::VolumeDriver;
use plan::{Abilities, Action, Held, Local, Phase, StopWhy};
use status::StatusQueue;

/// How often a running task's runtime state is polled.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);
/// Grace given to a task found after a restart that the cell no longer lists (its own grace is not known).
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);
/// Longest message sent with a status (the cell takes 4096 bytes).
const MAX_MESSAGE: usize = 1024;

/// How the supervisor runs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub agent_id: String,
    /// What the agent offers; new tasks must fit in what local tasks leave of it.
    pub capacity: AgentResources,
    pub poll: Duration,
    pub default_kill_grace: Duration,
    /// Where the wall-clock time of the last lease renewal is kept, so that an agent restarted while its cell is
    /// unreachable knows how long the lease has gone unrenewed; `None` keeps it in memory only.
    pub lease_file: Option<std::path::PathBuf>,
}

impl Settings {
    pub fn new(agent_id: impl Into<String>, capacity: AgentResources) -> Settings {
        Settings {
            agent_id: agent_id.into(),
            capacity,
            poll: DEFAULT_POLL,
            default_kill_grace: DEFAULT_KILL_GRACE,
            lease_file: None,
        }
    }
}

/// What the supervisor reports on the agent's `/metrics`.
#[derive(Clone)]
pub struct TaskMetrics {
    pub tasks: IntGaugeVec,
    pub start_seconds: Histogram,
    pub volume_used_bytes: IntGaugeVec,
    pub status_report_failures: IntCounter,
    pub plans_refused: IntCounter,
    pub pending_statuses: IntGauge,
    pub disconnect_stops: IntCounter,
}

/// Every `state` label of `titan_agent_tasks`, so a state with no task reads 0 rather than vanishing.
const STATE_LABELS: [&str; 8] = ["found", "starting", "running", "killing", "finished", "failed", "killed", "rejected"];

impl TaskMetrics {
    pub fn new(registry: &Registry) -> Result<TaskMetrics, prometheus::Error> {
        use crate::metrics::*;
        let r = titan_api::metrics::Registrar::new(registry, &[]);
        let tasks = r.gauge_vec(&TASKS)?;
        let start_seconds = r.histogram(&TASK_START_SECONDS)?;
        let volume_used_bytes = r.gauge_vec(&VOLUME_USED_BYTES)?;
        let status_report_failures = r.counter(&STATUS_REPORT_FAILURES)?;
        let plans_refused = r.counter(&PLANS_REFUSED)?;
        let pending_statuses = r.gauge(&PENDING_STATUSES)?;
        let disconnect_stops = r.counter(&DISCONNECT_STOPS)?;
        for s in STATE_LABELS {
            tasks.with_label_values(&[s]).set(0);
        }
        Ok(TaskMetrics {
            tasks,
            start_seconds,
            volume_used_bytes,
            status_report_failures,
            plans_refused,
            pending_statuses,
            disconnect_stops,
        })
    }
}

/// What a worker is told to do with its task after launching it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Run,
    Stop { grace: Duration, why: StopWhy },
}

/// One local task.
struct Entry {
    phase: Phase,
    /// Shown in `titan_agent_tasks`.
    state: &'static str,
    held: Held,
    kill_grace: Duration,
    /// The job's `disconnect.stopAfterSeconds`, from its assignment (unknown for a task found after a restart).
    stop_after: Option<Duration>,
    want: Option<watch::Sender<Want>>,
    worker: Option<tokio::task::JoinHandle<()>>,
}

struct Inner {
    settings: Settings,
    runtime: Runtime,
    volumes: Option<Arc<dyn VolumeDriver>>,
    metrics: TaskMetrics,
    /// The cell's name, learnt at registration; containers are labelled with it.
    cell: Mutex<String>,
    table: Mutex<BTreeMap<String, Entry>>,
    statuses: Mutex<StatusQueue>,
    queued: Notify,
}

/// The outcome of applying an assignments answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Acted,
    /// Not for the held epoch; `register_again` when the answer's epoch is newer than the agent's.
    Refused {
        register_again: bool,
    },
}

/// The supervisor; cheap to clone (all clones share one table).
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A status at this moment.
fn status(task_id: &str, state: TaskState, reason: Option<Reason>, message: Option<String>) -> TaskStatus {
    let message = message.map(|mut m| {
        if m.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !m.is_char_boundary(end) {
                end -= 1;
            }
            m.truncate(end);
        }
        m
    });
    TaskStatus {
        task_id: task_id.to_string(),
        state,
        reason,
        message,
        exit_code: None,
        health: TaskHealth::Unknown,
        at_ms: now_ms(),
    }
}

impl Supervisor {
    pub fn new(
        settings: Settings,
        runtime: Runtime,
        volumes: Option<Arc<dyn VolumeDriver>>,
        metrics: TaskMetrics,
    ) -> Supervisor {
        Supervisor {
            inner: Arc::new(Inner {
                settings,
                runtime,
                volumes,
                metrics,
                cell: Mutex::new(String::new()),
                table: Mutex::new(BTreeMap::new()),
                statuses: Mutex::new(StatusQueue::default()),
                queued: Notify::new(),
            }),
        }
    }

    pub fn agent_id(&self) -> &str {
        &self.inner.settings.agent_id
    }

    pub fn lease_file(&self) -> Option<&std::path::Path> {
        self.inner.settings.lease_file.as_deref()
    }

    /// Containers get the cell's name as a label; it is known once the agent registered.
    pub fn set_cell(&self, cell: &str) {
        *lock(&self.inner.cell) = cell.to_string();
    }

    /// Finds the tasks a previous run of this agent left running (Docker, by label) and holds them as found:
    /// the first assignments answer adopts those it lists with Run and stops the rest. Returns their ids.
    pub async fn recover(&self) -> Result<Vec<String>, RuntimeError> {
        let found = self.inner.runtime.list(&self.inner.settings.agent_id).await?;
        let mut table = lock(&self.inner.table);
        for f in &found {
            tracing::info!(task = %f.task_id, job = %f.job_id, container = %f.container_id, "found a task left running");
            table.entry(f.task_id.clone()).or_insert(Entry {
                phase: Phase::Found,
                state: "found",
                held: Held::default(),
                kill_grace: self.inner.settings.default_kill_grace,
                stop_after: f.stop_after,
                want: None,
                worker: None,
            });
        }
        self.inner.show(&table);
        Ok(table.iter().filter(|(_, e)| e.phase == Phase::Found).map(|(id, _)| id.clone()).collect())
    }

    /// Tasks this agent runs or holds (for `AgentRegistration::running`).
    pub fn running(&self) -> Vec<String> {
        lock(&self.inner.table).iter().filter(|(_, e)| e.phase != Phase::Ended).map(|(id, _)| id.clone()).collect()
    }

    /// Each local task's phase.
    pub fn phases(&self) -> BTreeMap<String, Phase> {
        lock(&self.inner.table).iter().map(|(id, e)| (id.clone(), e.phase)).collect()
    }

    /// Acts on an assignments answer, fetched at `fetched`, for an agent holding lease epoch `held`.
    pub fn apply(&self, held: Option<u64>, answer: &Assignments, fetched: Instant) -> Applied {
        let inner = &self.inner;
        let mut table = lock(&inner.table);
        let view: BTreeMap<String, Local> = table.iter().map(|(id, e)| (id.clone(), e.local())).collect();
        let actions = plan::plan(held, answer, &view, inner.settings.default_kill_grace);
        for action in actions {
            match action {
                Action::Refuse { held, offered, register_again } => {
                    inner.metrics.plans_refused.inc();
                    tracing::warn!(held = ?held, offered, version = answer.version, tasks = answer.tasks.len(),
                        register_again, "assignments refused: not for the lease epoch this agent holds");
                    return Applied::Refused { register_again };
                }
                Action::Start(a) => self.start(&mut table, a, fetched),
                Action::Adopt(a) => {
                    tracing::info!(task = %a.task_id, job = %a.job_id, "re-adopting a task found running");
                    let (tx, rx) = watch::channel(Want::Run);
                    let worker = tokio::spawn(task::adopt(inner.clone(), a.clone(), rx));
                    table.insert(
                        a.task_id.clone(),
                        Entry {
                            phase: Phase::Active,
                            state: "running",
                            held: Held::of(&a),
                            kill_grace: Duration::from_millis(a.kill_grace_ms),
                            stop_after: stop_after(&a),
                            want: Some(tx),
                            worker: Some(worker),
                        },
                    );
                }
                Action::Stop { task_id, grace, why, assignment } => {
                    inner.stop(&mut table, task_id, grace, why, assignment);
                }
                Action::ReportGone { task_id } => {
                    tracing::info!(task = %task_id, "asked to stop a task this agent does not have");
                    inner.report(status(&task_id, TaskState::Killed, None, Some("not on this agent".into())));
                }
                Action::Forget { task_id } => {
                    table.remove(&task_id);
                }
            }
        }
        inner.show(&table);
        Applied::Acted
    }

    fn start(&self, table: &mut BTreeMap<String, Entry>, a: Assignment, fetched: Instant) {
        let inner = &self.inner;
        let held: Vec<Held> = table.values().filter(|e| e.phase != Phase::Ended).map(|e| e.held.clone()).collect();
        let can = Abilities { volumes: inner.volumes.is_some(), mounts: inner.runtime.mounts_volumes() };
        let mut entry = Entry {
            phase: Phase::Ended,
            state: "rejected",
            held: Held::of(&a),
            kill_grace: Duration::from_millis(a.kill_grace_ms),
            stop_after: stop_after(&a),
            want: None,
            worker: None,
        };
        match plan::fit(&a, &inner.settings.capacity, &held, can) {
            Err(rejection) => {
                tracing::warn!(task = %a.task_id, job = %a.job_id, reason = ?rejection.reason,
                    message = %rejection.message, "task rejected");
                inner.report(status(&a.task_id, TaskState::Rejected, Some(rejection.reason), Some(rejection.message)));
            }
            Ok(()) => {
                tracing::info!(task = %a.task_id, job = %a.job_id, image = %a.image, cpus = a.cpus,
                    memory_mib = a.memory_mib, ports = ?a.ports, runtime = inner.runtime.kind(), "launching");
                let (tx, rx) = watch::channel(Want::Run);
                entry.phase = Phase::Active;
                entry.state = "starting";
                entry.want = Some(tx);
                entry.worker = Some(tokio::spawn(task::launch(inner.clone(), a.clone(), fetched, rx)));
            }
        }
        table.insert(a.task_id.clone(), entry);
    }

    /// The lease has gone `since_renewal` without a renewal: stops the running tasks whose job asked to stop after
    /// less than that (`disconnect.stopAfterSeconds`), with their normal stop. Returns how many it stopped.
    pub fn stop_disconnected(&self, since_renewal: Duration) -> usize {
        let inner = &self.inner;
        let mut table = lock(&inner.table);
        let view: BTreeMap<String, Local> = table.iter().map(|(id, e)| (id.clone(), e.local())).collect();
        let actions = plan::disconnected(&view, since_renewal);
        let stopped = actions.len();
        for action in actions {
            if let Action::Stop { task_id, grace, why, assignment } = action {
                tracing::warn!(task = %task_id, since_renewal_ms = since_renewal.as_millis() as u64,
                    "the lease has not been renewed for longer than the job's disconnect.stopAfterSeconds; stopping");
                inner.metrics.disconnect_stops.inc();
                inner.stop(&mut table, task_id, grace, why, assignment);
            }
        }
        if stopped > 0 {
            inner.show(&table);
        }
        stopped
    }

    /// How often to renew the lease for the tasks running here, at most every `lease_third` (`plan::beat_every`).
    pub fn beat_every(&self, lease_third: Duration) -> Duration {
        plan::beat_every(lock(&self.inner.table).values().map(|e| e.local()), lease_third)
    }

    /// Takes the next batch of statuses to report (empty when none are waiting).
    pub fn take_statuses(&self) -> Vec<TaskStatus> {
        let mut q = lock(&self.inner.statuses);
        let batch = q.take();
        self.inner.metrics.pending_statuses.set(q.len() as i64 + batch.len() as i64);
        batch
    }

    /// Puts back a batch the cell did not acknowledge.
    pub fn restore_statuses(&self, batch: Vec<TaskStatus>) {
        let mut q = lock(&self.inner.statuses);
        q.restore(batch);
        self.inner.metrics.pending_statuses.set(q.len() as i64);
    }

    /// A batch was acknowledged.
    pub fn acknowledged(&self) {
        self.inner.metrics.pending_statuses.set(lock(&self.inner.statuses).len() as i64);
    }

    /// Resolves once a status is queued (at once if one was queued since the last wait).
    pub async fn statuses_queued(&self) {
        if !lock(&self.inner.statuses).is_empty() {
            return;
        }
        self.inner.queued.notified().await;
    }

    pub fn metrics(&self) -> &TaskMetrics {
        &self.inner.metrics
    }

    /// The agent is stopping: workers end. Containers keep running, to be found and re-adopted by the next run;
    /// processes cannot outlive the agent, so they are stopped and removed.
    pub async fn shutdown(&self) {
        let entries: Vec<(String, Option<tokio::task::JoinHandle<()>>)> =
            lock(&self.inner.table).iter_mut().map(|(id, e)| (id.clone(), e.worker.take())).collect();
        for (_, worker) in &entries {
            if let Some(w) = worker {
                w.abort();
            }
        }
        if !self.inner.runtime.survives_agent() {
            for (id, _) in &entries {
                let grace = lock(&self.inner.table).get(id).map_or(Duration::ZERO, |e| e.kill_grace);
                let _ = self.inner.runtime.stop(id, grace).await;
                let _ = self.inner.runtime.remove(id).await;
            }
        }
        lock(&self.inner.table).clear();
    }
}

/// The stop-after an assignment carries.
fn stop_after(a: &Assignment) -> Option<Duration> {
    a.stop_after_ms.map(Duration::from_millis)
}

impl Entry {
    fn local(&self) -> Local {
        Local { phase: self.phase, kill_grace: self.kill_grace, stop_after: self.stop_after }
    }
}

impl Inner {
    /// Tells a task's worker to stop it (or starts one to stop a task found after a restart).
    fn stop(
        self: &Arc<Self>,
        table: &mut BTreeMap<String, Entry>,
        task_id: String,
        grace: Duration,
        why: StopWhy,
        assignment: Option<Assignment>,
    ) {
        let Some(entry) = table.get_mut(&task_id) else { return };
        tracing::info!(task = %task_id, why = ?why, grace_ms = grace.as_millis() as u64, "stopping");
        entry.phase = Phase::Stopping;
        entry.state = "killing";
        match &entry.want {
            Some(want) => {
                let _ = want.send(Want::Stop { grace, why });
            }
            None => {
                entry.worker = Some(tokio::spawn(task::stop_found(self.clone(), task_id, assignment, grace, why)));
            }
        }
    }

    fn report(&self, status: TaskStatus) {
        let mut q = lock(&self.statuses);
        q.push(status);
        self.metrics.pending_statuses.set(q.len() as i64);
        drop(q);
        self.queued.notify_one();
    }

    /// Sets `titan_agent_tasks` from the table.
    fn show(&self, table: &BTreeMap<String, Entry>) {
        for s in STATE_LABELS {
            let n = table.values().filter(|e| e.state == s).count();
            self.metrics.tasks.with_label_values(&[s]).set(n as i64);
        }
    }

    /// A worker's task moved on: running, or ended (it holds nothing any more).
    fn moved(&self, task_id: &str, state: &'static str, ended: bool) {
        let mut table = lock(&self.table);
        if let Some(e) = table.get_mut(task_id) {
            // A stop already under way shows as killing until it ends.
            if ended || e.phase != Phase::Stopping {
                e.state = state;
            }
            if ended {
                e.phase = Phase::Ended;
                e.held = Held::default();
                e.want = None;
                e.worker = None;
            }
        }
        self.show(&table);
    }

    fn cell(&self) -> String {
        lock(&self.cell).clone()
    }
}
