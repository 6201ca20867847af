//! One task's worker: prepares its volumes and launches it (or adopts it after a restart), watches it (exit, OOM,
//! health checks), stops it when asked, and cleans up after it (container removed, volumes that end with the
//! task destroyed, logs kept), queueing a status at each step.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use titan_api::job::HealthCheckType;
use titan_api::task::{Assignment, Reason, TaskState};
use tokio::sync::watch;

use super::plan::{self, StopWhy};
use super::{status, Inner, Want};
use crate::health::{self, Health, Policy, Tracker};
use crate::runtime::{Follower, Mount, TaskSpec, TaskState as RunState};
use crate::volume::{Volume, VolumeError};

/// How long a finished task's output may take to reach the log files before the container is removed.
const LOG_DRAIN: Duration = Duration::from_secs(2);
/// How many polls pass between volume usage readings.
const VOLUME_EVERY: u32 = 10;

/// A volume prepared for a task.
struct Prepared {
    name: String,
    volume: Volume,
    container_path: String,
    /// Made by this launch (so a failed launch removes it, persistent or not).
    created: bool,
}

/// How a task's watch ended.
enum Ending {
    Exited { code: i64, oom_killed: bool },
    Stopped(StopWhy),
    Vanished,
}

/// The volumes of a task: `(name, persistent)`, from its assignment.
fn volume_names(a: &Assignment) -> Vec<(String, bool)> {
    a.volumes
        .iter()
        .map(|v| {
            let owner = if v.persistent { &a.job_id } else { &a.task_id };
            (plan::volume_name(owner, &v.name), v.persistent)
        })
        .collect()
}

