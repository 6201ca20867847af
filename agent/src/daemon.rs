//! The agent's loop: register with the cell, keep the lease with heartbeats, and register again whenever the
//! cell says the lease is stale or unknown. A cell that cannot be reached is retried without end: the agent rides
//! out cell outages and reconnects, and its tasks keep running meanwhile.
//!
//! With a `Supervisor` (`run_supervised`), three loops share the lease: heartbeats, the assignments long-poll
//! (each answer handed to the supervisor, which acts only on the epoch held), and the status reporter (batches
//! of the latest status per task, retried until acknowledged). Any of them that hears the lease is stale drops
//! it, and the lease loop registers again, listing the tasks still running.
//!
//! A fourth loop, `disconnect`, watches the time since the lease was last renewed (counted from when the
//! renewing request was sent, which is no later than when the cell heard it) and stops the tasks whose job asked
//! to be stopped after that long (`disconnect.stopAfterSeconds`); the cell replaces them only after a longer
//! grace, so an original and its replacement never run at once. Their statuses wait until the cell answers.

use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge, Registry};
use titan_api::agent::AgentRegistration;
use titan_api::task::StatusReport;
use titan_api::{Client, ClientError, ErrorCode};
use tokio::sync::watch;

use crate::supervisor::{Applied, Supervisor};

/// How long to wait before trying an unreachable cell again.
pub const RETRY: Duration = Duration::from_secs(1);
/// Longest wait between retries of a failing call.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long one assignments long-poll waits for a change (the API allows 30 s): a change ends it at once, so a
/// long wait costs nothing but spares the cell a poll per agent every few seconds.
pub const ASSIGNMENTS_WAIT: Duration = Duration::from_secs(25);
/// How long statuses gather after the first is queued, so one report carries several.
pub const REPORT_BATCH: Duration = Duration::from_millis(50);
/// How often the lease loop looks again at when its next beat is due (a task that stops on a disconnect sooner
/// than a third of the lease may have arrived).
const RECHECK: Duration = Duration::from_secs(1);
/// The file in the agent's data directory holding when the last lease renewal was sent (Unix milliseconds).
pub const LEASE_FILE: &str = "lease-renewed";
/// How often the time since the last lease renewal is checked against the tasks' stop-after; the cell's
/// `scheduler.disconnect_margin_ms` (5 s by default) must exceed it.
pub const DISCONNECT_CHECK: Duration = Duration::from_millis(250);

/// What the loop reports on the agent's `/metrics`.
#[derive(Clone)]
pub struct LeaseMetrics {
    pub registrations: IntCounter,
    pub heartbeat_failures: IntCounter,
    pub lease_epoch: IntGauge,
    pub ports_in_ephemeral_range: IntGauge,
    pub since_renewal_seconds: prometheus::Gauge,
}

impl LeaseMetrics {
    pub fn new(registry: &Registry) -> Result<LeaseMetrics, prometheus::Error> {
        use crate::metrics::*;
        let r = titan_api::metrics::Registrar::new(registry, &[]);
        let registrations = r.counter(&REGISTRATIONS)?;
        let heartbeat_failures = r.counter(&HEARTBEAT_FAILURES)?;
        let lease_epoch = r.gauge(&LEASE_EPOCH)?;
        let ports_in_ephemeral_range = r.gauge(&PORTS_IN_EPHEMERAL_RANGE)?;
        let since_renewal_seconds = r.float_gauge(&SINCE_RENEWAL_SECONDS)?;
        Ok(LeaseMetrics {
            registrations,
            heartbeat_failures,
            lease_epoch,
            ports_in_ephemeral_range,
            since_renewal_seconds,
        })
    }
}

