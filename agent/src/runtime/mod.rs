//! Runtimes: what turns an assignment into a running process. `docker` runs containers through the Docker
//! Engine API (bollard); `process` runs host processes, for machines without Docker and for `titan dev`.
//! `Runtime` puts both behind one set of calls, so the supervisor does not care which one it has.

mod docker;
mod process;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use docker::DockerRuntime;
pub use process::ProcessRuntime;

/// Labels every container carries, so a restarted agent finds its own.
pub const LABEL_CELL: &str = "titan.cell";
pub const LABEL_JOB: &str = "titan.job";
pub const LABEL_TASK: &str = "titan.task";
pub const LABEL_AGENT: &str = "titan.agent";
/// The job's `disconnect.stopAfterSeconds` in milliseconds, on the containers of a job that set it: an agent
/// restarted while its cell is unreachable still knows which containers to stop, and when.
pub const LABEL_STOP_AFTER: &str = "titan.stop-after-ms";

/// A volume mounted into the task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: String,
}

/// What to run for one task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSpec {
    pub cell: String,
    /// The agent running it: a restarted agent lists its own tasks by this label.
    pub agent_id: String,
    pub job_id: String,
    pub task_id: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub cpus: f64,
    pub memory_mib: u64,
    /// Host ports allocated to the task, in order: exported as `PORT_0`, `PORT_1`, ... and published on the same
    /// port number inside the container.
    pub ports: Vec<u16>,
    pub mounts: Vec<Mount>,
    /// Between SIGTERM and SIGKILL when the task is stopped.
    pub kill_grace: Duration,
    /// The job's `disconnect.stopAfterSeconds`, kept with the task (`LABEL_STOP_AFTER`).
    pub stop_after: Option<Duration>,
}

/// What a task's process is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    Created,
    Running,
    Exited {
        code: i64,
        oom_killed: bool,
    },
    /// The runtime has no such task.
    Missing,
}

/// A task's container as the runtime found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub task_id: String,
    pub job_id: String,
    pub container_id: String,
    /// From `LABEL_STOP_AFTER`, when its job set one.
    pub stop_after: Option<Duration>,
}

/// Why the runtime could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the runtime is not reachable: {0}")]
    Unavailable(String),
    #[error("image {image} is not present and could not be pulled: {message}")]
    Image { image: String, message: String },
    #[error("task {task}: {message}")]
    Task { task: String, message: String },
}

impl RuntimeError {
    pub(crate) fn task(task: &str, e: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::Task { task: task.to_string(), message: e.to_string() }
    }
}

/// The runtime an agent was configured with. An enum rather than a trait object: there are two, their calls are
/// async, and a `match` keeps each one's quirks (Docker's stop grace in whole seconds, processes that cannot be
/// re-adopted) visible in one place.
pub enum Runtime {
    Docker {
        docker: DockerRuntime,
        /// Where container output is copied (`<logs_dir>/<task>/<stream>.log`).
        logs_dir: PathBuf,
        /// Where health probes reach published ports.
        probe_host: String,
    },
    Process(ProcessRuntime),
}

/// A background job tied to a task (following its logs) that ends when its handle is dropped.
pub struct Follower(Option<tokio::task::JoinHandle<Result<(), RuntimeError>>>);

impl Follower {
    /// Waits at most `limit` for the job to end by itself (the container's output closing), then stops it.
    pub async fn finish(mut self, limit: Duration) {
        if let Some(handle) = self.0.take() {
            let abort = handle.abort_handle();
            if tokio::time::timeout(limit, handle).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

impl Runtime {
    pub fn docker(docker: DockerRuntime, logs_dir: PathBuf, probe_host: impl Into<String>) -> Runtime {
        Runtime::Docker { docker, logs_dir, probe_host: probe_host.into() }
    }

    /// `docker` or `process`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Runtime::Docker { .. } => "docker",
            Runtime::Process(_) => "process",
        }
    }

    /// Whether tasks outlive the agent (and can be found and re-adopted by the next one).
    pub fn survives_agent(&self) -> bool {
        matches!(self, Runtime::Docker { .. })
    }

    /// Whether the runtime can mount volumes into a task.
    pub fn mounts_volumes(&self) -> bool {
        matches!(self, Runtime::Docker { .. })
    }

    /// Starts the task with its output going to the rotating logs; the `Follower` copies it (Docker) and must be
    /// kept while the task runs. On failure nothing is left behind.
    pub async fn start(&self, spec: &TaskSpec) -> Result<Follower, RuntimeError> {
        match self {
            Runtime::Docker { docker, logs_dir, .. } => {
                docker.start(spec).await?;
                Ok(Follower(Some(docker.capture_logs(&spec.task_id, logs_dir, 0))))
            }
            Runtime::Process(p) => p.start(spec).await.map(|_| Follower(None)),
        }
    }

    /// Follows the output of a task this agent found running after a restart, from where the logs end.
    pub fn follow(&self, task_id: &str) -> Follower {
        match self {
            Runtime::Docker { docker, logs_dir, .. } => {
                let since = std::fs::metadata(logs_dir.join(task_id).join("stdout.log"))
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs() as i32 + 1);
                Follower(Some(docker.capture_logs(task_id, logs_dir, since)))
            }
            Runtime::Process(_) => Follower(None),
        }
    }

    pub async fn state(&self, task_id: &str) -> Result<TaskState, RuntimeError> {
        match self {
            Runtime::Docker { docker, .. } => docker.state(task_id).await,
            Runtime::Process(p) => Ok(p.state(task_id)),
        }
    }

    /// SIGTERM, then SIGKILL after `grace` (Docker counts it in whole seconds: it is rounded up).
    pub async fn stop(&self, task_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        match self {
            Runtime::Docker { docker, .. } => {
                let secs = grace.as_millis().div_ceil(1000).min(i32::MAX as u128) as i32;
                docker.stop(task_id, secs).await
            }
            Runtime::Process(p) => p.stop(task_id, grace).await,
        }
    }

    /// Removes a task's container or process record; a missing one is not an error.
    pub async fn remove(&self, task_id: &str) -> Result<(), RuntimeError> {
        match self {
            Runtime::Docker { docker, .. } => docker.remove(task_id).await,
            Runtime::Process(p) => p.remove(task_id).await,
        }
    }

    /// The tasks `agent` left running, found by label. Processes do not outlive their agent: none.
    pub async fn list(&self, agent: &str) -> Result<Vec<Found>, RuntimeError> {
        match self {
            Runtime::Docker { docker, .. } => docker.list_agent(agent).await,
            Runtime::Process(_) => Ok(Vec::new()),
        }
    }

    /// The address a health probe uses for the task's host port.
    pub fn probe_addr(&self, port: u16) -> String {
        match self {
            Runtime::Docker { probe_host, .. } => format!("{probe_host}:{port}"),
            Runtime::Process(_) => format!("127.0.0.1:{port}"),
        }
    }

    /// Runs a health check command: inside the container (Docker), or on the host in the task's working
    /// directory (process). Whether it exits 0 within `timeout`.
    pub async fn check_command(&self, task_id: &str, argv: &[String], timeout: Duration) -> bool {
        match self {
            Runtime::Docker { docker, .. } => docker.exec(task_id, argv, timeout).await,
            Runtime::Process(p) => {
                let Some((program, args)) = argv.split_first() else { return false };
                let run = tokio::process::Command::new(program)
                    .args(args)
                    .current_dir(p.work_dir(task_id))
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .status();
                matches!(tokio::time::timeout(timeout, run).await, Ok(Ok(s)) if s.success())
            }
        }
    }
}
