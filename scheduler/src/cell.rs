//! A cell member: Raft over the storage seam, the state machine, and the job API implemented on top of them.
//!
//! Writes become `Command`s stamped with who, why and when, and are answered only once committed. A member that
//! is not the leader forwards the command to the leader over its kept Raft stream connection and relays the
//! answer, so clients may talk to any member. Reads are served from the member's own applied state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::post;
use axum::Router;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState, SnapshotPolicy};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use titan_api::agent::{AgentRegistration, AgentState, AgentView, Heartbeat, Lease};
use titan_api::job::JobSpec;
use titan_api::router::{ApiResult, HttpMetrics};
use titan_api::task::{
    Assignment, Assignments, AssignmentsQuery, StatusAck, StatusReport, TaskList, TaskQuery, TaskView,
};
use titan_api::view::{
    AddMember, ClusterView, HistoryEntry, JobList, JobRef, JobState, JobView, ListQuery, MemberView,
};
use titan_api::{Actor, ApiError, CellApi, Client, ErrorCode};
use tokio::sync::{mpsc, oneshot};

use crate::command::{Command, Meta, Rejection, Response};
use crate::config::CellConfig;
use crate::raft::{
    codec, membership, raft_routes, EarlyReplication, Forwarding, HttpNetwork, LogStore, NetworkMetrics, NodeId,
    Packed, PeerClient, Raft, SharedState, StateStore, Streams, PROPOSE,
};
use crate::spec::Spec;
use crate::store::Engine;

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum CellError {
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot open the store in {dir}: {message}")]
    Store { dir: String, message: String },
    #[error("raft: {0}")]
    Raft(String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The cell's own metrics; the HTTP ones live with the router.
#[derive(Clone)]
struct CellMetrics {
    term: IntGauge,
    is_leader: IntGauge,
    leader_changes: IntCounter,
    commit_latency: Histogram,
    last_log_index: IntGauge,
    applied_index: IntGauge,
    commit_index: IntGauge,
    apply_lag: IntGauge,
    log_entries: IntGauge,
    snapshots: IntCounter,
    store_bytes: IntGauge,
    jobs: IntGaugeVec,
    batch_size: Histogram,
    forwarded: IntCounter,
    membership_changes: IntCounterVec,
    timed_out: IntCounterVec,
    in_flight: IntGauge,
}

impl CellMetrics {
    fn new(registry: &Registry, cell: &str, node: u64) -> Result<CellMetrics, prometheus::Error> {
        let labels = |o: Opts| o.const_label("cell", cell).const_label("node", node.to_string());
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::with_opts(labels(Opts::new(name, help)))?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::with_opts(labels(Opts::new(name, help)))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let commit_latency = Histogram::with_opts(
            HistogramOpts::new("titan_raft_commit_latency_seconds", "Time from proposing a command to its commit")
                .const_label("cell", cell)
                .const_label("node", node.to_string())
                .buckets(vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
        )?;
        registry.register(Box::new(commit_latency.clone()))?;
        let jobs = IntGaugeVec::new(labels(Opts::new("titan_jobs", "Jobs by state")), &["state"])?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("titan_raft_proposal_batch_size", "Commands per Raft proposal")
                .const_label("cell", cell)
                .const_label("node", node.to_string())
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
        )?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(jobs.clone()))?;
        let membership_changes = IntCounterVec::new(
            labels(Opts::new(
                "titan_membership_changes_total",
                "Membership requests by outcome (add_learner, promote, left_learner, remove, refused)",
            )),
            &["outcome"],
        )?;
        registry.register(Box::new(membership_changes.clone()))?;
        let timed_out = IntCounterVec::new(
            labels(Opts::new("titan_writes_timed_out_total", "Writes answered `timeout`: not committed in time")),
            &["kind"],
        )?;
        registry.register(Box::new(timed_out.clone()))?;
        Ok(CellMetrics {
            term: gauge("titan_raft_term", "Current Raft term")?,
            is_leader: gauge("titan_raft_is_leader", "1 on the leader")?,
            leader_changes: counter("titan_raft_leader_changes_total", "Times the known leader changed")?,
            commit_latency,
            last_log_index: gauge("titan_raft_last_log_index", "Index of the last log entry")?,
            applied_index: gauge("titan_raft_applied_index", "Index of the last applied entry")?,
            commit_index: gauge("titan_raft_commit_index", "Index of the last entry known committed")?,
            apply_lag: gauge("titan_raft_apply_lag_entries", "Committed entries not yet applied")?,
            log_entries: gauge("titan_raft_log_entries", "Entries in the log (not yet compacted)")?,
            snapshots: counter("titan_raft_snapshots_total", "Snapshots built or installed")?,
            store_bytes: gauge("titan_store_size_bytes", "Bytes the store occupies on disk")?,
            jobs,
            batch_size,
            forwarded: counter("titan_raft_forwarded_writes_total", "Writes forwarded to the leader")?,
            membership_changes,
            timed_out,
            in_flight: gauge("titan_raft_proposals_in_flight", "Proposals this member is waiting on")?,
        })
    }
}

/// One answer per command of a proposal.
type Answers = Vec<Result<Response, ApiError>>;

/// The answer of the internal propose route.
#[derive(Debug, Serialize, Deserialize)]
enum Proposed {
    Answered(Answers),
    /// This member is not the leader (any more); the leader it knows, if any.
    NotLeader(Option<String>),
}

/// How a forwarded write ended.
enum Forwarded {
    Answered(Answers),
    /// Never delivered, or refused before proposing: safe to try again.
    Retry,
    /// Delivered but unanswered: it may or may not be committed.
    Unknown(String),
    /// Unanswered when the write's deadline came: it may still commit.
    TimedOut,
}

/// Most commands in one proposal.
pub const MAX_BATCH: usize = 512;
/// Proposals in flight at once from one member.
const PROPOSERS: usize = 2;

/// Where one command's answer goes.
type Answer = oneshot::Sender<Result<Response, ApiError>>;

/// A command queued for this member's proposers.
struct Waiter {
    cmd: Command,
    answer: Answer,
    /// When whoever waits for the answer gives up (the write's deadline).
    deadline: tokio::time::Instant,
}

/// Between SIGTERM and SIGKILL when a task is stopped (Docker's default).
pub const KILL_GRACE_MS: u64 = 10_000;

pub struct Cell {
    queue: mpsc::Sender<Waiter>,
    /// Proposals this member has in flight, from its proposers or proposed directly (see `commit`).
    proposing: Arc<AtomicUsize>,
    /// When the leader last heard from each agent (ms since the epoch). Leader-local: a new leader starts empty
    /// and hears from every live agent within a lease.
    leases: std::sync::Mutex<HashMap<String, u64>>,
    encoded: crate::raft::EncodedEntries,
    /// Kept connections to the other members, shared with Raft: write forwarding goes over them too.
    streams: Streams,
    config: CellConfig,
    raft: Raft,
    state: SharedState,
    committed: Arc<AtomicU64>,
    engine: Arc<dyn Engine>,
    peers: PeerClient,
    metrics: CellMetrics,
    scheduling: crate::scheduling::Local,
    scheduling_metrics: crate::scheduling::SchedulingMetrics,
    watchers: Arc<crate::watch::Watchers>,
    events: Arc<crate::watch::EventLog>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Cell {
    /// Opens the store, starts Raft, and bootstraps the cell when this is the lowest-numbered initial member of a
    /// fresh cell.
    pub async fn start(config: CellConfig, registry: &Registry) -> Result<Arc<Cell>, CellError> {
        config.validate()?;
        let dir = config.data_dir.join("raft");
        let store_err = |m: String| CellError::Store { dir: dir.display().to_string(), message: m };
        std::fs::create_dir_all(&dir).map_err(|e| store_err(e.to_string()))?;
        let engine = crate::store::open(config.raft.storage, &dir).map_err(|e| store_err(e.to_string()))?;
        let flush_seconds = Histogram::with_opts(
            HistogramOpts::new("titan_raft_log_flush_seconds", "Raft log writes made durable, one flush each")
                .const_label("cell", &config.cell)
                .const_label("node", config.node_id.to_string())
                .buckets(vec![0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 1.0]),
        )?;
        registry.register(Box::new(flush_seconds.clone()))?;
        let mut log = LogStore::open(engine.clone(), flush_seconds).map_err(|e| CellError::Raft(e.to_string()))?;
        let committed = log.committed_index();
        let encoded = log.encoded_entries();
        let snapshot_metrics = crate::raft::SnapshotMetrics::new(registry, &config.cell, config.node_id)?;
        let sm = StateStore::open(engine.clone(), &dir.join("snapshots"), snapshot_metrics)
            .map_err(|e| CellError::Raft(e.to_string()))?;
        let state = sm.state();
        let watchers = sm.watchers();
        let events = sm.events();

        let t = &config.raft;
        let raft_config = openraft::Config {
            cluster_name: config.cell.clone(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_min_ms,
            election_timeout_max: t.election_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_every),
            max_in_snapshot_log_to_keep: t.keep_logs,
            max_payload_entries: 1_000,
            snapshot_max_chunk_size: t.snapshot_chunk_kib * 1024,
            ..Default::default()
        }
        .validate()
        .map_err(|e| CellError::Raft(e.to_string()))?;
        let peers = PeerClient::new();
        let network_metrics = NetworkMetrics::new(registry, &config.cell, config.node_id)?;
        let streams = Streams::new(network_metrics);
        let network = HttpNetwork::new(encoded.clone(), streams.clone());
        let raft_cell = Arc::new(std::sync::OnceLock::new());
        let proposing: Arc<AtomicUsize> = Arc::default();
        if config.raft.early_append {
            log.replicate_early(EarlyReplication::new(
                config.node_id,
                raft_cell.clone(),
                streams.clone(),
                encoded.clone(),
                proposing.clone(),
            ));
        }
        let raft = Raft::new(config.node_id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| CellError::Raft(e.to_string()))?;
        let _ = raft_cell.set(raft.clone());
        streams.attach(raft.clone());

        let lowest = config.peers.keys().next().copied();
        if lowest == Some(config.node_id) && !raft.is_initialized().await.map_err(|e| CellError::Raft(e.to_string()))? {
            let members: BTreeMap<NodeId, BasicNode> =
                config.peers.iter().map(|(id, addr)| (*id, BasicNode::new(addr.to_string()))).collect();
            tracing::info!(cell = %config.cell, members = ?members.keys().collect::<Vec<_>>(), "bootstrapping the cell");
            if let Err(e) = raft.initialize(members).await {
                // Another start already initialized it; Raft carries on from its log.
                tracing::warn!(error = %e, "cell not bootstrapped");
            }
        }

        let metrics = CellMetrics::new(registry, &config.cell, config.node_id)?;
        let scheduling_metrics = crate::scheduling::SchedulingMetrics::new(registry, &config.cell, config.node_id)?;
        let (queue, rx) = mpsc::channel(MAX_BATCH * PROPOSERS * 4);
        let cell = Arc::new(Cell {
            queue,
            proposing,
            leases: Default::default(),
            encoded,
            streams,
            config,
            raft,
            state,
            committed,
            engine,
            peers,
            metrics,
            scheduling: Default::default(),
            scheduling_metrics,
            watchers,
            events,
        });
        tokio::spawn(watch(cell.clone()));
        tokio::spawn(crate::scheduling::run(Arc::downgrade(&cell)));
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..PROPOSERS {
            tokio::spawn(propose_batches(Arc::downgrade(&cell), rx.clone()));
        }
        Ok(cell)
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Every route this member serves: the public API, Raft's internal routes and write forwarding.
    pub fn router(self: &Arc<Self>, http: HttpMetrics) -> Router {
        let api: Arc<dyn CellApi> = self.clone();
        let forwarding = Arc::new(ProposeHere(self.clone()));
        let internal = raft_routes(self.raft.clone(), self.encoded.clone(), self.streams.clone(), forwarding).merge(
            Router::new()
                .route("/internal/read-index", axum::routing::get(read_index))
                .route("/internal/pending", post(pending_here))
                .with_state(self.clone()),
        );
        titan_api::router(api, http, internal)
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        if let Err(e) = self.engine.flush() {
            tracing::warn!(error = %e, "final flush");
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, crate::state_machine::CellState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn state_read(&self) -> std::sync::RwLockReadGuard<'_, crate::state_machine::CellState> {
        self.read()
    }

    /// The jobs changed since the last call (a brief write lock on the state).
    pub(crate) fn take_dirty_jobs(&self) -> BTreeSet<String> {
        self.state.write().unwrap_or_else(|p| p.into_inner()).take_dirty_jobs()
    }

    pub fn config(&self) -> &CellConfig {
        &self.config
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.config.node_id)
    }

    pub(crate) fn scheduling(&self) -> &crate::scheduling::Local {
        &self.scheduling
    }

    pub(crate) fn scheduling_metrics(&self) -> &crate::scheduling::SchedulingMetrics {
        &self.scheduling_metrics
    }

    /// When this member (as leader) last heard from each agent.
    pub(crate) fn heartbeats(&self) -> HashMap<String, u64> {
        self.leases().clone()
    }

    /// Commits the scheduler's own commands. A round that timed out may still commit, and the next round, decided
    /// on a state without it, would create the same tasks again under new ids: so after a timeout this waits until
    /// the member has applied every entry it holds or no longer leads (the entry is then committed or gone) before
    /// the scheduler may decide again.
    pub(crate) async fn commit_command(&self, cmd: Command) -> Result<Response, ApiError> {
        let answer = self.commit(cmd).await;
        if matches!(&answer, Err(e) if e.code == ErrorCode::Timeout) {
            self.settle().await;
        }
        answer
    }

    /// Waits until this member has applied its whole log, or does not lead, or shuts down.
    async fn settle(&self) {
        let mut changes = self.raft.metrics();
        let held = changes.borrow().last_log_index;
        tracing::info!(last_log_index = ?held, "a scheduler write timed out; waiting for it to settle");
        loop {
            {
                let m = changes.borrow_and_update();
                let applied = m.last_applied.map(|l| l.index);
                if applied >= held || m.current_leader != Some(self.config.node_id) {
                    return;
                }
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// When a write that starts now must be answered.
    fn write_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(self.config.raft.write_timeout_ms)
    }

    /// Counts the commands answered `timeout`, by kind.
    fn count_timeouts<'a>(&self, answered: impl IntoIterator<Item = (&'static str, &'a Result<Response, ApiError>)>) {
        for (kind, answer) in answered {
            if matches!(answer, Err(e) if e.code == ErrorCode::Timeout) {
                self.metrics.timed_out.with_label_values(&[kind]).inc();
                tracing::warn!(kind, timeout_ms = self.config.raft.write_timeout_ms, "a write timed out");
            }
        }
    }

    /// `beside`: the unreachable original this task may run beside (`reconcile::may_run_beside`), decided while
    /// the state was read.
    fn task_view(
        &self,
        t: &crate::task::TaskRecord,
        pending: &BTreeMap<String, String>,
        beside: Option<String>,
    ) -> TaskView {
        let mut view = t.view(&self.config.cell, pending.get(&t.id).cloned());
        view.may_run_beside = beside;
        view
    }

    /// Why these Accepted tasks wait, from the leader's latest rounds (asked of the leader by a follower; empty
    /// when it cannot be reached: the answer is informative, never required).
    async fn pending_reasons(&self, ids: Vec<String>) -> BTreeMap<String, String> {
        if ids.is_empty() {
            return BTreeMap::new();
        }
        let leader = match self.leader_client() {
            Ok(None) => {
                return ids.into_iter().filter_map(|id| self.scheduling.pending(&id).map(|r| (id, r))).collect()
            }
            Ok(Some(leader)) => leader,
            Err(_) => return BTreeMap::new(),
        };
        let Ok(body) = codec::encode(&ids) else { return BTreeMap::new() };
        let url = format!("{}/internal/pending", leader.base());
        let request =
            self.peers.http.post(url).timeout(Duration::from_secs(2)).header("content-type", codec::CONTENT_TYPE);
        match request.body(body).send().await {
            Ok(resp) => match resp.bytes().await {
                Ok(bytes) => codec::decode(&bytes).unwrap_or_default(),
                Err(_) => BTreeMap::new(),
            },
            Err(e) => {
                tracing::debug!(error = %e, "pending reasons not fetched from the leader");
                BTreeMap::new()
            }
        }
    }

    /// What an agent must run, from this member's applied state.
    fn assignments_now(&self, agent: &str) -> Result<(u64, Assignments), ApiError> {
        let s = self.read();
        let a = s.agent(agent).ok_or_else(|| ApiError::not_found("agent", agent))?;
        let mut tasks = Vec::new();
        for t in s.tasks_on_agent(agent) {
            let Some(job) = s.job(&t.job_id) else { continue };
            // The spec the task was made from, not a later one: a task of version N-1 that has not started yet
            // still runs N-1's image.
            let spec = job.spec_for(t.spec_version);
            tasks.push(Assignment {
                task_id: t.id.clone(),
                job_id: t.job_id.clone(),
                desired: t.desired,
                image: spec.image.clone(),
                command: spec.command.clone(),
                env: spec.env.clone(),
                cpus: t.ask.cpus,
                memory_mib: t.ask.memory_mib,
                disk_mib: t.ask.disk_mib,
                ports: t.ports.clone(),
                volumes: spec.volumes.iter().map(Into::into).collect(),
                health_check: spec.health_check.as_ref().map(Into::into),
                kill_grace_ms: KILL_GRACE_MS,
                stop_after_ms: spec.disconnect.as_ref().map(|d| d.stop_after_ms()),
            });
        }
        Ok((a.version, Assignments { lease_epoch: a.lease_epoch, version: a.version, tasks }))
    }

    fn meta(actor: Actor) -> Meta {
        Meta { who: actor.who, why: actor.why, at_ms: now_ms(), request: uuid::Uuid::new_v4().to_string() }
    }

    /// Commits a command, batched with whatever else is waiting and through the leader wherever it is, and answers
    /// within `raft.write_timeout_ms` (`timeout` when it could not tell). With no proposal in flight nothing would
    /// join it in a batch, so it is proposed right here, sparing the hand-off to a proposer task and back (two task
    /// wake-ups, each a thread wake-up on an idle machine).
    async fn commit(&self, cmd: Command) -> Result<Response, ApiError> {
        let kind = command_kind(&cmd);
        let deadline = self.write_deadline();
        let answer = match Proposing::first(&self.proposing) {
            Some(_proposing) => {
                self.metrics.batch_size.observe(1.0);
                self.propose(vec![cmd], deadline)
                    .await
                    .and_then(|mut a| a.pop().unwrap_or_else(|| Err(shutting_down())))
            }
            None => self.enqueue(vec![cmd], deadline).await.pop().unwrap_or_else(|| Err(shutting_down())),
        };
        self.count_timeouts([(kind, &answer)]);
        answer
    }

    /// Commits a job command and maps the state machine's answer.
    async fn write(&self, cmd: Command) -> Result<JobRef, ApiError> {
        match self.commit(cmd).await? {
            Response::Job(job) => Ok(job),
            Response::Rejected(r) => Err(rejection(r)),
            other => Err(ApiError::internal(format!("a job command got the answer {other:?}"))),
        }
    }

    fn agent_view(&self, a: &crate::state_machine::AgentRecord) -> AgentView {
        let r = &a.registration;
        AgentView {
            id: r.id.clone(),
            cell: self.config.cell.clone(),
            hostname: r.hostname.clone(),
            addr: r.addr.clone(),
            resources: r.resources.clone(),
            attributes: r.attributes.clone(),
            state: a.state,
            lease_epoch: a.lease_epoch,
            registered_at_ms: a.registered_at_ms,
            last_heartbeat_ms: self.leases().get(&r.id).copied(),
        }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits `cmds` as one entry, here when this member leads and through the leader otherwise, and answers each
    /// by `deadline`: Raft here, or the leader, may wait for a quorum forever, and nobody waits for the answer after
    /// it.
    async fn propose(&self, cmds: Vec<Command>, deadline: tokio::time::Instant) -> Result<Answers, ApiError> {
        let n = cmds.len();
        // Made once and shared: a retry, or a forward to the leader, copies nothing.
        let proposal = Arc::new(match <[Command; 1]>::try_from(cmds) {
            Ok([one]) => one,
            Err(cmds) => Command::Batch(cmds),
        });
        let cmds = match proposal.as_ref() {
            Command::Batch(cmds) => cmds.as_slice(),
            one => std::slice::from_ref(one),
        };
        loop {
            let start = Instant::now();
            // A member that knows another leads sends the commands straight there: its own Raft would only answer
            // that it does not lead (a round trip to its Raft task for every forwarded batch).
            let leader = match self.leader_elsewhere() {
                Some(leader) => Some(leader),
                // Dropping the write on timeout only drops its answer: Raft here keeps the entry, which commits
                // once a quorum is back (or is replaced by a new leader's log).
                None => match tokio::time::timeout_at(deadline, self.raft.client_write(proposal.clone()))
                    .await
                    .map_err(|_| timed_out(self.config.raft.write_timeout_ms))?
                {
                    Ok(r) => {
                        self.metrics.commit_latency.observe(start.elapsed().as_secs_f64());
                        return unbatch(r.data, n);
                    }
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => f
                        .leader_node
                        .filter(|_| f.leader_id != Some(self.config.node_id))
                        .map(|node| (f.leader_id.map(|l| l.to_string()).unwrap_or_default(), node.addr)),
                    Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                        return Err(ApiError::internal(e.to_string()))
                    }
                    Err(RaftError::Fatal(e)) => return Err(ApiError::new(ErrorCode::Unavailable, e.to_string())),
                },
            };
            if let Some((leader, addr)) = leader {
                self.metrics.forwarded.inc_by(n as u64);
                match self.forward(&leader, &addr, cmds, deadline).await {
                    Forwarded::Answered(a) if a.len() == n => return Ok(a),
                    Forwarded::Answered(a) => {
                        return Err(ApiError::internal(format!("{} answers for {n} commands", a.len())))
                    }
                    Forwarded::Retry => {}
                    Forwarded::TimedOut => return Err(timed_out(self.config.raft.write_timeout_ms)),
                    Forwarded::Unknown(e) => {
                        return Err(ApiError::new(
                            ErrorCode::Unavailable,
                            format!("the leader did not answer, the change may or may not be applied: {e}"),
                        ))
                    }
                }
            }
            // Every attempt so far was refused before anything was proposed, so nothing can commit later: checked
            // after the pause too, so that the last try is not one made with no time left (which would answer
            // `timeout`, as if something might still commit).
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + Duration::from_millis(50))).await;
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::new(ErrorCode::NotLeader, "no leader could commit the change in time"));
            }
        }
    }

    /// The leader and its address, when Raft here knows that another member leads.
    fn leader_elsewhere(&self) -> Option<(String, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader.filter(|l| *l != self.config.node_id)?;
        let addr = m.membership_config.membership().get_node(&leader)?.addr.clone();
        Some((leader.to_string(), addr))
    }

    /// Sends `cmds` to the leader (member `leader` at `addr`) over a kept stream connection, waiting for its
    /// answer until `deadline`.
    async fn forward(&self, leader: &str, addr: &str, cmds: &[Command], deadline: tokio::time::Instant) -> Forwarded {
        let body = match codec::encode(cmds) {
            Ok(b) => b,
            Err(e) => return Forwarded::Unknown(e.to_string()),
        };
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        let bytes = match self.streams.call(leader, addr, PROPOSE, &body, timeout).await {
            Ok(b) => b,
            Err(e) if e.never_sent() => return Forwarded::Retry,
            Err(_) if tokio::time::Instant::now() >= deadline => return Forwarded::TimedOut,
            Err(e) => return Forwarded::Unknown(e.to_string()),
        };
        match codec::decode::<Proposed>(&bytes) {
            Ok(Proposed::Answered(a)) => Forwarded::Answered(a),
            Ok(Proposed::NotLeader(_)) => Forwarded::Retry,
            Err(e) => Forwarded::Unknown(e.to_string()),
        }
    }

    /// Queues commands for this member's proposers and waits for each answer until `deadline`; those unanswered
    /// then are answered `timeout` (a proposer still holding one finds its answer unwanted and moves on).
    async fn enqueue(&self, cmds: Vec<Command>, deadline: tokio::time::Instant) -> Answers {
        let n = cmds.len();
        let mut answers = Vec::with_capacity(n);
        let waited = tokio::time::timeout_at(deadline, async {
            let mut waiting = Vec::with_capacity(n);
            for cmd in cmds {
                let (answer, rx) = oneshot::channel();
                // A full queue waits here, under the same deadline.
                let queued = self.queue.send(Waiter { cmd, answer, deadline }).await.is_ok();
                waiting.push(queued.then_some(rx));
            }
            for rx in waiting {
                let answer = match rx {
                    Some(rx) => rx.await.unwrap_or_else(|_| Err(shutting_down())),
                    None => Err(shutting_down()),
                };
                answers.push(answer);
            }
        })
        .await;
        if waited.is_err() {
            answers.resize_with(n, || Err(timed_out(self.config.raft.write_timeout_ms)));
        }
        answers
    }

    /// Makes learner `id` a voter once it has answered and holds the log up to `target` (bounded by
    /// `raft.member_catch_up_ms`), and only when a majority of the voters before and after answer.
    async fn promote(&self, id: NodeId, addr: &str, target: u64) -> Result<(), ApiError> {
        let wait = Duration::from_millis(self.config.raft.member_catch_up_ms);
        let caught_up = self
            .raft
            .wait(Some(wait))
            .metrics(
                |m| match &m.replication {
                    // This member no longer leads: the wait is over either way.
                    None => true,
                    Some(r) => membership::caught_up(r.get(&id).copied().flatten().map(|l| l.index), target),
                },
                "the new learner to catch up",
            )
            .await;
        let matched = match caught_up {
            Ok(m) => m.replication.as_ref().and_then(|r| r.get(&id).copied()).flatten().map(|l| l.index),
            Err(_) => {
                let m = self.raft.metrics().borrow().clone();
                m.replication.as_ref().and_then(|r| r.get(&id).copied()).flatten().map(|l| l.index)
            }
        };
        if self.raft.metrics().borrow().state != ServerState::Leader {
            return Err(ApiError::new(ErrorCode::NotLeader, "leadership moved while the member caught up; retry"));
        }
        let Some(m) = matched else {
            // Nothing ever answered there: a mistyped address, or a member not started. The caller's mistake, so a
            // 4xx, and undone, so that the refused request leaves nothing behind (not even a learner to retry).
            tracing::warn!(id, addr, "a new member never answered; it is removed again");
            self.metrics_membership_change("refused");
            self.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id]))).await?;
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                format!(
                    "no member answered at {addr} within {wait:?}, so member {id} was not added: check the address \
                     and that `titan server` runs there with an empty data directory"
                ),
            )
            .with_field("addr"));
        };
        if !membership::caught_up(matched, target) {
            self.metrics_membership_change("left_learner");
            tracing::warn!(id, addr, matched = m, target, "a new member did not catch up; it stays a learner");
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "member {id} answers but holds the log to {m} of {target} after {wait:?}: it stays a learner, \
                     without a vote, and goes on catching up; add it again to give it its vote once it has"
                ),
            ));
        }
        let (voters, _) = self.members();
        let mut after = voters.clone();
        after.insert(id);
        self.quorum_after(&voters, &after)?;
        tracing::info!(id, "the new member caught up; it becomes a voter");
        self.metrics_membership_change("promote");
        self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await
    }

    /// Commits a membership change within `raft.write_timeout_ms`: a voter lost during it would otherwise leave the
    /// request waiting for a commit that may never come.
    async fn change_membership(&self, change: ChangeMembers<NodeId, BasicNode>) -> Result<(), ApiError> {
        let wait = Duration::from_millis(self.config.raft.write_timeout_ms);
        match tokio::time::timeout(wait, self.raft.change_membership(change, false)).await {
            Ok(r) => r.map(|_| ()).map_err(membership_error),
            Err(_) => Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("the membership change was not committed within {wait:?}; it may still be applied"),
            )),
        }
    }

    /// Refuses a change from `before` to `after` voters that a majority of either could not commit: a voter answers
    /// when this member (the leader) heard from it within a few election timeouts.
    fn quorum_after(&self, before: &BTreeSet<NodeId>, after: &BTreeSet<NodeId>) -> Result<(), ApiError> {
        let recent = Duration::from_millis(3 * self.config.raft.election_max_ms);
        let mut answering = self.streams.answered_within(recent);
        answering.insert(self.config.node_id);
        membership::quorum_after_change(before, after, &answering).map_err(|e| {
            self.metrics_membership_change("refused");
            ApiError::new(ErrorCode::Conflict, e.to_string())
        })
    }

    fn metrics_membership_change(&self, outcome: &str) {
        self.metrics.membership_changes.with_label_values(&[outcome]).inc();
    }

    fn members(&self) -> (BTreeSet<NodeId>, BTreeMap<NodeId, String>) {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let voters = m.membership().voter_ids().collect();
        let nodes = m.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
        (voters, nodes)
    }

    /// On the leader: the log index a linearizable read must see.
    async fn read_index_here(&self) -> Result<u64, ApiError> {
        match self.raft.ensure_linearizable().await {
            Ok(id) => Ok(id.map(|l| l.index).unwrap_or(0)),
            Err(e) => Err(ApiError::new(ErrorCode::NotLeader, format!("cannot confirm leadership: {e}"))),
        }
    }

    fn leader_client(&self) -> Result<Option<Client>, ApiError> {
        let m = self.raft.metrics().borrow().clone();
        match m.current_leader {
            Some(l) if l == self.config.node_id => Ok(None),
            Some(l) => {
                let addr = m
                    .membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.addr.clone())
                    .ok_or_else(|| ApiError::new(ErrorCode::NotLeader, "the leader's address is unknown"))?;
                Ok(Some(Client::with_http(&addr, self.peers.http.clone())))
            }
            None => Err(ApiError::new(ErrorCode::NotLeader, "no leader is elected")),
        }
    }
}

