//! The dashboards and the Prometheus rules against the real thing: `titan dev` with three federated cells, their
//! local agents and local fleets, jobs, a quota (and a write it refuses), a lever pulled; a real Prometheus
//! (Debian's, installed by scripts/deps) scraping the cells with the rules loaded. Every query of every panel of
//! every dashboard runs through Prometheus's HTTP API with its variables set to values the cells export: a query
//! that errors or returns no series fails, naming the dashboard and the panel. Every metric a panel or a rule
//! names must be exported by a cell, and every recording rule a panel reads must be defined. The rules' own unit
//! tests (`promtool test rules`) run here too.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/titan");
const CELLS: [&str; 3] = ["dc1", "dc2", "dc3"];

fn promtool() -> &'static str {
    assert!(
        Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success()),
        "promtool is missing: scripts/deps installs Debian's prometheus package"
    );
    "promtool"
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    let rules = Path::new(CHART).join("rules");
    for args in [vec!["check", "rules", "titan.rules.yaml"], vec!["test", "rules", "titan.rules.test.yaml"]] {
        let out = Command::new(promtool()).args(&args).current_dir(&rules).output().expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `titan dev --cells dc1,dc2,dc3`: cell i at `port + 2i`, its local agent at the port after.
struct DevCells {
    addrs: Vec<String>,
    /// A client sending the dev cells' admin token.
    http: reqwest::Client,
    child: Child,
}

impl DevCells {
    async fn start(dir: &Path) -> DevCells {
        let port = free_ports(6);
        let log = std::fs::File::create(dir.join("dev.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_titan"))
            .args(["dev", "--cells", &CELLS.join(","), "--fleet-max", "2", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("TITAN_LOG", "info,openraft=warn")
            // Tasks run as host processes (the process runtime): this test is about what the cells export.
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start titan dev");
        let addrs: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", port + 2 * i)).collect();
        let token_file = dir.join("data").join("admin.token");
        let mut token = String::new();
        eventually(Duration::from_secs(60), "the dev cells' admin token", || {
            token = std::fs::read_to_string(&token_file).unwrap_or_default().trim().to_string();
            let made = !token.is_empty();
            async move { made }
        })
        .await;
        let mut headers = reqwest::header::HeaderMap::new();
        let bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("a header value");
        headers.insert(reqwest::header::AUTHORIZATION, bearer);
        let http = reqwest::Client::builder().default_headers(headers).build().expect("a client");
        for addr in &addrs {
            eventually(Duration::from_secs(60), &format!("{addr} ready with its agent"), || async {
                get(&http, addr, "/v1/agents").await.is_some_and(|a| a.as_array().is_some_and(|a| !a.is_empty()))
            })
            .await;
        }
        DevCells { addrs, http, child }
    }
}

impl Drop for DevCells {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(http: &reqwest::Client, addr: &str, path: &str) -> Option<Value> {
    let r = http.get(format!("http://{addr}{path}")).timeout(Duration::from_secs(10)).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

async fn send(http: &reqwest::Client, method: reqwest::Method, addr: &str, path: &str, body: Value) -> (u16, Value) {
    let r = http
        .request(method, format!("http://{addr}{path}"))
        .json(&body)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A Prometheus server on a free loopback port scraping `targets` every second, with Titan's rules evaluated
/// every second; killed when dropped.
struct Prometheus {
    addr: String,
    child: Child,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[String]) -> Prometheus {
        let port = free_port();
        let rules = Path::new(CHART).join("rules/titan.rules.yaml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - \
             job_name: titan\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("prometheus starts (scripts/deps installs Debian's prometheus package)");
        Prometheus { addr: format!("127.0.0.1:{port}"), child }
    }

    /// An instant query: its series, or the error Prometheus gave.
    async fn query(&self, http: &reqwest::Client, expr: &str) -> Result<Vec<Value>, String> {
        let r = http
            .get(format!("http://{}/api/v1/query", self.addr))
            .query(&[("query", expr)])
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = r.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The values of `label` on the series `selector` matches (Grafana's `label_values(selector, label)`).
    async fn label_values(&self, http: &reqwest::Client, selector: &str, label: &str) -> Vec<String> {
        let r = http
            .get(format!("http://{}/api/v1/series", self.addr))
            .query(&[("match[]", selector)])
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("series query");
        let body: Value = r.json().await.expect("series answer");
        let values: BTreeSet<String> =
            body["data"].as_array().into_iter().flatten().filter_map(|s| s[label].as_str().map(String::from)).collect();
        values.into_iter().collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A panel's query, as the test names it.
struct Query {
    dashboard: String,
    panel: String,
    expr: String,
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(Path::new(CHART).join("dashboards")).expect("dashboards dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let v: Value = serde_json::from_slice(&std::fs::read(&path).expect("read dashboard"))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((path, v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn panels(v: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in v["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Names in an expression: metric and recording-rule names (identifiers with a `titan` part), less label names.
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c == '"' {
            in_string = !in_string;
            i += 1;
            continue;
        }
        if !in_string && (c.is_ascii_alphabetic() || c == '_' || c == ':') {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_' || bytes[i] == ':') {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            let label = bytes[i..].iter().find(|c| !c.is_whitespace()).is_some_and(|c| matches!(c, '=' | '!' | '~'));
            if word.contains("titan") && !label {
                out.insert(word);
            }
            continue;
        }
        i += 1;
    }
    out
}

/// The metric a sample name belongs to (a histogram's `_bucket`, `_sum`, `_count` are its metric's).
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name)
}

/// Every variable of a dashboard but the data source: name and `label_values(selector, label)`.
fn variables(v: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for var in v["templating"]["list"].as_array().into_iter().flatten().filter(|v| v["type"] == "query") {
        let def = var["definition"].as_str().expect("a query variable has a definition");
        let inner = def.strip_prefix("label_values(").and_then(|d| d.strip_suffix(')')).expect("label_values(...)");
        let (selector, label) = inner.rsplit_once(',').expect("label_values(selector, label)");
        out.push((var["name"].as_str().expect("name").to_string(), selector.trim().into(), label.trim().into()));
    }
    out
}

fn substitute(expr: &str, values: &BTreeMap<String, String>) -> String {
    let mut e = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "5m");
    // Longest names first, so `$cell` does not eat the start of a longer one.
    let mut names: Vec<&String> = values.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for n in names {
        e = e.replace(&format!("${{{n}}}"), &values[n]).replace(&format!("${n}"), &values[n]);
    }
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_returns_series_from_real_cells_through_a_real_prometheus() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dev = DevCells::start(dir.path()).await;
    let http = dev.http.clone();
    let (dc1, dc2) = (&dev.addrs[0], &dev.addrs[1]);

    // Federated: each cell hears the others.
    for addr in &dev.addrs {
        eventually(Duration::from_secs(30), &format!("{addr} hearing the other cells"), || async {
            let text = metrics_text(&http, addr).await;
            text.lines().filter(|l| l.starts_with("titan_federation_cell_up{") && l.ends_with(" 1")).count() == 2
        })
        .await;
    }
    // A quota, a job within it, a write it refuses; a job larger than the local agent (the fleet grows for it);
    // a job no agent can hold (pending, stranded capacity); a lever pulled.
    let quota = json!({"locations": {"dc1": {"instances": 10, "cpus": 4}, "dc2": {"instances": 5}}});
    let (status, body) = send(&http, reqwest::Method::PUT, dc1, "/v1/quotas/web", quota).await;
    assert_eq!(status, 200, "quota set: {body}");
    let job = |name: &str, app: &str, locations: Value, cpus: f64| {
        json!({"name": name, "applicationName": app, "locations": locations, "cpus": cpus, "memory": 32,
               "image": "busybox:latest", "command": ["sleep", "600"]})
    };
    let mut jobs = Vec::new();
    for (addr, spec) in [
        (dc1, job("web", "web", json!({"dc1": 2, "dc2": 1}), 0.1)),
        (dc1, job("batch", "batch", json!({"dc1": 3}), 1.0)),
        (dc2, job("huge", "huge", json!({"dc2": 1}), 64.0)),
    ] {
        let (status, body) = send(&http, reqwest::Method::POST, addr, "/v1/jobs", spec).await;
        assert_eq!(status, 201, "job submitted: {body}");
        jobs.push((addr.clone(), body["id"].as_str().expect("job id").to_string()));
    }
    let (status, body) =
        send(&http, reqwest::Method::POST, dc1, "/v1/jobs", job("web-big", "web", json!({"dc2": 10}), 0.1)).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("quota_exceeded")), "{body}");
    let (status, body) =
        send(&http, reqwest::Method::POST, dc1, "/v1/locations/dc3/freeze", json!({"reason": "observe test"})).await;
    assert_eq!(status, 200, "freeze: {body}");
    // dc1's fleet grows for the third batch task, and it runs.
    eventually(Duration::from_secs(90), "batch running in dc1 on a fleet agent", || async {
        let fleet = get(&http, dc1, "/v1/autoscaler").await.unwrap_or(Value::Null);
        let launched = fleet.to_string().contains("\"running\"");
        let text = metrics_text(&http, dc1).await;
        launched
            && metric(
                &text,
                "titan_application_tasks",
                "application=\"batch\",cell=\"dc1\",node=\"1\",state=\"running\"",
            ) >= 3.0
    })
    .await;

    // A web task killed: the cell replaces it (a restart of application web).
    let web = &jobs[0].1;
    let tasks = get(&http, dc1, &format!("/v1/tasks?job={web}&state=running")).await.expect("web's tasks");
    let task = tasks["tasks"][0]["id"].as_str().unwrap_or_else(|| panic!("a running web task: {tasks}")).to_string();
    let (status, body) = send(&http, reqwest::Method::POST, dc1, &format!("/v1/tasks/{task}/kill"), json!({})).await;
    assert_eq!(status, 200, "kill task: {body}");
    eventually(Duration::from_secs(30), "web's task replaced", || async {
        let text = metrics_text(&http, dc1).await;
        metric(&text, "titan_application_restarts_total", "application=\"web\"") >= 1.0
    })
    .await;

    let dir_prom = dir.path().join("prometheus");
    std::fs::create_dir_all(&dir_prom).expect("prometheus dir");
    let prom = Prometheus::start(&dir_prom, &dev.addrs);
    // Two scrapes of every cell, and the rules evaluated on them.
    eventually(Duration::from_secs(60), "two scrapes of every cell and the rules evaluated", || async {
        let scrapes = prom.query(&http, "count_over_time(up{job=\"titan\"}[1m]) >= 2").await.unwrap_or_default();
        let leaders = prom.query(&http, "titan:leader").await.unwrap_or_default();
        let rates = prom.query(&http, "cell_route:titan_http_requests:rate5m").await.unwrap_or_default();
        scrapes.len() == 3 && leaders.len() == 3 && !rates.is_empty()
    })
    .await;
    let up = prom.query(&http, "up{job=\"titan\"} == 1").await.expect("up");
    assert_eq!(up.len(), 3, "every cell scraped: {up:?}");
    // A moment more, so that each rate window holds a few samples.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // What the cells export.
    let mut exported = BTreeSet::new();
    for addr in &dev.addrs {
        for line in metrics_text(&http, addr).await.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                exported.insert(rest.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    }
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(CHART).join("rules/titan.rules.yaml")).expect("rules file"),
    )
    .expect("rules parse");
    let mut recorded = BTreeSet::new();
    let mut rule_names = BTreeSet::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            if let Some(r) = rule["record"].as_str() {
                recorded.insert(r.to_string());
            }
            rule_names.extend(names_in(rule["expr"].as_str().expect("expr")));
        }
    }

    let mut failures = Vec::new();
    for name in &rule_names {
        if !name.contains(':') && !exported.contains(family(name)) {
            failures.push(format!("rules: {name} is not exported by any cell"));
        }
    }
    let mut queries = 0;
    let mut checked = Vec::new();
    for (path, dash) in dashboards() {
        let title = dash["title"].as_str().unwrap_or_default().to_string();
        assert_eq!(dash["templating"]["list"][0]["type"], "datasource", "{title}: the data source is a variable");
        // Each variable's values, as Grafana lists them (dependent variables taken with the others at All).
        let vars = variables(&dash);
        let all: BTreeMap<String, String> = vars.iter().map(|(n, _, _)| (n.clone(), ".*".to_string())).collect();
        let mut candidates: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, selector, label) in &vars {
            let values = prom.label_values(&http, &substitute(selector, &all), label).await;
            if values.is_empty() {
                failures.push(format!("{title}: variable {name} has no values ({selector}, {label})"));
            }
            candidates.insert(name.clone(), values);
        }
        let mut qs = Vec::new();
        for p in panels(&dash).into_iter().filter(|p| p["type"] != "row") {
            let panel = p["title"].as_str().unwrap_or_default().to_string();
            if p["datasource"]["uid"] != "${datasource}" {
                failures.push(format!("{title} / {panel}: its data source is not the variable"));
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                failures.push(format!("{title} / {panel}: no query"));
            }
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or_default().to_string();
                qs.push(Query { dashboard: title.clone(), panel: panel.clone(), expr });
            }
        }
        for q in qs {
            queries += 1;
            for name in names_in(&q.expr) {
                if name.contains(':') {
                    if !recorded.contains(&name) {
                        failures.push(format!("{} / {}: {name} is no recording rule", q.dashboard, q.panel));
                    }
                } else if !exported.contains(family(&name)) {
                    failures.push(format!("{} / {}: {name} is not exported by any cell", q.dashboard, q.panel));
                }
            }
            // The variables it uses, each set in turn to each of its real values: some setting must give series.
            let used: Vec<&String> = candidates
                .keys()
                .filter(|n| q.expr.contains(&format!("${n}")) || q.expr.contains(&format!("${{{n}}}")))
                .collect();
            let mut settings: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
            for n in &used {
                settings = settings
                    .into_iter()
                    .flat_map(|s| {
                        candidates[*n].iter().map(move |v| {
                            let mut s = s.clone();
                            s.insert((*n).clone(), v.clone());
                            s
                        })
                    })
                    .take(64)
                    .collect();
            }
            let mut found = None;
            let mut error = None;
            for s in &settings {
                let expr = substitute(&q.expr, s);
                match prom.query(&http, &expr).await {
                    Ok(series) if !series.is_empty() => {
                        found = Some((s.clone(), series.len()));
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        error = Some(format!("{expr}: {e}"));
                        break;
                    }
                }
            }
            match (found, error) {
                (_, Some(e)) => failures.push(format!("{} / {}: query error: {e}", q.dashboard, q.panel)),
                (None, None) => failures.push(format!("{} / {}: no series: {}", q.dashboard, q.panel, q.expr)),
                (Some((s, n)), None) => checked.push(format!("{} / {} {s:?}: {n} series", q.dashboard, q.panel)),
            }
        }
        eprintln!("{}: checked", path.display());
    }
    for c in &checked {
        eprintln!("ok  {c}");
    }
    assert!(queries >= 40, "every dashboard's panels were read ({queries} queries)");
    assert!(failures.is_empty(), "{} of {queries} panel queries failed:\n{}", failures.len(), failures.join("\n"));

    // Stop the tasks (host processes) before the cells go.
    for (addr, id) in &jobs {
        let r = http.delete(format!("http://{addr}/v1/jobs/{id}")).send().await.expect("kill job");
        assert!(r.status().is_success(), "kill {id}: {}", r.status());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for addr in &dev.addrs {
        while Instant::now() < deadline
            && metric(&metrics_text(&http, addr).await, "titan_tasks", "state=\"running\"") > 0.0
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn metrics_text(http: &reqwest::Client, addr: &str) -> String {
    match http.get(format!("http://{addr}/metrics")).timeout(Duration::from_secs(10)).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[test]
fn names_in_finds_metrics_and_rules_but_not_labels_or_strings() {
    let names = names_in(
        r#"max by (cell) (titan_tasks_pending_by_reason{reason="titan_x"} * on (cell, node) group_left titan:leader) or rate(titan_http_requests_total[1m])"#,
    );
    assert_eq!(
        names,
        ["titan:leader", "titan_http_requests_total", "titan_tasks_pending_by_reason"].map(String::from).into()
    );
    assert_eq!(family("titan_raft_commit_latency_seconds_bucket"), "titan_raft_commit_latency_seconds");
}
