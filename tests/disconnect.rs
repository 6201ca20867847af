//! A job may ask its tasks to stop when their agent is disconnected: a real `titan agent` reaches a real cell
//! through a proxy the test cuts; the task of a job that asked is stopped by its agent before the cell starts its
//! replacement on another agent, so two copies never run at once, while a job that did not ask runs through the
//! partition and its replacement's status says it may run beside the unreachable original. With Docker, an agent
//! killed and restarted while still cut off finds its container and stops it in time all the same.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::*;
use titan_api::job::BodyFormat;
use titan_api::task::{TaskQuery, TaskState, TaskView};
use titan_api::Client;

/// Seconds without a lease renewal after which the agent stops the job's tasks.
const STOP_AFTER_SECONDS: u64 = 2;

/// A job of one instance running `sleep` with a marker in its environment, by which its processes are found.
fn spec(name: &str, mark: &str, disconnect: bool) -> Vec<u8> {
    let disconnect = if disconnect {
        format!(r#","disconnect":{{"stopAfterSeconds":{STOP_AFTER_SECONDS}}}"#)
    } else {
        String::new()
    };
    format!(
        r#"{{"name":"{name}","applicationName":"shop","location":"dc1:1","cpus":0.5,"memory":64,"image":"none",
            "command":["sleep","3600"],"env":{{"MARK":"{mark}"}}{disconnect}}}"#
    )
    .into_bytes()
}

/// A marker no other run's processes carry.
fn mark(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{name}-{}-{nanos}", std::process::id())
}

/// The processes on this machine whose environment holds `MARK=mark`.
fn copies(mark: &str) -> Vec<u32> {
    let needle = format!("MARK={mark}");
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            environ.split(|b| *b == 0).any(|var| var == needle.as_bytes())
        })
        .collect()
}

/// Kills the marked processes when the test ends however it ends: an agent killed by the test leaves its host
/// processes behind.
struct Marked(Vec<String>);

