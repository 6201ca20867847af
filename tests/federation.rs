//! Federation with real `titan server` processes on loopback: three cells (dc1 of three members, dc2 and dc3 of
//! one), every job in every cell, each location running its own count on simulated agents; a cell killed while the
//! others change jobs converges when it is back; concurrent writes to one register converge to one winner and
//! writes to different locations both stay; what another cell may not send is refused with nothing applied.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::proxy;
use common::sim::{self, Record};
use common::*;
use titan_api::job::BodyFormat;
use titan_api::{Client, ErrorCode};

const CONVERGE: Duration = Duration::from_secs(30);

/// dc1 (3 members), dc2 and dc3 (1 each), each told of the other two, not started.
fn federation() -> BTreeMap<&'static str, Cluster> {
    let mut cells: BTreeMap<&str, Cluster> = [("dc1", 3), ("dc2", 1), ("dc3", 1)]
        .into_iter()
        .map(|(name, n)| (name, Cluster::configure_cell(name, n, TEST_CONFIG)))
        .collect();
    let addrs: BTreeMap<&str, String> = cells.iter().map(|(n, c)| (*n, c.addrs())).collect();
    for (name, cell) in cells.iter_mut() {
        let others: Vec<String> = addrs
            .iter()
            .filter(|(n, _)| *n != name)
            .map(|(n, a)| {
                let list: Vec<String> = a.split('|').map(|x| format!("\"{x}\"")).collect();
                format!("{n} = [{}]", list.join(", "))
            })
            .collect();
        cell.config = format!(
            "{TEST_CONFIG}[federation]\nheartbeat_ms = 200\nsuspect_ms = 1000\ndown_ms = 3000\ndigest_ms = 1000\ncells = {{ {} }}\n",
            others.join(", ")
        );
    }
    cells
}

fn start_all(cells: &mut BTreeMap<&'static str, Cluster>) {
    for cell in cells.values_mut() {
        for id in 1..=cell.members.len() as u64 {
            cell.restart(id);
        }
    }
}

/// A client over every member of the cell.
fn client_of(cell: &Cluster) -> Client {
    let addrs: Vec<String> = cell.members.iter().map(|m| m.addr.to_string()).collect();
    Client::new(&addrs.join(","))
}

fn job(name: &str, location: &str) -> Vec<u8> {
    format!(
        r#"{{"name":"{name}","applicationName":"fed","location":"{location}","cpus":0.1,"memory":16,"image":"busybox"}}"#
    )
    .into_bytes()
}

/// What every cell must agree on of each job: its counts per location and its state.
async fn jobs_of(client: &Client) -> Option<BTreeMap<String, (BTreeMap<String, u32>, String)>> {
    let mut out = BTreeMap::new();
    let mut query = titan_api::view::ListQuery { limit: Some(1000), ..Default::default() };
    loop {
        let page = client.list_jobs(&query).await.ok()?;
        for j in page.jobs {
            out.insert(j.id, (j.instances, j.state.as_str().to_string()));
        }
        match page.next_page_token {
            Some(t) => query.page_token = Some(t),
            None => return Some(out),
        }
    }
}

