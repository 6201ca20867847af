//! SRE levers with real `titan server` processes on loopback: three single-member cells (dc1, dc2, dc3) with
//! simulated agents. Evacuating a live location is make-before-break (sampled all along, no job's running total
//! falls below its desired total less its disruption budget), and a restore likewise; a dead location's counts move
//! at once; a frozen location refuses rising counts; a dry run writes nothing and predicts the lever; what a quota
//! cannot take stays and is reported; auto-failover fires once for a dead cell and never from a cut-off one.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::proxy::Proxy;
use common::sim::{self, Record, SimAgent};
use common::*;
use titan_api::job::BodyFormat;
use titan_api::location::LeverKind;
use titan_api::{Client, ErrorCode};

const CELLS: [&str; 3] = ["dc1", "dc2", "dc3"];
const WITHIN: Duration = Duration::from_secs(40);

/// Three single-member cells, each told of the others at `addr(from, to)`, with `extra` added to each config.
fn federation(extra: &str, addr: &dyn Fn(&str, &str, &Cluster) -> String) -> BTreeMap<&'static str, Cluster> {
    let mut cells: BTreeMap<&str, Cluster> =
        CELLS.iter().map(|name| (*name, Cluster::configure_cell(name, 1, TEST_CONFIG))).collect();
    let mut configs = BTreeMap::new();
    for name in CELLS {
        let others: Vec<String> =
            CELLS.iter().filter(|n| **n != name).map(|n| format!("{n} = [\"{}\"]", addr(name, n, &cells[n]))).collect();
        configs.insert(
            name,
            format!(
                "{TEST_CONFIG}[federation]\nheartbeat_ms = 200\nsuspect_ms = 1000\ndown_ms = 3000\ndigest_ms = 1000\n\
                 cells = {{ {} }}\n{extra}",
                others.join(", ")
            ),
        );
    }
    for (name, cell) in cells.iter_mut() {
        cell.config = configs.remove(name).expect("a config per cell");
        cell.restart(1);
    }
    cells
}

fn direct(_: &str, _: &str, to: &Cluster) -> String {
    to.addrs()
}

async fn started(extra: &str) -> (BTreeMap<&'static str, Cluster>, Vec<SimAgent>) {
    let cells = federation(extra, &direct);
    for cell in cells.values() {
        cell.leader(Duration::from_secs(20)).await;
    }
    let record = Arc::new(Record::default());
    let agents = cells
        .iter()
        .map(|(name, c)| {
            sim::start(vec![c.addrs()], sim::registration(&format!("agent-{name}"), 8.0, 8192, name), record.clone())
        })
        .collect();
    (cells, agents)
}

fn client(cells: &BTreeMap<&'static str, Cluster>, name: &str) -> Client {
    Client::new(&cells[name].addrs())
}

async fn submit(c: &Client, name: &str, location: &str, extra: &str) -> String {
    let body = format!(
        r#"{{"name":"{name}","applicationName":"shop","location":"{location}","cpus":0.1,"memory":16,"image":"busybox"{extra}}}"#
    );
    let spec = titan_api::job::JobSpec::parse(body.as_bytes(), BodyFormat::Json).expect("valid spec");
    c.submit_job(&spec, None).await.expect("submitted").id
}

/// What each cell runs of `job` itself, asked of each cell, in `order`.
async fn running(cells: &BTreeMap<&'static str, Cluster>, job: &str, order: &[&str]) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for name in order {
        let n = match client(cells, name).get_job(job).await {
            Ok(v) => v.locations.iter().find(|l| l.location == *name).map_or(0, |l| l.running),
            Err(_) => 0,
        };
        out.insert(name.to_string(), n);
    }
    out
}

