//! The `titan` command line as a user runs it, against real cells: several `--addr` members with some down or
//! not knowing a leader, global options after the subcommand, a reader closing the pipe early, a job whose every
//! attempt failed, who history names without `$USER`, and `titan dev` stopping on SIGTERM.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// A 1-member cell (member 1) plus member 2 started without peers: it waits to be added and knows no leader, so
/// it answers `not_leader` (a write after its 1 s write timeout).
const WAITING_CONFIG: &str =
    "[raft]\nheartbeat_ms = 50\nelection_min_ms = 300\nelection_max_ms = 600\nwrite_timeout_ms = 1000\n";

async fn cell_and_a_waiting_member() -> Cluster {
    let mut c = Cluster::configure(2, WAITING_CONFIG);
    let first = format!("1={}", c.member(1).addr);
    c.member(1).start(&first, WAITING_CONFIG);
    c.member(2).start("", WAITING_CONFIG);
    c.leader(Duration::from_secs(20)).await;
    let waiting = c.member(2).client();
    eventually(Duration::from_secs(20), "the waiting member answers", || async { waiting.cluster().await.is_ok() })
        .await;
    c
}

/// Runs `titan ARGS` with `stdin` on its standard input and `$TITAN_ADDR` unset; returns its output.
fn titan(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_titan"))
        .args(args)
        .env_remove("TITAN_ADDR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start titan");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("titan runs")
}