/// Waits until every cell holds the same jobs, at least `want` of them, and returns them.
async fn converged(
    cells: &BTreeMap<&'static str, Cluster>,
    want: usize,
) -> BTreeMap<String, (BTreeMap<String, u32>, String)> {
    let deadline = std::time::Instant::now() + CONVERGE;
    loop {
        let mut seen = Vec::new();
        for cell in cells.values() {
            seen.push(jobs_of(&client_of(cell)).await);
        }
        if let Some(Some(first)) = seen.first() {
            if first.len() >= want && seen.iter().all(|s| s.as_ref() == Some(first)) {
                return first.clone();
            }
        }
        if std::time::Instant::now() >= deadline {
            let sizes: Vec<(&str, Option<usize>)> =
                cells.keys().zip(&seen).map(|(n, s)| (*n, s.as_ref().map(|s| s.len()))).collect();
            panic!("cells did not converge: jobs per cell {sizes:?}; {seen:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_written_in_any_cell_reach_every_cell_and_each_location_runs_its_count() {
    let mut cells = federation();
    start_all(&mut cells);
    for cell in cells.values() {
        cell.leader(Duration::from_secs(20)).await;
    }
    let record = Arc::new(Record::default());
    let _agents: Vec<_> = cells
        .iter()
        .map(|(name, c)| {
            let addrs = c.members.iter().map(|m| m.addr.to_string()).collect();
            sim::start(addrs, sim::registration(&format!("agent-{name}"), 8.0, 8192, name), record.clone())
        })
        .collect();
    let a = client_of(&cells["dc1"]).submit_raw(job("a", "dc1:2,dc2:1"), BodyFormat::Json, None).await.expect("a");
    let b = client_of(&cells["dc2"]).submit_raw(job("b", "dc2:2,dc3:1"), BodyFormat::Json, None).await.expect("b");
    let c = client_of(&cells["dc3"]).submit_raw(job("c", "dc3:1,dc1:1"), BodyFormat::Json, None).await.expect("c");
    let jobs = converged(&cells, 3).await;
    assert_eq!(jobs.len(), 3);

    // Each location runs its own count of each job, and nothing else.
    let want: BTreeMap<(&str, &str), usize> = [
        (("dc1", a.id.as_str()), 2),
        (("dc2", a.id.as_str()), 1),
        (("dc2", b.id.as_str()), 2),
        (("dc3", b.id.as_str()), 1),
        (("dc3", c.id.as_str()), 1),
        (("dc1", c.id.as_str()), 1),
    ]
    .into_iter()
    .collect();
    for (name, cell) in &cells {
        let client = client_of(cell);
        eventually(CONVERGE, &format!("{name} to run its counts"), || {
            let client = client.clone();
            let want = want.clone();
            async move {
                let Ok(list) = client.list_tasks(&Default::default()).await else { return false };
                let mut running: BTreeMap<String, usize> = BTreeMap::new();
                for t in list.tasks.iter().filter(|t| t.state == titan_api::task::TaskState::Running) {
                    *running.entry(t.job_id.clone()).or_default() += 1;
                }
                let expected: BTreeMap<String, usize> =
                    want.iter().filter(|((c, _), _)| *c == *name).map(|((_, j), n)| (j.to_string(), *n)).collect();
                running == expected
            }
        })
        .await;
    }

    // The history records which cell took each change, wherever it is read.
    for cell in cells.values() {
        let history = client_of(cell).job_history(&b.id).await.expect("history");
        assert_eq!(history[0].cell.as_deref(), Some("dc2"), "b was submitted to dc2: {history:?}");
    }

    // Any cell shows the job in every location, with the figures the other cells reported.
    let dc3 = client_of(&cells["dc3"]);
    let id = a.id.clone();
    eventually(CONVERGE, "dc3 to show job a running in dc1 and dc2", || {
        let (dc3, id) = (dc3.clone(), id.clone());
        async move {
            let Ok(view) = dc3.get_job(&id).await else { return false };
            let figures: Vec<(String, String, u32, u32)> = view
                .locations
                .iter()
                .map(|l| (l.location.clone(), l.cell_state.clone(), l.desired, l.running))
                .collect();
            figures
                == vec![
                    ("dc1".to_string(), "up".to_string(), 2, 2),
                    ("dc2".to_string(), "up".to_string(), 1, 1),
                    ("dc3".to_string(), "self".to_string(), 0, 0),
                ]
        }
    })
    .await;

    // Every cell lists every cell, and hears the others.
    let view = client_of(&cells["dc2"]).cells().await.expect("cells");
    let states: BTreeMap<String, String> = view.into_iter().map(|c| (c.name, c.state)).collect();
    assert_eq!(
        states,
        BTreeMap::from([("dc1".into(), "up".into()), ("dc2".into(), "self".into()), ("dc3".into(), "up".into())])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_killed_while_the_others_change_jobs_converges_when_it_is_back() {
    let mut cells = federation();
    start_all(&mut cells);
    for cell in cells.values() {
        cell.leader(Duration::from_secs(20)).await;
    }
    let (c1, c3) = (client_of(&cells["dc1"]), client_of(&cells["dc3"]));
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            c1.submit_raw(job(&format!("before-{i}"), "dc1:1,dc2:1"), BodyFormat::Json, None).await.expect("job").id,
        );
    }
    converged(&cells, 10).await;
    // What dc1 sent dc2 for those 10 jobs: the size of a resend of everything, per job.
    let sent_to_dc2 = |cells: &BTreeMap<&'static str, Cluster>| {
        let addrs: Vec<String> = cells["dc1"].members.iter().map(|m| m.addr.to_string()).collect();
        async move {
            let mut total = 0.0;
            for addr in addrs {
                let text = reqwest::get(format!("http://{addr}/metrics")).await.ok()?.text().await.ok()?;
                total += metric(&text, "titan_federation_push_bytes_total", r#"peer="dc2""#);
            }
            Some(total)
        }
    };
    let before = sent_to_dc2(&cells).await.expect("metrics");
    let per_job = before / 10.0;

    // dc2 dies, all of it; the others go on taking writes.
    cells.get_mut("dc2").expect("dc2").member(1).kill();
    for i in 0..10 {
        let client = if i % 2 == 0 { &c1 } else { &c3 };
        ids.push(
            client
                .submit_raw(job(&format!("during-{i}"), "dc2:2,dc3:1"), BodyFormat::Json, None)
                .await
                .expect("job")
                .id,
        );
    }
    c3.set_instances(&ids[0], &BTreeMap::from([("dc2".to_string(), 3)]), None).await.expect("scaled");
    c1.kill_job(&ids[1]).await.expect("killed");
    c3.set_enabled(&ids[2], false).await.expect("disabled");
    eventually(Duration::from_secs(10), "dc1 to call dc2 down", || {
        let c1 = c1.clone();
        async move {
            let cells = c1.cells().await.unwrap_or_default();
            cells.iter().any(|c| c.name == "dc2" && c.state == "down")
        }
    })
    .await;

    // Back from disk: it converges, and every acknowledged write is everywhere.
    let at_return = sent_to_dc2(&cells).await.expect("metrics");
    cells.get_mut("dc2").expect("dc2").restart(1);
    // Listings leave killed jobs out: 19 of the 20, the killed one asked for by id.
    let jobs = converged(&cells, 19).await;
    for id in ids.iter().filter(|id| **id != ids[1]) {
        assert!(jobs.contains_key(id), "job {id} is everywhere");
    }
    assert_eq!(jobs[&ids[0]].0.get("dc2"), Some(&3), "the scale made while dc2 was away");
    assert_eq!(jobs[&ids[2]].1, "disabled");
    for cell in cells.values() {
        let killed = client_of(cell).get_job(&ids[1]).await.expect("the killed job");
        assert_eq!(killed.state.as_str(), "killed");
    }
    // Its position survived its restart: dc1 sent it what changed (13 jobs at most), not all 20 again.
    let catch_up = sent_to_dc2(&cells).await.expect("metrics") - at_return;
    assert!(catch_up < 16.0 * per_job, "dc1 sent {catch_up} bytes to catch dc2 up, {per_job} per job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_cell_is_rebuilt_by_the_others_and_anti_entropy_carries_its_new_writes_its_stream_skips() {
    let mut cells = federation();
    start_all(&mut cells);
    for cell in cells.values() {
        cell.leader(Duration::from_secs(20)).await;
    }
    let (c1, c2) = (client_of(&cells["dc1"]), client_of(&cells["dc2"]));
    let own = c2.submit_raw(job("own", "dc1:1,dc2:1"), BodyFormat::Json, None).await.expect("job").id;
    // Many changes in dc2: the others' position in dc2's outbox goes far past what a rebuilt dc2 will count to.
    for n in 0..30 {
        c2.set_instances(&own, &BTreeMap::from([("dc2".to_string(), n % 3)]), None).await.expect("scaled");
    }
    c1.submit_raw(job("other", "dc1:1"), BodyFormat::Json, None).await.expect("job");
    converged(&cells, 2).await;

    // dc2 loses its disk and starts empty: the others rebuild it.
    let dc2 = cells.get_mut("dc2").expect("dc2");
    dc2.member(1).wipe();
    dc2.restart(1);
    dc2.leader(Duration::from_secs(20)).await;
    converged(&cells, 2).await;
    // Its first write since counts low in its new outbox, below where the others stand in its old one: the stream
    // skips it, a digest finds it.
    let after = c2.submit_raw(job("after-wipe", "dc2:1"), BodyFormat::Json, None).await.expect("job").id;
    let quota = titan_api::quota::QuotaSpec::parse(br#"{"locations": {"dc2": {"instances": 9}}}"#).expect("quota");
    c2.put_quota("after-wipe", &quota, None).await.expect("a quota set in the rebuilt cell");
    let jobs = converged(&cells, 3).await;
    assert!(jobs.contains_key(&after));
    eventually(CONVERGE, "the quota to reach dc1 (a digest finds it too)", || {
        let c1 = c1.clone();
        async move { c1.get_quota("after-wipe").await.is_ok_and(|q| q.version > 0) }
    })
    .await;
    let text = reqwest::get(format!("http://{}/metrics", cells["dc2"].members[0].addr)).await.unwrap().text().await;
    let text = text.expect("metrics");
    // Whichever peer's digest came first got it (and relayed it to the other).
    let repaired = metric(&text, "titan_federation_repaired_jobs_total", r#"peer="dc1""#)
        + metric(&text, "titan_federation_repaired_jobs_total", r#"peer="dc3""#);
    assert!(repaired >= 1.0, "dc2 repaired another cell through a digest: {repaired}");
    assert!(metric(&text, "titan_federation_digests_total", r#"result="differ""#) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_set_in_one_cell_is_enforced_by_the_others_and_its_deletion_reaches_them() {
    let mut cells = federation();
    start_all(&mut cells);
    for cell in cells.values() {
        cell.leader(Duration::from_secs(20)).await;
    }
    let (c1, c2, c3) = (client_of(&cells["dc1"]), client_of(&cells["dc2"]), client_of(&cells["dc3"]));
    let spec = titan_api::quota::QuotaSpec::parse(br#"{"locations": {"dc1": {"instances": 2}}}"#).expect("quota");
    c1.put_quota("fed", &spec, None).await.expect("set in dc1");
    let nowhere = titan_api::quota::QuotaSpec::parse(br#"{"locations": {"dc9": {"instances": 2}}}"#).expect("quota");
    let err = c1.put_quota("other", &nowhere, None).await.expect_err("dc9 is no cell's");
    assert_eq!(err.code(), Some(ErrorCode::UnknownLocation));
    // dc2 checks a job's dc1 count against dc1's quota once it has it.
    eventually(Duration::from_secs(10), "dc2 and dc3 to hold the quota", || {
        let (c2, c3) = (c2.clone(), c3.clone());
        async move { c2.get_quota("fed").await.is_ok() && c3.get_quota("fed").await.is_ok() }
    })
    .await;
    let over = c2.submit_raw(job("big", "dc1:3,dc2:1"), BodyFormat::Json, None).await.expect_err("over dc1's quota");
    assert_eq!(over.code(), Some(ErrorCode::QuotaExceeded));
    c2.submit_raw(job("fits", "dc1:2,dc2:1"), BodyFormat::Json, None).await.expect("within it");
    let view = c3.get_quota("fed").await.expect("view");
    assert!(view.history.iter().any(|h| h.cell.as_deref() == Some("dc1")), "{:?}", view.history);
    // Deleted in dc3: the limit is lifted everywhere.
    c3.delete_quota("fed").await.expect("deleted in dc3");
    eventually(Duration::from_secs(10), "the deletion to reach dc1", || {
        let c1 = c1.clone();
        async move { c1.get_quota("fed").await.map(|q| q.version == 0).unwrap_or(false) }
    })
    .await;
    c1.submit_raw(job("bigger", "dc1:5"), BodyFormat::Json, None).await.expect("no limit now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cells_admitting_at_once_may_overshoot_a_quota_and_its_own_cell_never_runs_the_excess() {
    let mut cells = federation();
    start_all(&mut cells);
    for cell in cells.values() {
        cell.leader(Duration::from_secs(20)).await;
    }
    let dc1 = &cells["dc1"];
    let addrs = dc1.members.iter().map(|m| m.addr.to_string()).collect();
    let _agent = sim::start(addrs, sim::registration("agent-dc1", 8.0, 8192, "dc1"), Arc::new(Record::default()));
    let (c1, c2, c3) = (client_of(dc1), client_of(&cells["dc2"]), client_of(&cells["dc3"]));
    let spec = titan_api::quota::QuotaSpec::parse(br#"{"locations": {"dc1": {"instances": 2}}}"#).expect("quota");
    c1.put_quota("fed", &spec, None).await.expect("set in dc1");
    eventually(Duration::from_secs(10), "dc2 and dc3 to hold the quota", || {
        let (c2, c3) = (c2.clone(), c3.clone());
        async move { c2.get_quota("fed").await.is_ok() && c3.get_quota("fed").await.is_ok() }
    })
    .await;
    // Two cells admit at once, each against what it knows: together they ask dc1 for 4 of its 2.
    let (x, y) = tokio::join!(
        c2.submit_raw(job("x", "dc1:2"), BodyFormat::Json, None),
        c3.submit_raw(job("y", "dc1:2"), BodyFormat::Json, None)
    );
    let admitted: Vec<String> = [x, y].into_iter().filter_map(|r| r.ok().map(|j| j.id)).collect();
    assert!(!admitted.is_empty());
    eprintln!("admitted at once: {} of 2 jobs", admitted.len());
    let want_pending = 2 * admitted.len() as u32 - 2;
    // dc1 runs 2 and holds the rest pending with reason quota, however long it is watched.
    eventually(CONVERGE, "dc1 to run 2 and hold the excess", || {
        let (c1, admitted) = (c1.clone(), admitted.clone());
        async move {
            let (mut running, mut pending, mut quota_reason) = (0, 0, false);
            for id in &admitted {
                let Ok(view) = c1.get_job(id).await else { return false };
                let Some(here) = view.locations.iter().find(|l| l.location == "dc1") else { return false };
                running += here.running;
                pending += here.pending;
                quota_reason |= here.pending_reason.as_deref().is_some_and(|r| r.starts_with("quota"));
            }
            running == 2 && pending == want_pending && (want_pending == 0 || quota_reason)
        }
    })
    .await;
    if want_pending > 0 {
        // The leader's scheduler counts them by reason.
        let addrs: Vec<String> = dc1.members.iter().map(|m| m.addr.to_string()).collect();
        eventually(Duration::from_secs(10), "dc1's leader to count tasks pending for quota", || {
            let addrs = addrs.clone();
            async move {
                let mut most = 0.0f64;
                for a in addrs {
                    let Ok(r) = reqwest::get(format!("http://{a}/metrics")).await else { continue };
                    let text = r.text().await.unwrap_or_default();
                    most = most.max(metric(&text, "titan_tasks_pending_by_reason", r#"reason="quota""#));
                }
                most >= 1.0
            }
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tasks = c1.list_tasks(&Default::default()).await.expect("tasks");
    let on = tasks.tasks.iter().filter(|t| t.state == titan_api::task::TaskState::Running).count();
    assert_eq!(on, 2, "never more than the quota runs");
    // Room appears (the quota raised): the excess starts.
    let raised = titan_api::quota::QuotaSpec::parse(br#"{"locations": {"dc1": {"instances": 4}}}"#).expect("quota");
    c1.put_quota("fed", &raised, None).await.expect("raised");
    eventually(CONVERGE, "the excess to start", || {
        let c1 = c1.clone();
        let want = 2 + want_pending as usize;
        async move {
            let Ok(list) = c1.list_tasks(&Default::default()).await else { return false };
            list.tasks.iter().filter(|t| t.state == titan_api::task::TaskState::Running).count() == want
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_converge_to_one_winner_and_scales_of_different_locations_both_stay() {
    let mut cells = federation();
    start_all(&mut cells);
    for cell in cells.values() {
        cell.leader(Duration::from_secs(20)).await;
    }
    let (c1, c2, c3) = (client_of(&cells["dc1"]), client_of(&cells["dc2"]), client_of(&cells["dc3"]));
    let id = c1.submit_raw(job("shared", "dc1:1,dc2:1,dc3:1"), BodyFormat::Json, None).await.expect("job").id;
    converged(&cells, 1).await;
    // The same register (dc1's count) from two cells at once, and different ones (dc2's, dc3's) from two others.
    let scale = |c: &Client, location: &'static str, n: u32| {
        let (c, id) = (c.clone(), id.clone());
        async move {
            c.set_instances(&id, &BTreeMap::from([(location.to_string(), n)]), None).await.expect("scaled");
        }
    };
    tokio::join!(scale(&c1, "dc1", 4), scale(&c3, "dc1", 7));
    tokio::join!(scale(&c2, "dc2", 5), scale(&c3, "dc3", 6));
    let jobs = converged(&cells, 1).await;
    let counts = &jobs[&id].0;
    assert!(counts["dc1"] == 4 || counts["dc1"] == 7, "one of the two writes wins: {counts:?}");
    assert_eq!((counts["dc2"], counts["dc3"]), (5, 6), "both scales of different locations stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_another_cell_may_not_send_is_refused_with_nothing_applied() {
    let mut cells = federation();
    start_all(&mut cells);
    let dc1 = &cells["dc1"];
    dc1.leader(Duration::from_secs(20)).await;
    let client = client_of(dc1);

    // A location no cell has.
    let err = client.submit_raw(job("x", "dc1:1,dc9:2"), BodyFormat::Json, None).await.expect_err("dc9");
    assert_eq!(err.code(), Some(ErrorCode::UnknownLocation), "{err}");
    assert!(err.to_string().contains("dc1, dc2, dc3"), "{err}");

    // A batch from a cell outside the federation, and one with a version far in the future.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let spec = titan_api::job::JobSpec::parse(&job("pushed", "dc1:1"), BodyFormat::Json).expect("spec");
    let pushed = |from: &str, ms: u64| {
        let v = titan_scheduler::federation::Hlc::new(ms, 0, from);
        let job = titan_scheduler::federation::ReplicatedJob {
            id: format!("pushed-{from}-{ms}"),
            spec: Arc::new(titan_scheduler::spec::Spec::from(&spec)),
            counts: BTreeMap::from([("dc1".to_string(), 1)]),
            enabled: true,
            versions: titan_scheduler::federation::JobVersions {
                spec: v.clone(),
                counts: BTreeMap::from([("dc1".to_string(), v.clone())]),
                enabled: v,
                killed: None,
            },
            created_at_ms: ms,
            origin: from.to_string(),
        };
        let push = titan_scheduler::federation::wire::Push {
            from: from.to_string(),
            upto: 1,
            jobs: vec![job],
            quotas: Vec::new(),
            locations: Vec::new(),
            tokens: Vec::new(),
        };
        rmp_serde::to_vec_named(&push).expect("encodes")
    };
    let http = reqwest::Client::new();
    let url = format!("http://{}{}", dc1.members[0].addr, titan_scheduler::federation::wire::PUSH_PATH);
    let post = |body: Vec<u8>| http.post(&url).header("content-type", "application/msgpack").body(body).send();
    let stranger = post(pushed("dc7", now)).await.expect("answer");
    assert_eq!(stranger.status(), 403);
    let far = post(pushed("dc2", now + 3_600_000)).await.expect("answer");
    assert!(far.status().is_success(), "the batch is taken, the job in it refused");
    let answer: titan_scheduler::federation::wire::Pushed =
        rmp_serde::from_slice(&far.bytes().await.expect("body")).expect("an answer");
    assert_eq!(answer.refused.len(), 1, "{answer:?}");
    assert!(answer.refused[0].1.contains("ahead"), "{answer:?}");
    let garbage = post(b"not msgpack".to_vec()).await.expect("answer");
    assert_eq!(garbage.status(), 400);
    let jobs = jobs_of(&client).await.expect("jobs");
    assert!(jobs.keys().all(|id| !id.starts_with("pushed-")), "nothing refused was applied: {jobs:?}");
    let metrics = reqwest::get(format!("http://{}/metrics", dc1.members[0].addr)).await.unwrap().text().await.unwrap();
    assert!(metric(&metrics, "titan_federation_refused_total", r#"reason="unknown_cell""#) >= 1.0);
    assert!(metric(&metrics, "titan_federation_refused_total", r#"reason="skew""#) >= 1.0);
}

#[test]
fn a_malformed_federation_setting_refuses_to_start_and_names_it() {
    let dir = tempfile::tempdir().expect("dir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_titan"))
        .args(["server", "--cell", "dc1", "--node-id", "1", "--listen", "127.0.0.1:1"])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--federation", "dc1=127.0.0.1:2"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("federation.cells"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_titan"))
        .args(["server", "--cell", "dc1", "--node-id", "1", "--listen", "127.0.0.1:1"])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--federation", "dc2=nowhere"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--federation"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// dc1, dc2 and dc3 whose federation traffic goes through a proxy per direction and destination member, so a test
/// can cut one cell off from the others while each keeps its own members' Raft traffic.
async fn federation_through_proxies() -> (BTreeMap<&'static str, Cluster>, Vec<((String, String), proxy::Proxy)>) {
    let mut cells = federation();
    let mut proxies = Vec::new();
    let names: Vec<&str> = cells.keys().copied().collect();
    let mut routes: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for from in &names {
        for to in names.iter().filter(|t| *t != from) {
            for m in &cells[to].members {
                let p = proxy::Proxy::start(m.addr).await;
                routes.entry((from.to_string(), to.to_string())).or_default().push(format!("\"{}\"", p.addr));
                proxies.push(((from.to_string(), to.to_string()), p));
            }
        }
    }
    for (name, cell) in cells.iter_mut() {
        let others: Vec<String> = names
            .iter()
            .filter(|n| *n != name)
            .map(|to| format!("{to} = [{}]", routes[&(name.to_string(), to.to_string())].join(", ")))
            .collect();
        cell.config = format!(
            "{TEST_CONFIG}[federation]\nheartbeat_ms = 200\nsuspect_ms = 1000\ndown_ms = 3000\ndigest_ms = 1000\ncells = {{ {} }}\n",
            others.join(", ")
        );
    }
    (cells, proxies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_cell_keeps_taking_writes_and_every_cell_converges_when_it_heals() {
    let (mut cells, proxies) = federation_through_proxies().await;
    start_all(&mut cells);
    for cell in cells.values() {
        cell.leader(Duration::from_secs(20)).await;
    }
    let (c1, c2) = (client_of(&cells["dc1"]), client_of(&cells["dc2"]));
    let shared = c1.submit_raw(job("shared", "dc1:1,dc2:1"), BodyFormat::Json, None).await.expect("job").id;
    converged(&cells, 1).await;

    // dc2 cut off from both others, both ways; every cell still takes writes.
    let touches_dc2 = |(from, to): &(String, String)| from == "dc2" || to == "dc2";
    for (route, p) in &proxies {
        if touches_dc2(route) {
            p.cut();
        }
    }
    let on_dc1 = c1.submit_raw(job("on-dc1", "dc1:1"), BodyFormat::Json, None).await.expect("dc1 takes writes").id;
    let on_dc2 = c2.submit_raw(job("on-dc2", "dc2:1"), BodyFormat::Json, None).await.expect("dc2 takes writes").id;
    c1.set_instances(&shared, &BTreeMap::from([("dc1".to_string(), 4)]), None).await.expect("scaled in dc1");
    c2.set_instances(&shared, &BTreeMap::from([("dc2".to_string(), 6)]), None).await.expect("scaled in dc2");
    eventually(Duration::from_secs(10), "dc1 to call dc2 down", || {
        let c1 = c1.clone();
        async move { c1.cells().await.unwrap_or_default().iter().any(|c| c.name == "dc2" && c.state == "down") }
    })
    .await;
    assert!(c2.get_job(&on_dc1).await.is_err(), "dc2 is cut off: it has not heard of dc1's new job");

    for (_, p) in &proxies {
        p.heal();
    }
    let jobs = converged(&cells, 3).await;
    assert!(jobs.contains_key(&on_dc1) && jobs.contains_key(&on_dc2), "both sides' new jobs are everywhere");
    let counts = &jobs[&shared].0;
    assert_eq!((counts["dc1"], counts["dc2"]), (4, 6), "both sides' scales stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_cell_takes_any_location_and_says_which_it_cannot_see() {
    let cell = Cluster::start(1);
    cell.leader(Duration::from_secs(20)).await;
    let client = cell.members[0].client();
    let alone = client.submit_raw(job("alone", "dc1:1,dc9:2"), BodyFormat::Json, None).await.expect("taken");
    assert_eq!(alone.unseen_locations, ["dc9"]);
    let only_here = client.submit_raw(job("here", "dc1:1"), BodyFormat::Json, None).await.expect("taken");
    assert!(only_here.unseen_locations.is_empty());
    let view = client.get_job(&alone.id).await.expect("job");
    let states: Vec<(String, String)> =
        view.locations.iter().map(|l| (l.location.clone(), l.cell_state.clone())).collect();
    assert_eq!(states, [("dc1".to_string(), "self".to_string()), ("dc9".to_string(), "unknown".to_string())]);
}
