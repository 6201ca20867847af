//! Location levers on loopback: three single-member cells (`titan server` processes) with simulated agents, TASKS
//! instances in dc1 to evacuate and room for them in dc2 and dc3.
//!
//! `cargo bench --bench failover [-- TASKS]` (default 10000; jobs of 100 instances in dc1 and 10 in dc2 and dc3, so
//! each job's instances split evenly). Three moves, each timed from the lever by phase:
//! - decide: the plan (quota room, and a trial placement in each target's cell), timed by a dry run;
//! - commit: the lever's answer (it plans again, then commits), less the dry run; the rest count from the lever:
//! - replicate: until dc2 and dc3 both hold the lever;
//! - place: until the cells that gain instances have every one placed (their `titan_tasks` gauges: assigned,
//!   starting or running);
//! - run: until all of them run;
//! - and until dc1 is `evacuated` (live: its own tasks stopped, make-before-break) or `active` again (restore).
//!
//! The moves: a live evacuation of dc1; its restore (its tasks run again, then the extras stop); dc1's member killed,
//! then evacuated through dc2 (counts move at once), restarted, and restored.
//!
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

/// Tasks of the cells at `addrs` (their `titan_tasks` gauges): placed (assigned, starting or running), running.
async fn tasks(http: &reqwest::Client, addrs: &[String]) -> (usize, usize) {
    let (mut placed, mut running) = (0.0, 0.0);
    for a in addrs {
        let Ok(r) = http.get(format!("http://{a}/metrics")).send().await else { continue };
        let text = r.text().await.unwrap_or_default();
        for state in ["assigned", "starting", "running"] {
            let n = common::metric(&text, "titan_tasks", &format!("state=\"{state}\""));
            placed += n;
            if state == "running" {
                running += n;
            }
        }
    }
    (placed as usize, running as usize)
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
    (http, counted, want): (&reqwest::Client, &[String], usize),
    home_done: &str,
    home: Option<&Client>,
) {
    let t0 = Instant::now();
    let dry = via.pull_lever("dc1", lever, "bench", &[], true).await.expect("dry run");
    let decide = t0.elapsed().as_secs_f64();
    let start = Instant::now();
    let answer = via.pull_lever("dc1", lever, "bench", &[], false).await.expect("lever");
    let answered = start.elapsed().as_secs_f64();
    let at = |ok: Option<f64>| ok.map(|_| start.elapsed().as_secs_f64());
    let replicate = at(until("the targets hold the lever", async || {
        for w in watchers {
            if state_of(w, "dc1").await != answer.state {
                return false;
            }
        }
        true
    })
    .await);
    let place = at(until("every instance handed to an agent", async || tasks(http, counted).await.0 >= want).await);
    let run = at(until("every instance running", async || tasks(http, counted).await.1 >= want).await);
    let watch = home.unwrap_or(via);
    let done = at(until(home_done, async || state_of(watch, "dc1").await == home_done).await);
    // The next lever starts once every cell holds this one's end.
    until("every cell holds the end of the move", async || {
        for w in watchers {
            if state_of(w, "dc1").await != home_done {
                return false;
            }
        }
        true
    })
    .await;
    println!(
        "{label}: running_wanted={want} planned={} left={} decide_s={decide:.2} commit_s={:.2} answer_s={answered:.2} (from the lever:) replicate_s={} \
         place_s={} run_s={} {home_done}_s={}",
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
    let asked: usize = if smoke { 200 } else { args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000) };
    let per_job = PER_JOB.min(asked);
    let jobs = asked.div_ceil(per_job);
    let total = jobs * per_job;
    let mut cells = federation();
    for c in cells.values() {
        c.leader(Duration::from_secs(30)).await;
    }
    let http = reqwest::Client::builder().pool_max_idle_per_host(1024).build().expect("http client");
    // Each location can hold all of dc1's instances and its own with a quarter to spare.
    let per_agent = 400usize;
    let n = (total * 5 / 4).div_ceil(per_agent).max(1);
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
    until("every instance running", async || {
        home_record.running_at.lock().expect("running").len() >= total
            && target_record.running_at.lock().expect("running").len() >= own
    })
    .await
    .expect("the jobs run");
    eprintln!("{total} instances in {jobs} jobs run in dc1 on {n} agents, {own} in dc2 and dc3 on {} agents", 2 * n);
    println!("conditions: 3 single-member cells and {} simulated agents on loopback, 2 cores shared", 3 * n);

    let addr = |c: &str| cells[c].addrs();
    let targets = [addr("dc2"), addr("dc3")];
    let home = [addr("dc1")];
    let watchers = [dc2.clone(), dc3.clone()];
    timed("live evacuate", &dc1, &watchers, LeverKind::Evacuate, (&http, &targets, own + total), "evacuated", None)
        .await;
    // A restore starts dc1's instances again (timed on dc1), until the location is active (the extras then stop).
    timed("live restore", &dc1, &watchers, LeverKind::Restore, (&http, &home, total), "active", None).await;

    cells.get_mut("dc1").expect("dc1").member(1).kill();
    let dc3_only = [dc3.clone()];
    timed(
        "dead evacuate",
        &dc2,
        &dc3_only,
        LeverKind::Evacuate,
        (&http, &targets, own + total),
        "evacuated",
        Some(&dc2),
    )
    .await;
    cells.get_mut("dc1").expect("dc1").restart(1);
    cells["dc1"].leader(Duration::from_secs(30)).await;
    // Back, dc1 learns it is evacuated and stops what it ran before; then it is restored.
    until("dc1 holds the evacuation", async || state_of(&dc1, "dc1").await == "evacuated").await;
    let all = [dc1.clone(), dc3.clone()];
    timed("restore after dead", &dc2, &all, LeverKind::Restore, (&http, &home, total), "active", Some(&dc2)).await;
    for c in cells.values_mut() {
        c.member(1).kill();
    }
}