/// Creates (or finds) the task's volumes. On failure, what this call made is destroyed again.
fn prepare_volumes(inner: &Inner, a: &Assignment) -> Result<Vec<Prepared>, String> {
    let Some(driver) = inner.volumes.as_deref() else {
        return if a.volumes.is_empty() { Ok(Vec::new()) } else { Err("no volume driver".into()) };
    };
    let mut out: Vec<Prepared> = Vec::new();
    let result = (|| {
        for (spec, (name, _)) in a.volumes.iter().zip(volume_names(a)) {
            let quota = spec.size_gib.saturating_mul(1 << 30);
            let (volume, created) = match driver.get(&name) {
                // A persistent volume outlives its tasks; a task's own volume exists already when an earlier
                // launch of this very task got that far before the agent died.
                Ok(v) => (v, false),
                Err(VolumeError::NotFound(_)) => {
                    let v = match &spec.from {
                        None => driver.create(&name, quota),
                        Some(from) => {
                            let (source, snapshot) = plan::parse_from(from).ok_or_else(|| {
                                format!("volume {}: `from` is VOLUME@SNAPSHOT, not {from:?}", spec.name)
                            })?;
                            driver.clone_from(source, snapshot, &name, quota)
                        }
                    };
                    (v.map_err(|e| format!("volume {}: {e}", spec.name))?, true)
                }
                Err(e) => return Err(format!("volume {}: {e}", spec.name)),
            };
            out.push(Prepared { name, volume, container_path: spec.path.clone(), created });
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(out),
        Err(e) => {
            for p in out.iter().filter(|p| p.created) {
                if let Err(err) = driver.destroy(&p.name) {
                    tracing::warn!(task = %a.task_id, volume = %p.name, error = %err, "could not destroy a volume");
                }
            }
            Err(e)
        }
    }
}

/// Destroys the named volumes of a task.
async fn destroy_volumes(inner: &Arc<Inner>, task_id: &str, names: Vec<String>) {
    let Some(driver) = inner.volumes.clone() else { return };
    for name in names {
        inner.metrics.volume_used_bytes.remove_label_values(&[&name]).ok();
        let d = driver.clone();
        let n = name.clone();
        match tokio::task::spawn_blocking(move || d.destroy(&n)).await {
            Ok(Ok(())) | Ok(Err(VolumeError::NotFound(_))) => {}
            Ok(Err(e)) => tracing::warn!(task = %task_id, volume = %name, error = %e, "could not destroy a volume"),
            Err(e) => tracing::warn!(task = %task_id, volume = %name, error = %e, "volume destroy panicked"),
        }
    }
}

fn ending_names(a: &Assignment) -> Vec<String> {
    volume_names(a).into_iter().filter(|(_, persistent)| !persistent).map(|(n, _)| n).collect()
}

fn spec(inner: &Inner, a: &Assignment, volumes: &[Prepared]) -> TaskSpec {
    // Who the task is, as Titus and Nomad tell theirs; the job's own variables win a clash.
    let mut env = BTreeMap::from([
        ("TITAN_TASK_ID".to_string(), a.task_id.clone()),
        ("TITAN_JOB_ID".to_string(), a.job_id.clone()),
        ("TITAN_AGENT_ID".to_string(), inner.settings.agent_id.clone()),
    ]);
    env.extend(a.env.clone());
    TaskSpec {
        cell: inner.cell(),
        agent_id: inner.settings.agent_id.clone(),
        job_id: a.job_id.clone(),
        task_id: a.task_id.clone(),
        image: a.image.clone(),
        command: a.command.clone(),
        env,
        cpus: a.cpus,
        memory_mib: a.memory_mib,
        ports: a.ports.clone(),
        mounts: volumes
            .iter()
            .map(|p| Mount { host_path: p.volume.path.clone(), container_path: p.container_path.clone() })
            .collect(),
        kill_grace: Duration::from_millis(a.kill_grace_ms),
        stop_after: a.stop_after_ms.map(Duration::from_millis),
    }
}

/// Launches a new task, then watches it to its end.
pub(super) async fn launch(inner: Arc<Inner>, a: Assignment, fetched: Instant, want: watch::Receiver<Want>) {
    let id = a.task_id.clone();
    inner.report(status(&id, TaskState::Starting, None, None));
    let prepared = {
        let (i, asg) = (inner.clone(), a.clone());
        tokio::task::spawn_blocking(move || prepare_volumes(&i, &asg)).await.unwrap_or_else(|e| Err(e.to_string()))
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(message) => return reject(&inner, &a, message).await,
    };
    let follower = match inner.runtime.start(&spec(&inner, &a, &prepared)).await {
        Ok(f) => f,
        Err(e) => {
            // The runtime leaves nothing behind on failure; removing again covers a start that half-happened.
            let _ = inner.runtime.remove(&id).await;
            let made = prepared.iter().filter(|p| p.created).map(|p| p.name.clone()).collect();
            destroy_volumes(&inner, &id, made).await;
            return reject(&inner, &a, e.to_string()).await;
        }
    };
    let took = fetched.elapsed();
    inner.metrics.start_seconds.observe(took.as_secs_f64());
    tracing::info!(task = %id, job = %a.job_id, start_ms = took.as_millis() as u64, "task running");
    inner.report(status(&id, TaskState::Running, None, None));
    inner.moved(&id, "running", false);
    let volumes: Vec<(String, PathBuf)> = prepared.iter().map(|p| (p.name.clone(), p.volume.path.clone())).collect();
    let ending = watch_task(&inner, &a, Instant::now(), &volumes, want).await;
    finish(&inner, &a, ending, follower).await;
}

/// Watches a task found running after a restart, as if this agent had launched it.
pub(super) async fn adopt(inner: Arc<Inner>, a: Assignment, want: watch::Receiver<Want>) {
    let follower = inner.runtime.follow(&a.task_id);
    inner.report(status(&a.task_id, TaskState::Running, None, None));
    let volumes: Vec<(String, PathBuf)> = match inner.volumes.as_deref() {
        Some(d) => volume_names(&a).into_iter().filter_map(|(n, _)| d.get(&n).ok().map(|v| (n, v.path))).collect(),
        None => Vec::new(),
    };
    // Health checks start over, grace period included: the adopting agent has no history of them.
    let ending = watch_task(&inner, &a, Instant::now(), &volumes, want).await;
    finish(&inner, &a, ending, follower).await;
}

/// Stops and removes a task found after a restart without adopting it: the cell asked to stop it, or does not
/// know it.
pub(super) async fn stop_found(
    inner: Arc<Inner>,
    task_id: String,
    a: Option<Assignment>,
    grace: Duration,
    why: StopWhy,
) {
    let code = stop_and_remove(&inner, &task_id, grace).await;
    if let Some(a) = &a {
        destroy_volumes(&inner, &task_id, ending_names(a)).await;
    }
    tracing::info!(task = %task_id, listed = a.is_some(), why = ?why, "found task stopped and removed");
    let mut s = stopped(&task_id, why);
    s.exit_code = code;
    inner.moved(&task_id, "killed", true);
    inner.report(s);
}

/// The status of a task stopped for `why`.
fn stopped(id: &str, why: StopWhy) -> titan_api::task::TaskStatus {
    match why {
        StopWhy::Requested => status(id, TaskState::Killed, None, None),
        StopWhy::Unlisted => {
            status(id, TaskState::Killed, None, Some("stopped: the cell does not list it".to_string()))
        }
        StopWhy::Disconnected => status(
            id,
            TaskState::Killed,
            Some(Reason::Disconnected),
            Some("stopped: the agent could not renew its lease for the job's disconnect.stopAfterSeconds".into()),
        ),
    }
}

async fn reject(inner: &Arc<Inner>, a: &Assignment, message: String) {
    tracing::warn!(task = %a.task_id, job = %a.job_id, reason = ?Reason::LaunchError, message = %message,
        "task rejected");
    inner.moved(&a.task_id, "rejected", true);
    inner.report(status(&a.task_id, TaskState::Rejected, Some(Reason::LaunchError), Some(message)));
}

/// SIGTERM, SIGKILL after `grace`, then removal; the exit code when one was seen.
async fn stop_and_remove(inner: &Inner, task_id: &str, grace: Duration) -> Option<i64> {
    if let Err(e) = inner.runtime.stop(task_id, grace).await {
        tracing::warn!(task = %task_id, error = %e, "stop failed; removing by force");
    }
    let code = match inner.runtime.state(task_id).await {
        Ok(RunState::Exited { code, .. }) => Some(code),
        _ => None,
    };
    if let Err(e) = inner.runtime.remove(task_id).await {
        tracing::warn!(task = %task_id, error = %e, "could not remove the task");
    }
    code
}

/// The health check of a task, when it has one.
struct Check {
    spec: titan_api::job::HealthCheckSpec,
    tracker: Tracker,
    addr: Option<String>,
}

impl Check {
    fn of(inner: &Inner, a: &Assignment) -> Option<Check> {
        let spec = a.health_check.clone()?;
        let policy = Policy {
            interval: Duration::from_secs(u64::from(spec.interval_seconds.max(1))),
            timeout: Duration::from_secs(u64::from(spec.timeout_seconds.max(1))),
            grace: Duration::from_secs(u64::from(spec.grace_period_seconds)),
            failure_threshold: spec.failure_threshold,
        };
        let addr = spec.port.and_then(|i| a.ports.get(i as usize)).map(|p| inner.runtime.probe_addr(*p));
        Some(Check { spec, tracker: Tracker::new(policy), addr })
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.spec.interval_seconds.max(1)))
    }

    async fn probe(&self, inner: &Inner, task_id: &str) -> bool {
        let timeout = Duration::from_secs(u64::from(self.spec.timeout_seconds.max(1)));
        match (self.spec.check_type, &self.addr) {
            (HealthCheckType::Http, Some(addr)) => {
                health::probe_http(addr, self.spec.path.as_deref().unwrap_or("/"), timeout).await
            }
            (HealthCheckType::Tcp, Some(addr)) => health::probe_tcp(addr, timeout).await,
            (HealthCheckType::Command, _) => {
                let argv = self.spec.command.clone().unwrap_or_default();
                inner.runtime.check_command(task_id, &argv, timeout).await
            }
            // A port index past the task's ports: the check can never pass.
            (_, None) => false,
        }
    }
}

