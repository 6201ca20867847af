//! Runtimes: what turns an assignment into a running process. `docker` runs containers through the Docker
//! Engine API (bollard); `process` runs host processes, for machines without Docker and for `titan dev`.

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