async fn wait_running(cells: &BTreeMap<&'static str, Cluster>, job: &str, want: &[(&str, u32)]) {
    let want: BTreeMap<String, u32> = want.iter().map(|(l, n)| (l.to_string(), *n)).collect();
    let order: Vec<&str> = want.keys().map(String::as_str).collect();
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let now = running(cells, job, &order).await;
        if now == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "job {job}: running {now:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_state(c: &Client, location: &str, state: &str) -> titan_api::location::LocationView {
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        if let Ok(l) = c.get_location(location).await {
            if l.state == state {
                return l;
            }
            assert!(std::time::Instant::now() < deadline, "{location} stayed {} ({:?})", l.state, l.progress);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Samples every job's running total until `done` says the move finished; returns the lowest seen per job.
async fn lowest_while(
    cells: &BTreeMap<&'static str, Cluster>,
    jobs: &[String],
    order: &[&str],
    watch: &Client,
    until: &str,
) -> Vec<u32> {
    let mut low = vec![u32::MAX; jobs.len()];
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        for (i, job) in jobs.iter().enumerate() {
            let total: u32 = running(cells, job, order).await.values().sum();
            low[i] = low[i].min(total);
        }
        if watch.get_location("dc1").await.is_ok_and(|l| l.state == until) {
            return low;
        }
        assert!(std::time::Instant::now() < deadline, "dc1 never became {until}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evacuating_a_live_location_is_make_before_break_and_a_restore_brings_it_back_likewise() {
    let (cells, _agents) = started("").await;
    let dc2 = client(&cells, "dc2");
    let web = submit(&dc2, "web", "dc1:6,dc2:3,dc3:3", r#","disruptionBudget":{"maxUnavailable":1}"#).await;
    let solo = submit(&dc2, "solo", "dc1:4", r#","failover":["dc3"]"#).await;
    wait_running(&cells, &web, &[("dc1", 6), ("dc2", 3), ("dc3", 3)]).await;
    wait_running(&cells, &solo, &[("dc1", 4)]).await;

    let dc1 = client(&cells, "dc1");
    let answer =
        dc1.pull_lever("dc1", LeverKind::Evacuate, "dc1 network degraded", &[], false).await.expect("evacuate");
    assert_eq!((answer.from.as_str(), answer.state.as_str(), answer.weight), ("active", "evacuating", 0));
    assert_eq!((answer.to_move, answer.left_behind), (10, 0), "{answer:?}");
    // The evacuated location is read first: it stops only what already runs elsewhere.
    let jobs = vec![web.clone(), solo.clone()];
    let low = lowest_while(&cells, &jobs, &["dc1", "dc2", "dc3"], &dc1, "evacuated").await;
    assert!(low[0] >= 12 - 1 && low[1] >= 4 - 1, "running totals fell to {low:?} (web 12, solo 4, budget 1)");
    wait_running(&cells, &web, &[("dc1", 0), ("dc2", 6), ("dc3", 6)]).await;
    wait_running(&cells, &solo, &[("dc1", 0), ("dc3", 4)]).await;
    for name in CELLS {
        let l = client(&cells, name).get_location("dc1").await.expect("location");
        assert_eq!((l.state.as_str(), l.weight), ("evacuated", 0), "as {name} sees it");
    }
    let endpoints = dc2.endpoints(&web).await.expect("endpoints");
    let of = |l: &str| endpoints.locations.iter().find(|e| e.location == l).expect("location listed").clone();
    assert_eq!((of("dc1").endpoints.len(), of("dc1").weight, of("dc1").state.as_str()), (0, 0, "evacuated"));
    assert_eq!((of("dc2").endpoints.len(), of("dc3").endpoints.len()), (6, 6), "{endpoints:?}");

    // The owner scales dc1 down during the evacuation: the restore brings back the owner's count.
    let scale = BTreeMap::from([("dc1".to_string(), 5)]);
    dc2.set_instances(&web, &scale, None).await.expect("a scale down in a frozen location is taken");
    let answer = dc2.pull_lever("dc1", LeverKind::Restore, "dc1 healthy again", &[], false).await.expect("restore");
    assert_eq!(answer.state, "restoring");
    // The targets are read first: their extras stop only once dc1's own tasks run.
    let low = lowest_while(&cells, &jobs, &["dc2", "dc3", "dc1"], &dc1, "active").await;
    assert!(low[0] >= 11 - 1 && low[1] >= 4 - 1, "running totals fell to {low:?} during the restore");
    wait_running(&cells, &web, &[("dc1", 5), ("dc2", 3), ("dc3", 3)]).await;
    wait_running(&cells, &solo, &[("dc1", 4), ("dc3", 0)]).await;
    let l = dc1.get_location("dc1").await.expect("location");
    assert_eq!(l.weight, 100, "the weight from before the evacuation");
    let whats: Vec<&str> = l.history.iter().map(|h| h.what.as_str()).collect();
    assert!(whats.iter().any(|w| w.starts_with("evacuate: active -> evacuating")), "{whats:?}");
    assert!(whats.iter().any(|w| w.starts_with("restored: restoring -> active")), "{whats:?}");
    assert!(l.history.iter().any(|h| h.why.as_deref() == Some("dc1 network degraded")), "the reason is audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_location_is_evacuated_at_once_and_its_counts_run_elsewhere() {
    let (mut cells, _agents) = started("").await;
    let dc2 = client(&cells, "dc2");
    let web = submit(&dc2, "web", "dc1:4,dc2:2,dc3:2", "").await;
    wait_running(&cells, &web, &[("dc1", 4), ("dc2", 2), ("dc3", 2)]).await;
    cells.get_mut("dc1").expect("dc1").member(1).kill();
    eventually(WITHIN, "dc2 sees dc1 down", || async {
        dc2.list_locations().await.is_ok_and(|l| l.locations.iter().any(|x| x.name == "dc1" && x.cell_state == "down"))
    })
    .await;
    let to = vec!["dc2".to_string(), "dc3".to_string()];
    let a = dc2.pull_lever("dc1", LeverKind::Evacuate, "dc1 lost power", &to, false).await.expect("evacuate");
    assert_eq!(a.to_move, 4);
    wait_running(&cells, &web, &[("dc2", 4), ("dc3", 4)]).await;
    let l = wait_state(&dc2, "dc1", "evacuated").await;
    assert_eq!(l.progress.expect("the plan is kept for the restore").started_elsewhere, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_location_refuses_rising_counts_keeps_what_runs_and_bad_levers_write_nothing() {
    let (cells, _agents) = started("").await;
    let dc1 = client(&cells, "dc1");
    let web = submit(&dc1, "web", "dc1:2,dc2:1", "").await;
    wait_running(&cells, &web, &[("dc1", 2), ("dc2", 1)]).await;

    // Bad input first: nothing may be written by any of it.
    let err = |r: Result<titan_api::location::LeverAnswer, titan_api::ClientError>| match r {
        Err(titan_api::ClientError::Api { status, error }) => (status, error.code, error.field),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let (status, code, field) = err(dc1.pull_lever("dc9", LeverKind::Freeze, "why", &[], false).await);
    assert_eq!((status, code, field.as_deref()), (404, ErrorCode::NotFound, Some("name")));
    let (status, code, field) = err(dc1.pull_lever("dc1", LeverKind::Freeze, " ", &[], false).await);
    assert_eq!((status, code, field.as_deref()), (400, ErrorCode::InvalidParameter, Some("reason")));
    let (status, code, field) = err(dc1.pull_lever("dc1", LeverKind::Restore, "undo", &[], false).await);
    assert_eq!((status, code, field.as_deref()), (409, ErrorCode::LeverIllegal, Some("state")));
    let to = vec!["dc7".to_string()];
    let (status, _, field) = err(dc1.pull_lever("dc1", LeverKind::Evacuate, "move", &to, false).await);
    assert_eq!((status, field.as_deref()), (404, Some("to[0]")));
    let (status, _, field) = err(dc1.set_weight("dc1", 101, "too much", false).await);
    assert_eq!((status, field.as_deref()), (400, Some("weight")));
    let l = dc1.get_location("dc1").await.expect("location");
    assert_eq!((l.version, l.state.as_str(), l.history.len()), (0, "active", 0), "nothing written");

    let a = dc1.pull_lever("dc1", LeverKind::Freeze, "change freeze", &[], false).await.expect("freeze");
    assert_eq!((a.state.as_str(), a.jobs_affected), ("frozen", 1));
    for name in CELLS {
        let c = client(&cells, name);
        eventually(WITHIN, "every cell holds the freeze", || async {
            c.get_location("dc1").await.is_ok_and(|l| l.state == "frozen")
        })
        .await;
        let up = BTreeMap::from([("dc1".to_string(), 3)]);
        match c.set_instances(&web, &up, None).await {
            Err(titan_api::ClientError::Api { status: 409, error }) => {
                assert_eq!((error.code, error.field.as_deref()), (ErrorCode::LocationFrozen, Some("location")));
                assert!(error.message.contains("dc1 is frozen"), "{}", error.message);
            }
            other => panic!("a scale-up in frozen dc1 through {name} was not refused: {other:?}"),
        }
    }
    let spec = titan_api::job::JobSpec::parse(
        br#"{"name":"new","applicationName":"shop","location":"dc1:1","cpus":0.1,"memory":16,"image":"busybox"}"#,
        BodyFormat::Json,
    )
    .expect("spec");
    assert!(matches!(dc1.submit_job(&spec, None).await, Err(titan_api::ClientError::Api { status: 409, .. })));
    let elsewhere = BTreeMap::from([("dc2".to_string(), 2)]);
    dc1.set_instances(&web, &elsewhere, None).await.expect("other locations still grow");
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_running(&cells, &web, &[("dc1", 2), ("dc2", 2)]).await;
    dc1.pull_lever("dc1", LeverKind::Unfreeze, "freeze over", &[], false).await.expect("unfreeze");
    let up = BTreeMap::from([("dc1".to_string(), 3)]);
    dc1.set_instances(&web, &up, None).await.expect("active again");
    wait_running(&cells, &web, &[("dc1", 3), ("dc2", 2)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_writes_nothing_and_predicts_what_the_lever_does_and_quotas_leave_the_excess_behind() {
    let (cells, _agents) = started("").await;
    let dc1 = client(&cells, "dc1");
    let web = submit(&dc1, "web", "dc1:6,dc2:2,dc3:2", "").await;
    let api = submit(&dc1, "api", "dc1:4", r#","capacityGroup":"api","failover":["dc2"]"#).await;
    wait_running(&cells, &web, &[("dc1", 6), ("dc2", 2), ("dc3", 2)]).await;
    wait_running(&cells, &api, &[("dc1", 4)]).await;
    let quota = titan_api::quota::QuotaSpec::parse(br#"{"locations":{"dc2":{"instances":1}}}"#).expect("quota");
    dc1.put_quota("api", &quota, None).await.expect("quota set");
    eventually(WITHIN, "dc2 holds the quota", || async {
        client(&cells, "dc2").get_quota("api").await.is_ok_and(|q| q.version > 0)
    })
    .await;

    let dry = dc1.pull_lever("dc1", LeverKind::Evacuate, "game day", &[], true).await.expect("dry run");
    assert!(dry.dry_run);
    assert_eq!((dry.to_move, dry.left_behind), (7, 3), "{dry:?}");
    let api_move = dry.moves.iter().find(|m| m.job_id == api).expect("api planned");
    assert_eq!((api_move.to.get("dc2").copied(), api_move.left_behind), (Some(1), 3));
    assert!(api_move.why_left.as_deref().unwrap_or("").contains("quota: group api has room for 1"), "{api_move:?}");
    assert_eq!(dry.capacity.len(), 2, "a trial in dc2 and dc3: {:?}", dry.capacity);
    assert!(dry.capacity.iter().all(|c| c.error.is_none() && c.placed == c.requested), "{:?}", dry.capacity);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for name in CELLS {
        let l = client(&cells, name).get_location("dc1").await.expect("location");
        assert_eq!((l.version, l.state.as_str()), (0, "active"), "{name}: a dry run wrote nothing");
    }
    let real = dc1.pull_lever("dc1", LeverKind::Evacuate, "game day", &[], false).await.expect("evacuate");
    assert_eq!((real.moves.clone(), real.to_move, real.left_behind), (dry.moves, dry.to_move, dry.left_behind));
    wait_running(&cells, &api, &[("dc1", 3), ("dc2", 1)]).await;
    let l = wait_state(&dc1, "dc1", "evacuated").await;
    let p = l.progress.expect("progress");
    assert_eq!((p.to_move, p.started_elsewhere, p.left_behind), (7, 7, 3));
    let url = format!("http://{}/metrics", cells["dc1"].members[0].addr);
    let scrape = || async { reqwest::get(&url).await.expect("metrics").text().await.expect("text") };
    // The gauges follow the state within a second.
    eventually(WITHIN, "the state gauge says evacuated", || async {
        sample(&scrape().await, "titan_location_state", &["location=\"dc1\"", "state=\"evacuated\""]) == 1.0
    })
    .await;
    let metrics = scrape().await;
    assert_eq!(sample(&metrics, "titan_evacuation_instances", &["location=\"dc1\"", "phase=\"left_behind\""]), 3.0);
    assert_eq!(sample(&metrics, "titan_location_state", &["location=\"dc1\"", "state=\"evacuated\""]), 1.0);
    assert_eq!(sample(&metrics, "titan_location_weight", &["location=\"dc1\""]), 0.0);
    assert_eq!(sample(&metrics, "titan_failover_actions_total", &["kind=\"evacuate\"", "automatic=\"false\""]), 1.0);
}

/// The sum of the samples of `name` whose labels hold every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn automatic_evacuations(cells: &BTreeMap<&'static str, Cluster>, among: &[&str]) -> f64 {
    let mut n = 0.0;
    for name in among {
        let addr = cells[name].members[0].addr;
        if let Ok(r) = reqwest::get(format!("http://{addr}/metrics")).await {
            let text = r.text().await.unwrap_or_default();
            n += sample(&text, "titan_failover_actions_total", &["kind=\"evacuate\"", "automatic=\"true\""]);
        }
    }
    n
}

const FAILOVER: &str = "[federation.failover]\nenabled = true\nauto_after_ms = 4000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_failover_fires_exactly_once_for_a_dead_cell() {
    let (mut cells, _agents) = started(FAILOVER).await;
    let dc2 = client(&cells, "dc2");
    let web = submit(&dc2, "web", "dc1:3,dc2:1,dc3:1", "").await;
    wait_running(&cells, &web, &[("dc1", 3), ("dc2", 1), ("dc3", 1)]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(automatic_evacuations(&cells, &CELLS).await, 0.0, "nothing fires while every cell is up");
    cells.get_mut("dc1").expect("dc1").member(1).kill();
    let l = wait_state(&dc2, "dc1", "evacuated").await;
    let p = l.progress.expect("progress");
    assert!(p.automatic && p.evidence.as_deref().unwrap_or("").contains("seen down by dc2, dc3"), "{p:?}");
    wait_running(&cells, &web, &[("dc2", 3), ("dc3", 2)]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(automatic_evacuations(&cells, &["dc2", "dc3"]).await, 1.0, "exactly one automatic evacuation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_cut_off_from_the_others_evacuates_no_one() {
    // Every cell reaches every other through its own proxy, so one cell can be cut off both ways.
    let plain: BTreeMap<&str, Cluster> =
        CELLS.iter().map(|n| (*n, Cluster::configure_cell(n, 1, TEST_CONFIG))).collect();
    let mut proxies: BTreeMap<(String, String), Proxy> = BTreeMap::new();
    for from in CELLS {
        for to in CELLS.iter().filter(|t| **t != from) {
            proxies.insert((from.to_string(), to.to_string()), Proxy::start(plain[to].members[0].addr).await);
        }
    }
    // The cells get the members' addresses fixed above, reached through the proxies.
    let mut cells = plain;
    for (name, cell) in cells.iter_mut() {
        let others: Vec<String> = CELLS
            .iter()
            .filter(|n| *n != name)
            .map(|n| format!("{n} = [\"{}\"]", proxies[&(name.to_string(), n.to_string())].addr))
            .collect();
        cell.config = format!(
            "{TEST_CONFIG}[federation]\nheartbeat_ms = 200\nsuspect_ms = 1000\ndown_ms = 3000\ndigest_ms = 1000\n\
             cells = {{ {} }}\n{FAILOVER}",
            others.join(", ")
        );
        cell.restart(1);
    }
    for cell in cells.values() {
        cell.leader(Duration::from_secs(20)).await;
    }
    eventually(WITHIN, "every cell hears the others", || async {
        client(&cells, "dc2").list_locations().await.is_ok_and(|l| l.locations.iter().all(|x| x.cell_state != "down"))
    })
    .await;
    for ((from, to), p) in &proxies {
        if from == "dc2" || to == "dc2" {
            p.cut();
        }
    }
    // dc1 and dc3 still reach each other (a majority) and see dc2 down: they evacuate dc2, once. dc2 reaches no
    // majority and evacuates no one.
    let dc1 = client(&cells, "dc1");
    let l = wait_state(&dc1, "dc2", "evacuated").await;
    assert!(l.progress.expect("progress").automatic);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let dc2 = client(&cells, "dc2");
    for l in dc2.list_locations().await.expect("dc2 answers").locations {
        assert!(l.state == "active", "the cut-off cell pulled a lever: {l:?}");
    }
    assert_eq!(automatic_evacuations(&cells, &["dc2"]).await, 0.0);
    assert_eq!(automatic_evacuations(&cells, &["dc1", "dc3"]).await, 1.0);
}
