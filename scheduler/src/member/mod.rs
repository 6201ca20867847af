//! A cell member: Raft over the storage seam, the state machine, and the job API implemented on top of them.
//!
//! `propose` is how a write is committed (batched, forwarded to the leader, bounded by its deadline), `leader` what
//! a member asks of its leader, `members` how members join and leave, `api` the REST API over the state, and
//! `metrics` the member's gauges.
//!
//! Writes become `Command`s stamped with who, why and when, and are answered only once committed. A member that
//! is not the leader forwards the command to the leader over its kept Raft stream connection and relays the
//! answer, so clients may talk to any member. Reads are served from the member's own applied state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::post;
use axum::Router;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState, SnapshotPolicy};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use serde::{Deserialize, Serialize};
use titan_api::agent::{AgentRegistration, AgentState, AgentView, Heartbeat, Lease};
use titan_api::job::JobSpec;
use titan_api::router::{AdminApi, AgentsApi, JobsApi, Reads, TasksApi};
use titan_api::router::{ApiResult, HttpMetrics};
use titan_api::task::{
    Assignment, Assignments, AssignmentsQuery, StatusAck, StatusReport, TaskList, TaskQuery, TaskView,
};
use titan_api::view::{
    AddMember, ClusterView, HistoryEntry, JobList, JobRef, JobState, JobView, ListQuery, MemberView,
};
use titan_api::{Actor, ApiError, ErrorCode};
use tokio::sync::{mpsc, oneshot};

use crate::command::{Command, Meta, Rejection, Response};
use crate::config::CellConfig;
use crate::raft::{
    codec, membership, raft_routes, EarlyReplication, HttpNetwork, LogStore, NetworkMetrics, NodeId, Packed, Raft,
    SharedState, StateStore, Streams, LEADER, PROPOSE,
};
use crate::spec::Spec;
use crate::store::Engine;
use crate::worker::{Next, Worker};

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

mod answer;
mod api;
mod autoscaler;
mod beats;
mod federation;
mod handle;
mod leader;
mod levers;
mod members;
mod metrics;
mod propose;
mod tokens;

use answer::*;
use api::*;
use beats::Beats;
pub(crate) use handle::Handle;
use handle::Leases;
use leader::*;
use levers::*;
use members::*;
use metrics::*;
pub(crate) use propose::Proposer;
use propose::*;

pub use crate::config::KILL_GRACE_MS;

pub struct Cell {
    /// What the workers use; the API uses the same parts.
    handle: Handle,
    proposer: Arc<Proposer>,
    leases: Arc<Leases>,
    /// Agents' heartbeats on their way to the leader, when another member leads.
    beats: Beats,
    encoded: crate::raft::EncodedEntries,
    /// Kept connections to the other members, shared with Raft: write forwarding and calls to the leader go over
    /// them too.
    streams: Streams,
    config: Arc<CellConfig>,
    raft: Raft,
    state: SharedState,
    committed: Arc<AtomicU64>,
    engine: Arc<dyn Engine>,
    metrics: CellMetrics,
    scheduling: Arc<crate::scheduling::Local>,
    watchers: Arc<crate::watch::Watchers>,
    events: Arc<crate::watch::EventLog>,
    /// The background loops: the scheduler, the proposers, the metrics; stopped when the member is dropped.
    workers: crate::worker::Workers,
    /// The other cells as heard, and the federation's metrics.
    cells: Arc<federation::cells::Cells>,
    federation: federation::worker::FederationMetrics,
    levers: LeverMetrics,
    /// The autoscaler's view, as its worker last published it.
    autoscaling: autoscaler::Status,
    /// `[tls]`, loaded: what the member serves with, and presents to other members, cells and agents.
    tls: Option<titan_api::tls::NodeTls>,
    /// For calls to agents (task logs); HTTPS with this member's certificate under `[tls]`.
    agents_http: titan_api::tls::PeerHttp,
}

pub(crate) use crate::clock::now_ms;

