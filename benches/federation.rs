//! Federation on loopback: three single-member cells (`titan server` processes), every job replicated to all.
//!
//! `cargo bench --bench federation [-- JOBS CLIENTS DOWN_SECONDS CATCH_UP_JOBS]` (defaults 20000 48 60 10000):
//! 1. `JOBS` job writes spread round-robin over the three cells by `CLIENTS` concurrent clients, as fast as they are
//!    taken: the aggregate rate, and the replication lag from each write's acknowledgement at its origin to its
//!    arrival in each other cell (seen on that cell's `/v1/events` stream), p50/p99/max.
//! 2. dc3 killed for `DOWN_SECONDS` while `CATCH_UP_JOBS` jobs are written to dc1 and dc2; then restarted: the time
//!    until it holds every one of them, and the bytes dc1 and dc2 pushed it for that (their
//!    `titan_federation_push_bytes_total{peer="dc3"}`), beside what a full copy of every job would be.
//! 3. The local submit rate of dc1 with the federation on, against a standalone cell holding as many jobs (preloaded,
//!    not measured) under the same load, and dc1's
//!    own CPU per 1,000 writes in each. On a small machine the three cells share the cores, so the rate falls with
//!    the receivers' work; the CPU per write is the origin cell's own cost. With `TITAN_BENCH_PIN=1` dc1 runs on
//!    CPU 0 and everything else on CPU 1 (`taskset`), in both runs.
//!
//! `TITAN_BENCH_FEDERATION="batch = 200;heartbeat_ms = 500"` adds `[federation]` settings to every cell.
//! Jobs ask for 0 instances everywhere by default (`TITAN_BENCH_LOCATION` to change it), so the figures are the
//! job store's and federation's, not the scheduler's. Every phase is bounded in jobs and in time; the processes are
//! killed at the end. Under `cargo test` (no `--bench`) it runs a small smoke version.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Cluster;

const CELLS: [&str; 3] = ["dc1", "dc2", "dc3"];

fn location() -> String {
    std::env::var("TITAN_BENCH_LOCATION").unwrap_or_else(|_| "dc1:0,dc2:0,dc3:0".into())
}

fn spec(prefix: &str, i: usize) -> Vec<u8> {
    let env: Vec<String> = (0..12).map(|k| format!(r#""VAR_{k}":"value-{k}-{i:08}-padding-padding""#)).collect();
    format!(
        r#"{{"name":"{prefix}-{i}","applicationName":"bench","owner":"bench@example.com","location":"{}","cpus":1.5,"memory":2048,"image":"registry.local/bench/app:1.2.3","command":["/app/server","--port","$PORT_0"],"env":{{{}}}}}"#,
        location(),
        env.join(","),
    )
    .into_bytes()
}

/// When each job was acknowledged by its origin, and when it arrived in each cell.
#[derive(Default)]
struct Seen {
    acked: HashMap<String, (usize, Instant)>,
    arrived: HashMap<String, [Option<Instant>; 3]>,
}

/// Three federated cells, one member each, started.
fn federation(extra: &str) -> Vec<Cluster> {
    let mut cells: Vec<Cluster> = CELLS.iter().map(|c| Cluster::configure_cell(c, 1, common::BENCH_CONFIG)).collect();
    let addrs: Vec<String> = cells.iter().map(|c| c.addrs()).collect();
    for (i, cell) in cells.iter_mut().enumerate() {
        let others: Vec<String> =
            (0..3).filter(|j| *j != i).map(|j| format!("{} = [\"{}\"]", CELLS[j], addrs[j])).collect();
        cell.config = format!("{}[federation]\n{extra}cells = {{ {} }}\n", common::BENCH_CONFIG, others.join(", "));
        cell.restart(1);
    }
    cells
}

/// Follows cell `i`'s job events, noting when each job first arrived; reconnects (resuming) when the stream ends.
fn follow(addr: String, i: usize, seen: Arc<Mutex<Seen>>, stop: Arc<std::sync::atomic::AtomicBool>) {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut last: Option<u64> = None;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let mut url = format!("http://{addr}/v1/events?topic=job&timeoutSeconds=600");
            if let Some(id) = last {
                url.push_str(&format!("&from={id}"));
            }
            let Ok(mut resp) = http.get(&url).send().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut buf = String::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                let now = Instant::now();
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let record: String = buf.drain(..end + 2).collect();
                    for line in record.lines() {
                        if let Some(id) = line.strip_prefix("id:") {
                            last = id.trim().parse().ok();
                        }
                        let Some(data) = line.strip_prefix("data:") else { continue };
                        let Ok(e) = serde_json::from_str::<serde_json::Value>(data.trim()) else { continue };
                        let kind = e["kind"].as_str().unwrap_or_default();
                        if kind.starts_with("created") {
                            let id = e["id"].as_str().unwrap_or_default().to_string();
                            let mut s = seen.lock().unwrap();
                            let slot = &mut s.arrived.entry(id).or_default()[i];
                            slot.get_or_insert(now);
                        }
                    }
                }
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
            }
        }
    });
}

