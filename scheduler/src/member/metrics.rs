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

/// Keeps the cell's gauges current from Raft's metrics, and the slower ones on a timer.
pub(super) async fn watch(cell: Arc<Cell>) {
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
