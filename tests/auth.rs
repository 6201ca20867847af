//! Authentication and roles against real cells with `[auth] enabled = true`: every operation of `/openapi.json`
//! by role (read from the document, so a new route without a rule here fails), owners and agents held to their own
//! objects, revocation everywhere within a second, bad headers refused without a write, the bootstrap token.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use titan_api::Client;

/// Who may use each operation, as the issue gives the roles: written out here, apart from the code's table.
fn expected(method: &str, path: &str) -> Option<&'static [&'static str]> {
    const ANY: &[&str] = &["admin", "sre", "owner", "reader", "agent", "none"];
    const READ: &[&str] = &["admin", "sre", "owner", "reader"];
    const JOBS: &[&str] = &["admin", "owner"];
    const LOGS: &[&str] = &["admin", "sre", "owner"];
    const SRE: &[&str] = &["admin", "sre"];
    const ADMIN: &[&str] = &["admin"];
    const AGENT: &[&str] = &["admin", "agent"];
    Some(match (method, path) {
        ("GET", "/readyz" | "/healthz" | "/openapi.json") => ANY,
        ("GET", "/v1/acl/tokens" | "/v1/acl/tokens/{name}") => ADMIN,
        ("POST", "/v1/acl/tokens") | ("DELETE", "/v1/acl/tokens/{name}") => ADMIN,
        ("GET", "/v1/agents" | "/v1/agents/{id}") => READ,
        ("POST", "/v1/agents" | "/v1/agents/{id}/heartbeat" | "/v1/agents/{id}/status") => AGENT,
        ("GET", "/v1/agents/{id}/assignments") => AGENT,
        ("POST", "/v1/agents/{id}/drain" | "/v1/agents/{id}/enable") => SRE,
        ("GET", "/v1/autoscaler" | "/v1/cells" | "/v1/cluster" | "/v1/events") => READ,
        ("POST", "/v1/cluster/members") | ("DELETE", "/v1/cluster/members/{id}") => SRE,
        ("GET", "/v1/jobs" | "/v1/jobs/{id}" | "/v1/jobs/{id}/endpoints" | "/v1/jobs/{id}/history") => READ,
        ("POST", "/v1/jobs" | "/v1/jobs/{id}/disable" | "/v1/jobs/{id}/enable") => JOBS,
        ("PUT", "/v1/jobs/{id}" | "/v1/jobs/{id}/instances") | ("DELETE", "/v1/jobs/{id}") => JOBS,
        ("GET", "/v1/locations" | "/v1/locations/{name}" | "/v1/quotas" | "/v1/quotas/{group}") => READ,
        ("PUT", "/v1/locations/{name}/weight") | ("POST", "/v1/locations/{name}/{lever}") => SRE,
        ("PUT" | "DELETE", "/v1/quotas/{group}") => SRE,
        ("GET", "/v1/tasks" | "/v1/tasks/{id}") => READ,
        ("POST", "/v1/tasks/{id}/kill") => JOBS,
        ("GET", "/v1/tasks/{id}/logs") => LOGS,
        _ => return None,
    })
}

fn auth_config(token_file: &std::path::Path) -> String {
    format!("{TEST_CONFIG}[auth]\nenabled = true\nbootstrap_token_file = \"{}\"\n", token_file.display())
}

/// The bootstrap admin token, once the leader wrote it.
async fn admin_token(path: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = std::fs::read_to_string(path).unwrap_or_default().trim().to_string();
        if !t.is_empty() {
            return t;
        }
        assert!(Instant::now() < deadline, "no bootstrap token at {}", path.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn token(admin: &Client, name: &str, role: &str, apps: &[&str], agent: Option<&str>) -> String {
    let spec: titan_api::acl::TokenSpec = serde_json::from_value(json!({
        "name": name, "role": role, "applications": apps, "agent": agent,
    }))
    .expect("a token spec");
    admin.create_token(&spec).await.unwrap_or_else(|e| panic!("token {name}: {e}")).secret
}

fn agent_registration(id: &str) -> Value {
    json!({"id": id, "hostname": id, "addr": "127.0.0.1:1",
           "resources": {"cpus": 4.0, "memoryMib": 4096, "diskMib": 0, "portRanges": [[31000, 31099]]},
           "attributes": {}, "running": []})
}

struct Single {
    cell: Cluster,
    admin: String,
    _dir: tempfile::TempDir,
}

async fn single() -> Single {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("admin.token");
    let cell = Cluster::start_with(1, &auth_config(&file));
    let admin = admin_token(&file).await;
    let client = Client::new(&cell.members[0].addr.to_string()).token(admin.clone());
    eventually(Duration::from_secs(20), "the admin token committed", || async { client.list_tokens().await.is_ok() })
        .await;
    Single { cell, admin, _dir: dir }
}

async fn call(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut r = http.request(method.parse().expect("method"), url).timeout(Duration::from_secs(15));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(b);
    }
    let resp = r.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text.chars().take(200).collect())))
}