/// Polls the runtime, runs the health check, and follows what the cell wants, until the task ends.
async fn watch_task(
    inner: &Arc<Inner>,
    a: &Assignment,
    started: Instant,
    volumes: &[(String, PathBuf)],
    mut want: watch::Receiver<Want>,
) -> Ending {
    let id = &a.task_id;
    let mut poll = tokio::time::interval(inner.settings.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check = Check::of(inner, a);
    let mut probe = tokio::time::interval(check.as_ref().map_or(Duration::from_secs(3600), Check::interval));
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut polls = 0u32;
    loop {
        let wanted = *want.borrow_and_update();
        if let Want::Stop { grace, why } = wanted {
            if let Some(code) = stop_and_remove(inner, id, grace).await {
                tracing::info!(task = %id, exit_code = code, why = ?why, "task stopped");
            }
            return Ending::Stopped(why);
        }
        tokio::select! {
            changed = want.changed() => {
                if changed.is_err() {
                    // The supervisor dropped this task (agent shutdown): leave it running.
                    std::future::pending::<()>().await;
                }
            }
            _ = poll.tick() => {
                match inner.runtime.state(id).await {
                    Ok(RunState::Exited { code, oom_killed }) => return Ending::Exited { code, oom_killed },
                    Ok(RunState::Missing) => return Ending::Vanished,
                    Ok(RunState::Running | RunState::Created) => {}
                    Err(e) => tracing::warn!(task = %id, error = %e, "cannot read the task's state"),
                }
                if polls == 0 {
                    measure_volumes(inner, volumes).await;
                    polls = VOLUME_EVERY;
                }
                polls -= 1;
            }
            _ = probe.tick(), if check.is_some() => {
                let Some(c) = check.as_mut() else { continue };
                let before = c.tracker.state();
                let ok = c.probe(inner, id).await;
                let after = c.tracker.observe(started.elapsed(), ok);
                if after != before && after != Health::Starting {
                    tracing::info!(task = %id, health = ?after, "health changed");
                    let mut s = status(id, TaskState::Running, None, None);
                    s.health = plan::task_health(after);
                    if after == Health::Unhealthy {
                        s.reason = Some(Reason::Unhealthy);
                        s.message = Some(format!("{} consecutive failed health checks", c.spec.failure_threshold));
                    }
                    inner.report(s);
                }
            }
        }
    }
}

async fn measure_volumes(inner: &Arc<Inner>, volumes: &[(String, PathBuf)]) {
    let Some(driver) = inner.volumes.clone() else { return };
    for (name, _) in volumes {
        let (d, n) = (driver.clone(), name.clone());
        if let Ok(Ok(v)) = tokio::task::spawn_blocking(move || d.get(&n)).await {
            inner.metrics.volume_used_bytes.with_label_values(&[name]).set(v.used_bytes as i64);
        }
    }
}

/// After the task ended: its last output into the logs, the container removed, its own volumes destroyed, and
/// the terminal status queued last, so a reported end means nothing is left.
async fn finish(inner: &Arc<Inner>, a: &Assignment, ending: Ending, follower: Follower) {
    let id = &a.task_id;
    follower.finish(LOG_DRAIN).await;
    if !matches!(ending, Ending::Stopped(_)) {
        if let Err(e) = inner.runtime.remove(id).await {
            tracing::warn!(task = %id, error = %e, "could not remove the task");
        }
    }
    destroy_volumes(inner, id, ending_names(a)).await;
    let s = match ending {
        Ending::Exited { code, oom_killed } => {
            let (state, reason) = plan::exited(code, oom_killed);
            tracing::info!(task = %id, exit_code = code, oom_killed, state = state.as_str(), "task exited");
            let mut s = status(id, state, Some(reason), oom_killed.then(|| "killed for exceeding its memory".into()));
            s.exit_code = Some(code);
            s
        }
        Ending::Stopped(why) => {
            tracing::info!(task = %id, why = ?why, "task killed and removed");
            stopped(id, why)
        }
        Ending::Vanished => {
            tracing::warn!(task = %id, "the task's container disappeared");
            status(
                id,
                TaskState::Failed,
                Some(Reason::Vanished),
                Some("the task's container disappeared from the runtime".into()),
            )
        }
    };
    inner.moved(id, s.state.as_str(), true);
    inner.report(s);
}
