//! The federation worker: on the leader, heartbeat every other cell (every member of it, so each knows this cell's
//! state) and push each one the jobs changed after its position, a batch at a time, until it has them all. A push
//! is one HTTP request per batch on kept-alive connections; the receiver commits the batch as one `Merge` and
//! answers its new position, so a push resumes where it stopped after a restart or a new leader on either side.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec};
use serde::{Deserialize, Serialize};

use super::cells::{Beat, Cells};
use super::ReplicatedJob;
use crate::config::CellConfig;
use crate::state::CellState;
use crate::worker::{Next, Worker};

/// The path a cell pushes batches to, and the one it heartbeats.
pub const PUSH_PATH: &str = "/internal/federation/push";
pub const BEAT_PATH: &str = "/internal/federation/heartbeat";
/// The content type of both (MessagePack).
pub const CONTENT_TYPE: &str = "application/msgpack";

/// A batch of jobs one cell pushes another.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Push {
    pub from: String,
    /// The sender's change number of the last job in the batch.
    pub upto: u64,
    pub jobs: Vec<ReplicatedJob>,
}

/// The answer to a push.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pushed {
    /// How far the receiver has now merged the sender's outbox.
    pub position: u64,
    pub refused: Vec<(String, String)>,
}

/// What the worker needs of its member.
pub(crate) trait Host: Send + Sync + 'static {
    fn config(&self) -> &CellConfig;
    fn is_leader(&self) -> bool;
    fn read(&self) -> std::sync::RwLockReadGuard<'_, CellState>;
    /// This member's view of the cell: its leader's and members' addresses.
    fn leader_and_members(&self) -> (Option<String>, Vec<String>);
}

/// The federation's metrics the worker keeps.
#[derive(Clone)]
pub struct FederationMetrics {
    pub cell_up: IntGaugeVec,
    pub pending: IntGaugeVec,
    pub pushes: IntCounterVec,
    pub push_bytes: IntCounterVec,
    pub refused: IntCounterVec,
    pub lag: GaugeVec,
    pub merged: IntCounterVec,
}

impl FederationMetrics {
    pub fn new(registry: &prometheus::Registry, cell: &str, node: u64) -> Result<Self, prometheus::Error> {
        use crate::metrics::federation::*;
        let r = crate::metrics::registrar(registry, cell, node);
        Ok(FederationMetrics {
            cell_up: r.gauge_vec(&CELL_UP)?,
            pending: r.gauge_vec(&PENDING_CHANGES)?,
            pushes: r.counter_vec(&PUSHES)?,
            push_bytes: r.counter_vec(&PUSH_BYTES)?,
            refused: r.counter_vec(&REFUSED)?,
            lag: r.float_gauge_vec(&LAG_SECONDS)?,
            merged: r.counter_vec(&MERGED)?,
        })
    }
}

/// One other cell as the worker pushes to it.
struct Peer {
    addrs: Vec<SocketAddr>,
    /// How far it has merged this cell's outbox, once known (its heartbeat answer or a push answer says).
    position: Option<u64>,
    /// The address that answered last, tried first.
    preferred: usize,
}

pub(crate) struct Federation<H> {
    host: H,
    cells: Arc<Cells>,
    metrics: FederationMetrics,
    http: reqwest::Client,
    peers: BTreeMap<String, Peer>,
    last_beat: Option<Instant>,
    pushed: u64,
}

