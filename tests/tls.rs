//! TLS end to end with real `titan server` and `titan agent` processes, their certificates made by `scripts/tls`: a
//! 3-member cell elects, forwards and commits over mutual TLS and serves users over HTTPS (the CLI with
//! `TITAN_CACERT`); two federated cells converge over it; a member of another CA never joins while the cell goes on
//! committing, and clients without a certificate of the CA, or without TLS, are refused at the handshake; an agent
//! registers, heartbeats and serves its task's logs to the cell over it.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use titan_api::job::BodyFormat;
use titan_api::tls::{ClientTls, Settings};
use titan_api::{Client, ClientError};

const LEADER_WAIT: Duration = Duration::from_secs(20);
const CONVERGE: Duration = Duration::from_secs(30);

/// `titan ARGS...` as a user runs it with `env`; its stdout, or its stderr as the error.
fn titan(args: &[&str], env: &[(&str, &std::path::Path)]) -> Result<String, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_titan"));
    cmd.args(args).stdin(Stdio::null());
    for var in
        ["TITAN_ADDR", "TITAN_TOKEN", "TITAN_TOKEN_FILE", "TITAN_CACERT", "TITAN_CLIENT_CERT", "TITAN_CLIENT_KEY"]
    {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("titan runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A 3-member cell, each member with its own certificate of one CA: it elects a leader over TLS Raft streams, a
/// follower forwards a write to the leader, every member applies it; a user with the CA and a certificate of it
/// submits and reads through the CLI over HTTPS, by `host:port` and by `https://` URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_over_tls_elects_forwards_commits_and_serves_https() {
    let certs = tempfile::tempdir().expect("dir");
    let mut cell = Cluster::configure(3, TEST_CONFIG);
    cell.use_tls(certs.path());
    for id in 1..=3 {
        cell.restart(id);
    }
    let leader = cell.leader(LEADER_WAIT).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let job = write(&cell.member(follower).client(), "forwarded").await.expect("a follower's write commits");
    for m in &cell.members {
        let client = m.client();
        eventually(CONVERGE, &format!("member {} to apply the write", m.id), || async {
            job_ids(&client).await.is_some_and(|ids| ids.contains(&job))
        })
        .await;
    }

    let user = Certs::make(certs.path(), &["user"]).remove(0);
    let file = certs.path().join("job.json");
    std::fs::write(&file, spec("from-the-cli")).expect("spec file");
    let env = [
        ("TITAN_CACERT", user.ca.as_path()),
        ("TITAN_CLIENT_CERT", user.cert.as_path()),
        ("TITAN_CLIENT_KEY", user.key.as_path()),
    ];
    let addr = cell.member(follower).addr.to_string();
    let file = file.to_str().expect("utf-8 path");
    let submitted = titan(&["job", "run", file, "--addr", &addr, "-o", "json"], &env).expect("submitted over https");
    let submitted: serde_json::Value = serde_json::from_str(&submitted).expect("a job reference");
    let id = submitted["id"].as_str().expect("an id").to_string();
    let url = format!("https://{}", cell.member(leader).addr);
    let listed = titan(&["job", "list", "--addr", &url, "-o", "json"], &env).expect("listed over https");
    assert!(listed.contains(&id) && listed.contains(&job), "both jobs are listed: {listed}");
    // Without the CA the CLI says what is missing rather than failing a handshake.
    let err = titan(&["job", "list", "--addr", &url], &[]).expect_err("https needs a CA");
    assert!(err.contains("TITAN_CACERT"), "{err}");
}

/// Two cells, one member each, with certificates of one CA, told of each other: a job written in either reaches
/// the other over the federation's TLS connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_cells_converge_over_tls() {
    let certs = tempfile::tempdir().expect("dir");
    let mut dc1 = Cluster::configure_cell("dc1", 1, TEST_CONFIG);
    let mut dc2 = Cluster::configure_cell("dc2", 1, TEST_CONFIG);
    dc1.use_tls(certs.path());
    dc2.use_tls(certs.path());
    common::federate_two(&mut dc1, &mut dc2, Cluster::addrs, "digest_ms = 1000\n", LEADER_WAIT).await;
    let (one, two) = (dc1.member(1).client(), dc2.member(1).client());
    let first = write(&one, "written-in-dc1").await.expect("dc1 commits");
    let second = write(&two, "written-in-dc2").await.expect("dc2 commits");
    for (name, client) in [("dc1", &one), ("dc2", &two)] {
        eventually(CONVERGE, &format!("{name} to hold both jobs"), || async {
            job_ids(client).await.is_some_and(|ids| ids.contains(&first) && ids.contains(&second))
        })
        .await;
    }
}