/// The lease epoch held (`None`: not registered), shared by the loops.
struct Lease {
    epoch: watch::Sender<Option<u64>>,
    /// When the latest request the cell answered as a renewal (a registration or a heartbeat) was sent, as an
    /// instant and how long before it (a renewal made by a previous run of the agent); `None` before the first.
    renewed: std::sync::Mutex<Option<(Instant, Duration)>>,
    /// Where renewals are kept across restarts.
    file: Option<std::path::PathBuf>,
    metrics: LeaseMetrics,
}

impl Lease {
    /// The lease as a previous run of the agent left it: renewed as long ago as its file says.
    fn load(file: Option<std::path::PathBuf>, metrics: LeaseMetrics) -> Lease {
        let before =
            file.as_deref().and_then(read_renewal).map(|at_ms| Duration::from_millis(now_ms().saturating_sub(at_ms)));
        if let Some(before) = before {
            tracing::info!(
                since_renewal_ms = before.as_millis() as u64,
                "the lease was last renewed by a previous run"
            );
        }
        Lease {
            epoch: watch::Sender::new(None),
            renewed: std::sync::Mutex::new(before.map(|b| (Instant::now(), b))),
            file,
            metrics,
        }
    }

    /// The cell renewed the lease in answer to a request sent at `sent` (`sent_ms` on the wall clock).
    async fn renewed(&self, sent: Instant, sent_ms: u64) {
        {
            let mut renewed = self.renewed.lock().unwrap_or_else(|p| p.into_inner());
            // Requests may be answered out of order; the latest sent counts.
            if renewed.is_some_and(|(at, before)| before.is_zero() && at >= sent) {
                return;
            }
            *renewed = Some((sent, Duration::ZERO));
        }
        if let Some(file) = &self.file {
            if let Err(e) = write_renewal(file, sent_ms).await {
                tracing::warn!(file = %file.display(), error = %e, "cannot keep the lease renewal time");
            }
        }
    }

    /// How long since the lease was last renewed; `None` before the first renewal.
    fn since_renewal(&self) -> Option<Duration> {
        self.renewed.lock().unwrap_or_else(|p| p.into_inner()).map(|(at, before)| at.elapsed() + before)
    }

    fn held(&self) -> Option<u64> {
        *self.epoch.borrow()
    }

    /// The cell called `epoch` stale or unknown: drop it (unless a newer registration already replaced it), so
    /// the lease loop registers again.
    fn lose(&self, epoch: u64) {
        let dropped = self.epoch.send_if_modified(|held| {
            let stale = *held == Some(epoch);
            if stale {
                *held = None;
            }
            stale
        });
        if dropped {
            self.metrics.lease_epoch.set(0);
        }
    }

