//! The process runtime, for machines without Docker and for `titan dev`: the task's command runs as a host
//! process in its own working directory, with `PORT_n` and its env, its output in the rotating logs, a stop that
//! sends SIGTERM and then SIGKILL, and cpu and memory limits through cgroup v1 where the machine offers them.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use super::{RuntimeError, TaskSpec, TaskState};
use crate::logs::{RotatingLog, DEFAULT_KEEP, DEFAULT_MAX_BYTES};

/// Where cgroup v1 controllers are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The cgroup period cpu quotas are expressed against, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

struct Running {
    child: Child,
    exit: Option<i64>,
}

/// Runs tasks as host processes. Tasks live as long as the agent process; it cannot re-adopt them after a restart.
pub struct ProcessRuntime {
    work_dir: PathBuf,
    logs_dir: PathBuf,
    /// cgroup v1 directory name under each controller, e.g. `titan`; `None` runs without limits.
    cgroup: Option<String>,
    tasks: Arc<Mutex<HashMap<String, Running>>>,
}

/// Copies a child's stream into a rotating log until it closes.
async fn copy_into(mut from: impl AsyncRead + Unpin, path: PathBuf) {
    let Ok(mut log) = RotatingLog::open(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP) else { return };
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || log.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = log.flush();
}

impl ProcessRuntime {
    /// Limits go in `CGROUP_ROOT/{memory,cpu}/<cgroup>/<task>` when those controllers are writable.
    pub fn new(work_dir: impl Into<PathBuf>, logs_dir: impl Into<PathBuf>, cgroup: Option<String>) -> ProcessRuntime {
        let cgroup = cgroup.filter(|name| {
            ["memory", "cpu"].iter().all(|c| std::fs::create_dir_all(Path::new(CGROUP_ROOT).join(c).join(name)).is_ok())
        });
        ProcessRuntime {
            work_dir: work_dir.into(),
            logs_dir: logs_dir.into(),
            cgroup,
            tasks: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Whether limits are enforced (cgroup v1 available and writable).
    pub fn limits_enforced(&self) -> bool {
        self.cgroup.is_some()
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cgroup_dir(&self, controller: &str, task: &str) -> Option<PathBuf> {
        self.cgroup.as_ref().map(|c| Path::new(CGROUP_ROOT).join(controller).join(c).join(task))
    }

    fn limit(&self, spec: &TaskSpec, pid: u32) -> std::io::Result<()> {
        if let Some(dir) = self.cgroup_dir("memory", &spec.task_id) {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("memory.limit_in_bytes"), (spec.memory_mib * 1024 * 1024).to_string())?;
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        }
        if let Some(dir) = self.cgroup_dir("cpu", &spec.task_id) {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
            let quota = ((spec.cpus * CPU_PERIOD_US as f64).round() as u64).max(1_000);
            std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    pub async fn start(&self, spec: &TaskSpec) -> Result<u32, RuntimeError> {
        let argv = spec.command.as_ref().filter(|c| !c.is_empty()).ok_or_else(|| {
            RuntimeError::task(&spec.task_id, "the process runtime needs a command (it runs no images)")
        })?;
        if self.tasks().contains_key(&spec.task_id) {
            return Err(RuntimeError::task(&spec.task_id, "already running"));
        }
        let cwd = self.work_dir.join(&spec.task_id);
        std::fs::create_dir_all(&cwd).map_err(|e| RuntimeError::task(&spec.task_id, e))?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(&cwd)
            .envs(&spec.env)
            .stdin(Stdio::null())
            // The runtime dropped (the agent ending) takes its processes with it: they cannot be re-adopted.
            .kill_on_drop(true)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (i, port) in spec.ports.iter().enumerate() {
            cmd.env(format!("PORT_{i}"), port.to_string());
        }
        let mut child = cmd.spawn().map_err(|e| RuntimeError::task(&spec.task_id, e))?;
        let pid = child.id().ok_or_else(|| RuntimeError::task(&spec.task_id, "exited at once"))?;
        if let Err(e) = self.limit(spec, pid) {
            let _ = child.start_kill();
            return Err(RuntimeError::task(&spec.task_id, format!("cannot apply limits: {e}")));
        }
        let logs = self.logs_dir.join(&spec.task_id);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(copy_into(out, logs.join("stdout.log")));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(copy_into(err, logs.join("stderr.log")));
        }
        tracing::info!(task = %spec.task_id, pid, "process started");
        self.tasks().insert(spec.task_id.clone(), Running { child, exit: None });
        Ok(pid)
    }

    pub fn state(&self, task_id: &str) -> TaskState {
        let mut tasks = self.tasks();
        let Some(t) = tasks.get_mut(task_id) else { return TaskState::Missing };
        if t.exit.is_none() {
            if let Ok(Some(status)) = t.child.try_wait() {
                use std::os::unix::process::ExitStatusExt;
                // A signal death reads like a shell's: 128 + the signal.
                t.exit =
                    Some(status.code().map(i64::from).unwrap_or_else(|| 128 + i64::from(status.signal().unwrap_or(0))));
            }
        }
        match t.exit {
            Some(code) => TaskState::Exited { code, oom_killed: false },
            None => TaskState::Running,
        }
    }

    /// SIGTERM, then SIGKILL once `grace` has passed.
    pub async fn stop(&self, task_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let pid = match self.tasks().get(task_id) {
            Some(t) if t.exit.is_none() => t.child.id(),
            _ => return Ok(()),
        };
        if let Some(pid) = pid {
            // SAFETY: plain kill(2) on a pid this runtime spawned and has not reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if matches!(self.state(task_id), TaskState::Exited { .. }) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(t) = self.tasks().get_mut(task_id) {
            let _ = t.child.start_kill();
        }
        for _ in 0..100 {
            if matches!(self.state(task_id), TaskState::Exited { .. }) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(RuntimeError::task(task_id, "did not exit after SIGKILL"))
    }

    /// The task's working directory (where its command runs, and host-side health commands with it).
    pub fn work_dir(&self, task_id: &str) -> PathBuf {
        self.work_dir.join(task_id)
    }

    /// Forgets a stopped task and removes its working directory and cgroups.
    pub async fn remove(&self, task_id: &str) -> Result<(), RuntimeError> {
        if matches!(self.state(task_id), TaskState::Running) {
            self.stop(task_id, Duration::ZERO).await?;
        }
        self.tasks().remove(task_id);
        let _ = std::fs::remove_dir_all(self.work_dir.join(task_id));
        for c in ["memory", "cpu"] {
            if let Some(dir) = self.cgroup_dir(c, task_id) {
                let _ = std::fs::remove_dir(dir);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn spec(task: &str, command: &[&str]) -> TaskSpec {
        TaskSpec {
            cell: "dev".into(),
            agent_id: "agent-1".into(),
            job_id: "job".into(),
            task_id: task.into(),
            image: String::new(),
            command: Some(command.iter().map(|s| s.to_string()).collect()),
            env: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
            cpus: 0.5,
            memory_mib: 32,
            ports: vec![31_007],
            mounts: Vec::new(),
            kill_grace: Duration::from_secs(1),
            stop_after: None,
        }
    }

    async fn exited(rt: &ProcessRuntime, task: &str) -> TaskState {
        for _ in 0..100 {
            let s = rt.state(task);
            if matches!(s, TaskState::Exited { .. }) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{task} did not exit");
    }

    #[tokio::test]
    async fn processes_run_with_env_logs_limits_and_stop_with_grace() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cgroup = format!("titan-test-{}", std::process::id());
        let rt = ProcessRuntime::new(dir.path().join("work"), dir.path().join("logs"), Some(cgroup.clone()));
        assert!(rt.limits_enforced(), "cgroup v1 memory and cpu controllers are writable here");

        let task = spec("p1", &["sh", "-c", "echo $GREETING $PORT_0; echo oops >&2; exit 4"]);
        rt.start(&task).await.expect("started");
        assert_eq!(exited(&rt, "p1").await, TaskState::Exited { code: 4, oom_killed: false });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let out = crate::logs::tail(&dir.path().join("logs/p1/stdout.log"), DEFAULT_KEEP, 10).expect("stdout");
        let err = crate::logs::tail(&dir.path().join("logs/p1/stderr.log"), DEFAULT_KEEP, 10).expect("stderr");
        assert_eq!((out, err), (vec!["hi 31007".to_string()], vec!["oops".to_string()]));

        // Limits are in the task's cgroups while it runs.
        let sleeper = spec("p2", &["sleep", "30"]);
        let pid = rt.start(&sleeper).await.expect("started");
        let mem = std::fs::read_to_string(format!("{CGROUP_ROOT}/memory/{cgroup}/p2/memory.limit_in_bytes"))
            .expect("memory limit");
        assert_eq!(mem.trim(), (32u64 << 20).to_string());
        let procs = std::fs::read_to_string(format!("{CGROUP_ROOT}/cpu/{cgroup}/p2/cgroup.procs")).expect("cpu cgroup");
        assert!(procs.lines().any(|p| p == pid.to_string()), "{procs}");
        assert_eq!(rt.state("p2"), TaskState::Running);
        // `sleep` dies of SIGTERM inside the grace period.
        rt.stop("p2", Duration::from_secs(5)).await.expect("stopped");
        assert_eq!(rt.state("p2"), TaskState::Exited { code: 128 + 15, oom_killed: false });

        // A process that ignores SIGTERM is killed after the grace period.
        let stubborn = spec("p3", &["sh", "-c", "trap '' TERM; sleep 30 & wait; sleep 30"]);
        rt.start(&stubborn).await.expect("started");
        tokio::time::sleep(Duration::from_millis(200)).await;
        rt.stop("p3", Duration::from_millis(300)).await.expect("killed");
        assert_eq!(rt.state("p3"), TaskState::Exited { code: 128 + 9, oom_killed: false });

        for t in ["p1", "p2", "p3"] {
            rt.remove(t).await.expect("removed");
            assert_eq!(rt.state(t), TaskState::Missing);
        }
        assert!(rt.start(&spec("p4", &[])).await.is_err(), "no command, nothing to run");
        for c in ["memory", "cpu"] {
            let _ = std::fs::remove_dir(format!("{CGROUP_ROOT}/{c}/{cgroup}"));
        }
    }
}
