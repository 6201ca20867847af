//! Committed job submissions per second over HTTP against a real 3-member cell on loopback.
//!
//! `cargo bench --bench submit [-- --target all|leader] [--location L] [--api-client] [--no-early-append]
//! [--secure [auth|tls] [--rounds N]] [CLIENTS...]` starts three `titan server` processes on free loopback ports, then for each
//! concurrency (default 1 16 64 256) runs that many clients, each submitting ~1 KiB job specs back to back on its own
//! HTTP/1.1 connection (or through Titan's API client with `--api-client`), and prints one line per level:
//! `clients=16 target=all client=bare submitted=4000 errors=0 rate_per_s=... p50_ms=... p99_ms=... wall_s=...`.
//! Every level is bounded in requests and in time, and the members are killed at the end.
//!
//! `--secure` measures each level with authentication and TLS off and on, alternating (`--rounds` times each, 2 by
//! default), and ends with a table of the two rates side by side: on, the members run with `[auth] enabled` and
//! `[tls]` (certificates made by `scripts/tls` when the bench starts), and every client holds a TLS connection with a
//! client certificate and sends an owner token of the jobs' application. `--secure auth` or `--secure tls` turns on
//! only that one, to see what each costs.
//!
//! The members keep their data under the temporary directory (`TMPDIR`, else `/tmp`); the first line says where and
//! on which filesystem, since a sync costs nothing on tmpfs (`TMPDIR=/dev/shm`) and a few hundred µs on a disk.
//! `scripts/bench-etcd` measures etcd the same way, for a comparison made side by side.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use titan_api::job::BodyFormat;
use titan_api::tls::ClientTls;
use titan_api::Client;

/// Requests per level: enough for a stable rate, bounded; a smoke run (under `cargo test`) sends a few.
fn requests_for(clients: usize, smoke: bool) -> usize {
    if smoke {
        100
    } else {
        (clients * 120).clamp(3_000, 30_000)
    }
}

/// The members' settings under `--no-early-append`: production defaults otherwise.
const NO_EARLY_CONFIG: &str = "[raft]\nearly_append = false\n";

/// No level runs longer than this.
const LEVEL_CAP: Duration = Duration::from_secs(30);

/// A job spec of about 1 KiB.
/// Where the jobs ask for instances (`--location`). The default gives this cell (dc1) 10 tasks per job to
/// schedule, pending here since the bench runs no agents; `dc2:10,dc3:5` measures the job store alone.
static LOCATION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
const DEFAULT_LOCATION: &str = "dc1:10,dc2:10,dc3:5";

