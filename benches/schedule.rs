//! End-to-end scheduling throughput: tasks per second from submission to Running, against a real 3-member cell on
//! loopback, with agents simulated in this process (a no-op runtime speaking the real agent protocol: register,
//! heartbeat, long-poll assignments, batched status reports).
//!
//! `cargo bench --bench schedule [-- TASKS AGENTS [TASKS AGENTS ...]]` (default: 100000 1000 and 100000 5000).
//! `cargo bench --bench schedule -- --bench --rest [AGENTS [MEMBERS [LEASE_MS]]]` (default 50000 3 10000): a fleet at
//! rest too large for one process's open files, simulated by child processes of this bench (`--sims`).
//! For each pair it starts a fresh cell, starts the agents, waits until all are registered, submits
//! TASKS / 1000 jobs of 1000 instances each (one cpu, 1 GiB), and waits until every task is Running. It prints
//! one line per pair:
//! `tasks=100000 agents=1000 running=100000 wall_s=... tasks_per_s=... p50_s=... p99_s=... leader_rss_mib=...`
//! where p50/p99 are of the time from a task's own job's submission to its first Running report
//! (`p99_from_first_s`: from the first job's, as this bench measured it before), with the CPU the members and the
//! bench itself used, and the idle cost: leader CPU per second and RSS, and the bench's CPU per second, over
//! `IDLE_SECONDS` with every agent registered and nothing to place, with the latency of a status read every 200 ms
//! meanwhile (`idle_api_*`) and the slowest submission (`submit_max_ms`). Each pair is bounded
//! by a deadline; the members are killed at the end. Under `cargo test` a smoke run schedules 500 tasks on 20
//! agents.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sim::{self, Record};
use common::{Cluster, BENCH_CONFIG};
use titan_api::job::BodyFormat;
use titan_api::Client;

/// Instances per job.
const PER_JOB: usize = 1000;
/// No pair runs longer than this.
const CAP: Duration = Duration::from_secs(600);
/// How long the fleet is watched at rest (registered, nothing to do) before the submissions.
const IDLE_SECONDS: u64 = 10;

