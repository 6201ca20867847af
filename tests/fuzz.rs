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
        // As the admin: every operation reaches its handler (the token checks are tests/auth.rs's).
        .args(["--header", &format!("Authorization: Bearer {}", dev.token)])
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
    // Alive and ready (asked without a token: the fuzzer, as the admin, may have revoked the admin token after
    // making another).
    let alive = titan_api::Client::new(&dev.addr).ready().await;
    assert!(alive, "the cell stopped answering after the fuzzer\n{report}");
    match status {
        Some(s) if s.success() => {}
        // The fuzzer's own bugs (a Python exception inside hypothesis or schemathesis while it generates a case)
        // say nothing of the server: they are shown, and the rest of the run must still be clean.
        Some(s) if fuzzer_errors_only(&report) => eprintln!("schemathesis hit an error of its own ({s}):\n{report}"),
        Some(s) => panic!("schemathesis found problems ({s}):\n{report}"),
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

/// Whether a failed run's only problems are errors inside the fuzzer itself: no failed check, every error a
/// `Runtime Error` raised from the fuzzer's own packages, and none of them a network error or a timeout, which
/// would be the server's.
fn fuzzer_errors_only(report: &str) -> bool {
    let section = |name: &str| {
        let start = report.find(&format!(" {name} ="))?;
        let rest = &report[start..];
        let end = rest[1..].find("\n===").map(|e| e + 1).unwrap_or(rest.len());
        Some(&rest[..end])
    };
    let Some(errors) = section("ERRORS") else { return false };
    let summary = report.rsplit("Errors:").next().unwrap_or_default();
    let kinds: Vec<&str> = summary.lines().skip(1).take_while(|l| !l.trim().is_empty()).collect();
    section("FAILURES").is_none()
        && report.contains(" passed\n")
        && !kinds.is_empty()
        && kinds.iter().all(|k| k.contains("Runtime Error"))
        && errors.contains("site-packages/")
        && !["Connection", "Timeout", "timed out", "Network"].iter().any(|net| errors.contains(net))
}

#[test]
fn only_the_fuzzers_own_errors_are_let_pass() {
    let internal = "= ERRORS =\nGET /v1/events\nRuntime Error\n  File \"/x/site-packages/hypothesis/a.py\"\n\
                    === SUMMARY ===\nErrors:\n  Runtime Error: 1\n\nTest cases:\n  40 generated, 40 passed\n";
    assert!(fuzzer_errors_only(internal));
    assert!(!fuzzer_errors_only(&internal.replace("a.py", "a.py ConnectionError")), "a network error is the server's");
    assert!(!fuzzer_errors_only(&format!("= FAILURES =\nPOST /v1/jobs 500\n{internal}")), "a failed check fails");
    assert!(!fuzzer_errors_only("= SUMMARY =\n  40 generated, 39 passed, 1 failed\n"), "no error at all: a failure");
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
