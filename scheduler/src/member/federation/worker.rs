//! The federation worker: on the leader, heartbeat every other cell (every member of it, so each knows this cell's
//! state) and push each one the jobs changed after its position, a batch at a time, until it has them all. A push
//! is one HTTP request per batch on kept-alive connections; the receiver commits the batch as one `Merge` and
//! answers its new position, so a push resumes where it stopped after a restart or a new leader on either side.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec};
use titan_api::tls::PeerHttp;

use super::cells::Cells;
use crate::address::PeerAddr;
use crate::config::CellConfig;
use crate::federation::wire::{
    Beat, Differs, DigestOf, Push, Pushed, Summary, BEAT_PATH, CONTENT_TYPE, DIGEST_PATH, PUSH_PATH,
};
use crate::state::{CellState, Outgoing};
use crate::worker::{Next, Worker};

/// What the worker needs of its member.
pub(crate) trait Host: Send + Sync + 'static {
    fn config(&self) -> &CellConfig;
    fn is_leader(&self) -> bool;
    fn read(&self) -> std::sync::RwLockReadGuard<'_, CellState>;
    /// This member's view of the cell: its leader's and members' addresses.
    fn leader_and_members(&self) -> (Option<String>, Vec<String>);
    /// This member's TLS as a client (`[tls]`): other cells are called over HTTPS with its certificate.
    fn tls(&self) -> Option<&titan_api::tls::ClientTls>;
    /// Why a task is not placed yet, as this member's scheduler (the leader's) last found.
    fn pending_reason(&self, task: &str) -> Option<String>;
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
    pub conflicts: IntCounterVec,
    pub digests: IntCounterVec,
    pub repaired: IntCounterVec,
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
            conflicts: r.counter_vec(&CONFLICTS)?,
            digests: r.counter_vec(&DIGESTS)?,
            repaired: r.counter_vec(&REPAIRED)?,
        })
    }
}

/// One other cell as the worker pushes to it.
struct Peer {
    addrs: Vec<PeerAddr>,
    /// How far it has merged this cell's outbox, once known (its heartbeat answer or a push answer says).
    position: Option<u64>,
    /// The address that answered last, tried first.
    preferred: usize,
    /// The job figures it was last sent, so a heartbeat carries only those that changed.
    sent: BTreeMap<String, Summary>,
    /// When it was last sent a batch: one with nothing in it (only jobs it wrote itself) goes at most once a
    /// heartbeat, just to move its stored position.
    pushed_at: Option<Instant>,
    /// When digests were last compared with it; none since its stream (re)started.
    digested_at: Option<Instant>,
}

pub(crate) struct Federation<H> {
    host: H,
    cells: Arc<Cells>,
    metrics: FederationMetrics,
    http: PeerHttp,
    peers: BTreeMap<String, Peer>,
    last_beat: Option<Instant>,
    pushed: u64,
    beats: u64,
}

