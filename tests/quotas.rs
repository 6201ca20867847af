//! Location quotas through the REST API and the CLI of a real cell of three members: admission at the boundary on
//! submit, update, scale and enable; a refusal writes nothing on any member; the quota's record, history, events and
//! metrics; bad quotas refused naming the field.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use titan_api::job::{BodyFormat, JobSpec};
use titan_api::quota::QuotaSpec;
use titan_api::{Client, ErrorCode};

fn job(name: &str, group: &str, location: &str, cpus: f64) -> Vec<u8> {
    format!(
        r#"{{"name":"{name}","applicationName":"app-{name}","capacityGroup":"{group}","location":"{location}","cpus":{cpus},"memory":256,"image":"busybox"}}"#
    )
    .into_bytes()
}

fn quota(body: &str) -> QuotaSpec {
    QuotaSpec::parse(body.as_bytes()).expect("a valid quota")
}

async fn job_ids_everywhere(cell: &Cluster) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for m in &cell.members {
        let c = m.client().consistent();
        out.push(job_ids(&c).await.unwrap_or_default());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_holds_each_limit_exactly_and_a_refusal_writes_nothing_anywhere() {
    let cell = Cluster::start(3);
    cell.leader(Duration::from_secs(20)).await;
    let client = Client::new(&cell.addrs().replace('|', ","));

    // dc1: 4 instances and 2 cpus for group "shop"; dc2 is not limited.
    let q = client
        .put_quota(
            "shop",
            &quota(r#"{"locations": {"dc1": {"instances": 4, "cpus": 2, "guaranteed": {"cpus": 1}}}}"#),
            None,
        )
        .await
        .expect("quota set");
    assert_eq!(q.version, 1);

    // A dry run answers the same check and writes nothing.
    let leader = cell.leader(Duration::from_secs(5)).await;
    let base = format!("http://{}", cell.members[leader as usize - 1].addr);
    let http = reqwest::Client::new();
    let dry = |path: &str, method: reqwest::Method, body: Vec<u8>| {
        http.request(method, format!("{base}{path}?dryRun=true"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let fits = dry("/v1/jobs", reqwest::Method::POST, job("a", "shop", "dc1:4,dc2:100", 0.5)).await.expect("answer");
    assert_eq!(fits.status(), 200);
    let answer: titan_api::quota::DryRun = fits.json().await.expect("a dry run");
    let dc1 = answer.locations.iter().find(|l| l.location == "dc1").expect("dc1");
    assert!(answer.dry_run && dc1.used.instances == 4 && dc1.used.cpus == 2.0, "{answer:?}");
    let over = dry("/v1/jobs", reqwest::Method::POST, job("a", "shop", "dc1:5", 0.5)).await.expect("answer");
    assert_eq!(over.status(), 403);
    assert!(job_ids(&client).await.expect("jobs").is_empty(), "a dry run writes nothing");

    // Exactly at the cpu limit: 4 x 0.5.
    let a =
        client.submit_raw(job("a", "shop", "dc1:4,dc2:100", 0.5), BodyFormat::Json, None).await.expect("at the limit");
    // One more instance anywhere in dc1 is over: submit, scale, update, enable.
    let over = client.submit_raw(job("b", "shop", "dc1:1", 0.5), BodyFormat::Json, None).await.expect_err("over");
    assert_eq!(over.code(), Some(ErrorCode::QuotaExceeded));
    let text = over.to_string();
    for part in ["shop", "dc1", "limit", "used", "asked"] {
        assert!(text.contains(part), "the refusal names {part}: {text}");
    }
    assert!(text.contains("403"), "{text}");
    let path = format!("/v1/jobs/{}/instances", a.id);
    let dry_scale = dry(&path, reqwest::Method::PUT, br#"{"locations": {"dc1": 5}}"#.to_vec()).await.expect("answer");
    assert_eq!(dry_scale.status(), 403, "a dry-run scale is checked like the scale");
    let scale = client.set_instances(&a.id, &BTreeMap::from([("dc1".to_string(), 5)]), None).await;
    assert_eq!(scale.expect_err("scale over").code(), Some(ErrorCode::QuotaExceeded));
    let bigger = JobSpec::parse(&job("a", "shop", "dc1:4,dc2:100", 0.75), BodyFormat::Json).expect("spec");
    let update = client.update_job(&a.id, &bigger, None).await;
    assert_eq!(update.expect_err("update over").code(), Some(ErrorCode::QuotaExceeded));
    // Scaling down and another group are admitted; a disabled job frees its share, and enabling checks again.
    client.set_instances(&a.id, &BTreeMap::from([("dc1".to_string(), 3)]), None).await.expect("down");
    let other = client.submit_raw(job("c", "other", "dc1:50", 1.0), BodyFormat::Json, None).await.expect("unlimited");
    client.set_enabled(&a.id, false).await.expect("disabled");
    let b = client.submit_raw(job("b", "shop", "dc1:2", 0.5), BodyFormat::Json, None).await.expect("room now");
    let enable = client.set_enabled(&a.id, true).await;
    assert_eq!(enable.expect_err("enable over").code(), Some(ErrorCode::QuotaExceeded));
    client.kill_job(&b.id).await.expect("killed");
    client.set_enabled(&a.id, true).await.expect("room again");

    // Nothing refused was written, on any member: the three admitted jobs (b killed since), nothing else.
    let mut want = vec![a.id.clone(), b.id.clone(), other.id.clone()];
    want.sort();
    eventually(Duration::from_secs(10), "every member holds the same three jobs", || {
        let want = want.clone();
        let cell = &cell;
        async move { job_ids_everywhere(cell).await.iter().all(|ids| *ids == want) }
    })
    .await;

    // The record: limit and desired usage per location, and its history.
    let view = client.get_quota("shop").await.expect("quota view");
    let dc1 = view.locations.iter().find(|l| l.location == "dc1").expect("dc1");
    assert_eq!((dc1.used.instances, dc1.used.cpus), (3, 1.5));
    assert_eq!(dc1.limit.as_ref().and_then(|l| l.instances), Some(4));
    let dc2 = view.locations.iter().find(|l| l.location == "dc2").expect("dc2 has usage and no limit");
    assert!(dc2.limit.is_none() && dc2.used.instances == 100);
    assert_eq!(view.history.len(), 1);
    let list = client.list_quotas().await.expect("list");
    assert!(list.quotas.iter().any(|q| q.group == "other" && q.version == 0), "a group with usage and no quota");

    // Metrics a dashboard plots.
    let leader = cell.leader(Duration::from_secs(5)).await;
    let addr = cell.members[leader as usize - 1].addr;
    let scrape = || async move { reqwest::get(format!("http://{addr}/metrics")).await.ok()?.text().await.ok() };
    // The gauges are kept current every second.
    eventually(Duration::from_secs(5), "the quota's gauges", || async {
        scrape().await.is_some_and(|m| {
            metric(&m, "titan_quota_limit", r#"resource="instances""#) == 4.0
                && metric(&m, "titan_quota_used", r#"resource="cpus""#) == 1.5
        })
    })
    .await;
    let metrics = scrape().await.expect("metrics");
    let rejected: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("titan_quota_rejections_total{") && l.contains(r#"group="shop""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(rejected >= 1.0, "rejections counted on the leader: {rejected}");

    // Lowering below usage refuses only growth; deleting lifts the limit.
    let v = client
        .put_quota("shop", &quota(r#"{"locations": {"dc1": {"instances": 1}}}"#), Some(1))
        .await
        .expect("lowered");
    assert_eq!(v.version, 2);
    let stale = client.put_quota("shop", &quota(r#"{"locations": {}}"#), Some(1)).await;
    assert_eq!(stale.expect_err("stale If-Match").code(), Some(ErrorCode::VersionMismatch));
    client.set_instances(&a.id, &BTreeMap::from([("dc1".to_string(), 2)]), None).await.expect("down is fine");
    let up = client.set_instances(&a.id, &BTreeMap::from([("dc1".to_string(), 3)]), None).await;
    assert_eq!(up.expect_err("up is not").code(), Some(ErrorCode::QuotaExceeded));
    client.delete_quota("shop").await.expect("deleted");
    client.set_instances(&a.id, &BTreeMap::from([("dc1".to_string(), 30)]), None).await.expect("no limit now");
    let gone = client.delete_quota("shop").await;
    assert_eq!(gone.expect_err("no quota").code(), Some(ErrorCode::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_quotas_are_refused_naming_the_field_and_the_cli_sets_and_shows_them() {
    let cell = Cluster::start(1);
    cell.leader(Duration::from_secs(20)).await;
    let addr = cell.members[0].addr.to_string();
    let http = reqwest::Client::new();
    let put = |group: &str, body: &'static str| {
        http.put(format!("http://{addr}/v1/quotas/{group}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (group, body, field) in [
        ("shop", r#"{"locations": {"dc1": {"gpus": 1}}}"#, "gpus"),
        ("shop", r#"{"locations": {"dc1": {"instances": -1}}}"#, ""),
        ("shop", r#"{"locations": {"dc1": {"cpus": "lots"}}}"#, ""),
        ("shop", r#"{"locations": {"dc1": {"cpus": 2, "guaranteed": {"cpus": 3}}}}"#, "locations.dc1.guaranteed.cpus"),
        ("shop", r#"{"locations": {"Dc 1": {}}}"#, "locations.Dc 1"),
        ("a%2Fb", r#"{"locations": {}}"#, "group"),
    ] {
        let resp = put(group, body).await.expect("answer");
        assert_eq!(resp.status(), 400, "{body}");
        let err: titan_api::ApiError = resp.json().await.expect("error body");
        if !field.is_empty() {
            assert_eq!(err.field.as_deref(), Some(field), "{body}: {err:?}");
        }
    }
    let client = cell.members[0].client();
    assert!(client.list_quotas().await.expect("list").quotas.is_empty(), "nothing written");

    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("q.json");
    std::fs::write(&file, r#"{"locations": {"dc1": {"instances": 40, "cpus": 64, "memoryMiB": 131072}}}"#).unwrap();
    let titan = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_titan"))
            .args(args)
            .args(["--addr", &addr])
            .output()
            .expect("titan")
    };
    let set = titan(&["quota", "set", "shop", file.to_str().unwrap()]);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let show = titan(&["quota", "show", "shop"]);
    let out = String::from_utf8_lossy(&show.stdout);
    assert!(out.contains("dc1") && out.contains("0/40") && out.contains("0/131072"), "{out}");
    let list = titan(&["quota", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("shop"));
    let delete = titan(&["quota", "delete", "shop"]);
    assert!(delete.status.success());
    let events = client.get_quota("shop").await;
    assert_eq!(events.expect_err("deleted").code(), Some(ErrorCode::NotFound));
}
