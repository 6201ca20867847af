//! End to end with real Docker containers: `titan dev` runs a submitted job's containers on its local agent, and
//! a 3-member cell with three `titan agent` processes runs, replaces and cleans up containers through a dead
//! agent, its restart, and the loss of the cell leader. (`scripts/deps` starts dockerd and imports the image.)

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use titan_api::job::BodyFormat;
use titan_api::task::{Reason, TaskQuery, TaskState, TaskView};
use titan_api::Client;

const IMAGE: &str = "titan-test/busybox:latest";

/// A web server on the task's first port, answering with its task id.
fn web_spec(location: &str, extra: &str) -> Vec<u8> {
    format!(
        r#"{{"name":"web","applicationName":"shop","location":"{location}","cpus":0.25,"memory":64,"ports":1,
        "image":"{IMAGE}","command":["sh","-c","echo started $TITAN_TASK_ID; mkdir -p /w && echo $TITAN_TASK_ID > /w/index.html && exec httpd -f -p $PORT_0 -h /w"],
        "healthCheck":{{"type":"http","path":"/","port":0,"intervalSeconds":2,"timeoutSeconds":1,"gracePeriodSeconds":1}}{extra}}}"#
    )
    .into_bytes()
}

/// Containers (running or not) carrying a label, by docker's own listing.
fn containers(label: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={label}")])
        .output()
        .expect("docker ps runs");
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
}

/// The task id label of a container.
fn task_of(container: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{index .Config.Labels \"titan.task\"}}", container])
        .output()
        .expect("docker inspect runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes every container of the given agents when the test ends, however it ends. Declare it before the agents:
/// locals drop in reverse order, so it then runs once no agent is left to start another container.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for agent in &self.0 {
            for c in containers(&format!("titan.agent={agent}")) {
                let _ = Command::new("docker").args(["rm", "-f", &c]).output();
            }
        }
    }
}

async fn tasks(c: &Client, job: &str) -> Vec<TaskView> {
    let q = TaskQuery { job: Some(job.into()), limit: Some(1000), ..TaskQuery::default() };
    c.list_tasks(&q).await.map(|l| l.tasks).unwrap_or_default()
}

fn in_state(ts: &[TaskView], s: TaskState) -> Vec<&TaskView> {
    ts.iter().filter(|t| t.state == s).collect()
}

async fn get(port: u16) -> Option<String> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/")).await.ok()?;
    r.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titan_dev_runs_replaces_scales_and_kills_real_containers() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The agent's id is made before `titan dev` starts (its agent keeps the id it finds), so the clean-up is
    // declared before the process and dropped after it: no agent is left to start a container once it has run.
    let agent = titan_agent::node::agent_id(&dir.path().join("data").join("agent")).expect("agent id");
    let _cleanup = Cleanup(vec![agent.clone()]);
    let dev = Dev::start(dir.path()).await;
    let client = dev.client();
    assert_eq!(client.list_agents().await.expect("agents")[0].id, agent);
    let label = format!("titan.agent={agent}");

    let job = client.submit_raw(web_spec("dev:2", ""), BodyFormat::Json, None).await.expect("submitted").id;
    eventually(Duration::from_secs(60), "two healthy containers serving", || async {
        let ts = tasks(&client, &job).await;
        let run = in_state(&ts, TaskState::Running);
        if run.len() != 2 || run.iter().any(|t| t.health != titan_api::task::TaskHealth::Healthy) {
            return false;
        }
        for t in run {
            if get(t.ports[0]).await.map(|b| b.trim() == t.id) != Some(true) {
                return false;
            }
        }
        running_containers(&label).len() == 2
    })
    .await;

    // Its output, through the cell: a tail, and a followed stream.
    let one = in_state(&tasks(&client, &job).await, TaskState::Running)[0].id.clone();
    let lines: Vec<String> =
        client.task_logs(&one, 10, "stdout", false).await.expect("logs").json().await.expect("json");
    assert_eq!(lines, vec![format!("started {one}")]);
    let mut followed = client.task_logs(&one, 5, "stdout", true).await.expect("followed logs");
    let first = tokio::time::timeout(Duration::from_secs(10), followed.chunk()).await.expect("in time");
    assert_eq!(first.expect("a chunk").as_deref(), Some(format!("started {one}\n").as_bytes()));
    let missing = client.task_logs("no-such-task", 10, "stdout", false).await.expect_err("404");
    assert_eq!(missing.code(), Some(titan_api::ErrorCode::NotFound));

    // A container dies under the agent: the task fails and is replaced.
    let victim = running_containers(&label)[0].clone();
    let victim_task = task_of(&victim);
    let out = Command::new("docker").args(["kill", &victim]).output().expect("docker kill");
    assert!(out.status.success());
    eventually(Duration::from_secs(60), "the killed container's task failed and replaced", || async {
        let ts = tasks(&client, &job).await;
        let failed = ts.iter().any(|t| t.id == victim_task && t.state == TaskState::Failed && t.exit_code.is_some());
        let replaced =
            ts.iter().any(|t| t.replaces.as_deref() == Some(victim_task.as_str()) && t.state == TaskState::Running);
        failed && replaced && running_containers(&label).len() == 2
    })
    .await;

    // Scale down to one, then kill the job: containers follow.
    client.set_instances(&job, &[("dev".to_string(), 1)].into(), None).await.expect("scaled");
    eventually(Duration::from_secs(60), "one container left", || async {
        in_state(&tasks(&client, &job).await, TaskState::Running).len() == 1 && containers(&label).len() == 1
    })
    .await;
    client.kill_job(&job).await.expect("killed");
    eventually(Duration::from_secs(60), "no container left", || async {
        let ts = tasks(&client, &job).await;
        ts.iter().all(|t| t.state.is_terminal()) && containers(&label).is_empty()
    })
    .await;
}

