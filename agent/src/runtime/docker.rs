//! The Docker runtime: one container per task, named `titan-<task id>` and labelled with its cell, job and task,
//! with the task's cpu and memory limits, its host ports published on loopback or the configured address, and
//! a stop that sends SIGTERM and, after the grace period, SIGKILL.

use std::collections::HashMap;

use bollard::container::LogOutput;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::exec::StartExecResults;
use bollard::models::{ContainerCreateBody, ContainerStateStatusEnum, ExecConfig, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;

use super::{
    Found, RuntimeError, TaskSpec, TaskState, LABEL_AGENT, LABEL_CELL, LABEL_JOB, LABEL_STOP_AFTER, LABEL_TASK,
};

pub struct DockerRuntime {
    docker: Docker,
    /// The host address published ports bind to.
    bind_ip: String,
}

fn container_name(task_id: &str) -> String {
    format!("titan-{task_id}")
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 404, .. })
}

/// The container configuration for a task: decided here, apart from any IO, so it can be checked directly.
pub(crate) fn container_config(spec: &TaskSpec, bind_ip: &str) -> ContainerCreateBody {
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for (i, port) in spec.ports.iter().enumerate() {
        env.push(format!("PORT_{i}={port}"));
    }
    let exposed: Vec<String> = spec.ports.iter().map(|p| format!("{p}/tcp")).collect();
    let bindings: HashMap<String, Option<Vec<PortBinding>>> = spec
        .ports
        .iter()
        .map(|p| {
            let binding = PortBinding { host_ip: Some(bind_ip.to_string()), host_port: Some(p.to_string()) };
            (format!("{p}/tcp"), Some(vec![binding]))
        })
        .collect();
    let mut labels = HashMap::from([
        (LABEL_CELL.to_string(), spec.cell.clone()),
        (LABEL_JOB.to_string(), spec.job_id.clone()),
        (LABEL_TASK.to_string(), spec.task_id.clone()),
        (LABEL_AGENT.to_string(), spec.agent_id.clone()),
    ]);
    if let Some(after) = spec.stop_after {
        labels.insert(LABEL_STOP_AFTER.to_string(), after.as_millis().to_string());
    }
    let memory = (spec.memory_mib * 1024 * 1024) as i64;
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.command.clone(),
        env: Some(env),
        labels: Some(labels),
        exposed_ports: Some(exposed),
        stop_timeout: Some(spec.kill_grace.as_secs() as i64),
        host_config: Some(HostConfig {
            memory: Some(memory),
            // No swap beyond the limit: a task over its memory is OOM-killed, and says so.
            memory_swap: Some(memory),
            nano_cpus: Some((spec.cpus * 1e9).round() as i64),
            port_bindings: Some(bindings),
            binds: Some(
                spec.mounts.iter().map(|m| format!("{}:{}", m.host_path.display(), m.container_path)).collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl DockerRuntime {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket).
    pub fn connect(bind_ip: impl Into<String>) -> Result<DockerRuntime, RuntimeError> {
        let docker = Docker::connect_with_local_defaults().map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
        Ok(DockerRuntime { docker, bind_ip: bind_ip.into() })
    }

    pub async fn ping(&self) -> Result<(), RuntimeError> {
        self.docker.ping().await.map(|_| ()).map_err(|e| RuntimeError::Unavailable(e.to_string()))
    }

    /// Pulls the image unless it is present.
    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        let options = CreateImageOptions { from_image: Some(image.to_string()), ..Default::default() };
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(step) = pull.next().await {
            step.map_err(|e| RuntimeError::Image { image: image.to_string(), message: e.to_string() })?;
        }
        Ok(())
    }

    /// Creates and starts the task's container. On any failure nothing is left behind.
    pub async fn start(&self, spec: &TaskSpec) -> Result<String, RuntimeError> {
        self.ensure_image(&spec.image).await?;
        let name = container_name(&spec.task_id);
        let options = CreateContainerOptions { name: Some(name.clone()), ..Default::default() };
        let created = self
            .docker
            .create_container(Some(options), container_config(spec, &self.bind_ip))
            .await
            .map_err(|e| RuntimeError::task(&spec.task_id, e))?;
        if let Err(e) = self.docker.start_container(&created.id, None::<StartContainerOptions>).await {
            let _ = self.remove(&spec.task_id).await;
            return Err(RuntimeError::task(&spec.task_id, e));
        }
        tracing::info!(task = %spec.task_id, container = %created.id, image = %spec.image, "container started");
        Ok(created.id)
    }

    pub async fn state(&self, task_id: &str) -> Result<TaskState, RuntimeError> {
        let inspected =
            match self.docker.inspect_container(&container_name(task_id), None::<InspectContainerOptions>).await {
                Ok(i) => i,
                Err(e) if is_not_found(&e) => return Ok(TaskState::Missing),
                Err(e) => return Err(RuntimeError::task(task_id, e)),
            };
        let state = inspected.state.unwrap_or_default();
        Ok(match state.status {
            Some(ContainerStateStatusEnum::CREATED) => TaskState::Created,
            Some(ContainerStateStatusEnum::RUNNING)
            | Some(ContainerStateStatusEnum::RESTARTING)
            | Some(ContainerStateStatusEnum::PAUSED) => TaskState::Running,
            _ => {
                TaskState::Exited { code: state.exit_code.unwrap_or(-1), oom_killed: state.oom_killed.unwrap_or(false) }
            }
        })
    }

    /// SIGTERM, then SIGKILL after `grace_secs`.
    pub async fn stop(&self, task_id: &str, grace_secs: i32) -> Result<(), RuntimeError> {
        let options = StopContainerOptions { t: Some(grace_secs), signal: None };
        match self.docker.stop_container(&container_name(task_id), Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // 304: already stopped.
            Err(DockerError::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(RuntimeError::task(task_id, e)),
        }
    }

    pub async fn remove(&self, task_id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
        match self.docker.remove_container(&container_name(task_id), Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(RuntimeError::task(task_id, e)),
        }
    }

    /// Runs `argv` inside the task's container; whether it exits 0 within `timeout` (command health checks).
    pub async fn exec(&self, task_id: &str, argv: &[String], timeout: Duration) -> bool {
        let run = async {
            let config = ExecConfig {
                cmd: Some(argv.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            };
            let exec = self.docker.create_exec(&container_name(task_id), config).await.ok()?;
            if let StartExecResults::Attached { mut output, .. } = self.docker.start_exec(&exec.id, None).await.ok()? {
                // The output is not kept; reading it to its end is how the exec's end is awaited.
                while output.next().await.is_some() {}
            }
            self.docker.inspect_exec(&exec.id).await.ok()?.exit_code
        };
        matches!(tokio::time::timeout(timeout, run).await, Ok(Some(0)))
    }

    /// Follows the task's stdout and stderr into `logs_dir/<task>/stdout.log` and `stderr.log` (size-rotated)
    /// until the container ends. A restarted agent calls it again with `since` (seconds since the epoch) set to
    /// when it last wrote, so nothing is copied twice.
    pub fn capture_logs(
        &self,
        task_id: &str,
        logs_dir: &std::path::Path,
        since: i32,
    ) -> tokio::task::JoinHandle<Result<(), RuntimeError>> {
        use std::io::Write;

        let docker = self.docker.clone();
        let task = task_id.to_string();
        let dir = logs_dir.join(task_id);
        tokio::spawn(async move {
            let open = |stream: &str| {
                crate::logs::RotatingLog::open(
                    dir.join(format!("{stream}.log")),
                    crate::logs::DEFAULT_MAX_BYTES,
                    crate::logs::DEFAULT_KEEP,
                )
                .map_err(|e| RuntimeError::task(&task, e))
            };
            let (mut out, mut err) = (open("stdout")?, open("stderr")?);
            let options = LogsOptions { follow: true, stdout: true, stderr: true, since, ..Default::default() };
            let mut stream = docker.logs(&container_name(&task), Some(options));
            while let Some(chunk) = stream.next().await {
                let written = match chunk.map_err(|e| RuntimeError::task(&task, e))? {
                    LogOutput::StdErr { message } => err.write_all(&message),
                    LogOutput::StdOut { message } | LogOutput::Console { message } => out.write_all(&message),
                    LogOutput::StdIn { .. } => Ok(()),
                };
                written.map_err(|e| RuntimeError::task(&task, e))?;
            }
            out.flush().and_then(|()| err.flush()).map_err(|e| RuntimeError::task(&task, e))
        })
    }

    /// Every container of `cell`, found by label.
    pub async fn list(&self, cell: &str) -> Result<Vec<Found>, RuntimeError> {
        self.list_labelled(LABEL_CELL, cell).await
    }

    /// Every container `agent` started, found by label: what a restarted agent re-adopts or removes.
    pub async fn list_agent(&self, agent: &str) -> Result<Vec<Found>, RuntimeError> {
        self.list_labelled(LABEL_AGENT, agent).await
    }

    async fn list_labelled(&self, label: &str, value: &str) -> Result<Vec<Found>, RuntimeError> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{label}={value}")])]);
        let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        let containers =
            self.docker.list_containers(Some(options)).await.map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                Some(Found {
                    task_id: labels.get(LABEL_TASK)?.clone(),
                    job_id: labels.get(LABEL_JOB).cloned().unwrap_or_default(),
                    container_id: c.id?,
                    stop_after: labels.get(LABEL_STOP_AFTER).and_then(|ms| ms.parse().ok()).map(Duration::from_millis),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::runtime::Mount;

    /// The image `scripts/deps` imports: busybox-static in an otherwise empty root.
    const TEST_IMAGE: &str = "titan-test/busybox:latest";

    fn spec(task: &str, command: &[&str]) -> TaskSpec {
        TaskSpec {
            cell: format!("test{}", std::process::id()),
            agent_id: "agent-1".into(),
            job_id: "job-1".into(),
            task_id: task.into(),
            image: TEST_IMAGE.into(),
            command: Some(command.iter().map(|s| s.to_string()).collect()),
            env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
            cpus: 0.5,
            memory_mib: 64,
            ports: Vec::new(),
            mounts: Vec::new(),
            kill_grace: Duration::from_secs(2),
            stop_after: None,
        }
    }

    fn task(tag: &str) -> String {
        format!("t{}-{tag}", std::process::id())
    }

    #[test]
    fn config_carries_limits_ports_env_labels_and_mounts() {
        let mut s = spec("t1", &["true"]);
        s.ports = vec![31000, 31001];
        s.mounts = vec![Mount { host_path: "/pool/v1".into(), container_path: "/data".into() }];
        let c = container_config(&s, "127.0.0.1");
        let env = c.env.clone().unwrap_or_default();
        assert!(env.contains(&"PORT_0=31000".to_string()) && env.contains(&"PORT_1=31001".to_string()));
        assert!(env.contains(&"GREETING=hello".to_string()));
        let host = c.host_config.clone().unwrap_or_default();
        assert_eq!(
            (host.memory, host.memory_swap, host.nano_cpus),
            (Some(64 << 20), Some(64 << 20), Some(500_000_000))
        );
        assert_eq!(host.binds, Some(vec!["/pool/v1:/data".to_string()]));
        let binding = host.port_bindings.unwrap_or_default()["31001/tcp"].clone().unwrap_or_default();
        assert_eq!(binding[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(c.labels.clone().unwrap_or_default()[LABEL_TASK], "t1");
        assert!(!c.labels.unwrap_or_default().contains_key(LABEL_STOP_AFTER), "only for a job that set it");
        s.stop_after = Some(Duration::from_secs(30));
        let labels = container_config(&s, "127.0.0.1").labels.unwrap_or_default();
        assert_eq!(labels[LABEL_STOP_AFTER], "30000");
    }

    async fn wait_exit(rt: &DockerRuntime, task: &str) -> TaskState {
        for _ in 0..100 {
            let s = rt.state(task).await.expect("state");
            if matches!(s, TaskState::Exited { .. }) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("task {task} did not exit");
    }

    /// Removes this test's containers however the test ends.
    struct Cleanup(String);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let filter = format!("label={LABEL_CELL}={}", self.0);
            let ids = std::process::Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output();
            if let Ok(out) = ids {
                let ids: Vec<String> =
                    String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
                if !ids.is_empty() {
                    let _ = std::process::Command::new("docker").arg("rm").arg("-f").args(&ids).output();
                }
            }
        }
    }

    #[tokio::test]
    async fn containers_run_with_limits_ports_and_report_exit_codes() {
        let _cleanup = Cleanup(spec("x", &[]).cell);
        let rt = DockerRuntime::connect("127.0.0.1").expect("docker socket (scripts/deps starts dockerd)");
        rt.ping().await.expect("dockerd answers");

        // A server on its allocated port, reachable on loopback from the host.
        // Below the kernel's ephemeral range, so no connection takes it as a source port before Docker publishes it.
        let port = (0..100u16)
            .map(|i| 21_800 + (std::process::id() as u16).wrapping_add(i) % 100)
            .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .expect("a free port in 21800-21899");
        let mut web = spec(&task("web"), &["sh", "-c", "echo $GREETING > /index.html; exec httpd -f -p $PORT_0 -h /"]);
        web.ports = vec![port];
        rt.start(&web).await.expect("started");
        let mut body = String::new();
        for _ in 0..50 {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
                let _ = s.read_to_string(&mut body);
                if body.contains("hello") {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(body.contains("hello"), "the container served on its host port: {body:?}");
        assert_eq!(rt.state(&web.task_id).await.expect("state"), TaskState::Running);
        let found = rt.list(&web.cell).await.expect("list");
        assert!(found.iter().any(|f| f.task_id == web.task_id && f.job_id == "job-1"), "{found:?}");
        rt.stop(&web.task_id, 1).await.expect("stopped");
        assert!(matches!(rt.state(&web.task_id).await.expect("state"), TaskState::Exited { .. }));
        rt.remove(&web.task_id).await.expect("removed");
        assert_eq!(rt.state(&web.task_id).await.expect("state"), TaskState::Missing);

        // Output goes to per-stream log files, read back by tail.
        let logs = tempfile::tempdir().expect("logs dir");
        let chatty = spec(&task("logs"), &["sh", "-c", "for i in 1 2 3; do echo out $i; echo err $i >&2; done"]);
        rt.start(&chatty).await.expect("started");
        rt.capture_logs(&chatty.task_id, logs.path(), 0).await.expect("joined").expect("captured");
        let tail = |stream: &str| {
            crate::logs::tail(&logs.path().join(&chatty.task_id).join(format!("{stream}.log")), 3, 10).expect("tail")
        };
        assert_eq!(tail("stdout"), vec!["out 1", "out 2", "out 3"]);
        assert_eq!(tail("stderr"), vec!["err 1", "err 2", "err 3"]);
        rt.remove(&chatty.task_id).await.expect("removed");

        // Exit codes and OOM kills are reported.
        let failing = spec(&task("exit3"), &["sh", "-c", "exit 3"]);
        rt.start(&failing).await.expect("started");
        assert_eq!(wait_exit(&rt, &failing.task_id).await, TaskState::Exited { code: 3, oom_killed: false });
        rt.remove(&failing.task_id).await.expect("removed");

        let mut hog = spec(&task("oom"), &["sh", "-c", "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}"]);
        hog.memory_mib = 16;
        rt.start(&hog).await.expect("started");
        assert_eq!(wait_exit(&rt, &hog.task_id).await, TaskState::Exited { code: 137, oom_killed: true });
        rt.remove(&hog.task_id).await.expect("removed");

        // An image that is not there (and no registry to pull from) is refused with a reason; nothing is left.
        let mut missing = spec(&task("noimage"), &["true"]);
        missing.image = "titan-test/does-not-exist:1".into();
        assert!(matches!(rt.start(&missing).await, Err(RuntimeError::Image { .. })));
        assert_eq!(rt.state(&missing.task_id).await.expect("state"), TaskState::Missing);
    }
}