/// Member 3 of a 3-member cell has a certificate of another CA (and trusts that CA alone): the other two refuse it
/// and it refuses them, so it never learns the cell's membership or a single entry, while the two elect a leader
/// and go on committing. Clients are refused at the handshake when they speak plain HTTP, present no certificate,
/// or present one of the other CA, whatever the route (even `/healthz`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_another_ca_never_joins_and_clients_without_a_certificate_are_refused() {
    let certs = tempfile::tempdir().expect("dir");
    let (good, other) = (certs.path().join("cell"), certs.path().join("other"));
    let mut cell = Cluster::configure(3, TEST_CONFIG);
    cell.use_tls(&good);
    cell.member(3).tls = Some(Certs::make(&other, &["intruder"]).remove(0));
    for id in 1..=3 {
        cell.restart(id);
    }
    let leader = cell.leader(LEADER_WAIT).await;
    assert_ne!(leader, 3, "the intruder cannot lead");
    let follower = if leader == 1 { 2 } else { 1 };
    let mut written = Vec::new();
    for (i, id) in [leader, follower, leader].into_iter().enumerate() {
        let client = cell.member(id).client();
        written.push(write(&client, &format!("job-{i}")).await.expect("two of three commit"));
    }
    let leader_client = cell.member(leader).client();
    let leader_tls = cell.member(leader).tls.clone().expect("tls").client_tls();
    let metrics = leader_tls.http(reqwest::Client::builder()).build().expect("client");
    let metrics_url = format!("https://{}/metrics", cell.member(leader).addr);
    eventually(Duration::from_secs(10), "the leader to count failed calls to member 3", || async {
        let text = match metrics.get(&metrics_url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => return false,
        };
        metric(&text, "titan_raft_rpc_failures_total", r#"peer="3""#) > 0.0
    })
    .await;
    // Member 3 answers its own CA's clients: it has no leader, no membership and none of the jobs.
    let intruder = cell.member(3).client();
    let view = intruder.cluster().await.expect("member 3 answers its own CA");
    assert_eq!(view.leader, None, "member 3 never heard of a leader: {view:?}");
    assert_eq!(view.commit_index, 0, "nor of a committed entry: {view:?}");
    assert_eq!(job_ids(&intruder).await, Some(vec![]), "member 3 holds no job");
    assert!(job_ids(&leader_client).await.is_some_and(|ids| written.iter().all(|j| ids.contains(j))));

    let addr = cell.member(leader).addr;
    let refused = |r: Result<titan_api::view::ClusterView, ClientError>, who: &str| match r {
        Err(ClientError::Transport { message, .. }) => message,
        other => panic!("{who} was not refused at the handshake: {other:?}"),
    };
    // A connection that never starts its handshake holds up no one: each handshake has a task and a deadline.
    let _silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let fresh = cell.member(leader).client();
    tokio::time::timeout(Duration::from_secs(5), fresh.cluster())
        .await
        .expect("answered beside a silent connection")
        .expect("a member's certificate is accepted");
    // Plain HTTP to a TLS port: the first bytes are no TLS handshake, and the connection is closed.
    let plain = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let answer = plain.get(format!("http://{addr}/healthz")).send().await;
    assert!(answer.is_err(), "plain HTTP got an answer: {answer:?}");
    refused(Client::new(&addr.to_string()).cluster().await, "a plain-HTTP client");
    // The CA alone, no certificate.
    let anonymous = ClientTls::load(&good.join("ca.pem"), None, None, Settings::CLIENT).expect("CA");
    let message = refused(Client::with_tls(&addr.to_string(), &anonymous).cluster().await, "a client without one");
    let healthz = anonymous.http(reqwest::Client::builder()).build().expect("client");
    assert!(healthz.get(format!("https://{addr}/healthz")).send().await.is_err(), "even probes need a certificate");
    // The cell's CA trusted, but a certificate of the other CA presented: what member 3 would send if it trusted
    // the cell. The member refuses it, and says so in its log.
    let foreign = ClientTls::load(
        &good.join("ca.pem"),
        Some(&other.join("intruder.pem")),
        Some(&other.join("intruder.key")),
        Settings::CLIENT,
    )
    .expect("files");
    let foreign_message =
        refused(Client::with_tls(&addr.to_string(), &foreign).cluster().await, "another CA's certificate");
    let log_file = cell.member(leader).dir.join("member.log");
    eventually(Duration::from_secs(5), "the refusal in the member's log", || async {
        std::fs::read_to_string(&log_file).unwrap_or_default().contains("refused a connection: its client certificate")
    })
    .await;
    // The cell's own members still get through.
    assert!(leader_client.cluster().await.is_ok(), "after refusing: {message}; {foreign_message}");
}