    /// Resolves once an epoch is held.
    async fn wait_held(&self) -> u64 {
        let mut rx = self.epoch.subscribe();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// When the last renewal was sent, from the lease file; `None` when there is none or it cannot be read.
fn read_renewal(file: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Keeps `at_ms` in the lease file: written beside it and renamed over it, so a crash leaves the old or the new
/// time, never a torn one.
async fn write_renewal(file: &std::path::Path, at_ms: u64) -> std::io::Result<()> {
    let temporary = file.with_extension("tmp");
    tokio::fs::write(&temporary, at_ms.to_string()).await?;
    tokio::fs::rename(&temporary, file).await
}

/// Doubling waits between retries, from `RETRY / 4` up to `MAX_BACKOFF`.
struct Backoff(Duration);

/// Somewhere in the upper half of `d`, by `r`: agents that failed together (a cell restarting under thousands
/// of them) do not all come back in the same instant.
fn jittered(d: Duration, r: u64) -> Duration {
    d / 2 + (d / 2).mul_f64((r % 1_024) as f64 / 1_024.0)
}

impl Backoff {
    fn new() -> Backoff {
        Backoff(RETRY / 4)
    }

    async fn wait(&mut self) {
        use std::hash::{BuildHasher, RandomState};
        tokio::time::sleep(jittered(self.0, RandomState::new().hash_one(Instant::now()))).await;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
    }

    fn reset(&mut self) {
        self.0 = RETRY / 4;
    }
}

/// Whether an error means the agent's lease (or the agent itself) is unknown to the cell.
fn lease_refused(e: &ClientError) -> bool {
    matches!(e.code(), Some(ErrorCode::Conflict) | Some(ErrorCode::NotFound))
}

/// Registers, then heartbeats until `stop` resolves. Runs no tasks.
pub async fn run(
    client: Client,
    registration: AgentRegistration,
    metrics: LeaseMetrics,
    stop: impl std::future::Future<Output = ()>,
) {
    serve(client, registration, metrics, None, stop).await
}

/// Registers (listing the tasks found still running), then keeps the lease, pulls assignments into the
/// supervisor and reports their statuses, until `stop` resolves. Containers outlive it, to be re-adopted.
pub async fn run_supervised(
    client: Client,
    registration: AgentRegistration,
    metrics: LeaseMetrics,
    supervisor: Supervisor,
    stop: impl std::future::Future<Output = ()>,
) {
    serve(client, registration, metrics, Some(supervisor), stop).await
}

async fn serve(
    client: Client,
    registration: AgentRegistration,
    metrics: LeaseMetrics,
    supervisor: Option<Supervisor>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let id = registration.id.clone();
    if supervisor.is_some() {
        check_ports(&registration, &metrics);
    }
    if let Some(s) = &supervisor {
        // What a previous run left behind must be known before registering: the cell keeps only those listed.
        let mut backoff = Backoff::new();
        loop {
            tokio::select! {
                () = &mut stop => return,
                found = s.recover() => match found {
                    Ok(found) => {
                        tracing::info!(agent = %id, found = found.len(), "recovered tasks left running");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(agent = %id, error = %e, "cannot list the runtime's tasks; retrying");
                        backoff.wait().await;
                    }
                },
            }
        }
    }
    let lease = Lease::load(supervisor.as_ref().and_then(|s| s.lease_file().map(|f| f.to_path_buf())), metrics);
    let work = async {
        match &supervisor {
            Some(s) => {
                tokio::join!(
                    keep_lease(&client, &registration, &lease, Some(s)),
                    pull(&client, &id, &lease, s),
                    report(&client, &id, &lease, s),
                    disconnect(&lease, s),
                );
            }
            None => keep_lease(&client, &registration, &lease, None).await,
        }
    };
    tokio::select! {
        () = &mut stop => tracing::info!(agent = %id, "agent stopping"),
        () = work => {}
    }
    if let Some(s) = &supervisor {
        s.shutdown().await;
    }
}

/// Warns when task host ports lie in the kernel's ephemeral range: any connection on this machine may take one
/// as its source port, and a task publishing it then fails to launch ("address already in use").
fn check_ports(registration: &AgentRegistration, metrics: &LeaseMetrics) {
    let Some(kernel) = crate::node::Ephemeral::of_this_machine() else { return };
    let ranges = &registration.resources.port_ranges;
    let overlap: u32 = ranges.iter().map(|&r| kernel.overlap(r)).sum();
    metrics.ports_in_ephemeral_range.set(i64::from(overlap));
    if overlap > 0 {
        tracing::warn!(agent = %registration.id, ports = ?ranges, ephemeral = ?kernel.range, overlap,
            "task host ports overlap the kernel's ephemeral range; launches can fail when a connection holds one: \
             choose --ports outside it or reserve them in net.ipv4.ip_local_reserved_ports");
    }
}

/// Registers whenever no epoch is held, heartbeats at a third of the lease otherwise.
async fn keep_lease(client: &Client, registration: &AgentRegistration, lease: &Lease, supervisor: Option<&Supervisor>) {
    let id = &registration.id;
    let mut changes = lease.epoch.subscribe();
    // The next beat is due `every` after `last` (a third of the lease, or sooner for tasks that stop on a
    // disconnect: see `plan::beat_every`); rechecked at least every `RECHECK`, since such a task may arrive between.
    let (mut last, mut every) = (Instant::now(), Duration::ZERO);
    let due = |last: Instant, every: Duration| last + supervisor.map_or(every, |s| s.beat_every(every));
    // Failed registrations back off, with jitter: a fleet whose cell was away must not register all at once.
    let mut backoff = Backoff::new();
    loop {
        match lease.held() {
            None => {
                let mut r = registration.clone();
                if let Some(s) = supervisor {
                    r.running = s.running();
                }
                let (sent, sent_ms) = (Instant::now(), now_ms());
                match client.register_agent(&r).await {
                    Ok(view) => {
                        backoff.reset();
                        lease.renewed(sent, sent_ms).await;
                        tracing::info!(agent = %id, epoch = view.lease_epoch, cell = %view.cell,
                            running = r.running.len(), "registered");
                        if let Some(s) = supervisor {
                            s.set_cell(&view.cell);
                        }
                        lease.metrics.registrations.inc();
                        lease.metrics.lease_epoch.set(view.lease_epoch as i64);
                        lease.epoch.send_replace(Some(view.lease_epoch));
                        changes.borrow_and_update();
                        (last, every) = (Instant::now(), Duration::ZERO);
                    }
                    Err(e) => {
                        tracing::warn!(agent = %id, error = %e, "registration failed; retrying");
                        backoff.wait().await;
                    }
                }
            }
            Some(current) => {
                let wake = due(last, every).min(Instant::now() + RECHECK);
                tokio::select! {
                    () = tokio::time::sleep_until(wake.into()) => {}
                    _ = changes.changed() => continue,
                }
                if Instant::now() < due(last, every) {
                    continue;
                }
                let (sent, sent_ms) = (Instant::now(), now_ms());
                match client.heartbeat(id, current).await {
                    Ok(l) => {
                        lease.renewed(sent, sent_ms).await;
                        (last, every) = (sent, Duration::from_millis(l.lease_ms / 3));
                    }
                    Err(e) if lease_refused(&e) => {
                        tracing::warn!(agent = %id, error = %e, "lease lost; registering again");
                        lease.metrics.heartbeat_failures.inc();
                        lease.lose(current);
                    }
                    Err(e) => {
                        tracing::warn!(agent = %id, error = %e, "heartbeat failed; retrying");
                        lease.metrics.heartbeat_failures.inc();
                        (last, every) = (Instant::now(), RETRY);
                    }
                }
            }
        }
    }
}

/// Stops the tasks whose job asked to be stopped once the lease has gone unrenewed longer than it allows.
async fn disconnect(lease: &Lease, supervisor: &Supervisor) {
    loop {
        tokio::time::sleep(DISCONNECT_CHECK).await;
        let Some(since) = lease.since_renewal() else { continue };
        lease.metrics.since_renewal_seconds.set(since.as_secs_f64());
        supervisor.stop_disconnected(since);
    }
}

/// The assignments long-poll: each answer goes to the supervisor, which acts on it only for the epoch held.
async fn pull(client: &Client, id: &str, lease: &Lease, supervisor: &Supervisor) {
    let mut backoff = Backoff::new();
    let mut after: Option<u64> = None;
    let mut asked_for: Option<u64> = None;
    loop {
        let epoch = lease.wait_held().await;
        if asked_for != Some(epoch) {
            // A new registration: ask for the whole current plan at once.
            after = None;
            asked_for = Some(epoch);
        }
        let answer = client.assignments(id, after, ASSIGNMENTS_WAIT).await;
        let fetched = Instant::now();
        match answer {
            Ok(answer) => {
                backoff.reset();
                // The epoch held now, not when asking: a registration during the poll makes the answer stale.
                match supervisor.apply(lease.held(), &answer, fetched) {
                    Applied::Acted => after = Some(answer.version),
                    Applied::Refused { register_again } => {
                        after = None;
                        if register_again {
                            lease.lose(epoch);
                        } else {
                            backoff.wait().await;
                        }
                    }
                }
            }
            Err(e) if lease_refused(&e) => {
                tracing::warn!(agent = %id, error = %e, "assignments refused the lease; registering again");
                lease.lose(epoch);
            }
            Err(e) => {
                tracing::warn!(agent = %id, error = %e, "assignments failed; retrying");
                backoff.wait().await;
            }
        }
    }
}

/// Sends queued statuses in batches with the epoch held, until each is acknowledged.
async fn report(client: &Client, id: &str, lease: &Lease, supervisor: &Supervisor) {
    let mut backoff = Backoff::new();
    loop {
        supervisor.statuses_queued().await;
        tokio::time::sleep(REPORT_BATCH).await;
        let epoch = lease.wait_held().await;
        let statuses = supervisor.take_statuses();
        if statuses.is_empty() {
            continue;
        }
        let report = StatusReport { lease_epoch: epoch, statuses };
        match client.report_status(id, &report).await {
            Ok(ack) => {
                tracing::debug!(agent = %id, applied = ack.applied, ignored = ack.ignored, "statuses reported");
                supervisor.acknowledged();
                backoff.reset();
            }
            Err(e) => {
                supervisor.metrics().status_report_failures.inc();
                supervisor.restore_statuses(report.statuses);
                if lease_refused(&e) {
                    tracing::warn!(agent = %id, error = %e, "status report refused the lease; registering again");
                    lease.lose(epoch);
                } else {
                    tracing::warn!(agent = %id, error = %e, "status report failed; retrying");
                    backoff.wait().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> LeaseMetrics {
        LeaseMetrics::new(&Registry::new()).expect("metrics")
    }

    #[test]
    fn retries_spread_over_the_upper_half_of_the_backoff() {
        let d = Duration::from_secs(4);
        let waits: Vec<Duration> = (0..1_024u64).map(|r| jittered(d, r)).collect();
        assert!(waits.iter().all(|w| *w >= d / 2 && *w < d), "within [d/2, d)");
        assert_eq!(waits[0], d / 2);
        assert!(waits[1_023] > d.mul_f64(0.99));
        let distinct: std::collections::BTreeSet<Duration> = waits.iter().copied().collect();
        assert_eq!(distinct.len(), 1_024, "every draw its own instant");
        assert_eq!(jittered(d, 5), jittered(d, 5 + 1_024));
    }

    #[tokio::test]
    async fn a_restarted_agent_counts_the_time_since_the_renewal_its_previous_run_made() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join(LEASE_FILE);
        assert_eq!(Lease::load(Some(file.clone()), metrics()).since_renewal(), None, "never renewed");
        let lease = Lease::load(Some(file.clone()), metrics());
        lease.renewed(Instant::now(), now_ms() - 30_000).await;
        assert!(lease.since_renewal().is_some_and(|d| d < Duration::from_secs(1)), "renewed just now");
        assert!(read_renewal(&file).is_some(), "kept in the file");
        // A new run reads the wall-clock time of the last renewal: 30 s ago, and counting.
        let next = Lease::load(Some(file.clone()), metrics());
        let since = next.since_renewal().expect("known");
        assert!(since >= Duration::from_secs(30) && since < Duration::from_secs(31), "{since:?}");
        // An older answer arriving late does not move the renewal back; a newer one does.
        let earlier = Instant::now() - Duration::from_secs(5);
        lease.renewed(earlier, now_ms() - 5_000).await;
        assert!(lease.since_renewal().is_some_and(|d| d < Duration::from_secs(1)));
        // A torn or foreign file reads as none.
        std::fs::write(&file, "not a time").expect("write");
        assert_eq!(Lease::load(Some(file), metrics()).since_renewal(), None);
    }
}
