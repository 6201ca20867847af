//! The submit rate with quota admission against the same without quotas, on a cell holding many jobs.
//!
//! `cargo bench --bench quota [-- GROUPS JOBS SUBMITS CLIENTS]` (defaults 1000 100000 20000 64): for each of two
//! fresh single-member cells (four cells, alternated: without, with, with, without) (`titan server` on loopback, data under the temporary directory), preload `JOBS` jobs
//! spread over `GROUPS` capacity groups (not measured), then time `SUBMITS` submissions by `CLIENTS` concurrent
//! clients. The second cell first gets a quota for every group in 3 locations, with limits no submission reaches,
//! so every write is checked and admitted. Jobs ask for 1 instance in each of dc2, dc3 and dc4 (other cells'
//! locations: nothing is scheduled here), so admission has 3 locations to check. Prints one line per cell and the
//! ratio. Every phase is bounded in requests and time; the processes are killed at the end.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;

/// No phase runs longer than this.
const CAP: Duration = Duration::from_secs(120);

fn job(i: usize, groups: usize) -> Vec<u8> {
    format!(
        r#"{{"name":"q-{i}","applicationName":"bench","capacityGroup":"g{}","location":"dc2:1,dc3:1,dc4:1","cpus":0.5,"memory":256,"image":"registry.local/bench/app:1.2.3","command":["/app/server","--port","$PORT_0"]}}"#,
        i % groups
    )
    .into_bytes()
}

/// Submits jobs `from..to` with `clients` concurrent clients; the rate and the failures.
async fn submit(addr: &str, from: usize, to: usize, groups: usize, clients: usize) -> (f64, usize) {
    let next = Arc::new(AtomicUsize::new(from));
    let failed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, failed, url) = (next.clone(), failed.clone(), format!("http://{addr}/v1/jobs"));
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to || start.elapsed() > CAP {
                    break;
                }
                let ok = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(job(i, groups))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 201);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let done = next.load(Ordering::Relaxed).min(to) - from;
    (done as f64 / start.elapsed().as_secs_f64(), failed.load(Ordering::Relaxed))
}

async fn run(with_quotas: bool, groups: usize, jobs: usize, submits: usize, clients: usize) -> f64 {
    let mut cell = Cluster::configure_cell("dc1", 1, common::BENCH_CONFIG);
    cell.restart(1);
    cell.leader(Duration::from_secs(20)).await;
    let addr = cell.members[0].addr.to_string();
    if with_quotas {
        let client = cell.members[0].client();
        let limits = r#"{"instances": 1000000, "cpus": 1000000, "memoryMiB": 1000000000}"#;
        let body = format!(r#"{{"locations": {{"dc2": {limits}, "dc3": {limits}, "dc4": {limits}}}}}"#);
        let spec = titan_api::quota::QuotaSpec::parse(body.as_bytes()).expect("quota");
        for g in 0..groups {
            client.put_quota(&format!("g{g}"), &spec, None).await.expect("quota set");
        }
    }
    let (_, preload_failed) = submit(&addr, 0, jobs, groups, clients).await;
    let (rate, failed) = submit(&addr, jobs, jobs + submits, groups, clients).await;
    println!(
        "quotas={with_quotas} groups={groups} existing_jobs={jobs} submits={submits} clients={clients} rate_per_s={rate:.0} failed={} preload_failed={preload_failed}",
        failed
    );
    rate
}

#[tokio::main]
async fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let arg =
        |i: usize, default: usize, small: usize| args.get(i).copied().unwrap_or(if smoke { small } else { default });
    let (groups, jobs, submits, clients) = (arg(0, 1000, 10), arg(1, 100_000, 100), arg(2, 20_000, 100), arg(3, 64, 8));
    let dir = std::env::temp_dir();
    println!("data under {}; one member on loopback; jobs ask for dc2:1,dc3:1,dc4:1", dir.display());
    // Alternated (without, with, with, without), so neither side always runs on a machine the other warmed.
    let mut rates = [0.0, 0.0];
    for with_quotas in [false, true, true, false] {
        rates[usize::from(with_quotas)] += run(with_quotas, groups, jobs, submits, clients).await / 2.0;
    }
    println!(
        "mean rate without={:.0} with={:.0}; ratio with/without quotas = {:.2}",
        rates[0],
        rates[1],
        rates[1] / rates[0]
    );
}