impl Cell {
    /// Opens the store, starts Raft, and bootstraps the cell when this is the lowest-numbered initial member of a
    /// fresh cell.
    pub async fn start(config: CellConfig, registry: &Registry) -> Result<Arc<Cell>, CellError> {
        config.validate()?;
        let tls = config.load_tls()?;
        let client_tls = tls.as_ref().map(|t| t.client().clone());
        let agents_http = titan_api::tls::PeerHttp::new(
            reqwest::Client::builder().connect_timeout(Duration::from_secs(5)),
            client_tls.as_ref(),
        )
        .expect("a client with a loaded TLS configuration always builds");
        let dir = config.data_dir.join("raft");
        let store_err = |m: String| CellError::Store { dir: dir.display().to_string(), message: m };
        std::fs::create_dir_all(&dir).map_err(|e| store_err(e.to_string()))?;
        let engine = crate::store::open(config.raft.storage, &dir).map_err(|e| store_err(e.to_string()))?;
        let flush_seconds = crate::metrics::registrar(registry, &config.cell, config.node_id)
            .histogram(&crate::metrics::raft::FLUSH_SECONDS)?;
        let mut log = LogStore::open(engine.clone(), flush_seconds).map_err(|e| CellError::Raft(e.to_string()))?;
        let committed = log.committed_index();
        let encoded = log.encoded_entries();
        let snapshot_metrics = crate::raft::SnapshotMetrics::new(registry, &config.cell, config.node_id)?;
        let sm = StateStore::open(engine.clone(), &dir.join("snapshots"), snapshot_metrics)
            .map_err(|e| CellError::Raft(e.to_string()))?;
        let state = sm.state();
        let watchers = sm.watchers();
        let events = sm.events();
        let changes = sm.changes();

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
        let network_metrics = NetworkMetrics::new(registry, &config.cell, config.node_id)?;
        let streams = Streams::new(network_metrics, client_tls.clone());
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
                config.peers.iter().map(|(id, addr)| (*id, BasicNode::new(addr.as_str()))).collect();
            tracing::info!(cell = %config.cell, members = ?members.keys().collect::<Vec<_>>(), "bootstrapping the cell");
            if let Err(e) = raft.initialize(members).await {
                // Another start already initialized it; Raft carries on from its log.
                tracing::warn!(error = %e, "cell not bootstrapped");
            }
        }

        let metrics = CellMetrics::new(registry, &config.cell, config.node_id)?;
        let scheduling_metrics = crate::scheduling::SchedulingMetrics::new(registry, &config.cell, config.node_id)?;
        let workers = crate::worker::Workers::new(registry, &config.cell, config.node_id)?;
        let config = Arc::new(config);
        let (proposer, rx) = Proposer::new(raft.clone(), streams.clone(), proposing, &config, metrics.clone());
        let proposer = Arc::new(proposer);
        let leases: Arc<Leases> = Arc::default();
        let scheduling: Arc<crate::scheduling::Local> = Arc::default();
        let cells: Arc<federation::cells::Cells> = Arc::default();
        let handle = Handle::new(
            raft.clone(),
            state.clone(),
            proposer.clone(),
            config.clone(),
            leases.clone(),
            changes,
            scheduling.clone(),
            cells.clone(),
            client_tls,
        );
        workers.spawn(crate::scheduling::Scheduler::new(
            handle.clone(),
            scheduling.clone(),
            scheduling_metrics.clone(),
        ));
        workers.spawn(MetricsWorker::new(
            handle.clone(),
            metrics.clone(),
            scheduling_metrics,
            engine.clone(),
            committed.clone(),
            proposer.clone(),
        ));
        let fleet_metrics = autoscaler::FleetMetrics::new(registry, &config.cell, config.node_id)?;
        let autoscaling: autoscaler::Status = Arc::default();
        if !config.autoscaler.groups.is_empty() {
            let worker = autoscaler::Autoscaler::new(handle.clone(), fleet_metrics, autoscaling.clone())
                .map_err(|e| CellError::Config(crate::config::ConfigError::Autoscaler(e)))?;
            workers.spawn(worker);
        }
        let levers = LeverMetrics::new(registry, &config.cell, config.node_id)?;
        workers.spawn(Levers::new(handle.clone(), levers.clone()));
        let federation = federation::worker::FederationMetrics::new(registry, &config.cell, config.node_id)?;
        if config.federation.is_federated() {
            workers.spawn(federation::worker::Federation::new(handle.clone(), cells.clone(), federation.clone()));
        }
        if config.auth.enabled {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            workers.spawn(tokens::Bootstrap { handle: handle.clone(), tick });
        }
        let (beats, forwarder) = Beats::new(streams.clone(), proposer.clone());
        workers.spawn(forwarder);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for n in 1..=PROPOSERS {
            workers.spawn(ProposerWorker {
                n,
                proposer: proposer.clone(),
                rx: rx.clone(),
                batch: Vec::new(),
                proposed: 0,
            });
        }
        Ok(Arc::new(Cell {
            handle,
            proposer,
            leases,
            beats,
            encoded,
            streams,
            config,
            raft,
            state,
            committed,
            engine,
            metrics,
            scheduling,
            watchers,
            events,
            workers,
            cells,
            federation,
            levers,
            autoscaling,
            tls,
            agents_http,
        }))
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// This member's TLS (`[tls]`): the server serves the router with it.
    pub fn tls(&self) -> Option<&titan_api::tls::NodeTls> {
        self.tls.as_ref()
    }