/// Waits until every member of `cell` is ready (`/readyz` needs no token): a leader is known and applied.
async fn ready(cell: &Cluster) {
    for m in &cell.members {
        let client = m.client();
        eventually(Duration::from_secs(20), &format!("member {} ready", m.id), || async { client.ready().await }).await;
    }
}

/// The first task a task listing shows, once there is one.
async fn first_task(http: &reqwest::Client, url: &str, token: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, b) = call(http, "GET", url, Some(token), None).await;
        if let Some(id) = b["tasks"][0]["id"].as_str() {
            return id.to_string();
        }
        assert!(Instant::now() < deadline, "no task at {url}: {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_401_without_a_token_403_to_a_role_that_may_not_and_normally_to_one_that_may() {
    let s = single().await;
    let addr = s.cell.members[0].addr.to_string();
    let admin = Client::new(&addr).token(s.admin.clone());
    let http = reqwest::Client::new();
    let mut tokens: BTreeMap<&str, String> = BTreeMap::new();
    tokens.insert("admin", s.admin.clone());
    tokens.insert("sre", token(&admin, "sre", "sre", &[], None).await);
    tokens.insert("owner", token(&admin, "owner", "owner", &["web"], None).await);
    tokens.insert("reader", token(&admin, "reader", "reader", &[], None).await);
    tokens.insert("agent", token(&admin, "agent", "agent", &[], Some("a1")).await);
    // Objects for the paths: an agent a1, a job of application web with its tasks, a quota.
    let (st, body) = call(
        &http,
        "POST",
        &format!("http://{addr}/v1/agents"),
        Some(&tokens["agent"]),
        Some(&agent_registration("a1")),
    )
    .await;
    assert_eq!(st, 200, "the agent registers with its own token: {body}");
    let spec = json!({"name": "w", "applicationName": "web", "location": "dc1:2", "cpus": 0.1, "memory": 16, "image": "busybox"});
    let (st, body) = call(&http, "POST", &format!("http://{addr}/v1/jobs"), Some(&tokens["owner"]), Some(&spec)).await;
    assert_eq!(st, 201, "the owner submits its application's job: {body}");
    let job = body["id"].as_str().expect("job id").to_string();
    let task = first_task(&http, &format!("http://{addr}/v1/tasks?job={job}"), &s.admin).await;

    let (_, doc) = call(&http, "GET", &format!("http://{addr}/openapi.json"), None, None).await;
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                operations.push((method.to_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    assert!(operations.len() >= 40, "{} operations", operations.len());
    let mut failures = Vec::new();
    let mut disposable = 0;
    for (method, path, op) in &operations {
        let Some(allowed) = expected(method, path) else {
            failures.push(format!("{method} {path}: no rule in this test (a new route?)"));
            continue;
        };
        let declared = op["security"].as_array().is_some_and(|s| !s.is_empty());
        if declared == allowed.contains(&"none") {
            failures.push(format!("{method} {path}: the document's security ({declared}) does not match"));
        }
        let concrete = |who: &str| {
            let mut p = path
                .replace("/v1/agents/{id}", "/v1/agents/a1")
                .replace("/v1/jobs/{id}", &format!("/v1/jobs/{job}"))
                .replace("/v1/tasks/{id}", &format!("/v1/tasks/{task}"))
                .replace("{group}", "web")
                .replace("{name}/{lever}", "dc1/unfreeze")
                .replace("/v1/locations/{name}", "/v1/locations/dc1")
                .replace("/v1/cluster/members/{id}", "/v1/cluster/members/99")
                .replace("{name}", &format!("gone-{who}"));
            if path == "/v1/events" {
                p.push_str("?timeoutSeconds=1");
            }
            if path.ends_with("/assignments") {
                p.push_str("?waitMs=0");
            }
            if path.ends_with("/logs") {
                p.push_str("?tail=1");
            }
            format!("http://{addr}{p}")
        };
        let body = (method != "GET" && method != "DELETE").then(|| json!({}));
        let (st, b) = call(&http, method, &concrete("none"), None, body.as_ref()).await;
        let public = allowed.contains(&"none");
        if public && (st == 401 || st == 403) || !public && st != 401 {
            failures.push(format!("{method} {path} without a token: {st} {b}"));
        }
        for (role, secret) in &tokens {
            // Revoking a token the test needs is done with one made for it.
            if method == "DELETE" && path == "/v1/acl/tokens/{name}" && allowed.contains(role) {
                disposable += 1;
                token(&admin, &format!("gone-{role}"), "reader", &[], None).await;
            }
            let (st, b) = call(&http, method, &concrete(role), Some(secret), body.as_ref()).await;
            let may = allowed.contains(role);
            // A role that may reaches the handler: its own answer, which for logs is 503 `unavailable` (the test's
            // agent has no address that answers), never 401 or 403.
            let reached = st < 500 || (st == 503 && b["code"] == "unavailable");
            let ok = if may { st != 401 && st != 403 && reached } else { st == 403 };
            if !ok {
                failures.push(format!("{method} {path} as {role}: {st} {b}"));
            }
            if !may && st == 403 && b["code"] != "forbidden" {
                failures.push(format!("{method} {path} as {role}: 403 without code forbidden: {b}"));
            }
        }
    }
    assert!(disposable >= 1);
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_and_agents_stay_within_their_own_and_history_names_the_token() {
    let s = single().await;
    let addr = s.cell.members[0].addr.to_string();
    let admin = Client::new(&addr).token(s.admin.clone());
    let http = reqwest::Client::new();
    let web = token(&admin, "web-owner", "owner", &["web"], None).await;
    let a1 = token(&admin, "agent-a1", "agent", &[], Some("a1")).await;
    let url = |p: &str| format!("http://{addr}{p}");
    let spec = |app: &str| json!({"name": app, "applicationName": app, "location": "dc1:1", "cpus": 0.1, "memory": 16, "image": "busybox"});
    // The admin submits a batch job; the web owner may not touch it, nor submit one, nor read its logs.
    let (_, b) = call(&http, "POST", &url("/v1/jobs"), Some(&s.admin), Some(&spec("batch"))).await;
    let batch = b["id"].as_str().expect("job").to_string();
    for (method, path, body) in [
        ("POST", "/v1/jobs".to_string(), Some(spec("batch"))),
        ("PUT", format!("/v1/jobs/{batch}/instances"), Some(json!({"instances": {"dc1": 3}}))),
        ("DELETE", format!("/v1/jobs/{batch}"), None),
        ("POST", format!("/v1/jobs/{batch}/disable"), None),
        ("PUT", format!("/v1/jobs/{batch}"), Some(spec("web"))),
    ] {
        let (st, b) = call(&http, method, &url(&path), Some(&web), body.as_ref()).await;
        assert_eq!((st, b["code"].as_str()), (403, Some("forbidden")), "{method} {path}: {b}");
    }
    // Its own application it may change; history names the token, whatever header the client sends.
    let resp = http
        .post(url("/v1/jobs"))
        .bearer_auth(&web)
        .header("x-titan-user", "mallory")
        .json(&spec("web"))
        .send()
        .await
        .expect("submit");
    assert_eq!(resp.status().as_u16(), 201);
    let own = resp.json::<Value>().await.expect("job")["id"].as_str().expect("id").to_string();
    let (_, history) = call(&http, "GET", &url(&format!("/v1/jobs/{own}/history")), Some(&web), None).await;
    assert_eq!(history[0]["who"], "web-owner", "{history}");
    let events = http
        .get(url(&format!("/v1/events?from=0&job={own}&timeoutSeconds=1")))
        .bearer_auth(&web)
        .send()
        .await
        .expect("events")
        .text()
        .await
        .expect("events text");
    let created: Value = events
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|e| e["kind"] == "created")
        .unwrap_or_else(|| panic!("a created event: {events}"));
    assert_eq!(created["who"], "web-owner", "the event names the token: {created}");
    // A task of the batch job: its logs and its kill are not the web owner's.
    let task = first_task(&http, &url(&format!("/v1/tasks?job={batch}")), &web).await;
    for (method, path) in [("GET", format!("/v1/tasks/{task}/logs?tail=1")), ("POST", format!("/v1/tasks/{task}/kill"))]
    {
        let (st, b) = call(&http, method, &url(&path), Some(&web), None).await;
        assert_eq!(st, 403, "{method} {path}: {b}");
    }
    // The agent token acts for a1 only: it registers as a1, not as a2; it cannot pull a2's assignments nor submit.
    let (st, b) = call(&http, "POST", &url("/v1/agents"), Some(&a1), Some(&agent_registration("a2"))).await;
    assert_eq!((st, b["field"].as_str()), (403, Some("id")), "{b}");
    let (st, b) = call(&http, "POST", &url("/v1/agents"), Some(&a1), Some(&agent_registration("a1"))).await;
    assert_eq!(st, 200, "{b}");
    call(&http, "POST", &url("/v1/agents"), Some(&s.admin), Some(&agent_registration("a2"))).await;
    let (st, _) = call(&http, "GET", &url("/v1/agents/a2/assignments?waitMs=0"), Some(&a1), None).await;
    assert_eq!(st, 403);
    let (st, _) = call(&http, "GET", &url("/v1/agents/a1/assignments?waitMs=0"), Some(&a1), None).await;
    assert_eq!(st, 200);
    let (st, _) = call(&http, "POST", &url("/v1/jobs"), Some(&a1), Some(&spec("web"))).await;
    assert_eq!(st, 403);
    let (st, _) = call(&http, "GET", &url("/v1/jobs"), Some(&a1), None).await;
    assert_eq!(st, 403, "an agent token reads no jobs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_authorization_headers_get_401_without_a_server_error_and_write_nothing() {
    let s = single().await;
    let addr = s.cell.members[0].addr.to_string();
    let admin = Client::new(&addr).token(s.admin.clone());
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/v1/jobs");
    let spec = json!({"name": "x", "applicationName": "x", "location": "dc1:1", "cpus": 0.1, "memory": 16, "image": "busybox"});
    let expiring = {
        let spec: titan_api::acl::TokenSpec =
            serde_json::from_value(json!({"name": "brief", "role": "admin", "ttlSeconds": 1})).expect("spec");
        admin.create_token(&spec).await.expect("token").secret
    };
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let long = format!("Bearer titan_{}", "a".repeat(100_000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no scheme", s.admin.clone().into_bytes()),
        ("basic", b"Basic YWRtaW46YWRtaW4=".to_vec()),
        ("empty bearer", b"Bearer ".to_vec()),
        ("unknown", b"Bearer titan_0000".to_vec()),
        ("absurd length", long.into_bytes()),
        ("not ascii", b"Bearer titan_\xff\xfe".to_vec()),
        ("expired", format!("Bearer {expiring}").into_bytes()),
        ("two tokens", format!("Bearer {} {}", s.admin, s.admin).into_bytes()),
    ];
    for (what, header) in cases {
        let value = reqwest::header::HeaderValue::from_bytes(&header).expect("a header value");
        let resp = http.post(&url).header("authorization", value).json(&spec).send().await;
        let Ok(resp) = resp else {
            // A header too long for the server is refused at the HTTP layer: also no write.
            assert_eq!(what, "absurd length");
            continue;
        };
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(
            status == 401 || status == 429 || (status == 431 && what == "absurd length"),
            "{what}: {status} {body}"
        );
        if status == 401 {
            assert_eq!((body["code"].as_str(), body["field"].as_str()), (Some("unauthorized"), Some("Authorization")));
        }
        if what == "expired" {
            assert_eq!(body["message"], "token expired");
        }
    }
    assert_eq!(admin.list_jobs(&Default::default()).await.expect("jobs").jobs.len(), 0, "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stops_working_on_every_member_and_every_cell_within_a_second() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("admin.token");
    let mut cells: BTreeMap<&str, Cluster> =
        [("dc1", 3), ("dc2", 1)].into_iter().map(|(name, n)| (name, Cluster::configure_cell(name, n, ""))).collect();
    let addrs: BTreeMap<&str, String> = cells.iter().map(|(n, c)| (*n, c.addrs())).collect();
    for (name, cell) in cells.iter_mut() {
        let (other, list) = addrs.iter().find(|(n, _)| *n != name).expect("the other cell");
        let list: Vec<String> = list.split('|').map(|a| format!("\"{a}\"")).collect();
        cell.config = format!(
            "{}[federation]\nheartbeat_ms = 200\nsuspect_ms = 1000\ndown_ms = 3000\ncells = {{ {other} = [{}] }}\n",
            auth_config(&file),
            list.join(", ")
        );
        for id in 1..=cell.members.len() as u64 {
            cell.restart(id);
        }
    }
    let admin_secret = admin_token(&file).await;
    ready(&cells["dc1"]).await;
    let admin = Client::new(&cells["dc1"].members[0].addr.to_string()).token(admin_secret);
    // The file is written before the token commits (the leader writes, then proposes), in whichever cell led first.
    eventually(Duration::from_secs(20), "the admin token known in dc1", || async { admin.list_tokens().await.is_ok() })
        .await;
    let reader = token(&admin, "ci-reader", "reader", &[], None).await;
    let every: Vec<String> = cells.values().flat_map(|c| c.members.iter().map(|m| m.addr.to_string())).collect();
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(20), "the token working on every member of both cells", || async {
        for a in &every {
            if call(&http, "GET", &format!("http://{a}/v1/jobs"), Some(&reader), None).await.0 != 200 {
                return false;
            }
        }
        true
    })
    .await;
    let revoked_at = Instant::now();
    admin.revoke_token("ci-reader").await.expect("revoked");
    let mut refused: BTreeMap<String, Duration> = BTreeMap::new();
    while refused.len() < every.len() && revoked_at.elapsed() < Duration::from_secs(5) {
        for a in &every {
            if !refused.contains_key(a) {
                let (st, _) = call(&http, "GET", &format!("http://{a}/v1/jobs"), Some(&reader), None).await;
                if st == 401 {
                    refused.insert(a.clone(), revoked_at.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refused.len(), every.len(), "refused on {refused:?} of {every:?}");
    let slowest = refused.values().max().copied().unwrap_or_default();
    eprintln!("revocation held on every member and cell after {slowest:?}: {refused:?}");
    assert!(slowest <= Duration::from_secs(1), "a revocation holds everywhere within a second: {refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_token_is_written_once_to_a_private_file_and_its_secret_never_logged() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("admin.token");
    let mut cell = Cluster::start_with(1, &auth_config(&file));
    let secret = admin_token(&file).await;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).expect("file").permissions().mode() & 0o777, 0o600);
    let admin = Client::new(&cell.members[0].addr.to_string()).token(secret.clone());
    let tokens = admin.list_tokens().await.expect("tokens").tokens;
    assert_eq!(tokens.len(), 1);
    assert_eq!((tokens[0].name.as_str(), tokens[0].role), ("bootstrap-dc1", titan_api::acl::Role::Admin));
    // A restart makes no second token, and the first still works.
    cell.member(1).kill();
    cell.restart(1);
    ready(&cell).await;
    assert_eq!(admin.list_tokens().await.expect("tokens").tokens.len(), 1);
    let log = std::fs::read_to_string(cell.members[0].dir.join("member.log")).expect("log");
    assert!(log.contains(&file.display().to_string()), "the log says where the token is");
    assert!(!log.contains(&secret), "the log never holds the secret");
}

/// A `titan agent` process as an operator runs one with tokens on: `--id` and its own agent token. With a token of
/// another id it cannot register.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_titan_agent_registers_and_heartbeats_with_its_own_agent_token_only() {
    let s = single().await;
    let addr = s.cell.members[0].addr.to_string();
    let admin = Client::new(&addr).token(s.admin.clone());
    let dir = tempfile::tempdir().expect("dir");
    let start = |id: &str, token: &str| {
        let file = dir.path().join(format!("{id}.token"));
        std::fs::write(&file, token).expect("token file");
        let data = dir.path().join(id);
        let log = std::fs::File::create(dir.path().join(format!("{id}.log"))).expect("log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_titan"))
            .args(["agent", "--cell-addr", &addr, "--runtime", "process", "--cpus", "1", "--id", id])
            .args(["--addr", &format!("127.0.0.1:{}", free_port())])
            .arg("--data-dir")
            .arg(&data)
            .arg("--token-file")
            .arg(&file)
            .env("TITAN_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(log))
            .spawn()
            .expect("start titan agent");
        common::KillOnDrop(child)
    };
    let node7 = token(&admin, "agent-node-7", "agent", &[], Some("node-7")).await;
    let _good = start("node-7", &node7);
    let _bad = start("node-8", &node7);
    eventually(Duration::from_secs(20), "node-7 registered and heartbeating", || async {
        admin.list_agents().await.is_ok_and(|a| a.iter().any(|a| a.id == "node-7" && a.last_heartbeat_ms.is_some()))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let agents = admin.list_agents().await.expect("agents");
    assert!(agents.iter().all(|a| a.id != "node-8"), "node-8 has no token of its own: {agents:?}");
    let log = std::fs::read_to_string(dir.path().join("node-8.log")).unwrap_or_default();
    assert!(log.contains("acts as agent node-7, not node-8"), "the refusal is logged: {log}");
}
