//! Location levers on loopback: three single-member cells (`titan server` processes) with simulated agents, TASKS
//! instances in dc1 to evacuate and room for them in dc2 and dc3.
//!
//! `cargo bench --bench failover [-- TASKS]` (default 10000; jobs of 100 instances in dc1 and 10 in dc2 and dc3, so
//! each job's instances split evenly). Three moves, each timed from the lever by phase:
//! - decide: the plan (quota room, and a trial placement in each target's cell), timed by a dry run;
//! - commit: the lever's answer, less the dry run;
//! - replicate: until dc2 and dc3 both hold the lever;
//! - place: until the targets' agents were handed every moved instance;
//! - run: until every moved instance runs there;
//! - and until dc1 is `evacuated` (live: its own tasks stopped, make-before-break) or `active` again (restore).
//! 1. live evacuation of dc1; 2. restore of dc1 (its tasks run again, then the extras stop); 3. dc1's member killed,
//! then evacuated through dc2 (counts move at once), restarted, and restored.
//! Every wait is bounded; the processes are killed at the end. Under `cargo test` a smoke run moves 200 instances.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sim::{self, Record, SimAgent};
use common::Cluster;
use titan_api::location::LeverKind;
use titan_api::Client;

const CELLS: [&str; 3] = ["dc1", "dc2", "dc3"];
const PER_JOB: usize = 100;
const CAP: Duration = Duration::from_secs(300);

fn federation() -> BTreeMap<&'static str, Cluster> {
    let mut cells: BTreeMap<&str, Cluster> =
        CELLS.iter().map(|c| (*c, Cluster::configure_cell(c, 1, common::BENCH_CONFIG))).collect();
    let addrs: BTreeMap<&str, String> = cells.iter().map(|(n, c)| (*n, c.addrs())).collect();
    for (name, cell) in cells.iter_mut() {
        let others: Vec<String> =
            addrs.iter().filter(|(n, _)| *n != name).map(|(n, a)| format!("{n} = [\"{a}\"]")).collect();
        cell.config = format!("{}[federation]\ncells = {{ {} }}\n", common::BENCH_CONFIG, others.join(", "));
        cell.restart(1);
    }
    cells
}

fn spec(i: usize, per_job: usize) -> Vec<u8> {
    let home = per_job / 10;
    format!(
        r#"{{"name":"move-{i}","applicationName":"bench","location":"dc1:{per_job},dc2:{home},dc3:{home}","cpus":0.1,"memory":16,"image":"busybox","disruptionBudget":{{"maxUnavailablePercent":10}}}}"#
    )
    .into_bytes()
}