fn text(out: &Output) -> String {
    format!("stdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn spec(name: &str, location: &str, image: &str, command: &str) -> String {
    format!(
        r#"{{"name":"{name}","applicationName":"cli","location":"{location}","cpus":0.1,"memory":32,"image":"{image}","command":{command}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_is_down_is_passed_over_for_the_next() {
    let cell = Cluster::start(1);
    cell.leader(Duration::from_secs(20)).await;
    let up = cell.members[0].addr.to_string();
    let down = format!("127.0.0.1:{}", free_port());
    let addrs = format!("{down},{up}");
    let out = titan(&["job", "list", "--addr", &addrs], "");
    assert!(out.status.success(), "--addr {addrs}: {}", text(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_titan"))
        .args(["cluster", "status"])
        .env("TITAN_ADDR", &addrs)
        .output()
        .expect("titan runs");
    assert!(out.status.success(), "TITAN_ADDR={addrs}: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("leader 1"), "{}", text(&out));
    let out = titan(&["job", "list", "--addr", &down], "");
    assert!(!out.status.success(), "the only member is down");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot reach http://{down}")), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_options_work_after_the_subcommand() {
    let mut cell = cell_and_a_waiting_member().await;
    let (first, second) = (cell.member(1).addr.to_string(), cell.member(2).addr.to_string());
    // The README's line: the new member's address, then the cell to ask.
    let out = titan(&["cluster", "add", "2", &second, "--addr", &first, "-o", "json"], "");
    assert!(out.status.success(), "{}", text(&out));
    let view: titan_api::view::ClusterView = serde_json::from_slice(&out.stdout).expect("--output json after it too");
    assert!(view.members.iter().any(|m| m.id == 2 && m.addr == second), "{view:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_leader_is_followed_to_a_member_that_can_answer() {
    let mut cell = cell_and_a_waiting_member().await;
    let (first, waiting) = (cell.member(1).addr.to_string(), cell.member(2).addr.to_string());
    let asked_alone = titan(&["job", "run", "-", "--addr", &waiting], &spec("w", "dc1:0", "none", "null"));
    assert!(!asked_alone.status.success(), "a member with no leader cannot take a write");
    assert!(String::from_utf8_lossy(&asked_alone.stderr).contains("not_leader"), "{}", text(&asked_alone));
    let addrs = format!("{waiting},{first}");
    let out = titan(&["job", "run", "-", "--addr", &addrs], &spec("w", "dc1:0", "none", "null"));
    assert!(out.status.success(), "--addr {addrs}: {}", text(&out));
    let out = titan(&["cluster", "add", "2", &waiting, "--addr", &addrs], "");
    assert!(out.status.success(), "a membership change answered not_leader at once goes on too: {}", text(&out));
    // Now a follower, it takes writes itself (forwarding them to the leader).
    let out = titan(&["job", "run", "-", "--addr", &waiting], &spec("w2", "dc1:0", "none", "null"));
    assert!(out.status.success(), "{}", text(&out));
    let jobs = job_ids(&cell.member(1).client()).await.expect("listed");
    assert_eq!(jobs.len(), 2, "each submission made one job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_closing_the_pipe_early_ends_the_command_quietly() {
    let cell = Cluster::start(1);
    cell.leader(Duration::from_secs(20)).await;
    let addr = cell.members[0].addr.to_string();
    for args in [vec!["cluster", "status"], vec!["job", "list"], vec!["node", "list", "-o", "json"]] {
        // As `titan cluster status | head -0`: the reader is gone before the first line is written.
        let mut child = Command::new(env!("CARGO_BIN_EXE_titan"))
            .args(&args)
            .args(["--addr", &addr])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start titan");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("titan runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_names_the_uids_user_without_user_and_logs_to_a_file_carry_no_colour() {
    let cell = Cluster::start(1);
    cell.leader(Duration::from_secs(20)).await;
    let addr = cell.members[0].addr.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_titan"))
        .args(["job", "run", "-", "--addr", &addr, "-o", "json"])
        .env_remove("USER")
        .env_remove("TITAN_USER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start titan");
    child.stdin.take().expect("stdin").write_all(spec("h", "dc1:0", "none", "null").as_bytes()).expect("spec");
    let out = child.wait_with_output().expect("titan runs");
    assert!(out.status.success(), "{}", text(&out));
    let job: titan_api::view::JobRef = serde_json::from_slice(&out.stdout).expect("json");
    let me = Command::new("id").arg("-un").output().expect("id runs");
    let me = String::from_utf8_lossy(&me.stdout).trim().to_string();
    let history = cell.members[0].client().job_history(&job.id).await.expect("history");
    assert_eq!(history[0].who, me, "not anonymous: {history:?}");
    let log = std::fs::read_to_string(cell.members[0].dir.join("member.log")).expect("member log");
    assert!(log.contains("member serving"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a log file: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_status_says_why_every_attempt_failed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dev = Dev::start(dir.path()).await;
    let client = dev.client();
    let image = "titan-test/no-such-image:latest";
    let token = dev.token_file.to_string_lossy().to_string();
    let out = titan(
        &["job", "run", "-", "--addr", &dev.addr, "--token-file", &token, "-o", "json"],
        &spec("broken", "dev:1", image, "null"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let job: titan_api::view::JobRef = serde_json::from_slice(&out.stdout).expect("json");
    eventually(Duration::from_secs(60), "two failed attempts", || async {
        let view = client.get_job(&job.id).await.expect("job");
        view.tasks.is_some_and(|t| t.failures.first().is_some_and(|f| f.attempts >= 2))
    })
    .await;
    let view = client.get_job(&job.id).await.expect("job");
    let failures = view.tasks.expect("a summary").failures;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!((failures[0].location.as_str(), failures[0].last.reason.as_deref()), ("dev", Some("launch_error")));
    let out = titan(&["job", "status", &job.id, "--addr", &dev.addr, "--token-file", &token], "");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let said = format!("attempts failed: image {image} is not present and could not be pulled");
    assert!(stdout.contains("dev: ") && stdout.contains(&said), "{}", text(&out));
}

/// Removes a job's containers when the test ends, however it ends.
struct RemoveContainers(String);

impl Drop for RemoveContainers {
    fn drop(&mut self) {
        let out =
            Command::new("docker").args(["ps", "-aq", "--filter", &format!("label=titan.job={}", self.0)]).output();
        for c in out.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default().split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titan_dev_exits_on_sigterm_with_a_log_followed_and_leaves_its_containers_running() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut dev = Dev::start(dir.path()).await;
    let client = dev.client();
    let sleeper = spec("sleeper", "dev:1", "titan-test/busybox:latest", r#"["sh","-c","echo up; exec sleep 600"]"#);
    let job = client.submit_raw(sleeper.into_bytes(), titan_api::job::BodyFormat::Json, None).await.expect("submitted");
    let _cleanup = RemoveContainers(job.id.clone());
    eventually(Duration::from_secs(60), "its container running", || async {
        running_containers(&format!("titan.job={}", job.id)).len() == 1
    })
    .await;
    let container = running_containers(&format!("titan.job={}", job.id));
    let q = titan_api::task::TaskQuery { job: Some(job.id.clone()), ..Default::default() };
    let task = client.list_tasks(&q).await.expect("tasks").tasks[0].id.clone();
    // A followed log never ends by itself, and the local agent is in the middle of an assignments long-poll: a
    // graceful shutdown that waits for requests in flight would wait for ever.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_titan"))
        .args(["task", "logs", &task, "-f", "--addr", &dev.addr])
        .arg("--token-file")
        .arg(&dev.token_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start titan task logs");
    let mut first = [0u8; 3];
    std::io::Read::read_exact(follower.stdout.as_mut().expect("stdout"), &mut first).expect("the log streams");
    assert_eq!(&first, b"up\n");
    let (status, took) = dev.terminate(Duration::from_secs(60));
    eprintln!("titan dev exited {took:?} after SIGTERM");
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        running_containers(&format!("titan.job={}", job.id)),
        container,
        "the task keeps running after titan dev exits"
    );
}
