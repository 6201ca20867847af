//! Every metric an agent exports, in one catalogue: what dashboards and alert rules may query.

use titan_api::metrics::Def;

pub const TASKS: Def = Def::gauge("titan_agent_tasks", "Tasks this agent holds, by state").by(&["state"]);
pub const TASK_START_SECONDS: Def = Def::histogram(
    "titan_agent_task_start_seconds",
    "From assignment fetched to task running",
    &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0],
);
pub const VOLUME_USED_BYTES: Def =
    Def::gauge("titan_agent_volume_used_bytes", "Bytes used by each volume of a running task").by(&["volume"]);
pub const STATUS_REPORT_FAILURES: Def = Def::counter(
    "titan_agent_status_report_failures_total",
    "Status reports the cell did not acknowledge (they are retried)",
);
pub const PLANS_REFUSED: Def = Def::counter(
    "titan_agent_plans_refused_total",
    "Assignments answers refused because their lease epoch was not the agent's",
);
pub const PENDING_STATUSES: Def =
    Def::gauge("titan_agent_pending_statuses", "Task statuses waiting to be acknowledged by the cell");
pub const DISCONNECT_STOPS: Def = Def::counter(
    "titan_agent_disconnect_stops_total",
    "Tasks stopped because the lease went unrenewed past their job's disconnect.stopAfterSeconds",
);
pub const REGISTRATIONS: Def = Def::counter("titan_agent_registrations_total", "Registrations with the cell");
pub const HEARTBEAT_FAILURES: Def =
    Def::counter("titan_agent_heartbeat_failures_total", "Heartbeats the cell did not answer or refused");
pub const LEASE_EPOCH: Def = Def::gauge("titan_agent_lease_epoch", "The lease epoch this agent holds (0: none)");
pub const PORTS_IN_EPHEMERAL_RANGE: Def = Def::gauge(
    "titan_agent_ports_in_ephemeral_range",
    "Task host ports the kernel may give connections as source ports (a launch publishing one can fail)",
);
pub const SINCE_RENEWAL_SECONDS: Def = Def::gauge(
    "titan_agent_seconds_since_lease_renewal",
    "Seconds since the last lease renewal the cell answered (from when it was sent)",
);

/// Every metric of an agent but the HTTP ones of its own small server, if any.
pub const ALL: &[Def] = &[
    TASKS,
    TASK_START_SECONDS,
    VOLUME_USED_BYTES,
    STATUS_REPORT_FAILURES,
    PLANS_REFUSED,
    PENDING_STATUSES,
    DISCONNECT_STOPS,
    REGISTRATIONS,
    HEARTBEAT_FAILURES,
    LEASE_EPOCH,
    PORTS_IN_EPHEMERAL_RANGE,
    SINCE_RENEWAL_SECONDS,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_exports_only_catalogue_metrics() {
        let registry = prometheus::Registry::new();
        let tasks = crate::supervisor::TaskMetrics::new(&registry).expect("registers");
        let lease = crate::daemon::LeaseMetrics::new(&registry).expect("registers");
        tasks.volume_used_bytes.with_label_values(&["v"]).set(1);
        tasks.start_seconds.observe(0.5);
        lease.since_renewal_seconds.set(1.5);
        let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).expect("encodes");
        let samples: Vec<&str> =
            text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
        assert!(samples.len() >= ALL.len(), "{text}");
        for sample in samples {
            assert!(titan_api::metrics::known(ALL, sample), "{sample} is in the catalogue");
        }
    }
}
