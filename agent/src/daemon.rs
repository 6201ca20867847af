//! The agent's loop: register with the cell, keep the lease with heartbeats, and register again whenever the
//! cell says the lease is stale or unknown. A cell that cannot be reached is retried without end: the agent rides
//! out cell outages and reconnects.

use std::time::Duration;

use prometheus::{IntCounter, IntGauge, Registry};
use titan_api::agent::AgentRegistration;
use titan_api::{Client, ErrorCode};

/// How long to wait before trying an unreachable cell again.
pub const RETRY: Duration = Duration::from_secs(1);

/// What the loop reports on the agent's `/metrics`.
#[derive(Clone)]
pub struct LeaseMetrics {
    pub registrations: IntCounter,
    pub heartbeat_failures: IntCounter,
    pub lease_epoch: IntGauge,
}

impl LeaseMetrics {
    pub fn new(registry: &Registry) -> Result<LeaseMetrics, prometheus::Error> {
        let registrations = IntCounter::new("titan_agent_registrations_total", "Registrations with the cell")?;
        let heartbeat_failures =
            IntCounter::new("titan_agent_heartbeat_failures_total", "Heartbeats the cell did not answer or refused")?;
        let lease_epoch = IntGauge::new("titan_agent_lease_epoch", "The lease epoch this agent holds (0: none)")?;
        registry.register(Box::new(registrations.clone()))?;
        registry.register(Box::new(heartbeat_failures.clone()))?;
        registry.register(Box::new(lease_epoch.clone()))?;
        Ok(LeaseMetrics { registrations, heartbeat_failures, lease_epoch })
    }
}

/// Registers, then heartbeats until `stop` resolves.
pub async fn run(
    client: Client,
    registration: AgentRegistration,
    metrics: LeaseMetrics,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let id = registration.id.clone();
    let mut epoch: Option<u64> = None;
    let mut interval = RETRY;
    loop {
        tokio::select! {
            () = &mut stop => {
                tracing::info!(agent = %id, "agent stopping");
                return;
            }
            () = tokio::time::sleep(if epoch.is_some() { interval } else { Duration::ZERO }) => {}
        }
        match epoch {
            None => match client.register_agent(&registration).await {
                Ok(view) => {
                    tracing::info!(agent = %id, epoch = view.lease_epoch, "registered");
                    metrics.registrations.inc();
                    metrics.lease_epoch.set(view.lease_epoch as i64);
                    epoch = Some(view.lease_epoch);
                    interval = Duration::ZERO;
                }
                Err(e) => {
                    tracing::warn!(agent = %id, error = %e, "registration failed; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            },
            Some(current) => match client.heartbeat(&id, current).await {
                Ok(lease) => interval = Duration::from_millis(lease.lease_ms / 3),
                Err(e) if matches!(e.code(), Some(ErrorCode::Conflict) | Some(ErrorCode::NotFound)) => {
                    tracing::warn!(agent = %id, error = %e, "lease lost; registering again");
                    metrics.heartbeat_failures.inc();
                    metrics.lease_epoch.set(0);
                    epoch = None;
                }
                Err(e) => {
                    tracing::warn!(agent = %id, error = %e, "heartbeat failed; retrying");
                    metrics.heartbeat_failures.inc();
                    interval = RETRY;
                }
            },
        }
    }
}