impl Drop for Marked {
    fn drop(&mut self) {
        for mark in &self.0 {
            for pid in copies(mark) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(cell: &str, dir: &std::path::Path, ports: &str) -> Agent {
    start_agent_with(cell, dir, ports, &["--runtime", "process"])
}

fn start_agent_with(cell: &str, dir: &std::path::Path, ports: &str, runtime: &[&str]) -> Agent {
    std::fs::create_dir_all(dir).expect("agent dir");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("agent.log")).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_titan"))
        .args(["agent", "--cell-addr", cell, "--cpus", "2", "--memory-mib", "1024"])
        .args(runtime)
        .args(["--addr", &format!("127.0.0.1:{}", free_port()), "--ports", ports])
        .arg("--data-dir")
        .arg(dir)
        .env("TITAN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start titan agent");
    Agent(child)
}

async fn tasks(c: &Client, job: &str) -> Vec<TaskView> {
    let q = TaskQuery { job: Some(job.into()), limit: Some(100), ..TaskQuery::default() };
    c.list_tasks(&q).await.map(|l| l.tasks).unwrap_or_default()
}

fn running_on<'a>(ts: &'a [TaskView], agent: &str) -> Option<&'a TaskView> {
    ts.iter().find(|t| t.state == TaskState::Running && t.agent_id.as_deref() == Some(agent))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_stops_on_disconnect_never_runs_twice_across_a_partition() {
    let config =
        format!("{TEST_CONFIG}[scheduler]\nlease_ms = 1000\nlost_grace_ms = 1000\ndisconnect_margin_ms = 1000\n");
    let cell = Cluster::start_with(1, &config);
    let leader = cell.leader(Duration::from_secs(20)).await;
    let member = cell.members.iter().find(|m| m.id == leader).expect("the leader");
    let client = member.client();
    let proxy = Proxy::start(member.addr).await;
    let root = tempfile::tempdir().expect("temp dir");
    let (once_mark, plain_mark) = (mark("once"), mark("plain"));
    let _marked = Marked(vec![once_mark.clone(), plain_mark.clone()]);

    // The agent behind the proxy starts alone, so both jobs' tasks land on it.
    let far_dir = root.path().join("far");
    let far = titan_agent::node::agent_id(&far_dir).expect("an agent id");
    let _far_agent = start_agent(&proxy.addr.to_string(), &far_dir, "21000-21099");
    eventually(Duration::from_secs(20), "the far agent registered", || async {
        client.list_agents().await.is_ok_and(|a| a.len() == 1 && a[0].last_heartbeat_ms.is_some())
    })
    .await;
    let once = client.submit_raw(spec("once", &once_mark, true), BodyFormat::Json, None).await.expect("submitted").id;
    let plain =
        client.submit_raw(spec("plain", &plain_mark, false), BodyFormat::Json, None).await.expect("submitted").id;
    eventually(Duration::from_secs(30), "both jobs running on the far agent", || async {
        running_on(&tasks(&client, &once).await, &far).is_some()
            && running_on(&tasks(&client, &plain).await, &far).is_some()
            && copies(&once_mark).len() == 1
            && copies(&plain_mark).len() == 1
    })
    .await;
    let original = running_on(&tasks(&client, &once).await, &far).map(|t| t.id.clone()).expect("running");
    let near_dir = root.path().join("near");
    let near = titan_agent::node::agent_id(&near_dir).expect("an agent id");
    let _near_agent = start_agent(&member.addr.to_string(), &near_dir, "21100-21199");
    eventually(Duration::from_secs(20), "the near agent registered", || async {
        client.list_agents().await.is_ok_and(|a| a.len() == 2 && a.iter().all(|a| a.last_heartbeat_ms.is_some()))
    })
    .await;

    // The far agent is cut off from the cell; it keeps running, as in a partition.
    proxy.cut();
    let cut_at = Instant::now();
    let mut original_gone_after = None;
    let deadline = cut_at + Duration::from_secs(60);
    loop {
        let running = copies(&once_mark).len();
        assert!(running <= 1, "{running} copies of the job that asked to stop on disconnect run at once");
        if running == 0 && original_gone_after.is_none() {
            original_gone_after = Some(cut_at.elapsed());
        }
        let ts = tasks(&client, &once).await;
        if running == 1 && running_on(&ts, &near).is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no replacement on the near agent within 60 s: {ts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone = original_gone_after.expect("the original stopped before its replacement ran");
    // Counted from the last renewal, which was sent up to a heartbeat interval (a third of the lease) before the
    // cut: not at once, and not before the stop-after less that.
    let earliest = Duration::from_secs(STOP_AFTER_SECONDS) - Duration::from_millis(400);
    assert!(gone >= earliest, "stopped only after its stop-after: {gone:?}");
    let ts = tasks(&client, &once).await;
    let replacement = running_on(&ts, &near).expect("the replacement runs");
    assert_eq!(replacement.replaces.as_deref(), Some(original.as_str()));
    assert_eq!(replacement.may_run_beside, None, "its original was stopped");

    // The job that did not ask rode out the partition: its original still runs, beside its replacement, and the
    // replacement's status says so.
    eventually(Duration::from_secs(30), "the plain job's replacement running", || async {
        running_on(&tasks(&client, &plain).await, &near).is_some()
    })
    .await;
    let ts = tasks(&client, &plain).await;
    let doubled = running_on(&ts, &near).expect("running");
    assert!(doubled.may_run_beside.is_some(), "{doubled:?}");
    assert_eq!(copies(&plain_mark).len(), 2, "the unreachable original runs on");

    // Healed: the far agent stops what the cell no longer lists, and each job runs once.
    proxy.heal();
    eventually(Duration::from_secs(30), "one copy of each job once the partition healed", || async {
        copies(&plain_mark).len() == 1 && copies(&once_mark).len() == 1
    })
    .await;
    let c = client.clone();
    let plain_id = plain.clone();
    eventually(Duration::from_secs(10), "no replacement said to run beside an original", || {
        let (c, plain_id) = (c.clone(), plain_id.clone());
        async move { tasks(&c, &plain_id).await.iter().all(|t| t.may_run_beside.is_none()) }
    })
    .await;
}

const IMAGE: &str = "titan-test/busybox:latest";

/// Running containers of a job, by docker's own listing.
fn running_containers(job: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-q", "--filter", &format!("label=titan.job={job}"), "--filter", "status=running"])
        .output()
        .expect("docker ps runs");
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
}

/// Removes every container of the given agents when the test ends, however it ends. Declared before the agents,
/// so it runs once no agent is left to start another.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for agent in &self.0 {
            let out = Command::new("docker")
                .args(["ps", "-aq", "--filter", &format!("label=titan.agent={agent}")])
                .output()
                .expect("docker ps runs");
            for c in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", c]).output();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restarted_while_cut_off_still_stops_its_container_before_the_replacement_runs() {
    let config =
        format!("{TEST_CONFIG}[scheduler]\nlease_ms = 1000\nlost_grace_ms = 1000\ndisconnect_margin_ms = 1000\n");
    let cell = Cluster::start_with(1, &config);
    let leader = cell.leader(Duration::from_secs(20)).await;
    let member = cell.members.iter().find(|m| m.id == leader).expect("the leader");
    let client = member.client();
    let proxy = Proxy::start(member.addr).await;
    let root = tempfile::tempdir().expect("temp dir");
    let (far_dir, near_dir) = (root.path().join("far"), root.path().join("near"));
    let far = titan_agent::node::agent_id(&far_dir).expect("an agent id");
    let near = titan_agent::node::agent_id(&near_dir).expect("an agent id");
    let _containers = Containers(vec![far.clone(), near.clone()]);
    let docker = ["--runtime", "docker", "--publish-ip", "127.0.0.1"];

    let mut far_agent = start_agent_with(&proxy.addr.to_string(), &far_dir, "21200-21299", &docker);
    eventually(Duration::from_secs(20), "the far agent registered", || async {
        client.list_agents().await.is_ok_and(|a| a.len() == 1 && a[0].last_heartbeat_ms.is_some())
    })
    .await;
    // Long enough for the agent to be killed and started again before it passes.
    let stop_after = 4;
    let body = format!(
        r#"{{"name":"once","applicationName":"shop","location":"dc1:1","cpus":0.25,"memory":64,"image":"{IMAGE}",
            "command":["sleep","3600"],"disconnect":{{"stopAfterSeconds":{stop_after}}}}}"#
    );
    let job = client.submit_raw(body.into_bytes(), BodyFormat::Json, None).await.expect("submitted").id;
    eventually(Duration::from_secs(60), "the job's container running on the far agent", || async {
        running_on(&tasks(&client, &job).await, &far).is_some() && running_containers(&job).len() == 1
    })
    .await;
    let _near_agent = start_agent_with(&member.addr.to_string(), &near_dir, "21300-21399", &docker);
    eventually(Duration::from_secs(20), "the near agent registered", || async {
        client.list_agents().await.is_ok_and(|a| a.len() == 2 && a.iter().all(|a| a.last_heartbeat_ms.is_some()))
    })
    .await;

    // Cut off, then killed outright and started again, still cut off: only what it kept (the container's label
    // and the renewal time on disk) tells the new process to stop the container, and when.
    proxy.cut();
    let cut_at = Instant::now();
    drop(far_agent);
    far_agent = start_agent_with(&proxy.addr.to_string(), &far_dir, "21200-21299", &docker);
    let deadline = cut_at + Duration::from_secs(90);
    let mut stopped_after = None;
    loop {
        let running = running_containers(&job).len();
        assert!(running <= 1, "{running} containers of the job run at once");
        if running == 0 && stopped_after.is_none() {
            stopped_after = Some(cut_at.elapsed());
        }
        if running == 1 && running_on(&tasks(&client, &job).await, &near).is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no replacement on the near agent within 90 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped = stopped_after.expect("the original stopped before the replacement ran");
    assert!(stopped >= Duration::from_secs(stop_after) - Duration::from_millis(400), "stopped at {stopped:?}");
    drop(far_agent);
}
