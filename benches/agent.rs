//! The agent's own figures with real Docker: memory at rest, and container start latency from the assignment
//! fetched to the container running (the agent's `titan_agent_task_start_seconds` histogram), plus submission to
//! Running as the cell sees it.
//!
//! `cargo bench --bench agent [-- TASKS]` (default 20) starts a 1-member cell and one `titan agent --runtime
//! docker` process on loopback, reads the agent's RSS once it is registered and idle, submits one job of TASKS
//! busybox containers, waits until all run, prints
//! `tasks=20 agent_rss_idle_mib=... agent_rss_running_mib=... start_mean_s=... start_p50_le_s=...
//! submit_to_running_s=...`, then kills the job and waits for the containers to go. Needs dockerd and the
//! `titan-test/busybox:latest` image (`scripts/deps`). Under `cargo test` it runs with 2 tasks.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Cluster, BENCH_CONFIG};
use titan_api::job::BodyFormat;
use titan_api::task::TaskQuery;

const CAP: Duration = Duration::from_secs(300);

async fn metrics(addr: &str) -> String {
    match reqwest::get(format!("http://{addr}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The smallest histogram bucket bound holding at least half the observations.
fn p50_bound(text: &str, name: &str) -> f64 {
    let count = value(text, &format!("{name}_count"));
    let prefix = format!("{name}_bucket{{le=\"");
    for l in text.lines().filter(|l| l.starts_with(&prefix)) {
        let le = &l[prefix.len()..];
        let bound = le.split('"').next().unwrap_or("+Inf");
        let n: f64 = l.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        if n * 2.0 >= count {
            return bound.parse().unwrap_or(f64::INFINITY);
        }
    }
    f64::NAN
}

async fn run(tasks: usize) {
    let cell = Cluster::start_with(1, BENCH_CONFIG);
    cell.leader(Duration::from_secs(30)).await;
    let client = cell.members[0].client();
    let dir = tempfile::tempdir().expect("temp dir");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut agent = Command::new(env!("CARGO_BIN_EXE_titan"))
        .args(["agent", "--cell-addr", &cell.members[0].addr.to_string(), "--runtime", "docker"])
        .args(["--publish-ip", "127.0.0.1", "--addr", &addr, "--cpus", "64", "--memory-mib", "65536"])
        .args(["--ports", "34000-34999"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("TITAN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start titan agent");
    let deadline = Instant::now() + CAP;
    while !client.list_agents().await.is_ok_and(|a| a.len() == 1) {
        assert!(Instant::now() < deadline, "the agent did not register");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // At rest: registered, heartbeating, long-polling, nothing to run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = common::rss_mib(agent.id());
    let spec = format!(
        r#"{{"name":"bench","applicationName":"bench","location":"dc1:{tasks}","cpus":0.1,"memory":32,"ports":1,
        "image":"titan-test/busybox:latest","command":["sh","-c","exec httpd -f -p $PORT_0"]}}"#
    );
    let start = Instant::now();
    let job = client.submit_raw(spec.into_bytes(), BodyFormat::Json, None).await.expect("submitted").id;
    let q =
        TaskQuery { job: Some(job.clone()), state: Some("running".into()), limit: Some(1000), ..Default::default() };
    loop {
        let n = client.list_tasks(&q).await.map(|l| l.tasks.len()).unwrap_or(0);
        if n == tasks {
            break;
        }
        assert!(Instant::now() < deadline, "only {n} of {tasks} running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let to_running = start.elapsed().as_secs_f64();
    let running = common::rss_mib(agent.id());
    let m = metrics(&addr).await;
    let name = "titan_agent_task_start_seconds";
    let mean = value(&m, &format!("{name}_sum")) / value(&m, &format!("{name}_count")).max(1.0);
    println!(
        "tasks={tasks} agent_rss_idle_mib={idle} agent_rss_running_mib={running} start_mean_s={mean:.3} \
         start_p50_le_s={} submit_to_running_s={to_running:.2}",
        p50_bound(&m, name)
    );
    client.kill_job(&job).await.expect("killed");
    let all = TaskQuery { job: Some(job), state: Some("active".into()), limit: Some(1000), ..Default::default() };
    while client.list_tasks(&all).await.is_ok_and(|l| !l.tasks.is_empty()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = agent.kill();
    let _ = agent.wait();
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let tasks = if smoke { 2 } else { std::env::args().skip(1).find_map(|a| a.parse::<usize>().ok()).unwrap_or(20) };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(run(tasks));
}
