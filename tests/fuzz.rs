//! The API under an OpenAPI-driven fuzzer: schemathesis runs every operation of a real `titan dev` cell's
//! `/openapi.json`, streams included (read for a bounded time, see `fuzz/titan_hooks.py`), and any 5xx, request
//! timeout, crash or a run that does not end in time fails the test.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Where `scripts/deps` installs schemathesis; `TITAN_SCHEMATHESIS` names another.
const SCHEMATHESIS: &str = "/opt/titan-schemathesis/bin/schemathesis";
/// The fuzzer's own budget: it stops generating after this many seconds.
const FUZZ_SECONDS: u64 = 120;
/// How long the run may take beyond that budget (a request in flight, the report) before it counts as hung.
const GRACE: Duration = Duration::from_secs(90);
/// Longer than any answer a sound server takes: the assignments long-poll waits at most 30 s and a refused
/// member addition 10 s, so a request still unanswered after this is a hang.
const REQUEST_TIMEOUT_SECONDS: u64 = 45;

fn schemathesis() -> PathBuf {
    let path = PathBuf::from(std::env::var("TITAN_SCHEMATHESIS").unwrap_or_else(|_| SCHEMATHESIS.to_string()));
    assert!(path.is_file(), "schemathesis is missing at {}: run scripts/deps to install it", path.display());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_survives_the_fuzzer_without_a_server_error_or_a_hang() {
    let fuzzer = schemathesis();
    let dir = tempfile::tempdir().expect("temp dir");
    let dev = Dev::start(dir.path()).await;
    let output = dir.path().join("schemathesis.log");
    let log = std::fs::File::create(&output).expect("log file");
    let hooks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz");
    let mut run = Command::new(&fuzzer)
        .arg("run")
        .arg(format!("http://{}/openapi.json", dev.addr))
        .args(["--checks", "not_a_server_error"])
        .args(["--request-timeout", &REQUEST_TIMEOUT_SECONDS.to_string()])
        .args(["--max-examples", "25", "--max-time", &FUZZ_SECONDS.to_string(), "--workers", "2"])
        .args(["--generation-database", "none", "--no-color"])
        .current_dir(dir.path())
        .env("PYTHONPATH", hooks)
        .env("SCHEMATHESIS_HOOKS", "titan_hooks")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().expect("log file")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start schemathesis");
    let deadline = Instant::now() + Duration::from_secs(FUZZ_SECONDS) + GRACE;
    let status = loop {
        if let Some(status) = run.try_wait().expect("schemathesis status") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = run.kill();
            let _ = run.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let report = std::fs::read_to_string(&output).unwrap_or_default();
    let alive = dev.client().cluster().await;
    assert!(alive.is_ok(), "the cell stopped answering after the fuzzer: {alive:?}\n{report}");
    match status {
        Some(s) => assert!(s.success(), "schemathesis found problems ({s}):\n{report}"),
        None => panic!("schemathesis did not finish within {FUZZ_SECONDS} s and {GRACE:?}:\n{report}"),
    }
    // The run reached every operation: none was left out for a schema schemathesis could not use.
    let operations = operations(&dev.addr).await;
    assert!(operations > 20, "the document lists the API's operations: {operations}");
    assert!(
        report.contains(&format!("Tested: {operations}\n")),
        "not all {operations} operations were tested:\n{report}"
    );
}

/// How many operations the cell's OpenAPI document lists.
async fn operations(addr: &str) -> usize {
    let doc: serde_json::Value = reqwest::get(format!("http://{addr}/openapi.json"))
        .await
        .expect("openapi.json")
        .json()
        .await
        .expect("a JSON document");
    let paths = doc["paths"].as_object().expect("paths");
    paths.values().filter_map(|item| item.as_object()).map(|item| item.len()).sum()
}
