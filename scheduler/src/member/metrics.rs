//! The member's own metrics (the HTTP ones live with the router), kept current from Raft's by `watch`.

use super::*;

/// The cell's own metrics; the HTTP ones live with the router.
#[derive(Clone)]
pub(super) struct CellMetrics {
    pub(super) term: IntGauge,
    pub(super) is_leader: IntGauge,
    pub(super) leader_changes: IntCounter,
    pub(super) commit_latency: Histogram,
    pub(super) last_log_index: IntGauge,
    pub(super) applied_index: IntGauge,
    pub(super) commit_index: IntGauge,
    pub(super) apply_lag: IntGauge,
    pub(super) log_entries: IntGauge,
    pub(super) snapshots: IntCounter,
    pub(super) store_bytes: IntGauge,
    pub(super) jobs: IntGaugeVec,
    pub(super) batch_size: Histogram,
    pub(super) forwarded: IntCounter,
    pub(super) membership_changes: IntCounterVec,
    pub(super) timed_out: IntCounterVec,
    pub(super) in_flight: IntGauge,
}

impl CellMetrics {
    pub(super) fn new(registry: &Registry, cell: &str, node: u64) -> Result<CellMetrics, prometheus::Error> {
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

/// Keeps the cell's gauges current from Raft's metrics as they change, and the slower ones every second.
pub(super) struct MetricsWorker {
    handle: Handle,
    metrics: CellMetrics,
    scheduling: crate::scheduling::SchedulingMetrics,
    engine: Arc<dyn Engine>,
    committed: Arc<AtomicU64>,
    proposer: Arc<Proposer>,
    changes: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
    tick: tokio::time::Interval,
    /// Whether the last wake-up was the timer's.
    ticked: bool,
    leader: Option<NodeId>,
    snapshot: Option<openraft::LogId<NodeId>>,
}

impl MetricsWorker {
    pub(super) fn new(
        handle: Handle,
        metrics: CellMetrics,
        scheduling: crate::scheduling::SchedulingMetrics,
        engine: Arc<dyn Engine>,
        committed: Arc<AtomicU64>,
        proposer: Arc<Proposer>,
    ) -> MetricsWorker {
        let changes = handle.raft().metrics();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        MetricsWorker {
            handle,
            metrics,
            scheduling,
            engine,
            committed,
            proposer,
            changes,
            tick,
            ticked: false,
            leader: None,
            snapshot: None,
        }
    }

    /// The gauges read from the state and the store, every second.
    fn slow(&self) {
        self.metrics.store_bytes.set(self.engine.size_on_disk() as i64);
        let s = self.handle.read();
        for st in [JobState::Enabled, JobState::Disabled, JobState::Killed] {
            self.metrics.jobs.with_label_values(&[st.as_str()]).set(s.count(st) as i64);
        }
        crate::scheduling::observe_tasks(&self.scheduling, &s, now_ms());
    }
}

impl crate::worker::Worker for MetricsWorker {
    fn name(&self) -> String {
        "metrics".into()
    }

    async fn wait(&mut self) -> crate::worker::Next {
        tokio::select! {
            changed = self.changes.changed() => {
                if changed.is_err() {
                    return crate::worker::Next::Done;
                }
                self.ticked = false;
            }
            _ = self.tick.tick() => self.ticked = true,
        }
        crate::worker::Next::Busy
    }

    async fn step(&mut self) -> Result<crate::worker::Next, String> {
        if self.ticked {
            self.slow();
        }
        let m = self.changes.borrow_and_update().clone();
        let metrics = &self.metrics;
        metrics.in_flight.set(self.proposer.proposing.load(Ordering::Acquire) as i64);
        metrics.term.set(m.current_term as i64);
        metrics.is_leader.set(i64::from(m.state == ServerState::Leader));
        if m.current_leader != self.leader {
            if m.current_leader.is_some() {
                metrics.leader_changes.inc();
                tracing::info!(leader = ?m.current_leader, term = m.current_term, "leader changed");
            }
            self.leader = m.current_leader;
        }
        if m.snapshot != self.snapshot {
            if m.snapshot.is_some() {
                metrics.snapshots.inc();
            }
            self.snapshot = m.snapshot;
        }
        let last = m.last_log_index.unwrap_or(0);
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        let committed = self.committed.load(Ordering::Relaxed).max(applied);
        let purged = m.purged.map(|l| l.index + 1).unwrap_or(0);
        metrics.last_log_index.set(last as i64);
        metrics.applied_index.set(applied as i64);
        metrics.commit_index.set(committed as i64);
        metrics.apply_lag.set(committed.saturating_sub(applied) as i64);
        metrics.log_entries.set(last.saturating_sub(purged) as i64 + i64::from(m.last_log_index.is_some()));
        Ok(crate::worker::Next::Idle)
    }
}