impl<H: Host> Federation<H> {
    pub(crate) fn new(host: H, cells: Arc<Cells>, metrics: FederationMetrics) -> Federation<H> {
        let peers = host
            .config()
            .federation
            .cells
            .iter()
            .map(|(name, addrs)| {
                (
                    name.clone(),
                    Peer {
                        addrs: addrs.clone(),
                        position: None,
                        preferred: 0,
                        sent: BTreeMap::new(),
                        pushed_at: None,
                        digested_at: None,
                    },
                )
            })
            .collect();
        let builder = reqwest::Client::builder()
            .pool_max_idle_per_host(4)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(500));
        let http = PeerHttp::new(builder, host.tls()).expect("a client with a loaded TLS configuration always builds");
        Federation { host, cells, metrics, http, peers, last_beat: None, pushed: 0, beats: 0 }
    }

    /// This cell's heartbeat, and the figures of every job here.
    fn beat(&self) -> (Beat, BTreeMap<String, Summary>) {
        let (leader, members) = self.host.leader_and_members();
        let state = self.host.read();
        let positions = self.peers.keys().map(|c| (c.clone(), state.position(c))).collect();
        let figures = state
            .jobs()
            .map(|j| {
                let (running, pending, first) = state.figures(&j.id);
                let pending_reason = first.and_then(|t| self.host.pending_reason(t));
                (j.id.clone(), Summary { running, pending, pending_reason })
            })
            .collect();
        let beat = Beat {
            cell: self.host.config().cell.clone(),
            leader,
            members,
            outbox_seq: state.outbox_seq(),
            positions,
            summaries: BTreeMap::new(),
            sees: self.cells.sees(&self.host.config().federation),
        };
        (beat, figures)
    }

    /// Heartbeats every member of every other cell; their answers say how far each merged this cell's outbox.
    async fn heartbeat(&mut self) {
        let (beat, figures) = self.beat();
        let me = beat.cell.clone();
        // Every thirtieth heartbeat carries every job's figures, for a cell that restarted and forgot them.
        let everything = self.beats.is_multiple_of(30);
        self.beats += 1;
        let mut calls = Vec::new();
        for (name, peer) in &self.peers {
            let mut beat = beat.clone();
            beat.summaries = figures
                .iter()
                .filter(|(job, s)| everything || peer.sent.get(*job) != Some(*s))
                .map(|(job, s)| (job.clone(), s.clone()))
                .collect();
            let Ok(body) = rmp_serde::to_vec_named(&beat) else { return };
            for addr in &peer.addrs {
                let req = self
                    .http
                    .post(addr.as_str(), BEAT_PATH)
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
                p.sent.clone_from(&figures);
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
            let (mut jobs, mut quotas, mut locations, mut tokens) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (seq, item) in state.outbox_after(position, batch) {
                upto = seq;
                match item {
                    // A job whose every register that cell wrote is not sent back to it: it has them.
                    Outgoing::Job(job) if !job.versions.all_from(cell) => jobs.push(job.replicated()),
                    Outgoing::Quota(q) if q.hlc.cell != cell => quotas.push(q.replicated()),
                    Outgoing::Location(l) if l.hlc.cell != cell => locations.push(l.clone()),
                    Outgoing::Token(t) if t.hlc.cell != cell => tokens.push(t.clone()),
                    _ => {}
                }
            }
            let waiting = state.outbox_waiting(position);
            (Push { from: self.host.config().cell.clone(), upto, jobs, quotas, locations, tokens }, waiting)
        };
        self.metrics.pending.with_label_values(&[cell]).set(waiting as i64);
        if push.upto == position {
            return Ok(false);
        }
        let every = Duration::from_millis(self.host.config().federation.heartbeat_ms);
        let empty =
            push.jobs.is_empty() && push.quotas.is_empty() && push.locations.is_empty() && push.tokens.is_empty();
        if empty && peer.pushed_at.is_some_and(|t| t.elapsed() < every) {
            // Only jobs that cell wrote itself: nothing to send now. Its stored position catches up with the next
            // batch it takes (after a restart here, the range is read again and left out again).
            if let Some(p) = self.peers.get_mut(cell) {
                p.position = Some(push.upto);
            }
            return Ok(true);
        }
        let pushed = self.send(cell, PUSH_PATH, &push).await?;
        let pushed: Pushed = rmp_serde::from_slice(&pushed).map_err(|e| e.to_string())?;
        for (job, why) in &pushed.refused {
            tracing::warn!(cell, job, why, "another cell refused a job");
        }
        self.pushed += push.jobs.len() as u64;
        if let Some(p) = self.peers.get_mut(cell) {
            p.position = Some(pushed.position);
            p.pushed_at = Some(Instant::now());
        }
        let (left, last) = {
            let state = self.host.read();
            (state.outbox_waiting(pushed.position), state.outbox_seq())
        };
        self.metrics.pending.with_label_values(&[cell]).set(left as i64);
        Ok(pushed.position < last)
    }

    /// Sends `body` to `path` on a member of `cell` (the one that answered last first); the answer's bytes.
    async fn send(
        &mut self,
        cell: &str,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<axum::body::Bytes, String> {
        let Some(peer) = self.peers.get(cell) else { return Err(format!("cell {cell} is not a peer")) };
        let body = axum::body::Bytes::from(rmp_serde::to_vec_named(body).map_err(|e| e.to_string())?);
        let timeout = Duration::from_millis(self.host.config().raft.write_timeout_ms + 1_000);
        let n = peer.addrs.len();
        let mut last_error = String::new();
        for i in 0..n {
            let k = (peer.preferred + i) % n;
            let addr = &peer.addrs[k];
            let resp = self
                .http
                .post(addr.as_str(), path)
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
            let answer = resp.bytes().await.map_err(|e| e.to_string())?;
            if path == PUSH_PATH {
                self.metrics.pushes.with_label_values(&[cell]).inc();
                self.metrics.push_bytes.with_label_values(&[cell]).inc_by(body.len() as u64);
            }
            if let Some(p) = self.peers.get_mut(cell) {
                p.preferred = k;
            }
            return Ok(answer);
        }
        Err(format!("no member of cell {cell} answered {path}: {last_error}"))
    }

    /// Anti-entropy with `cell`: sends this cell's digest, and pushes the jobs in the buckets that differ whose hash
    /// differs there (what that cell lacks, or holds in another version: the newer side wins when it merges). The
    /// other cell's own anti-entropy repairs this one.
    async fn anti_entropy(&mut self, cell: &str) -> Result<(), String> {
        let me = self.host.config().cell.clone();
        let tombstones = self.host.config().scheduler.tombstone_retention_ms;
        let digest = self.host.read().digest(crate::clock::now_ms(), tombstones);
        let answer = self.send(cell, DIGEST_PATH, &DigestOf { from: me.clone(), digest }).await?;
        let differs: Differs = rmp_serde::from_slice(&answer).map_err(|e| e.to_string())?;
        if differs.buckets.is_empty() {
            self.metrics.digests.with_label_values(&[cell, "match"]).inc();
            return Ok(());
        }
        self.metrics.digests.with_label_values(&[cell, "differ"]).inc();
        let (jobs, quotas, locations, tokens) = {
            let state = self.host.read();
            let jobs = state.differing_jobs(&differs.buckets, crate::clock::now_ms(), tombstones);
            let b = &differs.buckets;
            (jobs, state.differing_quotas(b), state.differing_locations(b), state.differing_tokens(b))
        };
        if !quotas.is_empty() || !locations.is_empty() || !tokens.is_empty() {
            let n = (quotas.len() + locations.len() + tokens.len()) as u64;
            let push = Push { from: me.clone(), upto: 0, jobs: Vec::new(), quotas, locations, tokens };
            self.send(cell, PUSH_PATH, &push).await?;
            self.metrics.repaired.with_label_values(&[cell]).inc_by(n);
        }
        tracing::info!(cell, buckets = differs.buckets.len(), jobs = jobs.len(), "anti-entropy: digests differ");
        let batch = self.host.config().federation.batch;
        for chunk in jobs.chunks(batch) {
            // A repair moves no position (`upto` 0): the stream still owes what it owes.
            let push = Push {
                from: me.clone(),
                upto: 0,
                jobs: chunk.to_vec(),
                quotas: Vec::new(),
                locations: Vec::new(),
                tokens: Vec::new(),
            };
            let answer = self.send(cell, PUSH_PATH, &push).await?;
            let pushed: Pushed = rmp_serde::from_slice(&answer).map_err(|e| e.to_string())?;
            self.metrics.repaired.with_label_values(&[cell]).inc_by((chunk.len() - pushed.refused.len()) as u64);
        }
        Ok(())
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
        for (name, at) in self.cells.last_heard() {
            let state = super::cells::state_of(at.map(|t| t.elapsed()), suspect, down);
            self.metrics.cell_up.with_label_values(&[&name]).set(i64::from(state == "up"));
        }
        if !self.host.is_leader() {
            for p in self.peers.values_mut() {
                p.position = None;
                p.digested_at = None;
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
        let every = Duration::from_millis(self.host.config().federation.digest_ms);
        for name in names {
            let result = match self.push(&name).await {
                Ok(true) => {
                    more = true;
                    Ok(())
                }
                Ok(false) => {
                    // Caught up: compare digests once after each (re)start of the stream, then every digest_ms.
                    // Not while this cell is still merging that cell's stream: the digests would differ by what is
                    // on its way, and the older side would push it back for nothing.
                    let peer = &self.peers[&name];
                    let merging = self.cells.outbox_seq(&name).is_none_or(|seq| self.host.read().position(&name) < seq);
                    let due =
                        peer.position.is_some() && !merging && peer.digested_at.is_none_or(|t| t.elapsed() >= every);
                    if due {
                        if let Some(p) = self.peers.get_mut(&name) {
                            p.digested_at = Some(Instant::now());
                        }
                        self.anti_entropy(&name).await
                    } else {
                        Ok(())
                    }
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                // Asked again at the next heartbeat: it may have merged the batch after all.
                if let Some(p) = self.peers.get_mut(&name) {
                    p.position = None;
                    p.digested_at = None;
                }
                errors.push(e);
            }
        }
        if !errors.is_empty() {
            tracing::debug!(errors = ?errors, "federation pushes failed; retried after the next heartbeat");
        }
        Ok(if more { Next::Busy } else { Next::Idle })
    }
}
