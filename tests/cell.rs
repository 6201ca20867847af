//! A real 3-member cell on loopback: acknowledged writes survive leader loss and full restarts, a wiped member
//! catches up from a snapshot, writes sent to followers are forwarded, and every malformed request is refused
//! without writing anything.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use titan_api::job::BodyFormat;
use titan_api::view::AddMember;
use titan_api::{Client, ErrorCode};

const LEADER_WAIT: Duration = Duration::from_secs(20);
const CONVERGE: Duration = Duration::from_secs(30);

async fn submit(client: &Client, name: &str) -> Option<String> {
    client.submit_raw(spec(name).into_bytes(), BodyFormat::Json, None).await.ok().map(|j| j.id)
}

/// Waits until every running member lists exactly `want`.
async fn all_members_have(cluster: &Cluster, want: &BTreeSet<String>) {
    for m in cluster.running() {
        let client = m.client();
        eventually(CONVERGE, &format!("member {} to list every acknowledged job", m.id), || {
            let client = client.clone();
            async move {
                match job_ids(&client).await {
                    Some(ids) => ids.into_iter().collect::<BTreeSet<_>>() == *want,
                    None => false,
                }
            }
        })
        .await;
    }
}

/// One write at a time (nothing else in flight): by default the leader sends each new entry to its followers while
/// it syncs it itself, counts those early appends, and every acknowledged job is on every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_sends_new_entries_before_its_own_sync() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader(LEADER_WAIT).await;
    let member = cluster.running().find(|m| m.id == leader).expect("the leader runs");
    let client = member.client();
    let mut acked = BTreeSet::new();
    for i in 0..30 {
        acked.insert(submit(&client, &format!("job-{i}")).await.expect("accepted"));
    }
    all_members_have(&cluster, &acked).await;
    let metrics = reqwest::get(format!("http://{}/metrics", member.addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let early = |outcome: &str| metric(&metrics, "titan_raft_early_appends_total", &format!(r#"outcome="{outcome}""#));
    // Two per entry (one per follower) when nothing else was in flight; the scheduler's own proposals make some busy.
    let sent = early("sent");
    assert!(sent >= 10.0, "early appends sent: {sent}\n{metrics}");
    // One write at a time: Raft's own append of those entries is the same bytes, answered by the early one's answer.
    let used = metric(&metrics, "titan_raft_early_answers_used_total", "");
    assert!(used >= 10.0 && used <= sent, "early answers used: {used} of {sent}\n{metrics}");
}

/// A member alone cannot elect a leader in a 3-member cell: it answers 503 with the error body (and logs no failure,
/// a probe asks until the answer changes) until its peers start and one leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_a_leader() {
    let mut cluster = Cluster::configure(3, TEST_CONFIG);
    cluster.restart(1);
    let url = format!("http://{}/readyz", cluster.members[0].addr);
    let http = reqwest::Client::new();
    let mut answered = 0;
    // Several election timeouts (300-600 ms here), so a member that could elect itself would have.
    for _ in 0..15 {
        if let Ok(r) = http.get(&url).send().await {
            assert_eq!(r.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
            let body: serde_json::Value = r.json().await.expect("an error body");
            assert_eq!(body["code"], "unavailable", "{body}");
            answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered >= 5, "the lone member answered {answered} of 15 probes");
    let log = std::fs::read_to_string(cluster.members[0].dir.join("member.log")).unwrap_or_default();
    assert!(!log.contains("request failed"), "a not-ready answer was logged as a failure:\n{log}");
    cluster.restart(2);
    cluster.restart(3);
    cluster.leader(LEADER_WAIT).await;
    eventually(LEADER_WAIT, "member 1 ready", || async { cluster.members[0].client().ready().await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_jobs_survive_killing_the_leader_mid_stream() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader(LEADER_WAIT).await;
    let mut acked = BTreeSet::new();
    let mut killed = None;
    // A bounded stream of submissions, spread over the members still running; the leader dies a third of the way in.
    for i in 0..150 {
        if i == 50 {
            cluster.member(leader).kill();
            killed = Some(leader);
        }
        let targets: Vec<Client> = cluster.running().map(|m| m.client()).collect();
        let client = &targets[i % targets.len()];
        if let Some(id) = submit(client, &format!("job-{i}")).await {
            assert!(acked.insert(id), "an id was acknowledged twice");
        }
    }
    assert!(acked.len() >= 140, "the cell kept accepting writes after re-election: {} of 150", acked.len());
    let new_leader = cluster.leader(LEADER_WAIT).await;
    assert_ne!(Some(new_leader), killed);
    cluster.restart(leader);
    all_members_have(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_finds_the_same_state() {
    let mut cluster = Cluster::start(3);
    cluster.leader(LEADER_WAIT).await;
    let client = cluster.members[0].client().user("carol").reason("launch");
    let mut acked = BTreeSet::new();
    for i in 0..30 {
        acked.insert(submit(&client, &format!("job-{i}")).await.expect("accepted"));
    }
    let first = acked.iter().next().cloned().expect("30 jobs");
    let counts = [("dc1".to_string(), 7)].into_iter().collect();
    client.set_instances(&first, &counts, Some(1)).await.expect("scaled");
    client.set_enabled(&first, false).await.expect("disabled");
    // The job itself, without its tasks and their figures per location, which the scheduler goes on changing (no
    // agent runs them here).
    let job_only = |mut j: titan_api::view::JobView| {
        j.tasks = None;
        j.locations.clear();
        j
    };
    let before = job_only(client.get_job(&first).await.expect("present"));

    for m in &mut cluster.members {
        m.kill();
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.leader(LEADER_WAIT).await;
    all_members_have(&cluster, &acked).await;
    for m in cluster.running() {
        let job = job_only(m.client().get_job(&first).await.expect("present after restart"));
        assert_eq!(job, before, "member {}", m.id);
        let history = m.client().job_history(&first).await.expect("history");
        let what: Vec<&str> = history.iter().map(|h| h.what.as_str()).collect();
        assert_eq!(what, vec!["created", "instances dc1=7", "disabled"]);
        assert!(history.iter().all(|h| h.who == "carol" && h.why.as_deref() == Some("launch")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_member_is_re_added_and_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::start(3);
    cluster.leader(LEADER_WAIT).await;
    let client = cluster.members[0].client();
    let mut acked = BTreeSet::new();
    // Enough entries for several snapshots, so the log the new member needs is gone.
    for i in 0..250 {
        acked.insert(submit(&client, &format!("job-{i}")).await.expect("accepted"));
    }
    let leader = cluster.leader(LEADER_WAIT).await;
    let victim = if leader == 3 { 2 } else { 3 };
    let leader_client = cluster.member(leader).client();
    let view = leader_client.remove_member(victim).await.expect("member removed");
    assert!(view.members.iter().all(|m| m.id != victim));
    cluster.member(victim).wipe();
    cluster.member(victim).start("", TEST_CONFIG);
    let addr = cluster.member(victim).addr.to_string();
    // Asked of a follower when there is one: the admin call is forwarded to the leader.
    let asked =
        cluster.running().find(|m| m.id != leader && m.id != victim).map(|m| m.client()).unwrap_or(leader_client);
    let view = asked.add_member(&AddMember { id: victim, addr }).await.expect("member added");
    assert!(view.members.iter().any(|m| m.id == victim && m.role == "follower"), "{view:?}");
    all_members_have(&cluster, &acked).await;
    let status = cluster.member(victim).client().cluster().await.expect("status");
    assert!(status.snapshot_index.is_some(), "the wiped member started from a snapshot: {status:?}");
    // The snapshot it installed is one file of its own, whose size its metrics give.
    // (It may be building a snapshot of its own meanwhile, as every 100 entries here: wait until none is half-written.)
    let snapshots = cluster.member(victim).dir.join("data/raft/snapshots");
    let list = || -> Vec<std::ffi::OsString> {
        std::fs::read_dir(&snapshots).expect("snapshot dir").flatten().map(|e| e.file_name()).collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while list().iter().any(|f| f.to_string_lossy().ends_with(".tmp")) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let files = list();
    assert_eq!(files.len(), 1, "one snapshot file: {files:?}");
    let size = std::fs::metadata(snapshots.join(&files[0])).expect("snapshot file").len();
    let addr = cluster.member(victim).addr;
    let metrics = reqwest::get(format!("http://{addr}/metrics")).await.expect("metrics").text().await.expect("text");
    assert_eq!(metric(&metrics, "titan_raft_snapshot_bytes", "") as u64, size, "{metrics}");
    // It came in pieces of at most `snapshot_chunk_kib` (16 KiB here), one call each.
    assert!(size > 4 * 16 * 1024, "a snapshot of several pieces: {size} bytes");
    let leader_addr = cluster.member(leader).addr;
    let leader_metrics =
        reqwest::get(format!("http://{leader_addr}/metrics")).await.expect("metrics").text().await.expect("text");
    let calls = metric(&leader_metrics, "titan_raft_rpc_seconds_count", r#"rpc="snapshot""#) as u64;
    assert!(calls >= size.div_ceil(16 * 1024), "{calls} snapshot calls for {size} bytes");
    // And it starts again from that file.
    cluster.member(victim).kill();
    cluster.member(victim).start("", TEST_CONFIG);
    all_members_have(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_forward_writes_and_idempotency_keys_hold() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader(LEADER_WAIT).await;
    let follower = cluster.running().find(|m| m.id != leader).expect("a follower").client();
    let body = || spec("web").into_bytes();
    let first = follower.submit_raw(body(), BodyFormat::Json, Some("retry-1")).await.expect("accepted");
    let again = follower.submit_raw(body(), BodyFormat::Json, Some("retry-1")).await.expect("accepted");
    assert_eq!(first, again, "a retried submission gets the first answer");
    let other = spec("api").into_bytes();
    let err = follower.submit_raw(other, BodyFormat::Json, Some("retry-1")).await.expect_err("reused key");
    assert_eq!(err.code(), Some(ErrorCode::Conflict));
    for m in cluster.running() {
        let c = m.client();
        eventually(CONVERGE, "the job on every member", || {
            let c = c.clone();
            let id = first.id.clone();
            async move { c.get_job(&id).await.is_ok() }
        })
        .await;
    }
    let ids = job_ids(&cluster.members[0].client()).await.expect("listing");
    assert_eq!(ids, vec![first.id.clone()]);
    // Compare-and-set on the version, through a follower.
    let counts = [("dc1".to_string(), 1)].into_iter().collect();
    let err = follower.set_instances(&first.id, &counts, Some(9)).await.expect_err("stale version");
    assert_eq!(err.code(), Some(ErrorCode::VersionMismatch));
    let ok = follower.set_instances(&first.id, &counts, Some(1)).await.expect("current version");
    assert_eq!(ok.version, 2);
}

/// Sends a raw request and returns (status, error code, field).
async fn raw(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Option<String>, Option<String>) {
    let mut r = http.request(method, url).body(body);
    if let Some(ct) = content_type {
        r = r.header("content-type", ct);
    }
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.expect("the member answers");
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
    (status, s("code"), s("field"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_with_the_field_and_write_nothing() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader(LEADER_WAIT).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", cluster.running().find(|m| m.id != leader).expect("a follower").addr);
    let jobs = format!("{base}/v1/jobs");
    let json = Some("application/json");
    let valid = spec("web");
    let with = |from: &str, to: &str| valid.replace(from, to).into_bytes();
    let big = format!(r#"{{"name":"web","pad":"{}"}}"#, "x".repeat(1024 * 1024 + 10)).into_bytes();
    use reqwest::Method;
    // (what, content type, body, status, code, field)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("unknown field", json, with(r#""cpus""#, r#""colour":"red","cpus""#), 400, "invalid_spec", Some("colour")),
        ("negative memory", json, with(r#""memory":256"#, r#""memory":-1"#), 400, "invalid_spec", Some("memory")),
        ("negative cpus", json, with(r#""cpus":0.5"#, r#""cpus":-2"#), 400, "invalid_spec", Some("cpus")),
        ("non-numeric cpus", json, with(r#""cpus":0.5"#, r#""cpus":"two""#), 400, "invalid_spec", Some("cpus")),
        ("malformed location", json, with("dc1:3,dc2:2", "dc1-3"), 400, "invalid_spec", Some("location")),
        ("duplicate location", json, with("dc1:3,dc2:2", "dc1:3,dc1:2"), 400, "invalid_spec", Some("location")),
        (
            "nested unknown field",
            json,
            with(r#""env":{"A":"b"}"#, r#""healthCheck":{"type":"tcp","port":0,"bogus":1}"#),
            400,
            "invalid_spec",
            Some("healthCheck.bogus"),
        ),
        ("broken json", json, b"{\"name\": ".to_vec(), 400, "malformed_body", None),
        ("nested too deep", json, "[".repeat(1 << 19).into_bytes(), 400, "body_too_complex", Some("body")),
        (
            "nested too deep",
            Some("application/yaml"),
            "[".repeat(1 << 20).into_bytes(),
            400,
            "body_too_complex",
            Some("body"),
        ),
        (
            "a schedule that never fires",
            json,
            with(r#""cpus""#, r#""type":"batch","schedule":"0 0 31 2 *","cpus""#),
            400,
            "invalid_spec",
            Some("schedule"),
        ),
        (
            "wrong content type",
            Some("text/plain"),
            valid.clone().into_bytes(),
            415,
            "unsupported_media_type",
            Some("Content-Type"),
        ),
        ("no content type", None, valid.clone().into_bytes(), 415, "unsupported_media_type", Some("Content-Type")),
        ("body over 1 MiB", json, big, 413, "payload_too_large", None),
    ];
    for (what, ct, body, status, code, field) in cases {
        let got = raw(&http, Method::POST, jobs.clone(), ct, &[], body).await;
        assert_eq!(got, (status, Some(code.to_string()), field.map(String::from)), "{what}");
    }
    let got =
        raw(&http, Method::POST, jobs.clone(), json, &[("idempotency-key", "")], valid.clone().into_bytes()).await;
    assert_eq!(got, (400, Some("invalid_parameter".into()), Some("Idempotency-Key".into())), "empty idempotency key");
    let got = raw(&http, Method::GET, format!("{jobs}?colour=red"), None, &[], vec![]).await;
    assert_eq!((got.0, got.1.as_deref()), (400, Some("invalid_parameter")), "unknown query parameter");
    let got = raw(&http, Method::GET, format!("{jobs}?state=sleeping"), None, &[], vec![]).await;
    assert_eq!(got, (400, Some("invalid_parameter".into()), Some("state".into())), "unknown state filter");
    let got = raw(&http, Method::GET, format!("{jobs}/nope"), None, &[], vec![]).await;
    assert_eq!((got.0, got.1.as_deref()), (404, Some("not_found")), "unknown job");
    let got =
        raw(&http, Method::PUT, format!("{jobs}/nope/instances"), json, &[], br#"{"location":"dc1:1"}"#.to_vec()).await;
    assert_eq!((got.0, got.1.as_deref()), (404, Some("not_found")), "scaling an unknown job");
    let got = raw(
        &http,
        Method::PUT,
        format!("{jobs}/nope/instances"),
        json,
        &[("if-match", "abc")],
        br#"{"location":"dc1:1"}"#.to_vec(),
    )
    .await;
    assert_eq!(got, (400, Some("invalid_parameter".into()), Some("If-Match".into())), "bad If-Match");
    let got = raw(
        &http,
        Method::PUT,
        format!("{jobs}/nope/instances"),
        json,
        &[("if-match", "W/\"1\"")],
        br#"{"location":"dc1:1"}"#.to_vec(),
    )
    .await;
    assert_eq!(got, (412, Some("version_mismatch".into()), Some("If-Match".into())), "a weak If-Match never matches");
    let got = raw(&http, Method::GET, format!("{base}/v2/everything"), None, &[], vec![]).await;
    assert_eq!((got.0, got.1.as_deref()), (404, Some("not_found")), "unknown route");

    // Nothing was written, on any member; YAML is accepted.
    for m in cluster.running() {
        assert_eq!(job_ids(&m.client()).await, Some(vec![]), "member {}", m.id);
    }
    let yaml = "name: web\napplicationName: shop\nlocation: dc1:1\ncpus: 1\nmemory: 64\nimage: busybox\n";
    let got = raw(&http, Method::POST, jobs, Some("application/yaml"), &[], yaml.as_bytes().to_vec()).await;
    assert_eq!(got.0, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_reads_on_a_follower_see_every_acknowledged_write() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader(LEADER_WAIT).await;
    let leader_client = cluster.running().find(|m| m.id == leader).expect("the leader").client();
    let followers: Vec<Client> =
        cluster.running().filter(|m| m.id != leader).map(|m| m.client().consistent()).collect();
    // Each write, acknowledged by the leader, is read at once from a follower: no waiting, no retry. (Without
    // `consistent` this fails: a follower applies a commit only when the leader next tells it.)
    for i in 0..30 {
        let job = leader_client.submit_raw(spec(&format!("job-{i}")).into_bytes(), BodyFormat::Json, None).await;
        let id = job.expect("accepted").id;
        let follower = &followers[i % followers.len()];
        assert_eq!(follower.get_job(&id).await.expect("visible at once").id, id);
    }
    let list = followers[0].list_jobs(&titan_api::view::ListQuery::default()).await.expect("listed");
    assert_eq!(list.jobs.len(), 30);
    // A bad value is a client error naming the parameter.
    let http = reqwest::Client::new();
    let url = format!("{}/v1/jobs/x?consistent=maybe", followers[0].base());
    assert_eq!(http.get(url).send().await.expect("answer").status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_at_an_existing_members_address_is_refused_and_the_cell_keeps_writing() {
    let cluster = Cluster::start(1);
    cluster.leader(LEADER_WAIT).await;
    let client = cluster.members[0].client();
    // (An address nothing answers at is tests/membership.rs's.) Its own address under a second id: the member would have answered Raft calls to itself (openraft panics).
    let own = cluster.members[0].addr.to_string();
    let err = client.add_member(&AddMember { id: 8, addr: own }).await.expect_err("the address is member 1's");
    assert_eq!(err.code(), Some(ErrorCode::Conflict), "{err}");
    // The lone member still commits on its own: nothing it cannot reach joined its quorum.
    assert!(submit(&client, "after").await.is_some(), "a write after the refused additions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_asked_to_end_after_a_while_ends_and_a_bad_bound_is_refused() {
    let cluster = Cluster::start(1);
    cluster.leader(LEADER_WAIT).await;
    let client = cluster.members[0].client();
    submit(&client, "seen").await.expect("accepted");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let url = |query: &str| format!("http://{}/v1/events?{query}", cluster.members[0].addr);
    let resp = http.get(url("from=0&timeoutSeconds=1")).send().await.expect("answered");
    assert_eq!(resp.status(), 200);
    // The whole body arrives: the stream ended by itself, well before the client's own timeout.
    let body = resp.text().await.expect("the stream ends");
    assert!(body.contains("event: job"), "the backlog came first: {body}");
    for bad in ["timeoutSeconds=0", "timeoutSeconds=86401", "timeoutSeconds=x"] {
        let resp = http.get(url(bad)).send().await.expect("answered");
        assert_eq!(resp.status(), 400, "{bad}");
    }
    let err: serde_json::Value =
        http.get(url("timeoutSeconds=0")).send().await.expect("answered").json().await.expect("json");
    assert_eq!(err["field"], "timeoutSeconds", "{err}");
}

/// What a follower cannot answer itself it asks of the leader in one typed call over the kept Raft stream: an
/// agent's heartbeat (leases live on the leader) and membership changes, with the leader's refusals relayed as
/// they were. Every member lists its workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_asks_its_leader_over_the_stream_and_relays_its_refusals() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader(LEADER_WAIT).await;
    let leader_client = cluster.running().find(|m| m.id == leader).expect("the leader").client();
    let follower = cluster.running().find(|m| m.id != leader).expect("a follower");
    let client = follower.client();

    let reg = sim::registration("agent-f", 4.0, 4096, "z1");
    let epoch = client.register_agent(&reg).await.expect("registered through the follower").lease_epoch;
    let lease = client.heartbeat("agent-f", epoch).await.expect("a lease from the leader");
    assert_eq!(lease.lease_epoch, epoch);
    let stale = client.heartbeat("agent-f", epoch + 7).await.expect_err("a stale epoch");
    assert_eq!(stale.code(), Some(ErrorCode::Conflict), "{stale}");
    let unknown = client.heartbeat("no-such-agent", 1).await.expect_err("an unknown agent");
    assert_eq!(unknown.code(), Some(ErrorCode::NotFound), "{unknown}");
    let absent = client.remove_member(42).await.expect_err("no member 42");
    assert_eq!(absent.code(), Some(ErrorCode::NotFound), "{absent}");

    let metrics = reqwest::get(format!("http://{}/metrics", follower.addr)).await.unwrap().text().await.unwrap();
    let calls = metric(&metrics, "titan_raft_rpc_seconds_count", r#"rpc="leader""#);
    assert!(calls >= 4.0, "four calls to the leader went over the stream, counted {calls}");
    // Everything a member exports is in a catalogue, which is what dashboards may query.
    let catalogues = [titan_scheduler::metrics::ALL, titan_api::metrics::http::ALL].concat();
    for line in metrics.lines().filter(|l| l.starts_with("titan_")) {
        let sample = line.split(['{', ' ']).next().unwrap_or_default();
        assert!(titan_api::metrics::known(&catalogues, sample), "{sample} is in no catalogue");
    }

    let workers = |view: titan_api::view::ClusterView| {
        view.workers.into_iter().map(|w| (w.name, w.status)).collect::<std::collections::BTreeMap<_, _>>()
    };
    let here = workers(client.cluster().await.expect("cluster view"));
    assert_eq!(
        here.keys().map(String::as_str).collect::<Vec<_>>(),
        ["heartbeats", "levers", "metrics", "proposer-1", "proposer-2", "scheduler"]
    );
    assert!(here["heartbeats"].starts_with("3 heartbeats forwarded"), "{here:?}");
    assert_eq!(here["scheduler"], "following");
    eventually(CONVERGE, "the leader's scheduler to say it leads", || {
        let leader_client = leader_client.clone();
        async move {
            let view = leader_client.cluster().await;
            view.is_ok_and(|v| workers(v)["scheduler"].starts_with("leading"))
        }
    })
    .await;
}