/// A `titan agent` (process runtime) with a certificate of the cell's CA registers and heartbeats over HTTPS; the
/// cell places a task on it, and relays the task's logs from the agent's own server, which it reaches over TLS
/// with its member's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_registers_heartbeats_and_serves_logs_over_tls() {
    let certs = tempfile::tempdir().expect("dir");
    let mut cell = Cluster::configure(1, TEST_CONFIG);
    cell.use_tls(certs.path());
    cell.restart(1);
    cell.leader(LEADER_WAIT).await;
    let client = cell.member(1).client();
    let agent_certs = Certs::make(certs.path(), &["agent-1"]).remove(0);
    let data = certs.path().join("agent");
    std::fs::create_dir_all(&data).expect("agent dir");
    let log = std::fs::File::create(certs.path().join("agent.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_titan"))
        .args(["agent", "--cell-addr", &cell.member(1).addr.to_string(), "--runtime", "process"])
        .args(["--cpus", "2", "--memory-mib", "1024", "--id", "agent-1", "--ports", "21700-21799"])
        .args(["--addr", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(&data)
        .args(agent_certs.flags())
        .env("TITAN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start titan agent");
    let _agent = KillOnDrop(child);
    eventually(Duration::from_secs(20), "the agent registered and heartbeating", || async {
        client.list_agents().await.is_ok_and(|a| a.iter().any(|a| a.id == "agent-1" && a.last_heartbeat_ms.is_some()))
    })
    .await;
    // A task that prints a line, then lives a bounded while (the agent is killed at the end, its processes are not).
    let spec = r#"{"name":"hello","applicationName":"tls","location":"dc1:1","cpus":0.5,"memory":64,"image":"none",
        "command":["sh","-c","echo hello-over-tls; sleep 60"]}"#;
    let job = client.submit_raw(spec.as_bytes().to_vec(), BodyFormat::Json, None).await.expect("submitted").id;
    let mut lines = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !lines.contains("hello-over-tls") {
        assert!(std::time::Instant::now() < deadline, "no log line through the cell: {lines}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let q = titan_api::task::TaskQuery { job: Some(job.clone()), ..Default::default() };
        let Some(task) = client.list_tasks(&q).await.ok().and_then(|l| l.tasks.into_iter().next()) else { continue };
        if let Ok(resp) = client.task_logs(&task.id, 10, "stdout", false).await {
            lines = resp.text().await.unwrap_or_default();
        }
    }
    client.kill_job(&job).await.expect("job killed");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
