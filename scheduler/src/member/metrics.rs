//! The member's own metrics (the HTTP ones live with the router), kept current from Raft's by `watch`.

use super::*;
use crate::scheduling::Host;

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
    pub(super) quota_limit: prometheus::GaugeVec,
    pub(super) quota_used: prometheus::GaugeVec,
    pub(super) quota_running: prometheus::GaugeVec,
    pub(super) quota_rejections: IntCounterVec,
    capacity: prometheus::GaugeVec,
    stranded: prometheus::GaugeVec,
    app_instances: IntGaugeVec,
    app_tasks: IntGaugeVec,
    agents: IntGaugeVec,
    lease_seconds: IntGauge,
}

impl CellMetrics {
    pub(super) fn new(registry: &Registry, cell: &str, node: u64) -> Result<CellMetrics, prometheus::Error> {
        use crate::metrics::{raft, scheduling};
        let r = crate::metrics::registrar(registry, cell, node);
        Ok(CellMetrics {
            term: r.gauge(&raft::TERM)?,
            is_leader: r.gauge(&raft::IS_LEADER)?,
            leader_changes: r.counter(&raft::LEADER_CHANGES)?,
            commit_latency: r.histogram(&raft::COMMIT_SECONDS)?,
            last_log_index: r.gauge(&raft::LAST_LOG_INDEX)?,
            applied_index: r.gauge(&raft::APPLIED_INDEX)?,
            commit_index: r.gauge(&raft::COMMIT_INDEX)?,
            apply_lag: r.gauge(&raft::APPLY_LAG)?,
            log_entries: r.gauge(&raft::LOG_ENTRIES)?,
            snapshots: r.counter(&raft::SNAPSHOTS)?,
            store_bytes: r.gauge(&raft::STORE_BYTES)?,
            jobs: r.gauge_vec(&scheduling::JOBS)?,
            batch_size: r.histogram(&raft::BATCH_SIZE)?,
            forwarded: r.counter(&raft::FORWARDED)?,
            membership_changes: r.counter_vec(&raft::MEMBERSHIP_CHANGES)?,
            timed_out: r.counter_vec(&raft::TIMED_OUT)?,
            in_flight: r.gauge(&raft::IN_FLIGHT)?,
            quota_limit: r.float_gauge_vec(&crate::metrics::quota::LIMIT)?,
            quota_used: r.float_gauge_vec(&crate::metrics::quota::USED)?,
            quota_running: r.float_gauge_vec(&crate::metrics::quota::RUNNING)?,
            quota_rejections: r.counter_vec(&crate::metrics::quota::REJECTIONS)?,
            capacity: r.float_gauge_vec(&crate::metrics::capacity::CAPACITY)?,
            stranded: r.float_gauge_vec(&crate::metrics::capacity::STRANDED)?,
            app_instances: r.gauge_vec(&crate::metrics::application::INSTANCES)?,
            app_tasks: r.gauge_vec(&crate::metrics::application::TASKS)?,
            agents: r.gauge_vec(&crate::metrics::application::AGENTS)?,
            lease_seconds: r.gauge(&crate::metrics::application::LEASE)?,
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
    /// The quotas' shape when their gauges were last reset.
    quota_shape: AtomicU64,
    /// Slow passes made, so the per-application pass runs every `APPLICATIONS_EVERY` of them.
    passes: u64,
}

/// The per-application gauges take a pass over jobs and tasks: every fifth second, not every one.
const APPLICATIONS_EVERY: u64 = 5;

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
            quota_shape: AtomicU64::new(0),
            passes: 0,
        }
    }

    /// The gauges read from the state and the store, every second.
    fn slow(&mut self) {
        self.metrics.store_bytes.set(self.engine.size_on_disk() as i64);
        let s = self.handle.read();
        for st in [JobState::Enabled, JobState::Disabled, JobState::Killed] {
            self.metrics.jobs.with_label_values(&[st.as_str()]).set(s.count(st) as i64);
        }
        crate::scheduling::observe_tasks(&self.scheduling, &s, now_ms());
        self.observe_quotas(&s);
        self.observe_capacity(&s);
        let lease_ms = crate::lease::lease_ms(&self.handle.config().scheduler, s.agent_count());
        self.metrics.lease_seconds.set(lease_ms.div_ceil(1_000) as i64);
        if self.passes.is_multiple_of(APPLICATIONS_EVERY) {
            self.observe_applications(&s);
        }
        self.passes += 1;
    }