fn spec(i: usize) -> Vec<u8> {
    let location = LOCATION.get().map(String::as_str).unwrap_or(DEFAULT_LOCATION);
    let env: Vec<String> = (0..12).map(|k| format!(r#""VAR_{k}":"value-{k}-{i:08}-padding-padding""#)).collect();
    format!(
        r#"{{"name":"bench-{i}","applicationName":"bench","owner":"bench@example.com","capacityGroup":"bench","location":"{location}","cpus":1.5,"memory":2048,"disk":10,"ports":2,"image":"registry.local/bench/app:1.2.3","command":["/app/server","--port","$PORT_0","--verbose"],"env":{{{}}},"restartOnFailure":true,"numRetries":5}}"#,
        env.join(","),
    )
    .into_bytes()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// One client's way of submitting: Titan's own API client (reqwest, with its pool), or a bare HTTP/1.1 connection
/// of its own (hyper), which costs the bench's process less CPU per request, as etcd's benchmark client does. Both
/// send the same request and count a submission only on its 201.
enum Submitter {
    Api(Client),
    /// The connection, and the `Authorization` header it sends with auth on.
    Bare(hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>, Option<String>),
}

impl Submitter {
    async fn open(target: &Target, bare: bool) -> Submitter {
        if !bare {
            return Submitter::Api(target.client.clone());
        }
        let tcp = tokio::net::TcpStream::connect(&target.addr).await.expect("connect to a member");
        tcp.set_nodelay(true).expect("nodelay");
        let send = match &target.secure.tls {
            None => {
                let (send, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.expect("handshake");
                tokio::spawn(conn);
                send
            }
            Some(tls) => {
                let tls = tls.handshake(tcp, &target.addr).await.expect("TLS handshake with a member");
                let (send, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.expect("handshake");
                tokio::spawn(conn);
                send
            }
        };
        Submitter::Bare(send, target.secure.token.as_ref().map(|t| format!("Bearer {t}")))
    }

    async fn submit(&mut self, body: Vec<u8>) -> bool {
        match self {
            Submitter::Api(client) => client.submit_raw(body, BodyFormat::Json, None).await.is_ok(),
            Submitter::Bare(send, authorization) => {
                let mut request = hyper::Request::post("/v1/jobs")
                    .header(hyper::header::HOST, "titan")
                    .header(hyper::header::CONTENT_TYPE, "application/json");
                if let Some(a) = authorization {
                    request = request.header(hyper::header::AUTHORIZATION, a.as_str());
                }
                let request =
                    request.body(http_body_util::Full::new(hyper::body::Bytes::from(body))).expect("a valid request");
                match send.send_request(request).await {
                    Ok(resp) => {
                        let created = resp.status() == hyper::StatusCode::CREATED;
                        http_body_util::BodyExt::collect(resp.into_body()).await.is_ok() && created
                    }
                    Err(_) => false,
                }
            }
        }
    }
}

/// A member the clients submit to.
#[derive(Clone)]
struct Target {
    addr: String,
    client: Client,
    /// How its clients connect and what they send.
    secure: Arc<Secure>,
}

/// What clients need of a cell run with TLS or auth on: a TLS configuration (the cell's CA, a client certificate of
/// it) and an API token (an owner of the jobs' application, as a team submitting its own jobs holds).
#[derive(Default)]
struct Secure {
    tls: Option<ClientTls>,
    token: Option<String>,
}

/// What `--secure` turns on in its runs.
#[derive(Clone, Copy)]
struct On {
    auth: bool,
    tls: bool,
}

impl On {
    fn label(self) -> &'static str {
        match (self.auth, self.tls) {
            (true, true) => "auth and TLS",
            (true, false) => "auth",
            (false, true) => "TLS",
            (false, false) => "nothing",
        }
    }
}

/// A client of the member at `addr`, over TLS when given.
fn client_of(addr: &str, tls: Option<&ClientTls>) -> Client {
    match tls {
        Some(tls) => Client::with_tls(addr, tls),
        None => Client::new(addr),
    }
}

/// The members' settings with auth on (the bootstrap admin token written to `token_file`).
fn auth_config(base: &str, token_file: &std::path::Path) -> String {
    format!("{base}[auth]\nenabled = true\nbootstrap_token_file = \"{}\"\n", token_file.display())
}

/// With auth on, the bootstrap admin token, once the first leader wrote it, and the leader then, as the members
/// answer with that token.
async fn admin_and_leader(
    cluster: &common::Cluster,
    tls: Option<&ClientTls>,
    token_file: &std::path::Path,
) -> (String, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let admin = loop {
        let t = std::fs::read_to_string(token_file).unwrap_or_default().trim().to_string();
        if !t.is_empty() {
            break t;
        }
        assert!(Instant::now() < deadline, "no bootstrap token at {}", token_file.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    loop {
        for m in cluster.running() {
            let client = client_of(&m.addr.to_string(), tls).token(admin.clone());
            if let Some(leader) = client.cluster().await.ok().and_then(|v| v.leader) {
                return (admin, leader);
            }
        }
        assert!(Instant::now() < deadline, "no leader within 30 s; see member.log files");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With auth on: an owner token of application `bench`, made with the admin token, and known to every member.
async fn owner_token(cluster: &common::Cluster, tls: Option<&ClientTls>, admin: String) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let addrs: Vec<String> = cluster.running().map(|m| m.addr.to_string()).collect();
    let admin = client_of(&addrs.join(","), tls).token(admin);
    let spec: titan_api::acl::TokenSpec = serde_json::from_value(serde_json::json!({
        "name": "bench", "role": "owner", "applications": ["bench"],
    }))
    .expect("a token spec");
    let mut created = admin.create_token(&spec).await;
    while created.is_err() && Instant::now() < deadline {
        // The bootstrap token itself may not be committed yet.
        tokio::time::sleep(Duration::from_millis(100)).await;
        created = admin.create_token(&spec).await;
    }
    let token = created.expect("the bench's owner token").secret;
    for addr in &addrs {
        let member = client_of(addr, tls).token(token.clone());
        while member.list_jobs(&Default::default()).await.is_err() {
            assert!(Instant::now() < deadline, "member {addr} does not take the bench's token");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    token
}

/// Opens each client's connection with one unmeasured submission, as a long-running client would have it open.
async fn open_all(targets: &[Target], clients: usize, bare: bool) -> Vec<Submitter> {
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let target = targets[c % targets.len()].clone();
            tokio::spawn(async move {
                let mut s = Submitter::open(&target, bare).await;
                let _ = s.submit(spec(1_000_000 + c)).await;
                s
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("open a client"));
    }
    out
}

/// What one level measured: failed submissions and the rate.
struct Measured {
    errors: usize,
    rate: f64,
}

async fn level(submitters: Vec<Submitter>, label: &str, pids: &[(u64, u32)], smoke: bool) -> Measured {
    let clients = submitters.len();
    let cpu_before: Vec<f64> = pids.iter().map(|(_, p)| common::cpu_seconds(*p)).collect();
    let me = std::process::id();
    let my_cpu_before = common::cpu_seconds(me);
    let total = requests_for(clients, smoke);
    // Bodies are made before the clock starts, as etcd's benchmark makes its values.
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new((0..total).map(spec).collect());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut submitter in submitters {
        let next = next.clone();
        let bodies = bodies.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total || start.elapsed() > LEVEL_CAP {
                    break;
                }
                let t = Instant::now();
                if submitter.submit(bodies[i].clone()).await {
                    lat.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("client task");
        lat.extend(l);
        errors += e;
    }
    let wall = start.elapsed().as_secs_f64();
    lat.sort();
    let cpu: Vec<String> = pids
        .iter()
        .zip(&cpu_before)
        .map(|((id, p), before)| format!("m{id}:{:.2}/{}MiB", common::cpu_seconds(*p) - before, common::rss_mib(*p)))
        .collect();
    let rate = lat.len() as f64 / wall;
    println!(
        "clients={clients} target={label} submitted={} errors={errors} rate_per_s={rate:.0} p50_ms={:.2} p99_ms={:.2} wall_s={wall:.2} cpu_s={} bench:{:.2}",
        lat.len(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        cpu.join(","),
        common::cpu_seconds(me) - my_cpu_before,
    );
    Measured { errors, rate }
}

/// Mean commands per Raft proposal and mean commit latency on a member, from its `/metrics` (under `base`).
async fn proposal_stats(http: &reqwest::Client, base: &str) -> String {
    let text = match http.get(format!("{base}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => return format!("metrics unavailable: {e}"),
    };
    let value = |name: &str| common::metric(&text, name, "");
    let mean = |base: &str| value(&format!("{base}_sum")) / value(&format!("{base}_count")).max(1.0);
    let early =
        |outcome: &str| common::metric(&text, "titan_raft_early_appends_total", &format!(r#"outcome="{outcome}""#));
    format!(
        "proposals={} mean_batch={:.1} mean_commit_ms={:.2} early_appends_sent={} early_answers_used={}",
        value("titan_raft_proposal_batch_size_count"),
        mean("titan_raft_proposal_batch_size"),
        mean("titan_raft_commit_latency_seconds") * 1000.0,
        early("sent"),
        value("titan_raft_early_answers_used_total"),
    )
}

/// Mean log sync time and mean time to answer an append (as a follower) on a member, from its `/metrics` (under
/// `base`).
async fn member_stats(http: &reqwest::Client, base: &str) -> String {
    let text = match http.get(format!("{base}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => return format!("metrics unavailable: {e}"),
    };
    let value = |name: &str, label: &str| common::metric(&text, name, label);
    let mean_ms = |base: &str, label: &str| {
        let count = value(&format!("{base}_count"), label);
        (value(&format!("{base}_sum"), label) / count.max(1.0) * 1000.0, count)
    };
    let (flush, flushes) = mean_ms("titan_raft_log_flush_seconds", "");
    let (answer, answers) = mean_ms("titan_raft_answer_seconds", r#"rpc="append""#);
    format!("log_flushes={flushes} mean_flush_ms={flush:.3} appends_answered={answers} mean_answer_ms={answer:.3}")
}

/// The type of the filesystem `path` lies on (`ext4`, `tmpfs`, ...): the mount in `/proc/mounts` with the longest
/// mount point that holds it.
fn filesystem_of(path: &std::path::Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut fields = l.split(' ');
            let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(point).then(|| (point.len(), kind.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
}

/// How every run of the bench is made.
struct Options {
    members: u64,
    leader_only: bool,
    api_client: bool,
    no_early: bool,
    smoke: bool,
}

/// One level: a fresh, empty cell (so no level pays for the jobs an earlier one left behind), with what `on` says
/// turned on (the certificates' directory and the clients' certificate given for it), then `clients` clients.
async fn run(clients: usize, on: Option<(On, &std::path::Path, &common::Certs)>, opts: &Options, n: usize) -> Measured {
    let base = if opts.no_early { NO_EARLY_CONFIG } else { common::BENCH_CONFIG };
    let token_file = on.filter(|(on, ..)| on.auth).map(|(_, dir, _)| dir.join(format!("admin-{n}.token")));
    let config = match &token_file {
        Some(file) => auth_config(base, file),
        None => base.to_string(),
    };
    let mut cluster = common::Cluster::configure(opts.members, &config);
    let tls = match on {
        Some((On { tls: true, .. }, dir, certs)) => {
            cluster.use_tls(dir);
            Some(certs.client_tls())
        }
        _ => None,
    };
    for id in 1..=opts.members {
        cluster.restart(id);
    }
    let (leader, token) = match &token_file {
        Some(file) => {
            let (admin, leader) = admin_and_leader(&cluster, tls.as_ref(), file).await;
            (leader, Some(owner_token(&cluster, tls.as_ref(), admin).await))
        }
        None => (cluster.leader(Duration::from_secs(20)).await, None),
    };
    let secure = Arc::new(Secure { tls, token });
    let builder = reqwest::Client::builder().pool_max_idle_per_host(512).tcp_nodelay(true);
    let (http, scheme) = match &secure.tls {
        Some(tls) => (tls.http(builder).build().expect("client"), "https"),
        None => (builder.build().expect("client"), "http"),
    };
    let targets: Vec<Target> = cluster
        .running()
        .filter(|m| !opts.leader_only || m.id == leader)
        .map(|m| {
            let mut client = Client::with_http(&format!("{scheme}://{}", m.addr), http.clone());
            if let Some(t) = &secure.token {
                client = client.token(t.clone());
            }
            Target { addr: m.addr.to_string(), client, secure: secure.clone() }
        })
        .collect();
    let label = format!(
        "{} client={}{}",
        if opts.leader_only { "leader" } else { "all" },
        if opts.api_client { "api" } else { "bare" },
        match (secure.token.is_some(), secure.tls.is_some()) {
            (true, true) => " auth+tls",
            (true, false) => " auth",
            (false, true) => " tls",
            (false, false) => "",
        }
    );
    let pids: Vec<(u64, u32)> = cluster.running().filter_map(|m| m.pid().map(|p| (m.id, p))).collect();
    let submitters = open_all(&targets, clients, !opts.api_client).await;
    let measured = level(submitters, &label, &pids, opts.smoke).await;
    let leader_addr = cluster.running().find(|m| m.id == leader).map(|m| m.addr.to_string());
    if let Some(addr) = leader_addr {
        println!("  leader m{leader}: {}", proposal_stats(&http, &format!("{scheme}://{addr}")).await);
    }
    for m in cluster.running() {
        println!("  m{}: {}", m.id, member_stats(&http, &format!("{scheme}://{}", m.addr)).await);
    }
    measured
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; `cargo test` runs this as a smoke test with no arguments (plain and secure).
    let smoke = !std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let value_of = |flag: &str| args.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone());
    let leader_only = value_of("--target").as_deref() == Some("leader");
    // `--api-client`: submit with Titan's own client (reqwest) instead of a bare HTTP/1.1 connection per client.
    let api_client = args.iter().any(|a| a == "--api-client");
    // `--no-early-append`: the leader replicates only after its own sync (`raft.early_append = false`).
    let no_early = args.iter().any(|a| a == "--no-early-append");
    // `--secure [auth|tls]`: every level with authentication and TLS (or the one named) off and on, alternating,
    // `--rounds` times each.
    let secure = (smoke || args.iter().any(|a| a == "--secure")).then(|| match value_of("--secure").as_deref() {
        Some("auth") => On { auth: true, tls: false },
        Some("tls") => On { auth: false, tls: true },
        _ => On { auth: true, tls: true },
    });
    let rounds: usize =
        value_of("--rounds").map(|r| r.parse().expect("--rounds N")).unwrap_or(if smoke { 1 } else { 2 });
    if let Some(location) = value_of("--location") {
        let _ = LOCATION.set(location);
    }
    // Levels are the bare numbers, not the values of the flags that take one.
    let levels: Vec<usize> = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || !["--target", "--location", "--rounds"].contains(&args[i - 1].as_str()))
        .filter_map(|(_, a)| a.parse().ok())
        .collect();
    let levels = match (levels.is_empty(), smoke) {
        (false, _) => levels,
        (true, false) => vec![1, 16, 64, 256],
        (true, true) => vec![1, 16],
    };

    // TITAN_BENCH_MEMBERS=1 measures a single member, to separate replication from the rest.
    let members = std::env::var("TITAN_BENCH_MEMBERS").ok().and_then(|m| m.parse().ok()).unwrap_or(3);
    let opts = Options { members, leader_only, api_client, no_early, smoke };
    let tmp = std::env::temp_dir();
    println!("data under {} ({})", tmp.display(), filesystem_of(&tmp).unwrap_or_else(|| "filesystem unknown".into()));
    // The certificates of the secure runs, made once: a CA, and the clients' certificate (each run's cell gets its
    // members' certificates of the same CA).
    let certs = secure.map(|_| tempfile::tempdir().expect("a directory for certificates"));
    let client_certs = certs.as_ref().map(|d| common::Certs::make(d.path(), &["bench-client"]).remove(0));
    let mut errors = 0;
    let mut table: Vec<(usize, [Vec<f64>; 2])> = Vec::new();
    let mut n = 0;
    for clients in levels {
        let mut rates: [Vec<f64>; 2] = Default::default();
        for _ in 0..rounds {
            let modes = match (secure, &certs, &client_certs) {
                (Some(on), Some(dir), Some(c)) => vec![None, Some((on, dir.path(), c))],
                _ => vec![None],
            };
            for mode in modes {
                n += 1;
                let measured = run(clients, mode, &opts, n).await;
                errors += measured.errors;
                rates[usize::from(mode.is_some())].push(measured.rate);
            }
        }
        table.push((clients, rates));
    }
    if let Some(on) = secure {
        let range = |r: &[f64]| {
            let (lo, hi) = r.iter().fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
            format!("{lo:.0}-{hi:.0}/s")
        };
        let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len().max(1) as f64;
        let what = on.label();
        println!("\n| clients | {what} off | {what} on | on / off (means) |\n|---|---|---|---|");
        for (clients, [off, on]) in &table {
            let ratio = mean(on) / mean(off).max(f64::MIN_POSITIVE);
            println!("| {clients} | {} | {} | {:.0}% |", range(off), range(on), ratio * 100.0);
        }
    }
    assert!(!smoke || errors == 0, "the smoke run saw {errors} failed submissions");
}
