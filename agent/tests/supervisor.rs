//! The agent's task supervisor end to end: a real agent loop (lease, assignments long-poll, status reports)
//! against an in-process fake cell served by the real router, running real containers on the Docker engine
//! (`scripts/deps` starts it and imports `titan-test/busybox:latest`) and real host processes.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fake_cell::FakeCell;
use titan_agent::node::{self, Declared};
use titan_agent::runtime::{DockerRuntime, ProcessRuntime, Runtime};
use titan_agent::supervisor::{Settings, Supervisor, TaskMetrics};
use titan_agent::volume::{DirDriver, VolumeDriver};
use titan_api::job::{HealthCheckSpec, HealthCheckType, VolumeSpec};
use titan_api::task::{Assignment, Desired, Reason, TaskHealth, TaskState};

const IMAGE: &str = "titan-test/busybox:latest";
const WAIT: Duration = Duration::from_secs(30);

/// A task that runs until SIGTERM (busybox `sh` as pid 1 honours a trap).
const SERVE_UNTIL_TERM: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

fn assignment(task: &str, command: &[&str]) -> Assignment {
    Assignment {
        task_id: task.into(),
        job_id: "job-1".into(),
        desired: Desired::Run,
        image: IMAGE.into(),
        command: Some(command.iter().map(|s| s.to_string()).collect()),
        env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
        cpus: 0.25,
        memory_mib: 64,
        disk_mib: 0,
        ports: vec![],
        volumes: vec![],
        health_check: None,
        kill_grace_ms: 1_000,
        stop_after_ms: None,
    }
}

fn stop(mut a: Assignment) -> Assignment {
    a.desired = Desired::Stop;
    a
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// `docker inspect` of a task's container: `status started-at`, or None when there is no container.
fn inspect(task: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Status}} {{.State.StartedAt}}", &format!("titan-{task}")])
        .output()
        .expect("docker cli");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Removes every container of an agent however the test ends.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label=titan.agent={}", self.0);
        if let Ok(out) = Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output() {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
            if !ids.is_empty() {
                let _ = Command::new("docker").arg("rm").arg("-f").args(&ids).output();
            }
        }
    }
}

/// A running agent loop; `stop` ends it the way SIGTERM ends `titan agent`.
struct Agent {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
    registry: prometheus::Registry,
}

impl Agent {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.handle).await.expect("agent loop ends cleanly");
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out).expect("encode");
        out
    }

    /// The value of a metric line that starts with `name`.
    fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }
}

enum Kind {
    Docker,
    Process,
}

fn start_agent(cell: &str, id: &str, dir: &Path, kind: Kind) -> Agent {
    let logs: PathBuf = dir.join("logs");
    let runtime = match kind {
        Kind::Docker => {
            let docker = DockerRuntime::connect("127.0.0.1").expect("docker socket (scripts/deps starts dockerd)");
            Runtime::docker(docker, logs, "127.0.0.1")
        }
        Kind::Process => Runtime::Process(ProcessRuntime::new(dir.join("work"), logs, None)),
    };
    let declared = Declared { cpus: Some(2.0), memory_mib: Some(2048), disk_mib: None, ports: Some((1024, 65535)) };
    let registration = node::describe(id.into(), "127.0.0.1:1".into(), dir, &declared, BTreeMap::new());
    let registry = prometheus::Registry::new();
    let lease = titan_agent::daemon::LeaseMetrics::new(&registry).expect("lease metrics");
    let metrics = TaskMetrics::new(&registry).expect("task metrics");
    let volumes: Arc<dyn VolumeDriver> = Arc::new(DirDriver::new(dir.join("volumes")).expect("volume root"));
    let mut settings = Settings::new(id, registration.resources.clone());
    settings.poll = Duration::from_millis(200);
    settings.default_kill_grace = Duration::from_secs(1);
    let supervisor = Supervisor::new(settings, runtime, Some(volumes), metrics);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let client = titan_api::Client::new(cell);
    let handle = tokio::spawn(titan_agent::daemon::run_supervised(client, registration, lease, supervisor, async {
        let _ = rx.await;
    }));
    Agent { stop: Some(tx), handle, registry }
}

fn agent_id(tag: &str) -> String {
    format!("agent-{}-{tag}", std::process::id())
}