/// Submits `n` jobs named `prefix-i` over `clients` connections to the cells at `targets` (round robin), noting
/// each acknowledgement; the rate per second, and the failures.
async fn submit(
    targets: &[(usize, String)],
    prefix: &str,
    n: usize,
    clients: usize,
    seen: &Arc<Mutex<Seen>>,
) -> (f64, usize) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (cell, addr) = targets[c % targets.len()].clone();
        let (next, seen, prefix) = (next.clone(), seen.clone(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().tcp_nodelay(true).build().expect("client");
            let mut failed = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n || started.elapsed() > Duration::from_secs(300) {
                    return failed;
                }
                let resp = http
                    .post(format!("http://{addr}/v1/jobs"))
                    .header("content-type", "application/json")
                    .body(spec(&prefix, i))
                    .send()
                    .await;
                let acked = Instant::now();
                match resp {
                    Ok(r) if r.status().as_u16() == 201 => {
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        let id = body["id"].as_str().unwrap_or_default().to_string();
                        seen.lock().unwrap().acked.insert(id, (cell, acked));
                    }
                    _ => failed += 1,
                }
            }
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap_or(0);
    }
    (n as f64 / started.elapsed().as_secs_f64(), failed)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Waits (at most `cap`) until every acknowledged job of `ids` arrived in the cells `in_cells`.