fn rejection(r: Rejection) -> ApiError {
    match r {
        Rejection::NotFound { id } => ApiError::not_found("job", &id),
        Rejection::VersionMismatch { id, expected, current } => {
            ApiError::new(ErrorCode::VersionMismatch, format!("job {id} is at version {current}, not {expected}"))
                .with_field("If-Match")
        }
        Rejection::Killed { id } => ApiError::new(ErrorCode::Conflict, format!("job {id} was killed")),
        Rejection::IdempotencyKeyReused { key } => {
            ApiError::new(ErrorCode::Conflict, format!("Idempotency-Key {key:?} was used before for a different spec"))
                .with_field("Idempotency-Key")
        }
        Rejection::TaskNotFound { id } => ApiError::not_found("task", &id),
        Rejection::TaskTerminal { id, state } => {
            ApiError::new(ErrorCode::Conflict, format!("task {id} already ended: {}", state.as_str()))
        }
        Rejection::AgentNotFound { id } => ApiError::not_found("agent", &id),
        Rejection::StaleEpoch { agent, given, current } => ApiError::new(
            ErrorCode::Conflict,
            format!("lease epoch {given} of agent {agent} is stale (current {current}): register again"),
        )
        .with_field("leaseEpoch"),
    }
}

/// A task's failed attempt as the job view shows it, when the task ended failed, lost or rejected.
fn failure_of(t: &crate::task::TaskRecord) -> Option<titan_api::view::Failure> {
    use titan_api::task::TaskState;
    matches!(t.state, TaskState::Failed | TaskState::Lost | TaskState::Rejected).then(|| titan_api::view::Failure {
        task_id: t.id.clone(),
        state: t.state.as_str().to_string(),
        reason: t.reason.map(|r| r.as_str().to_string()),
        message: t.message.clone(),
        exit_code: t.exit_code,
        at_ms: t.updated_at_ms,
    })
}