fn task_id(tag: &str) -> String {
    format!("t{}-{tag}", std::process::id())
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_exit_stop_and_rejections_leave_nothing() {
    let id = agent_id("docker");
    let _cleanup = Cleanup(id.clone());
    let dir = tempfile::tempdir().expect("temp dir");
    let (cell, addr) = FakeCell::start().await;
    let agent = start_agent(&addr, &id, dir.path(), Kind::Docker);

    // A web server on its host port, with a volume, health-checked over http.
    let port = free_port();
    let web = task_id("web");
    let mut a = assignment(
        &web,
        &["sh", "-c", "echo serving on $PORT_0; echo $GREETING > /data/index.html; exec httpd -f -p $PORT_0 -h /data"],
    );
    a.ports = vec![port];
    a.volumes =
        vec![VolumeSpec { name: "data".into(), path: "/data".into(), size_gib: 1, persistent: false, from: None }];
    a.health_check = Some(HealthCheckSpec {
        check_type: HealthCheckType::Http,
        path: Some("/index.html".into()),
        port: Some(0),
        command: None,
        interval_seconds: 1,
        timeout_seconds: 1,
        grace_period_seconds: 5,
        failure_threshold: 2,
    });
    let failing = task_id("exit3");
    cell.plan(vec![a.clone(), assignment(&failing, &["sh", "-c", "exit 3"])]);
    let planned = cell.state().planned_at.expect("planned");
    let (_, running_at) = cell.wait_for(&web, "running", WAIT, |s| s.state == TaskState::Running).await;
    let start_latency = running_at - planned;
    assert!(inspect(&web).is_some_and(|s| s.starts_with("running")), "{:?}", inspect(&web));
    let body = reqwest::get(format!("http://127.0.0.1:{port}/index.html")).await.expect("served").text().await;
    assert_eq!(body.expect("body").trim(), "hello", "the container serves from its volume on its host port");
    cell.wait_for(&web, "healthy", WAIT, |s| s.health == TaskHealth::Healthy).await;
    let volume = dir.path().join("volumes").join(format!("{web}-data"));
    assert!(volume.join("index.html").is_file(), "the volume is a directory of the dir driver");
    let stdout = dir.path().join("logs").join(&web).join("stdout.log");
    eventually("the task's output in its log file", || {
        std::fs::read_to_string(&stdout).is_ok_and(|t| t.contains(&format!("serving on {port}")))
    })
    .await;

    // Exit 3 is a failure with its code; the container is removed once reported.
    let (s, _) = cell.wait_for(&failing, "failed", WAIT, |s| s.state.is_terminal()).await;
    assert_eq!((s.state, s.reason, s.exit_code), (TaskState::Failed, Some(Reason::Exited), Some(3)));
    assert_eq!(inspect(&failing), None, "an ended task's container is removed");

    // A stop: SIGTERM, Killed, the container and its own volume gone, its logs kept.
    cell.plan(vec![stop(a.clone()), assignment(&failing, &["sh", "-c", "exit 3"])]);
    let (s, _) = cell.wait_for(&web, "killed", WAIT, |s| s.state.is_terminal()).await;
    assert_eq!(s.state, TaskState::Killed);
    assert_eq!(inspect(&web), None);
    assert!(!volume.exists(), "a volume that is not persistent ends with its task");
    assert!(stdout.is_file(), "logs are kept");
    // The cell still lists the failed task with Run: it is not started again (restarts are the cell's call).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(inspect(&failing), None);
    assert_eq!(cell.statuses(&failing).iter().filter(|s| s.state == TaskState::Starting).count(), 1);

    // An image that does not exist, and a task too big for the agent: rejected, nothing left behind.
    let noimage = task_id("noimage");
    let mut missing = assignment(&noimage, &["true"]);
    missing.image = "titan-test/does-not-exist:1".into();
    missing.volumes =
        vec![VolumeSpec { name: "data".into(), path: "/data".into(), size_gib: 1, persistent: false, from: None }];
    let big = task_id("big");
    let mut huge = assignment(&big, &["true"]);
    huge.cpus = 64.0;
    cell.plan(vec![missing, huge]);
    let (s, _) = cell.wait_for(&noimage, "rejected", WAIT, |s| s.state.is_terminal()).await;
    assert_eq!((s.state, s.reason), (TaskState::Rejected, Some(Reason::LaunchError)));
    assert!(s.message.as_deref().is_some_and(|m| m.contains("does-not-exist")), "{s:?}");
    assert_eq!(inspect(&noimage), None);
    assert!(!dir.path().join("volumes").join(format!("{noimage}-data")).exists(), "its volume was destroyed");
    let (s, _) = cell.wait_for(&big, "rejected", WAIT, |s| s.state.is_terminal()).await;
    assert_eq!((s.state, s.reason), (TaskState::Rejected, Some(Reason::InsufficientResources)));
    assert!(s.message.as_deref().is_some_and(|m| m.contains("cpus")), "{s:?}");

    let text = agent.metrics();
    assert!(text.contains("titan_agent_task_start_seconds_count 2"), "{text}");
    assert!(text.contains("titan_agent_tasks{state=\"rejected\"} 2"), "{text}");
    let agent_side = agent.metric("titan_agent_task_start_seconds_sum") / 2.0;
    println!(
        "container start latency: {:.0} ms from plan to Running at the cell; {:.0} ms mean assignment fetched -> \
         running in the agent (2 containers started at once)",
        start_latency.as_secs_f64() * 1e3,
        agent_side * 1e3
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_report_unhealthy_tasks() {
    let id = agent_id("health");
    let _cleanup = Cleanup(id.clone());
    let dir = tempfile::tempdir().expect("temp dir");
    let (cell, addr) = FakeCell::start().await;
    let agent = start_agent(&addr, &id, dir.path(), Kind::Docker);

    // A command check run inside the container: it passes while /ready exists, then fails.
    let t = task_id("sick");
    let mut a =
        assignment(&t, &["sh", "-c", &format!("echo > /tmp/ready; sleep 3; rm /tmp/ready; {SERVE_UNTIL_TERM}")]);
    a.health_check = Some(HealthCheckSpec {
        check_type: HealthCheckType::Command,
        path: None,
        port: None,
        command: Some(vec!["sh".into(), "-c".into(), "test -f /tmp/ready".into()]),
        interval_seconds: 1,
        timeout_seconds: 2,
        grace_period_seconds: 0,
        failure_threshold: 2,
    });
    cell.plan(vec![a.clone()]);
    cell.wait_for(&t, "healthy", WAIT, |s| s.health == TaskHealth::Healthy).await;
    let (s, _) = cell.wait_for(&t, "unhealthy", WAIT, |s| s.health == TaskHealth::Unhealthy).await;
    assert_eq!((s.state, s.reason), (TaskState::Running, Some(Reason::Unhealthy)));
    assert!(inspect(&t).is_some_and(|s| s.starts_with("running")), "the agent reports; the cell decides");
    cell.plan(vec![stop(a)]);
    cell.wait_for(&t, "killed", WAIT, |s| s.state == TaskState::Killed).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_for_another_lease_epoch_is_refused() {
    let id = agent_id("epoch");
    let _cleanup = Cleanup(id.clone());
    let dir = tempfile::tempdir().expect("temp dir");
    let (cell, addr) = FakeCell::start().await;
    let agent = start_agent(&addr, &id, dir.path(), Kind::Docker);
    eventually("registered", || cell.state().registrations.len() == 1).await;

    // A stale member's plan (an older epoch): refused, nothing runs, no new registration.
    let t = task_id("refused");
    cell.skew(-1);
    cell.plan(vec![assignment(&t, &["sh", "-c", SERVE_UNTIL_TERM])]);
    eventually("a refusal counted", || agent.metric("titan_agent_plans_refused_total") >= 1.0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(inspect(&t), None, "no container for a refused plan");
    assert!(cell.statuses(&t).is_empty());
    assert_eq!(cell.state().registrations.len(), 1);

    // A plan for a newer epoch than the agent holds: refused, and the agent registers again.
    cell.skew(1);
    eventually("registered again", || cell.state().registrations.len() >= 2).await;
    assert_eq!(inspect(&t), None);
    assert!(cell.statuses(&t).is_empty());

    // Its own epoch again: the plan is taken.
    cell.skew(0);
    cell.wait_for(&t, "running", WAIT, |s| s.state == TaskState::Running).await;
    assert!(inspect(&t).is_some());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_readopts_listed_containers_and_removes_the_rest() {
    let id = agent_id("restart");
    let _cleanup = Cleanup(id.clone());
    let dir = tempfile::tempdir().expect("temp dir");
    let (cell, addr) = FakeCell::start().await;
    let agent = start_agent(&addr, &id, dir.path(), Kind::Docker);
    let (keep, drop_) = (task_id("keep"), task_id("drop"));
    let kept = assignment(&keep, &["sh", "-c", &format!("echo before; {SERVE_UNTIL_TERM}")]);
    cell.plan(vec![kept.clone(), assignment(&drop_, &["sh", "-c", SERVE_UNTIL_TERM])]);
    cell.wait_for(&keep, "running", WAIT, |s| s.state == TaskState::Running).await;
    cell.wait_for(&drop_, "running", WAIT, |s| s.state == TaskState::Running).await;
    let before = inspect(&keep).expect("the container runs");

    // The agent ends; its containers do not.
    agent.stop().await;
    assert_eq!(inspect(&keep).as_deref(), Some(before.as_str()));
    assert!(inspect(&drop_).is_some_and(|s| s.starts_with("running")));

    // Meanwhile the cell stopped wanting one of them. The next run lists both, re-adopts the one still
    // listed without restarting it, and removes the other.
    cell.plan(vec![kept.clone()]);
    let statuses_before = cell.statuses(&keep).len();
    let agent = start_agent(&addr, &id, dir.path(), Kind::Docker);
    eventually("registered again", || cell.state().registrations.len() == 2).await;
    let mut running = cell.state().registrations[1].running.clone();
    running.sort();
    let mut expected = vec![keep.clone(), drop_.clone()];
    expected.sort();
    assert_eq!(running, expected, "the registration lists what was found running");
    eventually("the unlisted container removed", || inspect(&drop_).is_none()).await;
    eventually("the kept task reported again", || cell.statuses(&keep).len() > statuses_before).await;
    assert_eq!(inspect(&keep).as_deref(), Some(before.as_str()), "re-adopted, not restarted");

    // Adopted means watched: a stop works as for a task this run launched.
    cell.plan(vec![stop(kept)]);
    cell.wait_for(&keep, "killed", WAIT, |s| s.state == TaskState::Killed).await;
    assert_eq!(inspect(&keep), None);
    let log = std::fs::read_to_string(dir.path().join("logs").join(&keep).join("stdout.log")).expect("log");
    assert_eq!(log.matches("before").count(), 1, "the adopting run does not copy old output again: {log:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_ride_out_a_failing_cell() {
    let id = agent_id("outage");
    let _cleanup = Cleanup(id.clone());
    let dir = tempfile::tempdir().expect("temp dir");
    let (cell, addr) = FakeCell::start().await;
    let agent = start_agent(&addr, &id, dir.path(), Kind::Docker);
    eventually("registered", || cell.state().registrations.len() == 1).await;
    cell.state().fail_reports = 3;
    let t = task_id("quick");
    cell.plan(vec![assignment(&t, &["sh", "-c", "exit 0"])]);
    let (s, _) = cell.wait_for(&t, "finished", WAIT, |s| s.state.is_terminal()).await;
    assert_eq!((s.state, s.exit_code), (TaskState::Finished, Some(0)));
    assert!(agent.metric("titan_agent_status_report_failures_total") >= 3.0);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_start_exit_stop_and_are_rejected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cell, addr) = FakeCell::start().await;
    let agent = start_agent(&addr, &agent_id("process"), dir.path(), Kind::Process);
    let (ok, bad, sleeper, nocmd, vol) =
        (task_id("p-ok"), task_id("p-bad"), task_id("p-sleep"), task_id("p-nocmd"), task_id("p-vol"));
    let mut no_command = assignment(&nocmd, &[]);
    no_command.command = None;
    let mut with_volume = assignment(&vol, &["true"]);
    with_volume.volumes =
        vec![VolumeSpec { name: "data".into(), path: "/data".into(), size_gib: 1, persistent: false, from: None }];
    let mut sleeping = assignment(&sleeper, &["sleep", "30"]);
    sleeping.ports = vec![free_port()];
    cell.plan(vec![
        assignment(&ok, &["sh", "-c", "echo $GREETING"]),
        assignment(&bad, &["sh", "-c", "exit 3"]),
        sleeping.clone(),
        no_command,
        with_volume,
    ]);
    let (s, _) = cell.wait_for(&ok, "finished", WAIT, |s| s.state.is_terminal()).await;
    assert_eq!((s.state, s.exit_code), (TaskState::Finished, Some(0)));
    let (s, _) = cell.wait_for(&bad, "failed", WAIT, |s| s.state.is_terminal()).await;
    assert_eq!((s.state, s.reason, s.exit_code), (TaskState::Failed, Some(Reason::Exited), Some(3)));
    let (s, _) = cell.wait_for(&nocmd, "rejected", WAIT, |s| s.state.is_terminal()).await;
    assert_eq!((s.state, s.reason), (TaskState::Rejected, Some(Reason::LaunchError)));
    let (s, _) = cell.wait_for(&vol, "rejected", WAIT, |s| s.state.is_terminal()).await;
    assert_eq!((s.state, s.reason), (TaskState::Rejected, Some(Reason::InsufficientResources)));
    cell.wait_for(&sleeper, "running", WAIT, |s| s.state == TaskState::Running).await;
    let out = dir.path().join("logs").join(&ok).join("stdout.log");
    eventually("output in the log", || std::fs::read_to_string(&out).is_ok_and(|t| t == "hello\n")).await;

    cell.plan(vec![stop(sleeping)]);
    let (s, _) = cell.wait_for(&sleeper, "killed", WAIT, |s| s.state.is_terminal()).await;
    assert_eq!(s.state, TaskState::Killed);
    assert!(!dir.path().join("work").join(&sleeper).exists(), "the process's working directory is removed");
    agent.stop().await;
}