/// The last lines each agent logged, for a failure message.
fn agent_logs(agents: &[AgentProcess]) -> String {
    let logs: Vec<String> = agents
        .iter()
        .map(|a| std::fs::read_to_string(a.dir.join("agent.log")).unwrap_or_default())
        .map(|l| l.lines().rev().take(15).collect::<Vec<_>>().join("\n"))
        .collect();
    logs.join("\n---\n")
}

struct AgentProcess {
    child: Option<Child>,
    dir: std::path::PathBuf,
    addr: String,
    /// Host ports for tasks: below the kernel's ephemeral range (32768-60999 by default), as the agent's default
    /// is, so that no connection's source port can hold one when a container publishes it.
    ports: String,
    /// More flags (`--zfs-parent POOL`).
    extra: Vec<String>,
}

impl AgentProcess {
    fn start(&mut self, cells: &str) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("agent.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_titan"))
            .args(["agent", "--cell-addr", cells, "--runtime", "docker", "--publish-ip", "127.0.0.1"])
            .args(["--addr", &self.addr, "--cpus", "2", "--memory-mib", "2048", "--ports", &self.ports])
            .args(&self.extra)
            .arg("--data-dir")
            .arg(&self.dir)
            .env("TITAN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start titan agent");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_with_three_agents_replaces_a_dead_agents_containers_and_cleans_up_after_it() {
    let config = format!("{TEST_CONFIG}[scheduler]\nlease_ms = 1500\nlost_grace_ms = 1500\n");
    let mut cell = Cluster::start_with(3, &config);
    let leader = cell.leader(Duration::from_secs(20)).await;
    let root = tempfile::tempdir().expect("temp dir");
    let dirs: Vec<std::path::PathBuf> = (0..3).map(|i| root.path().join(format!("agent-{i}"))).collect();
    // In the agents' order: each keeps its id in its data directory. Made before the agents start, so the
    // clean-up is declared before them and dropped after them: no agent is left to start a container once it ran.
    let ids: Vec<String> = dirs.iter().map(|d| titan_agent::node::agent_id(d).expect("an agent id")).collect();
    let _cleanup = Cleanup(ids.clone());
    let mut agents: Vec<AgentProcess> = dirs
        .into_iter()
        .enumerate()
        .map(|(i, dir)| AgentProcess {
            child: None,
            dir,
            addr: format!("127.0.0.1:{}", free_port()),
            ports: format!("{}-{}", 21000 + i * 100, 21099 + i * 100),
            extra: vec![],
        })
        .collect();
    // Each agent knows every member and starts with a different one (writes are forwarded to the leader).
    let addrs: Vec<String> = cell.members.iter().map(|m| m.addr.to_string()).collect();
    let members_from = |i: usize| (0..3).map(|k| addrs[(i + k) % 3].clone()).collect::<Vec<_>>().join(",");
    for (i, a) in agents.iter_mut().enumerate() {
        a.start(&members_from(i));
    }
    let client = cell.member(leader).client();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !client.list_agents().await.is_ok_and(|a| a.len() == 3) {
        // Say why before failing: what each agent logged.
        assert!(std::time::Instant::now() < deadline, "three agents did not register:\n{}", agent_logs(&agents));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let count_running = || ids.iter().map(|id| running_containers(&format!("titan.agent={id}")).len()).sum::<usize>();

    let job = client.submit_raw(web_spec("dc1:4", ""), BodyFormat::Json, None).await.expect("submitted").id;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !(in_state(&tasks(&client, &job).await, TaskState::Running).len() == 4 && count_running() == 4) {
        if std::time::Instant::now() > deadline {
            // Say why before failing: the tasks as the cell sees them, and what the agents logged.
            let ts = tasks(&client, &job).await;
            let states: Vec<String> = ts
                .iter()
                .map(|t| format!("{} {:?} {:?} {:?} {:?}", t.id, t.state, t.reason, t.agent_id, t.message))
                .collect();
            panic!(
                "four containers not running ({} in docker):\n{}\n{}",
                count_running(),
                states.join("\n"),
                agent_logs(&agents)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The agent with the most tasks dies (SIGKILL): its containers keep running, unknown to the cell, and its
    // tasks are lost and replaced on the others.
    let ts = tasks(&client, &job).await;
    let victim = (0..3)
        .max_by_key(|i| ts.iter().filter(|t| t.agent_id.as_deref() == Some(ids[*i].as_str())).count())
        .expect("an agent");
    let victim_id = ids[victim].clone();
    let orphans = running_containers(&format!("titan.agent={victim_id}"));
    assert!(!orphans.is_empty());
    agents[victim].kill();
    // The leader dies too, in the middle of it.
    cell.member(leader).kill();
    let leader = cell.leader(Duration::from_secs(20)).await;
    let client = cell.member(leader).client();
    eventually(Duration::from_secs(60), "the dead agent's tasks lost and replaced elsewhere", || async {
        let ts = tasks(&client, &job).await;
        let run = in_state(&ts, TaskState::Running);
        run.len() == 4 && run.iter().all(|t| t.agent_id.as_deref() != Some(victim_id.as_str()))
    })
    .await;

    // It comes back: it finds its old containers, the cell no longer wants them, and it removes them.
    agents[victim].start(&members_from(victim));
    eventually(Duration::from_secs(60), "the orphans removed", || async {
        containers(&format!("titan.agent={victim_id}")).is_empty()
    })
    .await;
    let ts = tasks(&client, &job).await;
    let running: BTreeSet<String> = in_state(&ts, TaskState::Running).iter().map(|t| t.id.clone()).collect();
    let in_docker: BTreeSet<String> =
        ids.iter().flat_map(|id| running_containers(&format!("titan.agent={id}"))).map(|c| task_of(&c)).collect();
    assert_eq!(running, in_docker, "every running task has exactly its container, and nothing else runs");
    assert_eq!(running.len(), 4);
    client.kill_job(&job).await.expect("killed");
    eventually(Duration::from_secs(60), "every container removed", || async { count_running() == 0 }).await;
}

/// Host ports in the agent's range held by a process outside Titan: a task given one is rejected at launch with the
/// reason, and its replacements (other ids, so other ports) keep coming until one gets the port that came free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_ports_held_outside_titan_do_not_keep_a_task_from_running() {
    let cell =
        Cluster::start_with(1, &format!("{TEST_CONFIG}[scheduler]\nbackoff_base_ms = 50\nbackoff_max_ms = 1000\n"));
    cell.leader(Duration::from_secs(20)).await;
    let client = cell.members[0].client();
    let root = tempfile::tempdir().expect("temp dir");
    // Declared before the agent, so dropped after it.
    let id = titan_agent::node::agent_id(&root.path().join("agent")).expect("agent id");
    let _cleanup = Cleanup(vec![id.clone()]);
    // Both of the agent's ports are taken, on the address Docker publishes on.
    let hold = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).expect("a port free to hold");
    let _low = hold(21700);
    let high = hold(21701);
    let mut agent = AgentProcess {
        child: None,
        dir: root.path().join("agent"),
        addr: format!("127.0.0.1:{}", free_port()),
        ports: "21700-21701".into(),
        extra: vec![],
    };
    agent.start(&cell.members[0].addr.to_string());
    eventually(Duration::from_secs(30), "the agent", || async {
        client.list_agents().await.is_ok_and(|a| a.len() == 1)
    })
    .await;
    let job = client.submit_raw(web_spec("dc1:1", ""), BodyFormat::Json, None).await.expect("submitted").id;
    eventually(Duration::from_secs(30), "a task refused at launch", || async {
        in_state(&tasks(&client, &job).await, TaskState::Rejected).len() >= 2
    })
    .await;
    drop(high);
    eventually(Duration::from_secs(60), "a task running on the port that came free, serving", || async {
        let ts = tasks(&client, &job).await;
        match in_state(&ts, TaskState::Running).as_slice() {
            [t] if t.ports == [21701] => get(21701).await.is_some_and(|b| b.trim() == t.id),
            _ => false,
        }
    })
    .await;
    // Every task refused was refused at launch, saying which port and why.
    let ts = tasks(&client, &job).await;
    for t in in_state(&ts, TaskState::Rejected) {
        assert_eq!(t.reason, Some(Reason::LaunchError), "{t:?}");
        let message = t.message.as_deref().unwrap_or_default();
        let port = t.ports.first().map(|p| p.to_string()).unwrap_or_default();
        assert!(message.contains(&port) && message.contains("in use"), "{message}");
    }
}

/// A ZFS pool on a file (zfs-fuse, started by `scripts/deps`), destroyed at the end.
struct Pool {
    name: String,
    _dir: tempfile::TempDir,
}

impl Pool {
    fn new() -> Pool {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("pool.img");
        std::fs::File::create(&file).and_then(|f| f.set_len(256 << 20)).expect("pool file");
        let name = format!("titane2e{}", std::process::id());
        let out = Command::new("zpool").args(["create", "-f", &name]).arg(&file).output().expect("zpool runs");
        assert!(out.status.success(), "zpool create: {}", String::from_utf8_lossy(&out.stderr));
        Pool { name, _dir: dir }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for _ in 0..50 {
            let done = Command::new("zpool").args(["destroy", "-f", &self.name]).output();
            if done.is_ok_and(|o| o.status.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_zfs_volume_outlives_its_task_and_the_replacement_sees_its_data() {
    let pool = Pool::new();
    let cell = Cluster::start_with(1, &format!("{TEST_CONFIG}[scheduler]\nbackoff_base_ms = 100\n"));
    cell.leader(Duration::from_secs(20)).await;
    let client = cell.members[0].client();
    let root = tempfile::tempdir().expect("temp dir");
    // Declared before the agent, so dropped after it.
    let id = titan_agent::node::agent_id(&root.path().join("agent")).expect("agent id");
    let _cleanup = Cleanup(vec![id.clone()]);
    let mut agent = AgentProcess {
        child: None,
        dir: root.path().join("agent"),
        addr: format!("127.0.0.1:{}", free_port()),
        ports: "21500-21599".into(),
        extra: vec!["--zfs-parent".into(), pool.name.clone()],
    };
    agent.start(&cell.members[0].addr.to_string());
    eventually(Duration::from_secs(30), "the agent", || async {
        client.list_agents().await.is_ok_and(|a| a.len() == 1)
    })
    .await;
    // Each task says what the previous one left in the volume, then leaves its own id there.
    let spec = format!(
        r#"{{"name":"keeper","applicationName":"shop","location":"dc1:1","cpus":0.25,"memory":64,"image":"{IMAGE}",
        "command":["sh","-c","echo seen $(cat /data/mark 2>/dev/null); echo $TITAN_TASK_ID > /data/mark; exec sleep 600"],
        "volumes":[{{"name":"data","path":"/data","sizeGib":1,"persistent":true}}]}}"#
    );
    let job = client.submit_raw(spec.into_bytes(), BodyFormat::Json, None).await.expect("submitted").id;
    let running = || async {
        let ts = tasks(&client, &job).await;
        in_state(&ts, TaskState::Running).first().map(|t| t.id.clone())
    };
    eventually(Duration::from_secs(60), "the first task running", || async { running().await.is_some() }).await;
    let first = running().await.expect("running");
    let says = |task: String| {
        let client = client.clone();
        async move {
            let lines: Vec<String> = client.task_logs(&task, 10, "stdout", false).await.ok()?.json().await.ok()?;
            lines.into_iter().find(|l| l.starts_with("seen"))
        }
    };
    eventually(Duration::from_secs(30), "the first task's output", || async {
        says(first.clone()).await.as_deref() == Some("seen")
    })
    .await;
    // The dataset exists in the pool, with its quota.
    let datasets = Command::new("zfs").args(["list", "-H", "-o", "name", "-r", &pool.name]).output().expect("zfs list");
    let listed = String::from_utf8_lossy(&datasets.stdout).to_string();
    assert!(listed.lines().count() >= 2, "a dataset under the pool: {listed}");

    client.kill_task(&first).await.expect("killed");
    eventually(Duration::from_secs(60), "the replacement running", || async {
        running().await.is_some_and(|t| t != first)
    })
    .await;
    let second = running().await.expect("running");
    let view = client.get_task(&second).await.expect("task");
    assert_eq!(view.replaces.as_deref(), Some(first.as_str()));
    eventually(Duration::from_secs(30), "the replacement saw the first task's data", || async {
        says(second.clone()).await == Some(format!("seen {first}"))
    })
    .await;
    client.kill_job(&job).await.expect("job killed");
    eventually(Duration::from_secs(60), "the containers gone", || async {
        containers(&format!("titan.agent={id}")).is_empty()
    })
    .await;
    agent.kill();
}