fn forwarded_error(e: titan_api::ClientError) -> ApiError {
    match e {
        titan_api::ClientError::Api { error, .. } => error,
        other => ApiError::new(ErrorCode::NotLeader, other.to_string()),
    }
}

/// A proposal in flight, counted while it lives (a dropped request future included).
struct Proposing(Arc<AtomicUsize>);

impl Proposing {
    fn new(count: &Arc<AtomicUsize>) -> Proposing {
        count.fetch_add(1, Ordering::AcqRel);
        Proposing(count.clone())
    }

    /// Counts a proposal only when it is the only one.
    fn first(count: &Arc<AtomicUsize>) -> Option<Proposing> {
        count.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).ok().map(|_| Proposing(count.clone()))
    }
}

impl Drop for Proposing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One proposer: takes every command waiting (up to `MAX_BATCH`), commits them as one entry, answers each.
async fn propose_batches(cell: std::sync::Weak<Cell>, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Waiter>>>) {
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(w) => batch.push(w),
                None => return,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
        }
        let Some(cell) = cell.upgrade() else { return };
        let Some(Live { cmds, answers, deadline, abandoned }) = live(batch) else {
            tracing::debug!("every queued write of a batch timed out before it was proposed");
            continue;
        };
        if abandoned > 0 {
            tracing::debug!(abandoned, "queued writes timed out before they were proposed");
        }
        let _proposing = Proposing::new(&cell.proposing);
        cell.metrics.batch_size.observe(cmds.len() as f64);
        // An answer nobody waits for any more (its request timed out or went away) is dropped, never an error.
        match cell.propose(cmds, deadline).await {
            Ok(results) => {
                for (tx, a) in answers.into_iter().zip(results) {
                    let _ = tx.send(a);
                }
            }
            Err(e) => {
                for tx in answers {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }
}

/// What a proposer commits of the waiters it took.
struct Live {
    cmds: Vec<Command>,
    answers: Vec<Answer>,
    /// The latest of their deadlines: past it nobody waits for the proposal.
    deadline: tokio::time::Instant,
    /// Waiters left out because they had given up.
    abandoned: usize,
}

/// The waiters of a batch still waiting; `None` when none is. One that gave up was answered `timeout` (or its
/// request went away), so proposing it would only commit a change late that its caller may already be retrying.
fn live(batch: Vec<Waiter>) -> Option<Live> {
    let taken = batch.len();
    let waiting: Vec<Waiter> = batch.into_iter().filter(|w| !w.answer.is_closed()).collect();
    let deadline = waiting.iter().map(|w| w.deadline).max()?;
    let abandoned = taken - waiting.len();
    let (cmds, answers) = waiting.into_iter().map(|w| (w.cmd, w.answer)).unzip();
    Some(Live { cmds, answers, deadline, abandoned })
}

/// The answer to a write not confirmed by its deadline.
fn timed_out(timeout_ms: u64) -> ApiError {
    ApiError::new(
        ErrorCode::Timeout,
        format!(
            "the write was not committed within {timeout_ms} ms (no quorum?); it may still commit, so retry it with \
             the same Idempotency-Key, which is safe: it cannot make a second job"
        ),
    )
}

/// A command's kind, for metrics and logs.
fn command_kind(cmd: &Command) -> &'static str {
    match cmd {
        Command::PutJob { .. } => "put_job",
        Command::UpdateJob { .. } => "update_job",
        Command::SetInstances { .. } => "set_instances",
        Command::SetEnabled { .. } => "set_enabled",
        Command::KillJob { .. } => "kill_job",
        Command::Batch(_) => "batch",
        Command::RegisterAgent { .. } => "register_agent",
        Command::Round { .. } => "round",
        Command::TaskStatuses { .. } => "task_statuses",
        Command::KillTask { .. } => "kill_task",
        Command::SetAgentState { .. } => "set_agent_state",
    }
}