async fn wait_arrived(seen: &Arc<Mutex<Seen>>, ids: &[String], in_cells: &[usize], cap: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < cap {
        let missing = {
            let s = seen.lock().unwrap();
            ids.iter().filter(|id| in_cells.iter().any(|c| s.arrived.get(*id).is_none_or(|a| a[*c].is_none()))).count()
        };
        if missing == 0 {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

async fn pushed_bytes(addr: &str, peer: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics")).await.ok();
    let text = match text {
        Some(r) => r.text().await.unwrap_or_default(),
        None => String::new(),
    };
    common::metric(&text, "titan_federation_push_bytes_total", &format!(r#"peer="{peer}""#))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let arg = |i: usize, full: usize, small: usize| args.get(i).copied().unwrap_or(if smoke { small } else { full });
    let (jobs, clients, down_s, catch_up) = (arg(0, 20_000, 300), arg(1, 48, 6), arg(2, 60, 2), arg(3, 10_000, 200));
    let tmp = std::env::temp_dir();
    println!("data under {}; 3 cells of 1 member on loopback; jobs ask for {}", tmp.display(), location());

    // Extra `[federation]` settings to try, one per line (e.g. `batch = 200`).
    let extra = std::env::var("TITAN_BENCH_FEDERATION").map(|s| s.replace(';', "\n") + "\n").unwrap_or_default();
    let mut cells = federation(&extra);
    for c in &cells {
        c.leader(Duration::from_secs(20)).await;
    }
    let addrs: Vec<String> = cells.iter().map(|c| c.members[0].addr.to_string()).collect();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for (i, a) in addrs.iter().enumerate() {
        follow(a.clone(), i, seen.clone(), stop.clone());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 1. Writes everywhere, and the lag to the other cells.
    let targets: Vec<(usize, String)> = addrs.iter().cloned().enumerate().collect();
    let (rate, failed) = submit(&targets, "spread", jobs, clients, &seen).await;
    let ids: Vec<String> = seen.lock().unwrap().acked.keys().cloned().collect();
    let all = wait_arrived(&seen, &ids, &[0, 1, 2], Duration::from_secs(60)).await;
    let mut lags: Vec<f64> = {
        let s = seen.lock().unwrap();
        s.acked
            .iter()
            .flat_map(|(id, (origin, at))| {
                let arrived = s.arrived.get(id).copied().unwrap_or_default();
                (0..3)
                    .filter(move |c| c != origin)
                    .filter_map(move |c| arrived[c].map(|t| t.saturating_duration_since(*at)))
            })
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect()
    };
    lags.sort_by(f64::total_cmp);
    println!(
        "spread: jobs={jobs} clients={clients} failed={failed} rate_per_s={rate:.0} lag_ms p50={:.1} p99={:.1} max={:.1} pairs={} all_arrived={}",
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(f64::NAN),
        lags.len(),
        all.map(|d| format!("{:.2}s after the last write", d.as_secs_f64())).unwrap_or_else(|| "no".into()),
    );
    let full_copy = pushed_bytes(&addrs[0], "dc3").await + pushed_bytes(&addrs[1], "dc3").await;
    let per_job = full_copy / (jobs as f64 * 2.0 / 3.0).max(1.0);

    // 2. dc3 away while the others write; the catch-up when it is back.
    cells[2].member(1).kill();
    let down_at = Instant::now();
    let before = pushed_bytes(&addrs[0], "dc3").await + pushed_bytes(&addrs[1], "dc3").await;
    let targets: Vec<(usize, String)> = addrs.iter().take(2).cloned().enumerate().collect();
    let known: std::collections::HashSet<String> = seen.lock().unwrap().acked.keys().cloned().collect();
    let (_, failed) = submit(&targets, "away", catch_up, clients, &seen).await;
    let away: Vec<String> = seen.lock().unwrap().acked.keys().filter(|k| !known.contains(*k)).cloned().collect();
    let left = Duration::from_secs(down_s as u64).saturating_sub(down_at.elapsed());
    tokio::time::sleep(left).await;
    cells[2].restart(1);
    let back = Instant::now();
    let converged = wait_arrived(&seen, &away, &[2], Duration::from_secs(120)).await.map(|_| back.elapsed());
    let after = pushed_bytes(&addrs[0], "dc3").await + pushed_bytes(&addrs[1], "dc3").await;
    println!(
        "catch-up: down_s={:.0} changed={} failed={failed} converged_after_return_s={} bytes_sent={:.0} full_copy_would_be={:.0}",
        down_at.elapsed().as_secs_f64() - back.elapsed().as_secs_f64(),
        away.len(),
        converged.map(|d| format!("{:.2}", d.as_secs_f64())).unwrap_or_else(|| "never".into()),
        after - before,
        per_job * (jobs + catch_up) as f64,
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    // 3. One cell's local submit rate, federated and standalone.
    let pin = std::env::var("TITAN_BENCH_PIN").is_ok_and(|v| v == "1");
    let pin_to = |pid: Option<u32>, cpu: &str| {
        if let (true, Some(pid)) = (pin, pid) {
            let _ = std::process::Command::new("taskset").args(["-apc", cpu, &pid.to_string()]).output();
        }
    };
    if pin {
        pin_to(Some(std::process::id()), "1");
        pin_to(cells[0].members[0].pid(), "0");
        pin_to(cells[1].members[0].pid(), "1");
        pin_to(cells[2].members[0].pid(), "1");
    }
    let local = catch_up;
    let dc1 = cells[0].members[0].pid().unwrap_or(0);
    let cpu = common::cpu_seconds(dc1);
    let (fed_rate, fed_failed) = submit(&[(0, addrs[0].clone())], "local", local, clients, &Arc::default()).await;
    let fed_cpu = (common::cpu_seconds(dc1) - cpu) * 1000.0 / local as f64;
    drop(cells);
    let solo = Cluster::configure_cell("dc1", 1, common::BENCH_CONFIG);
    let mut solo = solo;
    solo.restart(1);
    solo.leader(Duration::from_secs(20)).await;
    pin_to(solo.members[0].pid(), "0");
    let solo_pid = solo.members[0].pid().unwrap_or(0);
    let solo_addr = solo.members[0].addr.to_string();
    // The same conditions: the standalone cell first holds as many jobs as dc1 did (not measured).
    let (_, preload_failed) =
        submit(&[(0, solo_addr.clone())], "preload", jobs + catch_up, clients, &Arc::default()).await;
    assert_eq!(preload_failed, 0, "the standalone cell's preload failed");
    let cpu = common::cpu_seconds(solo_pid);
    let (solo_rate, solo_failed) = submit(&[(0, solo_addr)], "local", local, clients, &Arc::default()).await;
    let solo_cpu = (common::cpu_seconds(solo_pid) - cpu) * 1000.0 / local as f64;
    println!(
        "local: jobs={local} clients={clients} pinned={pin} federated_rate_per_s={fed_rate:.0} standalone_rate_per_s={solo_rate:.0} ratio={:.2} dc1_cpu_s_per_1000 federated={fed_cpu:.3} standalone={solo_cpu:.3} failed={}",
        fed_rate / solo_rate,
        fed_failed + solo_failed
    );
    assert!(!smoke || (failed == 0 && fed_failed == 0 && solo_failed == 0), "the smoke run saw failed writes");
    assert!(!smoke || converged.is_some(), "the smoke run's cell did not catch up");
}