impl<H: Host> Federation<H> {
    pub(crate) fn new(host: H, cells: Arc<Cells>, metrics: FederationMetrics) -> Federation<H> {
        let peers = host
            .config()
            .federation
            .cells
            .iter()
            .map(|(name, addrs)| (name.clone(), Peer { addrs: addrs.clone(), position: None, preferred: 0 }))
            .collect();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(4)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(500))
            .build()
            .expect("a plain HTTP client always builds");
        Federation { host, cells, metrics, http, peers, last_beat: None, pushed: 0 }
    }

    /// This cell's heartbeat.
    fn beat(&self) -> Beat {
        let (leader, members) = self.host.leader_and_members();
        let state = self.host.read();
        let positions = self.peers.keys().map(|c| (c.clone(), state.position(c))).collect();
        Beat { cell: self.host.config().cell.clone(), leader, members, outbox_seq: state.outbox_seq(), positions }
    }

    /// Heartbeats every member of every other cell; their answers say how far each merged this cell's outbox.
    async fn heartbeat(&mut self) {
        let beat = self.beat();
        let Ok(body) = rmp_serde::to_vec_named(&beat) else { return };
        let me = beat.cell.clone();
        let mut calls = Vec::new();
        for (name, peer) in &self.peers {
            for addr in &peer.addrs {
                let req = self
                    .http
                    .post(format!("http://{addr}{BEAT_PATH}"))
                    .timeout(Duration::from_millis(self.host.config().federation.heartbeat_ms))
                    .header("content-type", CONTENT_TYPE)
                    .body(body.clone());
                calls.push((name.clone(), async move {
                    let resp = req.send().await.ok()?;
                    if !resp.status().is_success() {
                        return None;
                    }
                    rmp_serde::from_slice::<Beat>(&resp.bytes().await.ok()?).ok()
                }));
            }
        }
        let (names, futures): (Vec<String>, Vec<_>) = calls.into_iter().unzip();
        let answers = futures_util::future::join_all(futures).await;
        for (name, answer) in names.into_iter().zip(answers) {
            let Some(answer) = answer else { continue };
            if answer.cell != name {
                tracing::warn!(expected = %name, answered = %answer.cell, "a federation address answers as another cell");
                continue;
            }
            if let Some(p) = self.peers.get_mut(&name) {
                let theirs = answer.positions.get(&me).copied().unwrap_or(0);
                // A position only moves forward, unless the peer lost its state (it then needs everything again).
                p.position = Some(theirs);
            }
            self.cells.heard(answer);
        }
    }

    /// Pushes `cell` its next batch; whether more is waiting.
    async fn push(&mut self, cell: &str) -> Result<bool, String> {
        let batch = self.host.config().federation.batch;
        let Some(peer) = self.peers.get(cell) else { return Ok(false) };
        let Some(position) = peer.position else { return Ok(false) };
        let (push, waiting) = {
            let state = self.host.read();
            let mut upto = position;
            let jobs: Vec<ReplicatedJob> = state
                .outbox_after(position, batch)
                .map(|(seq, job)| {
                    upto = seq;
                    job.replicated()
                })
                .collect();
            let waiting = state.outbox_waiting(position);
            (Push { from: self.host.config().cell.clone(), upto, jobs }, waiting)
        };
        self.metrics.pending.with_label_values(&[cell]).set(waiting as i64);
        if push.jobs.is_empty() {
            return Ok(false);
        }
        let body = rmp_serde::to_vec_named(&push).map_err(|e| e.to_string())?;
        let timeout = Duration::from_millis(self.host.config().raft.write_timeout_ms + 1_000);
        let n = peer.addrs.len();
        let mut last_error = String::new();
        for i in 0..n {
            let k = (peer.preferred + i) % n;
            let addr = peer.addrs[k];
            let resp = self
                .http
                .post(format!("http://{addr}{PUSH_PATH}"))
                .timeout(timeout)
                .header("content-type", CONTENT_TYPE)
                .body(body.clone())
                .send()
                .await;
            let resp = match resp {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    last_error = format!("{addr} answered {}", r.status());
                    continue;
                }
                Err(e) => {
                    last_error = format!("{addr}: {e}");
                    continue;
                }
            };
            let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
            let pushed: Pushed = rmp_serde::from_slice(&bytes).map_err(|e| e.to_string())?;
            self.metrics.pushes.with_label_values(&[cell]).inc();
            self.metrics.push_bytes.with_label_values(&[cell]).inc_by(body.len() as u64);
            for (job, why) in &pushed.refused {
                tracing::warn!(cell, job, why, "another cell refused a job");
            }
            self.pushed += push.jobs.len() as u64;
            if let Some(p) = self.peers.get_mut(cell) {
                p.position = Some(pushed.position);
                p.preferred = k;
            }
            let left = waiting.saturating_sub(push.jobs.len());
            self.metrics.pending.with_label_values(&[cell]).set(left as i64);
            return Ok(pushed.position < push.upto || left > 0);
        }
        Err(format!("no member of cell {cell} took the batch: {last_error}"))
    }
}

impl<H: Host> Worker for Federation<H> {
    fn name(&self) -> String {
        "federation".into()
    }

    fn status(&self) -> String {
        if !self.host.is_leader() {
            return "following".into();
        }
        let known: Vec<String> = self
            .peers
            .iter()
            .map(|(c, p)| format!("{c} at {}", p.position.map(|n| n.to_string()).unwrap_or_else(|| "?".into())))
            .collect();
        format!("{} jobs pushed; peers: {}", self.pushed, known.join(", "))
    }

    async fn wait(&mut self) -> Next {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Next::Busy
    }

    async fn step(&mut self) -> Result<Next, String> {
        let config = &self.host.config().federation;
        let (suspect, down) = (Duration::from_millis(config.suspect_ms), Duration::from_millis(config.down_ms));
        for (name, heard) in self.cells.all() {
            let state = super::cells::state_of(heard.at.map(|t| t.elapsed()), suspect, down);
            self.metrics.cell_up.with_label_values(&[&name]).set(i64::from(state == "up"));
        }
        if !self.host.is_leader() {
            for p in self.peers.values_mut() {
                p.position = None;
            }
            return Ok(Next::Idle);
        }
        let every = Duration::from_millis(self.host.config().federation.heartbeat_ms);
        if self.last_beat.is_none_or(|t| t.elapsed() >= every) {
            self.last_beat = Some(Instant::now());
            self.heartbeat().await;
        }
        let names: Vec<String> = self.peers.keys().cloned().collect();
        let mut more = false;
        let mut errors = Vec::new();
        for name in names {
            match self.push(&name).await {
                Ok(m) => more |= m,
                Err(e) => {
                    // Asked again at the next heartbeat: it may have merged the batch after all.
                    if let Some(p) = self.peers.get_mut(&name) {
                        p.position = None;
                    }
                    errors.push(e);
                }
            }
        }
        if !errors.is_empty() {
            tracing::debug!(errors = ?errors, "federation pushes failed; retried after the next heartbeat");
        }
        Ok(if more { Next::Busy } else { Next::Idle })
    }
}