fn shutting_down() -> ApiError {
    ApiError::new(ErrorCode::Unavailable, "the member is shutting down")
}

/// Splits the state machine's answer to a proposal of `n` commands into one answer per command.
fn unbatch(r: Response, n: usize) -> Result<Answers, ApiError> {
    match r {
        Response::Batch(answers) if answers.len() == n => Ok(answers.into_iter().map(Ok).collect()),
        one if n == 1 => Ok(vec![Ok(one)]),
        other => Err(ApiError::internal(format!("a batch of {n} got the answer {other:?}"))),
    }
}

/// Takes the commands followers forward over the Raft stream.
struct ProposeHere(Arc<Cell>);

impl Forwarding for ProposeHere {
    /// When this member leads, forwarded commands join its own queue, so they are committed in the same entries as
    /// its local writes rather than one entry per forwarded batch.
    fn propose(&self, body: Vec<u8>) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<u8>>> + Send + 'static>> {
        let cell = self.0.clone();
        Box::pin(async move {
            let cmds: Vec<Command> = codec::decode(&body).map_err(std::io::Error::other)?;
            let leads = cell.raft.metrics().borrow().current_leader == Some(cell.config.node_id);
            let answer = if leads {
                // The follower gives up at its own deadline, which came first; this one frees the stream (it
                // answers nothing else until then) and the queue's waiters.
                let kinds: Vec<&'static str> = cmds.iter().map(command_kind).collect();
                let answers = cell.enqueue(cmds, cell.write_deadline()).await;
                cell.count_timeouts(kinds.into_iter().zip(&answers));
                Proposed::Answered(answers)
            } else {
                Proposed::NotLeader(cell.leader_elsewhere().map(|(_, addr)| addr))
            };
            codec::encode(&answer).map_err(std::io::Error::other)
        })
    }
}

