//! End to end: a real 3-member cell schedules jobs onto simulated agents that speak the real agent protocol.
//! Agents die, the leader dies, jobs scale; every task the cell wants runs exactly once.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::sim::{self, Record};
use common::{eventually, Cluster, TEST_CONFIG};
use titan_api::job::BodyFormat;
use titan_api::task::{Reason, TaskQuery, TaskState, TaskView};
use titan_api::Client;

fn config() -> String {
    format!("{TEST_CONFIG}[scheduler]\nlease_ms = 1000\nlost_grace_ms = 1000\nbackoff_base_ms = 100\n")
}

async fn tasks(c: &Client, job: &str) -> Vec<TaskView> {
    let q = TaskQuery { job: Some(job.into()), limit: Some(1000), ..TaskQuery::default() };
    c.list_tasks(&q).await.map(|l| l.tasks).unwrap_or_default()
}

fn running(ts: &[TaskView]) -> Vec<&TaskView> {
    ts.iter().filter(|t| t.state == TaskState::Running).collect()
}

fn job_spec(count: u32) -> Vec<u8> {
    format!(r#"{{"name":"web","applicationName":"shop","location":"dc1:{count},dc2:4","cpus":1,"memory":512,"image":"busybox"}}"#)
        .into_bytes()
}

/// No task id was started twice, on one agent or on two.
fn launched_once(record: &Record) {
    let launches = record.launches.lock().expect("launches");
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (agent, task) in launches.iter() {
        if let Some(first) = seen.insert(task, agent) {
            panic!("task {task} launched twice: on {first} and on {agent}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_once_through_agent_loss_scaling_and_leader_loss() {
    let mut cell = Cluster::start_with(3, &config());
    let leader = cell.leader(Duration::from_secs(20)).await;
    let addrs: Vec<String> = cell.members.iter().map(|m| m.addr.to_string()).collect();
    let record = Arc::new(Record::default());
    let mut agents: Vec<sim::SimAgent> = (0..3)
        .map(|i| sim::start(addrs.clone(), sim::registration(&format!("sim-{i}"), 4.0, 8192, "a"), record.clone()))
        .collect();
    let client = cell.member(leader).client();
    eventually(Duration::from_secs(10), "three agents registered", || async {
        client.list_agents().await.map(|a| a.len() == 3).unwrap_or(false)
    })
    .await;

    // Submitted to a follower: six tasks of dc1's count run, two per... wherever fenzo packs them.
    let follower = cell.members.iter().find(|m| m.id != leader).expect("a follower").client();
    let job = follower.submit_raw(job_spec(6), BodyFormat::Json, None).await.expect("submitted").id;
    eventually(Duration::from_secs(15), "six tasks running", || async {
        running(&tasks(&client, &job).await).len() == 6
    })
    .await;
    let view = client.get_task(&running(&tasks(&client, &job).await)[0].id).await.expect("task");
    assert_eq!(view.transitions.first().map(|t| t.state), Some(TaskState::Accepted));

    // A task larger than any agent waits, and a follower says why (it asks the leader, whose rounds know).
    let huge =
        r#"{"name":"huge","applicationName":"shop","location":"dc1:1","cpus":64,"memory":512,"image":"busybox"}"#;
    let big = follower.submit_raw(huge.as_bytes().to_vec(), BodyFormat::Json, None).await.expect("submitted").id;
    eventually(Duration::from_secs(10), "the follower explains the pending task", || async {
        let pending = follower.get_job(&big).await.ok().and_then(|j| j.tasks).map(|t| t.pending).unwrap_or_default();
        pending.len() == 1 && pending[0].reason.contains("cpu")
    })
    .await;
    let waiting = tasks(&follower, &big).await;
    assert!(waiting[0].pending.as_deref().is_some_and(|p| p.contains("cpu")), "{waiting:?}");
    follower.kill_job(&big).await.expect("killed");

    // An agent dies: after the lease and the grace its tasks are lost and replaced elsewhere.
    let now: Vec<TaskView> = running(&tasks(&client, &job).await).into_iter().cloned().collect();
    let victim = agents.iter().position(|a| tasks_on(&now, &a.id) > 0).expect("some agent runs tasks");
    let victim_id = agents[victim].id.clone();
    agents[victim].stop();
    eventually(Duration::from_secs(20), "the dead agent's tasks replaced", || async {
        let ts = tasks(&client, &job).await;
        let lost = ts.iter().filter(|t| t.state == TaskState::Lost && t.reason == Some(Reason::AgentLost)).count();
        let run = running(&ts);
        lost > 0 && run.len() == 6 && run.iter().all(|t| t.agent_id.as_deref() != Some(victim_id.as_str()))
    })
    .await;
    let ts = tasks(&client, &job).await;
    for lost in ts.iter().filter(|t| t.state == TaskState::Lost) {
        let by = lost.replaced_by.as_deref().expect("a lost task is replaced");
        let replacement = ts.iter().find(|t| t.id == by).expect("the replacement exists");
        assert_eq!((replacement.attempt, replacement.retries_used), (lost.attempt + 1, 0), "system failure: free");
    }

    // Scale down; the surplus is killed by its agents.
    client.set_instances(&job, &[("dc1".to_string(), 3)].into(), None).await.expect("scaled");
    eventually(Duration::from_secs(15), "three running, three killed", || async {
        let ts = tasks(&client, &job).await;
        let killed = ts.iter().filter(|t| t.state == TaskState::Killed && t.reason == Some(Reason::ScaledDown));
        running(&ts).len() == 3 && killed.count() == 3
    })
    .await;

    // The leader dies; a new one carries on and scales the job up.
    cell.member(leader).kill();
    let leader = cell.leader(Duration::from_secs(20)).await;
    let client = cell.member(leader).client();
    client.set_instances(&job, &[("dc1".to_string(), 5)].into(), None).await.expect("scaled up");
    eventually(Duration::from_secs(20), "five running after the leader change", || async {
        running(&tasks(&client, &job).await).len() == 5
    })
    .await;

    // A user kills one task: it is replaced.
    let one = running(&tasks(&client, &job).await)[0].id.clone();
    let killed = client.kill_task(&one).await.expect("kill accepted");
    assert_eq!(killed.id, one);
    eventually(Duration::from_secs(15), "the killed task replaced", || async {
        let ts = tasks(&client, &job).await;
        let gone = ts.iter().any(|t| t.id == one && t.state == TaskState::Killed);
        gone && running(&ts).len() == 5 && ts.iter().any(|t| t.replaces.as_deref() == Some(one.as_str()))
    })
    .await;
    let err = client.kill_task(&one).await.expect_err("a killed task cannot be killed again");
    assert_eq!(err.code(), Some(titan_api::ErrorCode::Conflict));
    launched_once(&record);
    assert_eq!(*record.refused.lock().expect("refused"), 0, "no plan carried a wrong epoch");

    // Killing the job stops everything.
    client.kill_job(&job).await.expect("job killed");
    eventually(Duration::from_secs(15), "every task ended", || async {
        let ts = tasks(&client, &job).await;
        !ts.is_empty() && ts.iter().all(|t| t.state.is_terminal())
    })
    .await;
    launched_once(&record);
}

fn tasks_on(ts: &[TaskView], agent: &str) -> usize {
    ts.iter().filter(|t| t.agent_id.as_deref() == Some(agent)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_tasks_say_why_and_bad_task_requests_are_refused() {
    let cell = Cluster::start_with(1, &config());
    let client = cell.members[0].client();
    cell.leader(Duration::from_secs(20)).await;
    let record = Arc::new(Record::default());
    let _agent = sim::start(vec![cell.members[0].addr.to_string()], sim::registration("small", 1.0, 1024, "a"), record);
    eventually(Duration::from_secs(10), "the agent registered", || async {
        client.list_agents().await.map(|a| a.len() == 1).unwrap_or(false)
    })
    .await;
    let job = client.submit_raw(job_spec(3), BodyFormat::Json, None).await.expect("submitted").id;
    eventually(Duration::from_secs(10), "one running, two pending with a reason", || async {
        let ts = tasks(&client, &job).await;
        let pending: Vec<&TaskView> = ts.iter().filter(|t| t.state == TaskState::Accepted).collect();
        running(&ts).len() == 1 && pending.len() == 2 && pending.iter().all(|t| t.pending.is_some())
    })
    .await;
    let ts = tasks(&client, &job).await;
    let why = ts.iter().find_map(|t| t.pending.clone()).unwrap_or_default();
    assert!(why.contains("cpu"), "{why}");
    let summary = client.get_job(&job).await.expect("job").tasks.expect("a task summary");
    assert_eq!((summary.by_state.get("accepted"), summary.by_state.get("running")), (Some(&2), Some(&1)));
    assert_eq!(summary.pending.len(), 2, "{summary:?}");

    // Bad input: each names its field, nothing changes.
    let http = reqwest::Client::new();
    let base = format!("http://{}", cell.members[0].addr);
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (http.get(format!("{base}/v1/tasks?state=sleeping")), 400, "state"),
        (http.get(format!("{base}/v1/tasks?limit=0")), 400, "limit"),
        (http.get(format!("{base}/v1/agents/small/assignments?after=1&waitMs=999999")), 400, "waitMs"),
        (
            http.post(format!("{base}/v1/agents/small/status"))
                .header("content-type", "application/json")
                .body(r#"{"leaseEpoch":1,"statuses":[{"taskId":"x","state":"lost","atMs":1}]}"#),
            400,
            "statuses[0].state",
        ),
        (
            http.post(format!("{base}/v1/agents/small/status"))
                .header("content-type", "application/json")
                .body(r#"{"leaseEpoch":99,"statuses":[]}"#),
            409,
            "leaseEpoch",
        ),
    ];
    for (req, status, field) in cases {
        let resp = req.send().await.expect("answered");
        assert_eq!(resp.status().as_u16(), status, "{field}");
        let body: serde_json::Value = resp.json().await.expect("an error body");
        assert_eq!(body["field"], field, "{body}");
    }
    let missing = client.get_task("no-such-task").await.expect_err("404");
    assert_eq!(missing.code(), Some(titan_api::ErrorCode::NotFound));
    assert_eq!(running(&tasks(&client, &job).await).len(), 1, "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_and_rolling_updates_move_tasks_within_the_disruption_budget() {
    let cell = Cluster::start_with(1, &config());
    let client = cell.members[0].client();
    cell.leader(Duration::from_secs(20)).await;
    let record = Arc::new(Record::default());
    let addr = vec![cell.members[0].addr.to_string()];
    let _agents: Vec<sim::SimAgent> = (0..3)
        .map(|i| sim::start(addr.clone(), sim::registration(&format!("d-{i}"), 4.0, 8192, "a"), record.clone()))
        .collect();
    eventually(Duration::from_secs(10), "agents registered", || async {
        client.list_agents().await.map(|a| a.len() == 3).unwrap_or(false)
    })
    .await;
    let body = r#"{"name":"web","applicationName":"shop","location":"dc1:6","cpus":1,"memory":512,"image":"busybox",
        "disruptionBudget":{"maxUnavailable":1}}"#;
    let job = client.submit_raw(body.as_bytes().to_vec(), BodyFormat::Json, None).await.expect("submitted").id;
    eventually(Duration::from_secs(15), "six running", || async { running(&tasks(&client, &job).await).len() == 6 })
        .await;
    // The busiest agent (bin packing fills one first) is drained; the other two have room for everything.
    let ts = tasks(&client, &job).await;
    let busiest = ["d-0", "d-1", "d-2"].into_iter().max_by_key(|a| tasks_on(&ts, a)).unwrap_or("d-0");
    assert!(tasks_on(&ts, busiest) >= 2, "{ts:?}");
    let drained = client.set_agent_draining(busiest, true).await.expect("drain");
    assert_eq!(drained.state, titan_api::agent::AgentState::Draining);
    let mut least = 6;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ts = tasks(&client, &job).await;
        let run = running(&ts);
        least = least.min(run.len());
        let on_drained = ts.iter().filter(|t| !t.state.is_terminal() && t.agent_id.as_deref() == Some(busiest));
        if on_drained.count() == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the drain did not finish: {ts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(least >= 5, "the budget allows one unavailable at a time, saw {least} running");
    let ts = tasks(&client, &job).await;
    assert!(ts.iter().any(|t| t.reason == Some(Reason::Drained)));
    eventually(Duration::from_secs(10), "the agent drained", || async {
        client.get_agent(busiest).await.map(|a| a.state == titan_api::agent::AgentState::Drained).unwrap_or(false)
    })
    .await;
    // The agent is drained once nothing is left on it; the last replacement may still be starting elsewhere.
    eventually(Duration::from_secs(10), "six running after the drain", || async {
        running(&tasks(&client, &job).await).len() == 6
    })
    .await;
    let back = client.set_agent_draining(busiest, false).await.expect("enable");
    assert_eq!(back.state, titan_api::agent::AgentState::Active);

    // A new version of the spec rolls the tasks over, one unavailable at a time.
    let mut spec = client.get_job(&job).await.expect("job").spec;
    spec.env.insert("VERSION".into(), "2".into());
    let updated = client.update_job(&job, &spec, None).await.expect("updated");
    let mut least = 6;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ts = tasks(&client, &job).await;
        let run = running(&ts);
        least = least.min(run.len());
        if run.len() == 6 && run.iter().all(|t| t.job_version == updated.version) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the rolling update did not finish: {ts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(least >= 5, "the budget allows one unavailable at a time, saw {least} running");
    let ts = tasks(&client, &job).await;
    assert!(ts.iter().filter(|t| t.reason == Some(Reason::Superseded)).count() >= 6);
    launched_once(&record);
}

/// Reads server-sent events until `enough` says stop or the time is up; returns (id, event, data) triples.
async fn read_events(
    resp: reqwest::Response,
    within: Duration,
    enough: impl Fn(&[(u64, String, serde_json::Value)]) -> bool,
) -> Vec<(u64, String, serde_json::Value)> {
    let mut resp = resp;
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while !enough(&out) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk()).await;
        let Ok(Ok(Some(bytes))) = chunk else { break };
        buf.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (0, String::new(), serde_json::Value::Null);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().unwrap_or(0);
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str(v.trim()).unwrap_or(serde_json::Value::Null);
                }
            }
            if id > 0 {
                out.push((id, event, data));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_job_task_and_agent_changes_and_resume_from_an_index() {
    let cell = Cluster::start_with(1, &config());
    cell.leader(Duration::from_secs(20)).await;
    let client = cell.members[0].client();
    let base = format!("http://{}", cell.members[0].addr);
    let http = reqwest::Client::new();
    let all = http.get(format!("{base}/v1/events?from=0")).send().await.expect("stream opens");
    assert_eq!(all.status().as_u16(), 200);
    let record = Arc::new(Record::default());
    let _agent = sim::start(vec![cell.members[0].addr.to_string()], sim::registration("e-1", 4.0, 8192, "a"), record);
    eventually(Duration::from_secs(10), "the agent registered", || async {
        client.list_agents().await.map(|a| a.len() == 1).unwrap_or(false)
    })
    .await;
    let job = client.submit_raw(job_spec(2), BodyFormat::Json, None).await.expect("submitted").id;
    let running = |es: &[(u64, String, serde_json::Value)]| {
        es.iter().filter(|(_, topic, d)| topic == "task" && d["kind"] == "running").count()
    };
    let seen = read_events(all, Duration::from_secs(15), |es| running(es) == 2).await;
    assert_eq!(running(&seen), 2, "{seen:?}");
    let kinds = |topic: &str| -> Vec<String> {
        seen.iter()
            .filter(|(_, t, _)| t == topic)
            .map(|(_, _, d)| d["kind"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(kinds("agent"), vec!["registered"]);
    assert_eq!(kinds("job"), vec!["created"]);
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "indexes never go back");
    assert!(seen.iter().filter(|(_, t, _)| t == "task").all(|(_, _, d)| d["jobId"] == job.as_str()));

    // Resume after the job's creation, only this job's task events, through Last-Event-ID.
    let created = seen.iter().find(|(_, t, _)| t == "job").map(|(id, _, _)| *id).expect("created");
    let resumed = http
        .get(format!("{base}/v1/events?topic=task&job={job}"))
        .header("last-event-id", created.to_string())
        .send()
        .await
        .expect("stream opens");
    let again = read_events(resumed, Duration::from_secs(10), |es| running(es) == 2).await;
    assert_eq!(running(&again), 2);
    assert!(again.iter().all(|(id, t, _)| *id > created && t == "task"));

    let bad = http.get(format!("{base}/v1/events?topic=tasks")).send().await.expect("answered");
    assert_eq!(bad.status().as_u16(), 400);
    let body: serde_json::Value = bad.json().await.expect("an error body");
    assert_eq!(body["field"], "topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_batch_job_starts_a_run_at_its_next_tick() {
    let cell = Cluster::start_with(1, &config());
    cell.leader(Duration::from_secs(20)).await;
    let client = cell.members[0].client();
    let record = Arc::new(Record::default());
    let _agent = sim::start(vec![cell.members[0].addr.to_string()], sim::registration("c-1", 4.0, 8192, "a"), record);
    let body = r#"{"name":"nightly","applicationName":"shop","location":"dc1:2","cpus":1,"memory":256,
        "image":"busybox","type":"batch","schedule":"* * * * *"}"#;
    let job = client.submit_raw(body.as_bytes().to_vec(), BodyFormat::Json, None).await.expect("submitted").id;
    assert!(tasks(&client, &job).await.is_empty(), "nothing runs before the first tick");
    // The next minute boundary starts a run of both instances.
    eventually(Duration::from_secs(75), "a run started at the tick", || async {
        running(&tasks(&client, &job).await).len() == 2
    })
    .await;
    let view = client.get_job(&job).await.expect("job");
    let run = view.current_run_ms.expect("a current run");
    assert_eq!(run % 60_000, 0, "runs start on the minute");
    let history = client.job_history(&job).await.expect("history");
    assert_eq!(history.len(), 1, "a tick is not a change of the job's spec");
}

/// The lease grows with the fleet so that the whole fleet beats within `max_heartbeats_per_second`, and a
/// follower passes its agents' beats on to the leader gathered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_grows_with_the_fleet_and_a_follower_forwards_beats_gathered() {
    // 60 agents beating three times a lease at most 18 times a second: a lease of 10 s, not 1 s.
    let config = format!("{TEST_CONFIG}[scheduler]\nlease_ms = 1000\nmax_heartbeats_per_second = 18\n");
    let mut cell = Cluster::start_with(3, &config);
    let leader = cell.leader(Duration::from_secs(20)).await;
    let follower = cell.members.iter().find(|m| m.id != leader).expect("a follower");
    let (follower_addr, follower_client) = (follower.addr.to_string(), follower.client());
    let record = Arc::new(Record::default());
    let agents: Vec<sim::SimAgent> = (0..60)
        .map(|i| {
            let reg = sim::registration(&format!("l-{i:02}"), 4.0, 8192, "a");
            sim::start(vec![follower_addr.clone()], reg, record.clone())
        })
        .collect();
    let client = cell.member(leader).client();
    eventually(Duration::from_secs(20), "sixty agents registered and heard", || async {
        client.list_agents().await.is_ok_and(|a| a.len() == 60 && a.iter().all(|a| a.last_heartbeat_ms.is_some()))
    })
    .await;
    // Every agent is now told the grown lease, through the follower.
    let lease = follower_client.heartbeat("l-00", 1).await;
    assert_eq!(lease.map(|l| l.lease_ms).ok(), Some(10_000), "the lease for 60 agents at 18 beats a second");
    let metrics = format!("http://{}/metrics", cell.member(leader).addr);
    eventually(Duration::from_secs(5), "the lease gauge at 10 s", || async {
        let text = async { reqwest::get(&metrics).await?.text().await }.await.unwrap_or_default();
        text.lines().any(|l| l.starts_with("titan_agent_lease_seconds{") && l.ends_with(" 10"))
    })
    .await;
    // The follower sent every beat on (each agent beat at least once after registering), in fewer calls or as many.
    let view = follower_client.cluster().await.expect("cluster view");
    let worker = view.workers.iter().find(|w| w.name == "heartbeats").expect("the heartbeats worker");
    let numbers: Vec<u64> = worker.status.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert!(numbers.len() == 2 && numbers[0] >= 60 && numbers[1] <= numbers[0], "{worker:?}");
    drop(agents);
}