    /// Every route this member serves: the public API, and Raft's stream, which also carries forwarded writes
    /// and calls to the leader.
    pub fn router(self: &Arc<Self>, http: HttpMetrics) -> Router {
        let leader = Arc::new(LeaderHere { cell: Arc::downgrade(self), propose: ProposeHere(self.proposer.clone()) });
        let internal = raft_routes(self.raft.clone(), self.encoded.clone(), self.streams.clone(), leader).merge(
            // Kept for members of the previous version, which ask for these over HTTP; this version asks over the
            // Raft stream (`LEADER`).
            Router::new()
                .route("/internal/read-index", axum::routing::get(read_index))
                .route("/internal/pending", post(pending_here))
                .with_state(self.clone()),
        );
        let internal = internal.merge(federation::routes(self.clone()));
        titan_api::router(self.clone(), http, internal)
    }

    pub async fn shutdown(&self) {
        self.workers.stop();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        if let Err(e) = self.engine.flush() {
            tracing::warn!(error = %e, "final flush");
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, crate::state::CellState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> &CellConfig {
        &self.config
    }

    pub(crate) fn is_leader(&self) -> bool {
        crate::scheduling::Host::is_leader(&self.handle)
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, crate::lease::Heard>> {
        self.leases.lock()
    }

    /// Commits a command and takes its own kind of answer out of the state machine's (`answer`).
    pub(crate) async fn commit_as<A: Answer>(&self, cmd: Command) -> Result<A, ApiError> {
        typed(self.proposer.commit(cmd).await?)
    }

    /// Commits a job command; a refusal for a quota is counted by group, location and resource.
    pub(crate) async fn write(&self, cmd: Command) -> Result<JobRef, ApiError> {
        let response = self.proposer.commit(cmd).await?;
        if let Response::Rejected(crate::command::Rejection::QuotaExceeded(e)) = &response {
            self.metrics.quota_rejections.with_label_values(&[&e.group, &e.location, e.resource.as_str()]).inc();
            tracing::info!(group = %e.group, location = %e.location, resource = e.resource.as_str(), "quota exceeded");
        }
        typed(response)
    }

    /// Who, why and when of a change this member proposes, and its cell (the origin of its versions).
    pub(crate) fn meta(&self, actor: Actor) -> Meta {
        Meta {
            who: actor.who,
            why: actor.why,
            at_ms: now_ms(),
            request: uuid::Uuid::new_v4().to_string(),
            cell: self.config.cell.clone(),
        }
    }
}