/// Why the given Accepted tasks wait, as this member (the leader) last found.
async fn pending_here(State(cell): State<Arc<Cell>>, Packed(ids): Packed<Vec<String>>) -> HttpResponse {
    let reasons: BTreeMap<String, String> =
        ids.into_iter().filter_map(|id| cell.scheduling.pending(&id).map(|r| (id, r))).collect();
    Packed(reasons).into_response()
}

/// The leader's read index for a follower's consistent read.
async fn read_index(State(cell): State<Arc<Cell>>) -> HttpResponse {
    Packed(cell.read_index_here().await).into_response()
}

/// Keeps the cell's gauges current from Raft's metrics, and the slower ones on a timer.
async fn watch(cell: Arc<Cell>) {
    let mut rx = cell.raft.metrics();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut leader = None;
    let mut snapshot = None;
    loop {
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tick.tick() => {
                cell.metrics.store_bytes.set(cell.engine.size_on_disk() as i64);
                let counts: Vec<(JobState, u64)> = {
                    let s = cell.read();
                    [JobState::Enabled, JobState::Disabled, JobState::Killed].into_iter().map(|st| (st, s.count(st))).collect()
                };
                for (state, n) in counts { cell.metrics.jobs.with_label_values(&[state.as_str()]).set(n as i64); }
                crate::scheduling::observe_tasks(&cell.scheduling_metrics, &cell.read(), now_ms());
            }
        }
        let m = rx.borrow().clone();
        let metrics = &cell.metrics;
        metrics.in_flight.set(cell.proposing.load(Ordering::Acquire) as i64);
        metrics.term.set(m.current_term as i64);
        metrics.is_leader.set(i64::from(m.state == ServerState::Leader));
        if m.current_leader != leader {
            if m.current_leader.is_some() {
                metrics.leader_changes.inc();
                tracing::info!(leader = ?m.current_leader, term = m.current_term, "leader changed");
            }
            leader = m.current_leader;
        }
        if m.snapshot != snapshot {
            if m.snapshot.is_some() {
                metrics.snapshots.inc();
            }
            snapshot = m.snapshot;
        }
        let last = m.last_log_index.unwrap_or(0);
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        let committed = cell.committed.load(Ordering::Relaxed).max(applied);
        let purged = m.purged.map(|l| l.index + 1).unwrap_or(0);
        metrics.last_log_index.set(last as i64);
        metrics.applied_index.set(applied as i64);
        metrics.commit_index.set(committed as i64);
        metrics.apply_lag.set(committed.saturating_sub(applied) as i64);
        metrics.log_entries.set(last.saturating_sub(purged) as i64 + i64::from(m.last_log_index.is_some()));
    }
}