fn spec(i: usize, count: usize) -> Vec<u8> {
    format!(
        r#"{{"name":"bench-{i}","applicationName":"bench","location":"dc1:{count}","cpus":1,"memory":1024,"image":"registry.local/bench:1"}}"#
    )
    .into_bytes()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Simulated agent number `i`, named `id`, in zone a, b or c by turn: it talks to one member first (spreading the
/// long-polls), the others as fallbacks.
fn start_agent(
    i: usize,
    id: &str,
    addrs: &[String],
    http: &reqwest::Client,
    cpus: f64,
    record: &Arc<Record>,
) -> sim::SimAgent {
    let clients: Vec<Client> =
        (0..addrs.len()).map(|k| Client::with_http(&addrs[(i + k) % addrs.len()], http.clone())).collect();
    let reg = sim::registration(id, cpus, cpus as u64 * 1024 + 1024, ["a", "b", "c"][i % 3]);
    sim::start_with(clients, reg, record.clone())
}

/// While the fleet is at rest, the cluster's status is read every 200 ms for `idle`: a fleet at rest must not crowd
/// out the API. The latencies in ms, sorted; a failed read counts as infinite.
async fn status_reads(client: &Client, idle: Duration) -> Vec<f64> {
    let mut ms = Vec::new();
    let until = Instant::now() + idle;
    while Instant::now() < until {
        let t = Instant::now();
        let ok = client.cluster().await.is_ok();
        ms.push(if ok { t.elapsed().as_secs_f64() * 1000.0 } else { f64::INFINITY });
        tokio::time::sleep(Duration::from_millis(200).min(until.saturating_duration_since(Instant::now()))).await;
    }
    ms.sort_by(f64::total_cmp);
    ms
}

/// HTTP requests the members answered so far, summed over them, by route (`titan_http_requests_total`).
async fn requests(cell: &Cluster) -> std::collections::BTreeMap<String, f64> {
    let http = reqwest::Client::new();
    let mut by_route = std::collections::BTreeMap::new();
    for m in &cell.members {
        let Ok(text) = async { http.get(format!("http://{}/metrics", m.addr)).send().await?.text().await }.await else {
            continue;
        };
        for line in text.lines().filter(|l| l.starts_with("titan_http_requests_total{")) {
            let route = line.split("route=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?");
            let n: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
            *by_route.entry(route.to_string()).or_insert(0.0) += n;
        }
    }
    by_route
}

async fn pair(tasks: usize, agents: usize, idle: Duration) {
    // Agents beat every lease/3; the bench keeps the default 10 s lease.
    let config = format!("{BENCH_CONFIG}\n[scheduler]\nmax_lost_agents_per_minute = 0\n");
    let mut cell = Cluster::start_with(3, &config);
    let leader = cell.leader(Duration::from_secs(30)).await;
    let addrs: Vec<String> = cell.members.iter().map(|m| m.addr.to_string()).collect();
    let http = reqwest::Client::builder().pool_max_idle_per_host(4096).build().expect("http client");
    let record = Arc::new(Record::default());
    // Enough room for every task with some to spare: fenzo still has to choose.
    let cpus = ((tasks as f64 * 1.25) / agents as f64).ceil().max(2.0);
    let mut sims = Vec::with_capacity(agents);
    for i in 0..agents {
        sims.push(start_agent(i, &format!("sim-{i:05}"), &addrs, &http, cpus, &record));
    }
    let client = cell.member(leader).client();
    let deadline = Instant::now() + CAP;
    loop {
        if client.list_agents().await.map(|a| a.len() == agents).unwrap_or(false) {
            break;
        }
        assert!(Instant::now() < deadline, "agents did not all register");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leader_pid = cell.member(leader).pid().unwrap_or(0);
    // The fleet at rest: every agent registered, heartbeating and long-polling, nothing to place.
    let (leader_before, bench_before) = (common::cpu_seconds(leader_pid), common::cpu_seconds(std::process::id()));
    let api_ms = status_reads(&client, idle).await;
    assert!(api_ms.iter().all(|ms| ms.is_finite()), "cluster status while at rest");
    let idle_leader_cpu = (common::cpu_seconds(leader_pid) - leader_before) / idle.as_secs_f64();
    let idle_bench_cpu = (common::cpu_seconds(std::process::id()) - bench_before) / idle.as_secs_f64();
    let idle_leader_rss = common::rss_mib(leader_pid);
    let requests_before = requests(&cell).await;
    let cpu_before: Vec<f64> = cell.members.iter().map(|m| common::cpu_seconds(m.pid().unwrap_or(0))).collect();
    let bench_cpu_before = common::cpu_seconds(std::process::id());

    eprintln!("agents registered; submitting (leader pid {leader_pid})");
    let start = Instant::now();
    let jobs = tasks.div_ceil(PER_JOB);
    let mut submitted_at = std::collections::HashMap::with_capacity(jobs);
    let mut first = None;
    let mut submit_max = 0f64;
    for j in 0..jobs {
        let count = PER_JOB.min(tasks - j * PER_JOB);
        let t = Instant::now();
        let job = client.submit_raw(spec(j, count), BodyFormat::Json, None).await.expect("job submitted");
        submit_max = submit_max.max(t.elapsed().as_secs_f64());
        first.get_or_insert(t);
        submitted_at.insert(job.id, t);
    }
    let submit_s = start.elapsed().as_secs_f64();
    let mut running = 0;
    while Instant::now() < deadline {
        running = record.running_at.lock().expect("running_at").len();
        if running >= tasks {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wall = start.elapsed().as_secs_f64();
    let leader_rss = common::rss_mib(leader_pid);
    let cpu: Vec<f64> = cell
        .members
        .iter()
        .zip(&cpu_before)
        .map(|(m, before)| common::cpu_seconds(m.pid().unwrap_or(0)) - before)
        .collect();
    let bench_cpu = common::cpu_seconds(std::process::id()) - bench_cpu_before;
    let mut during = requests(&cell).await;
    for (route, n) in &requests_before {
        *during.entry(route.clone()).or_insert(0.0) -= n;
    }
    // Latency of each task from its own job's submission (its assignment names the job); and, as earlier versions
    // of this bench measured it, from the first job's submission.
    let first = first.unwrap_or(start);
    let (mut lat, mut from_first) = (Vec::new(), Vec::new());
    {
        let running_at = record.running_at.lock().expect("running_at");
        let job_of = record.job_of.lock().expect("job_of");
        for (task, at) in running_at.iter() {
            let submitted = job_of.get(task).and_then(|j| submitted_at.get(j)).copied().unwrap_or(first);
            lat.push(at.saturating_duration_since(submitted).as_secs_f64());
            from_first.push(at.saturating_duration_since(first).as_secs_f64());
        }
    }
    lat.sort_by(f64::total_cmp);
    from_first.sort_by(f64::total_cmp);
    let launches = record.launches.lock().expect("launches").len();
    println!(
        "tasks={tasks} agents={agents} running={running} launches={launches} wall_s={wall:.2} submit_s={submit_s:.2} \
         tasks_per_s={:.0} p50_s={:.2} p99_s={:.2} p99_from_first_s={:.2} leader_rss_mib={leader_rss} \
         cpu_s_leader={:.1} cpu_s_members={:?} cpu_s_bench={bench_cpu:.1} idle_leader_cpu_per_s={idle_leader_cpu:.3} \
         idle_leader_rss_mib={idle_leader_rss} idle_bench_cpu_per_s={idle_bench_cpu:.3} idle_api_p99_ms={:.1} \
         idle_api_max_ms={:.1} submit_max_ms={:.0} requests={:?}",
        running as f64 / wall,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&from_first, 0.99),
        cpu.get(cell.members.iter().position(|m| m.id == leader).unwrap_or(0)).copied().unwrap_or(0.0),
        cpu.iter().map(|c| (c * 10.0).round() / 10.0).collect::<Vec<_>>(),
        percentile(&api_ms, 0.99),
        api_ms.last().copied().unwrap_or(0.0),
        submit_max * 1000.0,
        during.iter().filter(|(_, n)| **n >= 1.0).map(|(r, n)| format!("{r}:{n}")).collect::<Vec<_>>(),
    );
    drop(sims);
    for m in cell.members.iter_mut() {
        m.kill();
    }
}

/// Agents one simulating process hosts in `--rest` runs: each holds about 1.5 connections (a long-poll and a
/// heartbeat or report), so 8,000 stay inside a 20,000 open-file limit.
const AGENTS_PER_PROCESS: usize = 8_000;

/// A child of a `--rest` run: simulated agents `from..from + count` against the members `addrs` until killed.
async fn host_agents(addrs: Vec<String>, from: usize, count: usize, cpus: f64) {
    // Few idle connections kept: at rest a process's beats to one member are about one at a time, and a pool of
    // thousands per process and member (as the one-process pairs keep) would fill the members' open files.
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("http client");
    let record = Arc::new(Record::default());
    let mut sims = Vec::with_capacity(count);
    for i in from..from + count {
        sims.push(start_agent(i, &format!("sim-{i:06}"), &addrs, &http, cpus, &record));
        if i % 500 == 0 {
            // Registrations spread over a few seconds rather than all at once.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(CAP).await;
}

/// A fleet at rest at a size one process cannot simulate: `AGENTS` agents over child processes of this bench,
/// registered with a cell of `MEMBERS` members whose lease is at least `LEASE_MS` (it grows with the fleet). Prints
/// the leader's CPU per second and RSS at rest, the API's latency meanwhile, and a submission's latency.
async fn rest(agents: usize, members: u64, lease_ms: u64) {
    let config = format!("{BENCH_CONFIG}\n[scheduler]\nmax_lost_agents_per_minute = 0\nlease_ms = {lease_ms}\n");
    let mut cell = Cluster::start_with(members, &config);
    let leader = cell.leader(Duration::from_secs(30)).await;
    let addrs: Vec<String> = cell.members.iter().map(|m| m.addr.to_string()).collect();
    let exe = std::env::current_exe().expect("this bench's path");
    let mut children: Vec<common::KillOnDrop> = (0..agents.div_ceil(AGENTS_PER_PROCESS))
        .map(|p| {
            let from = p * AGENTS_PER_PROCESS;
            let count = AGENTS_PER_PROCESS.min(agents - from);
            let child = std::process::Command::new(&exe)
                .args(["--sims", &addrs.join(","), &from.to_string(), &count.to_string()])
                .spawn()
                .expect("a simulating process starts");
            common::KillOnDrop(child)
        })
        .collect();
    let client = cell.member(leader).client();
    let started = Instant::now();
    let deadline = started + CAP;
    let mut registered = 0;
    // Counted from the leader's `titan_agents` gauge: listing tens of thousands of agents every second would be a
    // load of its own.
    let http = reqwest::Client::new();
    let metrics = format!("http://{}/metrics", cell.member(leader).addr);
    while Instant::now() < deadline {
        if let Ok(text) = async { http.get(&metrics).send().await?.text().await }.await {
            registered = text
                .lines()
                .filter(|l| l.starts_with("titan_agents{") && !l.contains("state=\"unreachable\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as usize;
        }
        if registered >= agents {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let register_s = started.elapsed().as_secs_f64();
    // The lease the fleet was given (it grows with the fleet beyond `LEASE_MS`, see `lease`): a lease's worth of
    // beats from everyone before the fleet counts as at rest.
    let lease_ms = async { http.get(&metrics).send().await?.text().await }
        .await
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("titan_agent_lease_seconds{"))?;
            line.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .map_or(lease_ms, |s| (s * 1000.0) as u64);
    tokio::time::sleep(Duration::from_millis(lease_ms)).await;
    let leader_pid = cell.member(leader).pid().unwrap_or(0);
    let before = common::cpu_seconds(leader_pid);
    let idle = Duration::from_secs(IDLE_SECONDS * 2);
    let api_ms = status_reads(&client, idle).await;
    let idle_cpu = (common::cpu_seconds(leader_pid) - before) / idle.as_secs_f64();
    let idle_rss = common::rss_mib(leader_pid);
    // Agents the leader heard from within the last lease.
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let beating = client
        .list_agents()
        .await
        .map(|a| a.iter().filter(|a| a.last_heartbeat_ms.is_some_and(|t| now_ms.saturating_sub(t) <= lease_ms)).count())
        .unwrap_or(0);
    let t = Instant::now();
    let submitted = client.submit_raw(spec(0, 1000), BodyFormat::Json, None).await.is_ok();
    let submit_ms = t.elapsed().as_secs_f64() * 1000.0;
    let member_rss: Vec<u64> = cell.members.iter().map(|m| common::rss_mib(m.pid().unwrap_or(0))).collect();
    println!(
        "agents={agents} members={members} lease_ms={lease_ms} registered={registered} register_s={register_s:.1} \
         beating={beating} idle_leader_cpu_per_s={idle_cpu:.3} idle_leader_rss_mib={idle_rss} \
         member_rss_mib={member_rss:?} idle_api_p50_ms={:.1} idle_api_p99_ms={:.1} idle_api_max_ms={:.1} \
         submitted={submitted} submit_ms={submit_ms:.0}",
        percentile(&api_ms, 0.5),
        percentile(&api_ms, 0.99),
        api_ms.last().copied().unwrap_or(0.0),
    );
    children.clear();
    for m in cell.members.iter_mut() {
        m.kill();
    }
}

fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = all.iter().position(|a| a == "--sims") {
        let addrs: Vec<String> = all[at + 1].split(',').map(str::to_string).collect();
        let (from, count) = (all[at + 2].parse().expect("FROM"), all[at + 3].parse().expect("COUNT"));
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        runtime.block_on(host_agents(addrs, from, count, 4.0));
        return;
    }
    if let Some(at) = all.iter().position(|a| a == "--rest") {
        let num = |k: usize, default: u64| all.get(at + k).and_then(|a| a.parse().ok()).unwrap_or(default);
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        runtime.block_on(rest(num(1, 50_000) as usize, num(2, 3), num(3, 10_000)));
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let smoke = !std::env::args().any(|a| a == "--bench");
    let pairs: Vec<(usize, usize)> = if smoke {
        vec![(500, 20)]
    } else if args.len() >= 2 {
        args.chunks(2).filter_map(|c| Some((c[0].parse().ok()?, c.get(1)?.parse().ok()?))).collect()
    } else {
        vec![(100_000, 1_000), (100_000, 5_000)]
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    for (tasks, agents) in pairs {
        let idle = Duration::from_secs(if smoke { 1 } else { IDLE_SECONDS });
        runtime.block_on(pair(tasks, agents, idle));
    }
}