fn count(record: &Record) -> (usize, usize) {
    (record.launches.lock().expect("launches").len(), record.running_at.lock().expect("running").len())
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) -> Option<f64> {
    let start = Instant::now();
    while start.elapsed() < CAP {
        if f().await {
            return Some(start.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    eprintln!("gave up waiting for {what} after {CAP:?}");
    None
}

async fn state_of(c: &Client, location: &str) -> String {
    c.get_location(location).await.map(|l| l.state).unwrap_or_default()
}

fn secs(t: Option<f64>) -> String {
    t.map_or("-".into(), |t| format!("{t:.2}"))
}

/// One move: the lever pulled through `via`, timed by phase against the targets' agents' `record`.
async fn timed(
    label: &str,
    via: &Client,
    watchers: &[Client],
    lever: LeverKind,
    moved: usize,
    targets: &Record,
    home_done: &str,
    home: Option<&Client>,
) {
    let t0 = Instant::now();
    let dry = via.pull_lever("dc1", lever, "bench", &[], true).await.expect("dry run");
    let decide = t0.elapsed().as_secs_f64();
    let (base_launches, base_running) = count(targets);
    let start = Instant::now();
    let answer = via.pull_lever("dc1", lever, "bench", &[], false).await.expect("lever");
    let answered = start.elapsed().as_secs_f64();
    let replicate = until("the targets hold the lever", async || {
        for w in watchers {
            if state_of(w, "dc1").await != answer.state {
                return false;
            }
        }
        true
    })
    .await
    .map(|t| t + answered);
    let after = start.elapsed().as_secs_f64();
    let place = until("every instance handed to an agent", async || count(targets).0 >= base_launches + moved)
        .await
        .map(|t| t + after);
    let run = until("every instance running", async || count(targets).1 >= base_running + moved)
        .await
        .map(|t| t + after);
    let watch = home.unwrap_or(via);
    let done = until(home_done, async || state_of(watch, "dc1").await == home_done).await.map(|t| t + after);
    println!(
        "{label}: instances={} planned={} left={} decide_s={decide:.2} commit_s={:.2} replicate_s={} place_s={} run_s={} \
         {home_done}_s={}",
        moved,
        dry.to_move,
        dry.left_behind,
        (answered - decide).max(0.0),
        secs(replicate),
        secs(place),
        secs(run),
        secs(done)
    );
}

async fn agents(
    cell: &Cluster,
    name: &str,
    n: usize,
    cpus: f64,
    record: &Arc<Record>,
    http: &reqwest::Client,
) -> Vec<SimAgent> {
    (0..n)
        .map(|i| {
            let clients = vec![Client::with_http(&cell.addrs(), http.clone())];
            let reg = sim::registration(&format!("{name}-{i:03}"), cpus, cpus as u64 * 1024, name);
            sim::start_with(clients, reg, record.clone())
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let smoke = !std::env::args().any(|a| a == "--bench");
    let tasks: usize = if smoke { 200 } else { args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000) };
    let per_job = PER_JOB.min(tasks);
    let jobs = tasks.div_ceil(per_job);
    let tasks = jobs * per_job;
    let mut cells = federation();
    for c in cells.values() {
        c.leader(Duration::from_secs(30)).await;
    }
    let http = reqwest::Client::builder().pool_max_idle_per_host(1024).build().expect("http client");
    // Each location can hold all of dc1's instances and its own with a quarter to spare.
    let per_agent = 400usize;
    let n = (tasks * 5 / 4).div_ceil(per_agent).max(1);
    let cpus = per_agent as f64 * 0.1 + 1.0;
    let home_record = Arc::new(Record::default());
    let target_record = Arc::new(Record::default());
    let _home_agents = agents(&cells["dc1"], "dc1", n, cpus, &home_record, &http).await;
    let _dc2 = agents(&cells["dc2"], "dc2", n, cpus, &target_record, &http).await;
    let _dc3 = agents(&cells["dc3"], "dc3", n, cpus, &target_record, &http).await;
    let dc1 = Client::with_http(&cells["dc1"].addrs(), http.clone());
    let dc2 = Client::with_http(&cells["dc2"].addrs(), http.clone());
    let dc3 = Client::with_http(&cells["dc3"].addrs(), http.clone());
    for i in 0..jobs {
        dc1.submit_raw(spec(i, per_job), titan_api::job::BodyFormat::Json, None).await.expect("submitted");
    }
    let own = jobs * (per_job / 10) * 2;
    until("every instance running", async || count(&home_record).1 >= tasks && count(&target_record).1 >= own)
        .await
        .expect("the jobs run");
    eprintln!("{tasks} instances in {jobs} jobs run in dc1 on {n} agents, {own} in dc2 and dc3 on {} agents", 2 * n);
    println!("conditions: 3 single-member cells and {} simulated agents on loopback, 2 cores shared", 3 * n);

    timed("live evacuate", &dc1, &[dc2.clone(), dc3.clone()], LeverKind::Evacuate, tasks, &target_record, "evacuated", None)
        .await;
    // A restore starts dc1's instances again: timed against dc1's own agents, until the location is active.
    timed("live restore", &dc1, &[dc2.clone(), dc3.clone()], LeverKind::Restore, tasks, &home_record, "active", None).await;

    cells.get_mut("dc1").expect("dc1").member(1).kill();
    timed("dead evacuate", &dc2, &[dc3.clone()], LeverKind::Evacuate, tasks, &target_record, "evacuated", Some(&dc2))
        .await;
    cells.get_mut("dc1").expect("dc1").restart(1);
    cells["dc1"].leader(Duration::from_secs(30)).await;
    // Back, dc1 learns it is evacuated and stops what it ran before; then it is restored.
    until("dc1 holds the evacuation", async || state_of(&dc1, "dc1").await == "evacuated").await;
    timed("restore after dead", &dc2, &[dc1.clone(), dc3.clone()], LeverKind::Restore, tasks, &home_record, "active", Some(&dc2))
        .await;
    for c in cells.values_mut() {
        c.member(1).kill();
    }
}
