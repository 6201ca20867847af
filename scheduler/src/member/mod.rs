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

mod api;
mod leader;
mod members;
mod metrics;
mod propose;

use api::*;
use leader::*;
use members::*;
use metrics::*;
use propose::*;

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

    fn read(&self) -> std::sync::RwLockReadGuard<'_, crate::state::CellState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn state_read(&self) -> std::sync::RwLockReadGuard<'_, crate::state::CellState> {
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

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }
}
