//! Test harness: real `titan server` processes on free loopback ports, each with its own data directory, killed
//! when the test ends however it ends.

#![allow(dead_code)]

pub mod proxy;
pub mod sim;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use titan_api::tls::ClientTls;
use titan_api::view::ListQuery;
use titan_api::Client;

/// Where test processes listen: below the kernel's ephemeral range (32768-60999 on Linux), so that no connection
/// takes one of these ports as its source port between the check here and the process listening on it; and apart
/// from the task host ports tests give agents (21000-21999) and the agent's default range (31000-31999).
const LISTEN_PORTS: std::ops::Range<u32> = 23_000..30_000;

/// `n` consecutive loopback ports nothing listens on right now, none handed out before by this process (each test
/// binary starts at its own place in the range), and returns the first.
pub fn free_ports(n: u32) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = LISTEN_PORTS.end - LISTEN_PORTS.start;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let first = (start + NEXT.fetch_add(n, Ordering::Relaxed)) % (span - n);
        let ports: Vec<u16> = (0..n).map(|i| (LISTEN_PORTS.start + first + i) as u16).collect();
        if ports.iter().all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok()) {
            return ports[0];
        }
    }
    panic!("no {n} free loopback ports in {LISTEN_PORTS:?}");
}

/// The value of the first sample of `name` in a Prometheus text page whose labels contain `label` ("" for any), or
/// 0 when there is none.
pub fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .find(|l| l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A loopback port nothing listens on right now (see `free_ports`).
pub fn free_port() -> u16 {
    free_ports(1)
}

pub struct Member {
    pub id: u64,
    /// The cell it belongs to.
    pub cell: String,
    pub addr: SocketAddr,
    /// `--advertise`: how the other members know it, when not by `addr`.
    pub advertise: Option<String>,
    pub dir: PathBuf,
    /// Started with `--tls-*` these files when set; its `client()` then speaks HTTPS with them.
    pub tls: Option<Certs>,
    child: Option<Child>,
}

/// A node's TLS files, as `scripts/tls` makes them: a CA per directory, a certificate (server and client) per name.
#[derive(Clone, Debug)]
pub struct Certs {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Certs {
    /// `scripts/tls DIR NAME...`: DIR's CA (made by the first call) and a certificate for each name.
    pub fn make(dir: &Path, names: &[&str]) -> Vec<Certs> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tls");
        let out = Command::new(script).arg(dir).args(names).output().expect("scripts/tls runs");
        assert!(out.status.success(), "scripts/tls failed: {}", String::from_utf8_lossy(&out.stderr));
        names.iter().map(|n| Certs::named(dir, n)).collect()
    }

    /// The files `scripts/tls` made in `dir` for `name`.
    pub fn named(dir: &Path, name: &str) -> Certs {
        Certs { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")), ca: dir.join("ca.pem") }
    }

    /// A client that trusts the CA alone and presents this certificate.
    pub fn client_tls(&self) -> ClientTls {
        ClientTls::load(&self.ca, Some(&self.cert), Some(&self.key), titan_api::tls::Settings::CLIENT)
            .expect("scripts/tls's files load")
    }

    /// `titan server`'s and `titan agent`'s flags for these files.
    pub fn flags(&self) -> Vec<std::ffi::OsString> {
        let mut out = Vec::new();
        for (flag, path) in [("--tls-cert", &self.cert), ("--tls-key", &self.key), ("--tls-ca", &self.ca)] {
            out.push(flag.into());
            out.push(path.into());
        }
        out
    }
}

impl Member {
    pub fn client(&self) -> Client {
        match &self.tls {
            Some(certs) => Client::with_tls(&self.addr.to_string(), &certs.client_tls()),
            None => Client::new(&self.addr.to_string()),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: no goodbye, no final flush.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn wipe(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).expect("recreate data dir");
    }

    /// Starts the process; `peers` empty starts a member that waits to be added.
    pub fn start(&mut self, peers: &str, config: &str) {
        assert!(self.child.is_none(), "member {} already runs", self.id);
        std::fs::create_dir_all(&self.dir).expect("data dir");
        let config_path = self.dir.join("titan.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("member.log")).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_titan"));
        cmd.args([
            "server",
            "--cell",
            &self.cell,
            "--node-id",
            &self.id.to_string(),
            "--listen",
            &self.addr.to_string(),
        ])
        .arg("--data-dir")
        .arg(self.dir.join("data"))
        .arg("--config")
        .arg(&config_path)
        .env("TITAN_LOG", "info,openraft=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
        if !peers.is_empty() {
            cmd.args(["--peers", peers]);
        }
        if let Some(advertise) = &self.advertise {
            cmd.args(["--advertise", advertise]);
        }
        if let Some(certs) = &self.tls {
            cmd.args(certs.flags());
        }
        self.child = Some(cmd.spawn().expect("start titan server"));
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Raft settings for tests: quick elections, small snapshots sent in small pieces, so catching up from one, in
/// several calls, is exercised.
pub const TEST_CONFIG: &str =
    "[raft]\nheartbeat_ms = 50\nelection_min_ms = 300\nelection_max_ms = 600\nsnapshot_every = 100\nkeep_logs = 20\n\
     snapshot_chunk_kib = 16\n";

pub struct Cluster {
    pub members: Vec<Member>,
    pub peers: String,
    pub config: String,
    _root: tempfile::TempDir,
}

/// Raft settings for benchmarks: production defaults.
pub const BENCH_CONFIG: &str = "";

impl Cluster {
    pub fn start(n: u64) -> Cluster {
        Cluster::start_with(n, TEST_CONFIG)
    }

    pub fn start_with(n: u64, config: &str) -> Cluster {
        let mut c = Cluster::configure(n, config);
        for id in 1..=n {
            c.restart(id);
        }
        c
    }

    /// A cell of `n` members on free ports, none of them started yet (`restart` starts one).
    pub fn configure(n: u64, config: &str) -> Cluster {
        Cluster::configure_cell("dc1", n, config)
    }

    /// Cell `cell` of `n` members on free ports, none of them started yet.
    pub fn configure_cell(cell: &str, n: u64, config: &str) -> Cluster {
        let root = tempfile::tempdir().expect("temp dir");
        let members: Vec<Member> = (1..=n)
            .map(|id| Member {
                id,
                cell: cell.to_string(),
                addr: format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
                advertise: None,
                dir: root.path().join(format!("m{id}")),
                tls: None,
                child: None,
            })
            .collect();
        let peers = members.iter().map(|m| format!("{}={}", m.id, m.addr)).collect::<Vec<_>>().join(",");
        Cluster { members, peers, config: config.to_string(), _root: root }
    }

    /// Like `configure_cell`, but every member is known to the others by the loopback name: `localhost:PORT` in
    /// `--peers` and `--advertise`, while it listens on `127.0.0.1:PORT`.
    pub fn configure_named(cell: &str, n: u64, config: &str) -> Cluster {
        let mut c = Cluster::configure_cell(cell, n, config);
        for m in &mut c.members {
            m.advertise = Some(format!("localhost:{}", m.addr.port()));
        }
        c.peers =
            c.members.iter().map(|m| format!("{}=localhost:{}", m.id, m.addr.port())).collect::<Vec<_>>().join(",");
        c
    }

    /// Every member runs with TLS: a certificate of `dir`'s CA each (made by `scripts/tls`, named `CELL-mID`).
    pub fn use_tls(&mut self, dir: &Path) {
        let names: Vec<String> = self.members.iter().map(|m| format!("{}-m{}", m.cell, m.id)).collect();
        let certs = Certs::make(dir, &names.iter().map(String::as_str).collect::<Vec<_>>());
        for (m, c) in self.members.iter_mut().zip(certs) {
            m.tls = Some(c);
        }
    }

    /// Every member's address, as `--federation` lists a cell's: `A|B|C`.
    pub fn addrs(&self) -> String {
        self.members.iter().map(|m| m.addr.to_string()).collect::<Vec<_>>().join("|")
    }

    pub fn member(&mut self, id: u64) -> &mut Member {
        self.members.iter_mut().find(|m| m.id == id).expect("known member")
    }

    pub fn running(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.is_running())
    }

    /// Waits until a running member names a leader that is running, and returns its id.
    pub async fn leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            for m in self.running() {
                if let Ok(view) = m.client().cluster().await {
                    if let Some(l) = view.leader {
                        if self.running().any(|r| r.id == l) {
                            return l;
                        }
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader within {within:?}; see member.log files");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn restart(&mut self, id: u64) {
        let (peers, config) = (self.peers.clone(), self.config.clone());
        self.member(id).start(&peers, &config);
    }
}

/// CPU seconds (user + system) a process has used, from /proc; 0 where that cannot be read.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th of those.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident memory of a process in MiB, from /proc; 0 where that cannot be read.
pub fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

/// Every job id a member lists (all pages, killed ones included).
pub async fn job_ids(client: &Client) -> Option<Vec<String>> {
    let mut ids = Vec::new();
    for state in ["enabled", "disabled", "killed"] {
        let mut q = ListQuery { state: Some(state.into()), limit: Some(1000), ..ListQuery::default() };
        loop {
            let page = client.list_jobs(&q).await.ok()?;
            ids.extend(page.jobs.into_iter().map(|j| j.id));
            match page.next_page_token {
                Some(t) => q.page_token = Some(t),
                None => break,
            }
        }
    }
    ids.sort();
    Some(ids)
}

/// Longer than any commit takes here, and bounded, so a cell that cannot commit fails the test instead of hanging it.
pub const WRITE_WAIT: Duration = Duration::from_secs(20);

/// Submits a job and waits (bounded, `WRITE_WAIT`) for its commit; its id.
pub async fn write(client: &Client, name: &str) -> Result<String, String> {
    let body = spec(name).into_bytes();
    match tokio::time::timeout(WRITE_WAIT, client.submit_raw(body, titan_api::job::BodyFormat::Json, None)).await {
        Ok(Ok(job)) => Ok(job.id),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer in {WRITE_WAIT:?}")),
    }
}

/// Polls until `f` holds or the time is up.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `titan dev` on free loopback ports (its agent takes the port after the cell's), data and log under `dir`, with
/// authentication on as a newcomer gets it: `token` is its admin token, which `client()` sends.
pub struct Dev {
    pub addr: String,
    /// The admin token's file, where the CLI is pointed (`--token-file`).
    pub token_file: PathBuf,
    pub token: String,
    child: Child,
}

impl Dev {
    /// Starts it and waits until the cell answers with its local agent heartbeating.
    pub async fn start(dir: &std::path::Path) -> Dev {
        let port = free_ports(2);
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("dev.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_titan"))
            .args(["dev", "--listen", &addr])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("TITAN_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start titan dev");
        let token_file = dir.join("data").join("admin.token");
        let deadline = Instant::now() + Duration::from_secs(30);
        let token = loop {
            if let Some(t) = std::fs::read_to_string(&token_file).ok().map(|t| t.trim().to_string()) {
                if !t.is_empty() {
                    break t;
                }
            }
            assert!(Instant::now() < deadline, "titan dev wrote no admin token to {}", token_file.display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let client = Client::new(&addr).token(token.clone());
        eventually(Duration::from_secs(30), "the dev cell ready with its agent", || async {
            client.list_agents().await.is_ok_and(|a| a.len() == 1 && a[0].last_heartbeat_ms.is_some())
        })
        .await;
        Dev { addr, token_file, token, child }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.addr).token(self.token.clone())
    }

    /// SIGTERM, as a service manager stops it, then waits (bounded by `within`) for it to exit; returns how it
    /// exited and how long that took.
    pub fn terminate(&mut self, within: Duration) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(sent.success(), "SIGTERM sent");
        loop {
            if let Some(status) = self.child.try_wait().expect("wait on titan dev") {
                return (status, start.elapsed());
            }
            assert!(start.elapsed() < within, "titan dev still runs {within:?} after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spec(name: &str) -> String {
    format!(
        r#"{{"name":"{name}","applicationName":"shop","location":"dc1:3,dc2:2","cpus":0.5,"memory":256,"image":"busybox:latest","env":{{"A":"b"}}}}"#
    )
}

/// Running containers carrying a label (`titan.job=ID`, `titan.agent=ID`), by docker's own listing.
pub fn running_containers(label: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-q", "--filter", &format!("label={label}"), "--filter", "status=running"])
        .output()
        .expect("docker ps runs");
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
}

/// A child process killed (and reaped) when this is dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two single-member cells told of each other in `[federation] cells` (the other cell named by `address`, with
/// `extra` federation settings), started, each with a leader within `wait`.
pub async fn federate_two(
    dc1: &mut Cluster,
    dc2: &mut Cluster,
    address: impl Fn(&Cluster) -> String,
    extra: &str,
    wait: Duration,
) {
    let told_of = |other: &Cluster| {
        format!(
            "{TEST_CONFIG}[federation]\nheartbeat_ms = 200\nsuspect_ms = 1000\ndown_ms = 3000\n{extra}\
             cells = {{ {} = [\"{}\"] }}\n",
            other.members[0].cell,
            address(other)
        )
    };
    dc1.config = told_of(dc2);
    dc2.config = told_of(dc1);
    dc1.restart(1);
    dc2.restart(1);
    dc1.leader(wait).await;
    dc2.leader(wait).await;
}