impl CellApi for Cell {
    fn submit_job(&self, spec: JobSpec, idempotency_key: Option<String>, actor: Actor) -> ApiResult<'_, JobRef> {
        Box::pin(async move {
            let id = uuid::Uuid::new_v4().to_string();
            self.write(Command::PutJob {
                id,
                spec: Arc::new(Spec::from(&spec)),
                idempotency_key,
                meta: Cell::meta(actor),
            })
            .await
        })
    }

    fn list_jobs(&self, query: ListQuery) -> ApiResult<'_, JobList> {
        Box::pin(async move {
            let s = self.read();
            let (page, next) = s.list(&query);
            Ok(JobList { jobs: page.into_iter().map(|j| j.view()).collect(), next_page_token: next })
        })
    }

    fn get_job(&self, id: String) -> ApiResult<'_, JobView> {
        Box::pin(async move {
            let (mut view, mut summary, accepted) = {
                let s = self.read();
                let view = s.job(&id).map(|j| j.view()).ok_or_else(|| ApiError::not_found("job", &id))?;
                let mut summary = titan_api::view::TaskSummary::default();
                let mut accepted = Vec::new();
                for t in s.tasks_of_job(&id) {
                    *summary.by_state.entry(t.state.as_str().to_string()).or_insert(0) += 1;
                    if t.state == titan_api::task::TaskState::Accepted {
                        accepted.push(t.id.clone());
                    }
                    if let Some(failure) = failure_of(t) {
                        titan_api::view::LocationFailures::record(&mut summary.failures, &self.config.cell, failure);
                    }
                }
                (view, summary, accepted)
            };
            for (task_id, reason) in self.pending_reasons(accepted).await {
                summary.pending.push(titan_api::view::PendingTask { task_id, reason });
            }
            view.tasks = Some(summary);
            Ok(view)
        })
    }

    fn job_history(&self, id: String) -> ApiResult<'_, Vec<HistoryEntry>> {
        Box::pin(async move {
            self.read().job(&id).map(|j| j.history.clone()).ok_or_else(|| ApiError::not_found("job", &id))
        })
    }

    fn update_job(&self, id: String, spec: JobSpec, if_match: Option<u64>, actor: Actor) -> ApiResult<'_, JobRef> {
        Box::pin(async move {
            self.write(Command::UpdateJob {
                id,
                spec: Arc::new(Spec::from(&spec)),
                if_version: if_match,
                meta: Cell::meta(actor),
            })
            .await
        })
    }

    fn set_instances(
        &self,
        id: String,
        instances: BTreeMap<String, u32>,
        if_match: Option<u64>,
        actor: Actor,
    ) -> ApiResult<'_, JobRef> {
        Box::pin(async move {
            self.write(Command::SetInstances { id, instances, if_version: if_match, meta: Cell::meta(actor) }).await
        })
    }

    fn set_enabled(&self, id: String, enabled: bool, actor: Actor) -> ApiResult<'_, JobRef> {
        Box::pin(async move { self.write(Command::SetEnabled { id, enabled, meta: Cell::meta(actor) }).await })
    }

    fn kill_job(&self, id: String, actor: Actor) -> ApiResult<'_, JobRef> {
        Box::pin(async move { self.write(Command::KillJob { id, meta: Cell::meta(actor) }).await })
    }

    fn cluster(&self) -> ApiResult<'_, ClusterView> {
        Box::pin(async move {
            let m = self.raft.metrics().borrow().clone();
            let (voters, nodes) = self.members();
            let members = nodes
                .into_iter()
                .map(|(id, addr)| {
                    let role = if Some(id) == m.current_leader {
                        "leader"
                    } else if voters.contains(&id) {
                        "follower"
                    } else {
                        "learner"
                    };
                    MemberView { id, addr, role: role.into() }
                })
                .collect();
            let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
            Ok(ClusterView {
                cell: self.config.cell.clone(),
                node_id: self.config.node_id,
                leader: m.current_leader,
                term: m.current_term,
                members,
                last_log_index: m.last_log_index.unwrap_or(0),
                commit_index: self.committed.load(Ordering::Relaxed).max(applied),
                applied_index: applied,
                snapshot_index: m.snapshot.map(|l| l.index),
            })
        })
    }

    fn add_member(&self, member: AddMember) -> ApiResult<'_, ClusterView> {
        Box::pin(async move {
            if let Some(leader) = self.leader_client()? {
                return leader.add_member(&member).await.map_err(forwarded_error);
            }
            let (voters, nodes) = self.members();
            if let Some(addr) = nodes.get(&member.id) {
                if *addr != member.addr {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        format!(
                            "member {} is already at {addr}; remove it before adding it at another address",
                            member.id
                        ),
                    )
                    .with_field("addr"));
                }
                if voters.contains(&member.id) {
                    return self.cluster().await;
                }
            } else if let Some((other, _)) = nodes.iter().find(|(_, a)| **a == member.addr) {
                return Err(ApiError::new(ErrorCode::Conflict, format!("{} is member {other}'s address", member.addr))
                    .with_field("addr"));
            }
            tracing::info!(id = member.id, addr = %member.addr, "adding member as a learner");
            self.metrics_membership_change("add_learner");
            let node = BasicNode::new(member.addr.clone());
            // Not blocking: openraft's blocking add returns at once for a learner that never answered (a lag under
            // `replication_lag_threshold`, 5000 entries, counts as up to date even with nothing matched).
            let added = self.raft.add_learner(member.id, node, false).await.map_err(membership_error)?;
            self.promote(member.id, &member.addr, added.log_id.index).await?;
            self.cluster().await
        })
    }

    fn remove_member(&self, id: u64) -> ApiResult<'_, ClusterView> {
        Box::pin(async move {
            if let Some(leader) = self.leader_client()? {
                return leader.remove_member(id).await.map_err(forwarded_error);
            }
            let (voters, nodes) = self.members();
            if !nodes.contains_key(&id) {
                return Err(ApiError::not_found("member", &id.to_string()));
            }
            if voters.contains(&id) && voters.len() == 1 {
                return Err(ApiError::new(ErrorCode::Conflict, "cannot remove the last member"));
            }
            if voters.contains(&id) {
                let after = voters.iter().copied().filter(|v| *v != id).collect();
                self.quorum_after(&voters, &after)?;
            }
            tracing::info!(id, "removing member");
            self.metrics_membership_change("remove");
            let change = if voters.contains(&id) {
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            };
            self.change_membership(change).await?;
            self.cluster().await
        })
    }

    fn register_agent(&self, registration: AgentRegistration) -> ApiResult<'_, AgentView> {
        Box::pin(async move {
            let id = registration.id.clone();
            let at_ms = now_ms();
            let meta = Meta { who: format!("agent:{id}"), why: None, at_ms, request: uuid::Uuid::new_v4().to_string() };
            let cmd = Command::RegisterAgent { registration: Box::new(registration.clone()), meta };
            let lease_epoch = match self.commit(cmd).await? {
                Response::Agent { lease_epoch, .. } => lease_epoch,
                other => return Err(ApiError::internal(format!("a registration got the answer {other:?}"))),
            };
            tracing::info!(agent = %id, lease_epoch, "agent registered");
            // The agent's next calls (its assignments long-poll) come to this member: answer only once it has
            // applied the registration, or a lagging follower would call the agent unknown.
            let mut changes = self.raft.metrics();
            let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.raft.write_timeout_ms);
            while self.read().agent(&id).is_none_or(|a| a.lease_epoch < lease_epoch) {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return Err(shutting_down()) },
                    () = tokio::time::sleep_until(deadline) => {
                        return Err(ApiError::new(ErrorCode::Unavailable, "the registration is committed but not applied here yet; retry"));
                    }
                }
            }
            // Built from the committed answer, not this member's state, which may not have applied it yet.
            let record = crate::state_machine::AgentRecord {
                state: self.read().agent(&id).map(|a| a.state).unwrap_or(AgentState::Active),
                registration,
                lease_epoch,
                registered_at_ms: at_ms,
                reachable: true,
                version: 0,
            };
            Ok(self.agent_view(&record))
        })
    }

    fn heartbeat(&self, id: String, beat: Heartbeat) -> ApiResult<'_, Lease> {
        Box::pin(async move {
            if let Some(leader) = self.leader_client()? {
                return leader.heartbeat(&id, beat.lease_epoch).await.map_err(forwarded_error);
            }
            let epoch =
                self.read().agent(&id).map(|a| a.lease_epoch).ok_or_else(|| ApiError::not_found("agent", &id))?;
            if epoch != beat.lease_epoch {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "lease epoch {} of agent {id} is stale (current {epoch}): register again",
                        beat.lease_epoch
                    ),
                )
                .with_field("leaseEpoch"));
            }
            self.leases().insert(id, now_ms());
            Ok(Lease { lease_epoch: epoch, lease_ms: self.config.scheduler.lease_ms })
        })
    }

    fn list_agents(&self) -> ApiResult<'_, Vec<AgentView>> {
        Box::pin(async move {
            let s = self.read();
            Ok(s.agents().map(|a| self.agent_view(a)).collect())
        })
    }

    fn get_agent(&self, id: String) -> ApiResult<'_, AgentView> {
        Box::pin(async move {
            let s = self.read();
            s.agent(&id).map(|a| self.agent_view(a)).ok_or_else(|| ApiError::not_found("agent", &id))
        })
    }

    fn read_barrier(&self) -> ApiResult<'_, ()> {
        Box::pin(async move {
            // The leader confirms it still leads and names the index a read must see; a follower asks the leader
            // for that index, then waits until it has applied that far itself (ReadIndex).
            let index = match self.leader_client()? {
                None => self.read_index_here().await?,
                Some(leader) => {
                    let url = format!("{}/internal/read-index", leader.base());
                    let timeout = Duration::from_millis(self.config.raft.write_timeout_ms);
                    let resp = self.peers.http.get(url).timeout(timeout).send().await;
                    let unavailable = |e: String| ApiError::new(ErrorCode::NotLeader, format!("no read index: {e}"));
                    let bytes = resp
                        .map_err(|e| unavailable(e.to_string()))?
                        .bytes()
                        .await
                        .map_err(|e| unavailable(e.to_string()))?;
                    codec::decode::<Result<u64, ApiError>>(&bytes).map_err(|e| unavailable(e.to_string()))??
                }
            };
            let timeout = Duration::from_millis(self.config.raft.write_timeout_ms);
            self.raft
                .wait(Some(timeout))
                .applied_index_at_least(Some(index), "consistent read")
                .await
                .map(|_| ())
                .map_err(|e| ApiError::new(ErrorCode::Unavailable, format!("not caught up for a consistent read: {e}")))
        })
    }

    fn set_agent_draining(&self, id: String, drain: bool, actor: Actor) -> ApiResult<'_, AgentView> {
        Box::pin(async move {
            let state = if drain { AgentState::Draining } else { AgentState::Active };
            let cmd = Command::SetAgentState { id: id.clone(), state, meta: Cell::meta(actor) };
            match self.commit(cmd).await? {
                Response::Agent { .. } => {}
                Response::Rejected(r) => return Err(rejection(r)),
                other => return Err(ApiError::internal(format!("an agent state change got the answer {other:?}"))),
            }
            tracing::info!(agent = %id, state = state.as_str(), "agent state set");
            let s = self.read();
            s.agent(&id).map(|a| self.agent_view(a)).ok_or_else(|| ApiError::not_found("agent", &id))
        })
    }

    fn events(&self, from: Option<u64>) -> ApiResult<'_, titan_api::router::EventFeed> {
        Box::pin(async move {
            match self.events.subscribe(from) {
                Ok((backlog, live)) => Ok(titan_api::router::EventFeed { backlog, live }),
                Err(oldest) => Err(ApiError::new(
                    ErrorCode::Expired,
                    format!(
                        "events after {} are no longer kept here; resume from {oldest} or re-read the state",
                        from.unwrap_or(0)
                    ),
                )
                .with_field("from")),
            }
        })
    }

    fn task_agent_addr(&self, id: String) -> ApiResult<'_, String> {
        Box::pin(async move {
            let s = self.read();
            let task = s.task(&id).ok_or_else(|| ApiError::not_found("task", &id))?;
            let agent = task.agent.as_deref().ok_or_else(|| {
                ApiError::new(ErrorCode::NotFound, format!("task {id} was never placed on an agent: it has no logs"))
            })?;
            s.agent(agent).map(|a| a.registration.addr.clone()).ok_or_else(|| ApiError::not_found("agent", agent))
        })
    }

    fn list_tasks(&self, query: TaskQuery) -> ApiResult<'_, TaskList> {
        Box::pin(async move {
            type Page = Vec<(crate::task::TaskRecord, Option<String>)>;
            let (page, next): (Page, Option<String>) = {
                let s = self.read();
                let (page, next) = s.list_tasks(&query);
                (page.into_iter().map(|t| (t.clone(), crate::reconcile::may_run_beside(&s, t))).collect(), next)
            };
            let accepted = page
                .iter()
                .filter(|(t, _)| t.state == titan_api::task::TaskState::Accepted)
                .map(|(t, _)| t.id.clone())
                .collect();
            let pending = self.pending_reasons(accepted).await;
            let tasks = page.into_iter().map(|(t, beside)| self.task_view(&t, &pending, beside)).collect();
            Ok(TaskList { tasks, next_page_token: next })
        })
    }

    fn get_task(&self, id: String) -> ApiResult<'_, TaskView> {
        Box::pin(async move {
            let (task, beside) = {
                let s = self.read();
                let task = s.task(&id).cloned().ok_or_else(|| ApiError::not_found("task", &id))?;
                let beside = crate::reconcile::may_run_beside(&s, &task);
                (task, beside)
            };
            let ids = if task.state == titan_api::task::TaskState::Accepted { vec![id] } else { vec![] };
            let pending = self.pending_reasons(ids).await;
            Ok(self.task_view(&task, &pending, beside))
        })
    }

    fn kill_task(&self, id: String, actor: Actor) -> ApiResult<'_, TaskView> {
        Box::pin(async move {
            match self.commit(Command::KillTask { id: id.clone(), meta: Cell::meta(actor) }).await? {
                Response::Task { .. } => {}
                Response::Rejected(r) => return Err(rejection(r)),
                other => return Err(ApiError::internal(format!("a task kill got the answer {other:?}"))),
            }
            tracing::info!(task = %id, "task kill requested");
            // A follower may not have applied the kill yet; the leader's answer already confirmed it.
            let s = self.read();
            s.task(&id)
                .map(|t| self.task_view(t, &BTreeMap::new(), crate::reconcile::may_run_beside(&s, t)))
                .ok_or_else(|| ApiError::not_found("task", &id))
        })
    }

    fn assignments(&self, agent: String, query: AssignmentsQuery) -> ApiResult<'_, Assignments> {
        Box::pin(async move {
            // Subscribed before reading, so a change between the read and the wait still wakes it.
            let mut changes = self.watchers.subscribe(&agent);
            let wait = Duration::from_millis(query.wait_ms.unwrap_or(0));
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let (version, answer) = self.assignments_now(&agent)?;
                if query.after.is_none_or(|after| version > after) {
                    return Ok(answer);
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return Err(shutting_down()) },
                    () = tokio::time::sleep_until(deadline) => return Ok(answer),
                }
            }
        })
    }

    fn report_status(&self, agent: String, report: StatusReport) -> ApiResult<'_, StatusAck> {
        Box::pin(async move {
            let meta = Meta {
                who: format!("agent:{agent}"),
                why: None,
                at_ms: now_ms(),
                request: uuid::Uuid::new_v4().to_string(),
            };
            let cmd = Command::TaskStatuses { agent, lease_epoch: report.lease_epoch, statuses: report.statuses, meta };
            match self.commit(cmd).await? {
                Response::Statuses { applied, ignored } => Ok(StatusAck { applied, ignored }),
                Response::Rejected(r) => Err(rejection(r)),
                other => Err(ApiError::internal(format!("a status report got the answer {other:?}"))),
            }
        })
    }

    fn ready(&self) -> ApiResult<'_, ()> {
        Box::pin(async move {
            let m = self.raft.metrics().borrow().clone();
            match m.current_leader {
                Some(_) if m.running_state.is_ok() => Ok(()),
                _ => Err(ApiError::new(ErrorCode::Unavailable, "no leader is known yet")),
            }
        })
    }
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            ApiError::new(ErrorCode::NotLeader, "leadership moved during the change; retry")
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ApiError::new(ErrorCode::Conflict, e.to_string())
        }
        RaftError::Fatal(e) => ApiError::new(ErrorCode::Unavailable, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_proposed_directly_only_when_nothing_else_is_in_flight() {
        let count = Arc::new(AtomicUsize::new(0));
        let direct = Proposing::first(&count).expect("nothing in flight");
        assert!(Proposing::first(&count).is_none(), "a second one joins the queue");
        drop(direct);
        let batch = Proposing::new(&count);
        assert!(Proposing::first(&count).is_none(), "a proposer's batch is in flight");
        let another = Proposing::new(&count);
        assert_eq!(count.load(Ordering::Acquire), 2);
        drop((batch, another));
        assert!(Proposing::first(&count).is_some(), "a dropped proposal no longer counts");
    }

    /// A waiter for task kill `id` whose caller gives up `after_ms` from `now`, and the end its caller holds.
    fn waiter(
        id: &str,
        now: tokio::time::Instant,
        after_ms: u64,
    ) -> (Waiter, oneshot::Receiver<Result<Response, ApiError>>) {
        let meta = Meta { who: "test".into(), why: None, at_ms: 0, request: id.into() };
        let (answer, rx) = oneshot::channel();
        (
            Waiter {
                cmd: Command::KillTask { id: id.into(), meta },
                answer,
                deadline: now + Duration::from_millis(after_ms),
            },
            rx,
        )
    }

    fn ids(cmds: &[Command]) -> Vec<&str> {
        cmds.iter()
            .map(|c| match c {
                Command::KillTask { id, .. } => id.as_str(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_batch_leaves_out_waiters_that_gave_up_and_waits_as_long_as_the_latest_one() {
        let now = tokio::time::Instant::now();
        let (a, _a) = waiter("a", now, 100);
        let (b, b_rx) = waiter("b", now, 900);
        let (c, _c) = waiter("c", now, 300);
        drop(b_rx);
        let batch = live(vec![a, b, c]).expect("two still wait");
        assert_eq!(ids(&batch.cmds), ["a", "c"]);
        assert_eq!(batch.answers.len(), 2);
        assert_eq!(batch.deadline, now + Duration::from_millis(300), "b's later deadline no longer counts");
        assert_eq!(batch.abandoned, 1);

        let (d, d_rx) = waiter("d", now, 100);
        drop(d_rx);
        assert!(live(vec![d]).is_none(), "nothing to propose when every waiter gave up");
        assert!(live(vec![]).is_none());
    }

    #[test]
    fn a_timed_out_write_is_a_503_that_says_it_may_still_commit_and_how_to_retry() {
        let e = timed_out(1_500);
        assert_eq!((e.code, e.status().as_u16()), (ErrorCode::Timeout, 503));
        assert!(e.message.contains("within 1500 ms"), "{}", e.message);
        assert!(e.message.contains("may still commit"), "{}", e.message);
        assert!(e.message.contains("same Idempotency-Key"), "{}", e.message);
    }
}
