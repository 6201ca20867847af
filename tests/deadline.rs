//! Writes answer within `raft.write_timeout_ms` when the cell has no quorum: 503 with code `timeout`, at the leader
//! and through a follower that forwards to it; once the members are back, retrying with the same `Idempotency-Key`
//! makes nothing new.

mod common;

use std::time::Duration;

use common::*;
use titan_api::job::BodyFormat;
use titan_api::view::JobRef;
use titan_api::{Client, ClientError, ErrorCode};

const LEADER_WAIT: Duration = Duration::from_secs(20);
/// The cell's write deadline here: short, so the tests do not wait long.
const WRITE_TIMEOUT_MS: u64 = 1_500;
/// How long a request may take before the test calls it hung: the deadline plus generous slack for a loaded
/// machine. Without a deadline on the write path the leader answers only when a quorum is back, never here.
const ANSWER_WITHIN: Duration = Duration::from_secs(12);

fn config() -> String {
    format!("{TEST_CONFIG}write_timeout_ms = {WRITE_TIMEOUT_MS}\n")
}

/// A client that gives up after `ANSWER_WITHIN`.
fn impatient(m: &Member) -> Client {
    let http = reqwest::Client::builder().timeout(ANSWER_WITHIN).build().expect("a plain HTTP client");
    Client::with_http(&m.addr.to_string(), http)
}

async fn submit(client: &Client, name: &str, key: &str) -> Result<JobRef, ClientError> {
    client.submit_raw(spec(name).into_bytes(), BodyFormat::Json, Some(key)).await
}

/// Asserts that a write was answered 503 `timeout`, saying it may still commit and that a retry with the same key is
/// safe.
fn assert_timed_out(answer: Result<JobRef, ClientError>, what: &str) {
    match answer {
        Err(ClientError::Api { status, error }) => {
            assert_eq!((status, error.code), (503, ErrorCode::Timeout), "{what}: {error}");
            assert!(error.message.contains("may still commit"), "{what}: {}", error.message);
            assert!(error.message.contains("Idempotency-Key"), "{what}: {}", error.message);
        }
        other => panic!("{what}: expected 503 timeout, got {other:?}"),
    }
}

/// `titan job run` against a member without quorum fails saying plainly what happened and that the same command
/// is a safe retry.
fn assert_cli_says_timed_out(m: &Member) {
    let file = m.dir.join("cli-job.json");
    std::fs::write(&file, spec("from-cli")).expect("write the spec");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_titan"))
        .args(["job", "run", "--idempotency-key", "from-cli", "--addr", &m.addr.to_string()])
        .arg(&file)
        .output()
        .expect("run titan job run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("may still be created"), "{stderr}");
    assert!(stderr.contains("same --idempotency-key from-cli) is safe"), "{stderr}");
}

async fn metrics(m: &Member) -> String {
    let url = format!("http://{}/metrics", m.addr);
    reqwest::get(url).await.expect("metrics").text().await.expect("metrics text")
}

/// Retries `key` until a leader answers (members just restarted may still be electing), and returns its job id.
async fn retried(client: &Client, name: &str, key: &str) -> String {
    let mut last = None;
    for _ in 0..30 {
        match submit(client, name, key).await {
            Ok(job) => return job.id,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("no answer to a retry of {key}: {last:?}");
}

/// Waits until a consistent read of `client`'s member lists exactly `want`.
async fn lists_exactly(client: &Client, want: &[String]) {
    let mut want = want.to_vec();
    want.sort();
    let client = client.clone().consistent();
    let mut seen = None;
    for _ in 0..60 {
        seen = job_ids(&client).await;
        if seen.as_ref() == Some(&want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the cell lists {seen:?}, not exactly {want:?}");
}

/// Two of three members killed: the leader answers each write, the one it proposes itself and those queued behind
/// it, `timeout` within the deadline, counts them, and holds no proposal afterwards. With the members back, a retry
/// of each with its key names one job, whether or not the first attempt committed in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_quorum_times_out_and_its_retry_makes_nothing_new() {
    let mut cluster = Cluster::start_with(3, &config());
    let leader = cluster.leader(LEADER_WAIT).await;
    let others: Vec<u64> = cluster.running().map(|m| m.id).filter(|id| *id != leader).collect();
    let client = impatient(cluster.member(leader));
    retried(&client, "warm-up", "warm-up").await;
    for id in &others {
        cluster.member(*id).kill();
    }

    let keys: Vec<String> = (0..4).map(|i| format!("deadline-{i}")).collect();
    // Sent together: the first is proposed by its own request, the others queue behind it.
    let sent: Vec<_> = keys
        .iter()
        .map(|k| {
            let (client, k) = (client.clone(), k.clone());
            tokio::spawn(async move { submit(&client, &k, &k).await })
        })
        .collect();
    for (key, answer) in keys.iter().zip(sent) {
        assert_timed_out(answer.await.expect("the request task"), key);
    }
    let leader_member = cluster.running().find(|m| m.id == leader).expect("the leader runs");
    assert_cli_says_timed_out(leader_member);
    let text = metrics(leader_member).await;
    let timed_out = metric(&text, "titan_writes_timed_out_total", r#"kind="put_job""#);
    assert!(timed_out >= 5.0, "writes timed out: {timed_out}\n{text}");
    // The scheduler proposes too; once its write times out as well, nothing is left in flight.
    eventually(Duration::from_secs(10), "no proposal left in flight", || async {
        metric(&metrics(leader_member).await, "titan_raft_proposals_in_flight", "") == 0.0
    })
    .await;

    for id in &others {
        cluster.restart(*id);
    }
    let leader = cluster.leader(LEADER_WAIT).await;
    let client = impatient(cluster.member(leader));
    let mut ids = vec![retried(&client, "warm-up", "warm-up").await];
    for key in keys.iter().chain([&"from-cli".to_string()]) {
        let id = retried(&client, key, key).await;
        assert_eq!(retried(&client, key, key).await, id, "a second retry of {key} names the same job");
        ids.push(id);
    }
    lists_exactly(&client, &ids).await;
}

/// Three of five members killed, so the leader and one follower remain: a write sent to the follower is forwarded
/// to the leader, which cannot commit it, and the follower answers `timeout` within the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_without_quorum_times_out() {
    let mut cluster = Cluster::start_with(5, &config());
    let leader = cluster.leader(LEADER_WAIT).await;
    let followers: Vec<u64> = cluster.running().map(|m| m.id).filter(|id| *id != leader).collect();
    let (follower, killed) = followers.split_first().expect("four followers");
    let client = impatient(cluster.member(*follower));
    retried(&client, "warm-up", "warm-up").await;
    for id in killed {
        cluster.member(*id).kill();
    }

    assert_timed_out(submit(&client, "forwarded", "forwarded").await, "a forwarded write");
    let text = metrics(cluster.member(*follower)).await;
    assert!(metric(&text, "titan_raft_forwarded_writes_total", "") >= 2.0, "not forwarded:\n{text}");
    assert!(metric(&text, "titan_writes_timed_out_total", r#"kind="put_job""#) >= 1.0, "not counted:\n{text}");

    for id in killed {
        cluster.restart(*id);
    }
    cluster.leader(LEADER_WAIT).await;
    let warm_up = retried(&client, "warm-up", "warm-up").await;
    let id = retried(&client, "forwarded", "forwarded").await;
    lists_exactly(&client, &[warm_up, id]).await;
}