    /// Per application: desired instances per location and tasks here by state; and the agents by state. All are
    /// set again on each pass (reset first), so an application that is gone leaves no series behind.
    fn observe_applications(&self, s: &crate::state::CellState) {
        let m = &self.metrics;
        let started = std::time::Instant::now();
        let report = crate::application::report(s);
        m.app_instances.reset();
        m.app_tasks.reset();
        for (app, f) in &report {
            for (location, n) in &f.instances {
                m.app_instances.with_label_values(&[app.as_str(), location.as_str()]).set(*n as i64);
            }
            for (state, n) in &f.tasks {
                m.app_tasks.with_label_values(&[app.as_str(), state.as_str()]).set(*n as i64);
            }
            // Its restarts counter exists from the first pass at 0, not only once a task was replaced.
            self.scheduling.app_restarts.with_label_values(&[app.as_str()]);
        }
        for (state, n) in crate::application::agents(s) {
            m.agents.with_label_values(&[state]).set(n as i64);
        }
        tracing::trace!(applications = report.len(), us = started.elapsed().as_micros() as u64, "application gauges");
    }

    /// Per instance group and resource: total, allocated and free, and stranded. Series per group and resource
    /// (bounded by the instance groups); all are set again every second, so a group that is gone is reset.
    fn observe_capacity(&self, s: &crate::state::CellState) {
        let m = &self.metrics;
        let report = crate::capacity::report(s);
        m.capacity.reset();
        m.stranded.reset();
        for (group, f) in &report {
            for (i, resource) in crate::capacity::RESOURCES.iter().enumerate() {
                let free = (f.total[i] - f.allocated[i]).max(0.0);
                for (state, v) in [("total", f.total[i]), ("allocated", f.allocated[i]), ("free", free)] {
                    m.capacity.with_label_values(&[group.as_str(), resource, state]).set(v);
                }
                m.stranded.with_label_values(&[group.as_str(), resource]).set(f.stranded[i]);
            }
        }
    }

    /// Each quota's limit, desired usage and (in this cell's location) what runs, per resource: O(quotas x
    /// locations), read from indexes kept as jobs and tasks change. Series per group with a quota and location it
    /// names, so bounded by the quotas SREs set; they are dropped (reset) only when the quotas change.
    fn observe_quotas(&self, s: &crate::state::CellState) {
        use crate::quota::Resource;
        let m = &self.metrics;
        let shape: u64 =
            s.quotas().map(|q| q.version + q.locations.len() as u64).sum::<u64>() + s.quotas().count() as u64;
        if self.quota_shape.swap(shape, Ordering::Relaxed) != shape {
            m.quota_limit.reset();
            m.quota_used.reset();
            m.quota_running.reset();
        }
        let here = &self.handle.config().cell;
        for q in s.quotas() {
            for (location, limits) in &q.locations {
                let used = s.usage(&q.group, location);
                let running = (location == here).then(|| s.running(&q.group));
                for r in Resource::ALL {
                    let labels = [q.group.as_str(), location.as_str(), r.as_str()];
                    if let Some(v) = limits.get(r) {
                        m.quota_limit.with_label_values(&labels).set(v);
                    }
                    m.quota_used.with_label_values(&labels).set(used.get(r));
                    if let Some(run) = running {
                        m.quota_running.with_label_values(&labels).set(run.get(r));
                    }
                }
            }
        }
    }
}

impl crate::worker::Worker for MetricsWorker {
    fn name(&self) -> String {
        "metrics".into()
    }

    fn status(&self) -> String {
        let m = self.changes.borrow();
        let leader = m.current_leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into());
        format!("term {}, leader {leader}, applied {}", m.current_term, m.last_applied.map(|l| l.index).unwrap_or(0))
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
