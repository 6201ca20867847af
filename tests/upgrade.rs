//! A member upgraded in place: today's build starts on a data directory written by the build before the scheduler
//! had its own log and snapshot types (`tests/fixtures/v1-cell`: a format 1 snapshot and log entries after it),
//! answers for its jobs and tasks exactly what that build answered, writes a snapshot in the current format of its
//! own, and starts again from that.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;
use titan_api::job::BodyFormat;
use titan_api::task::TaskQuery;
use titan_api::view::ListQuery;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v1-cell");
/// The killed job of the fixture, which job listings leave out by default.
const KILLED: &str = "bf4acf7f-57d3-42e5-873d-9a43d5e1b482";
/// Its scheduled job (`*/1 * * * *`).
const SCHEDULED: &str = "0f0ce7b1-b3ef-4e02-82a6-9e8b5d78a82d";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// The fields of a job the old build answered with, as JSON.
fn job_fields(job: &Value) -> Value {
    let keep = ["id", "version", "state", "spec", "instances"];
    Value::Object(keep.iter().map(|k| (k.to_string(), job[*k].clone())).collect())
}

async fn answers_as_the_old_build(member: &Member, expected: &Value) {
    let client = member.client();
    let q = ListQuery { limit: Some(100), ..ListQuery::default() };
    let jobs = client.list_jobs(&q).await.expect("jobs");
    let mut got: Vec<Value> =
        jobs.jobs.iter().map(|j| job_fields(&serde_json::to_value(j).expect("job json"))).collect();
    got.sort_by_key(|j| j["id"].as_str().map(String::from));
    let mut want: Vec<Value> = expected["jobs"].as_array().expect("jobs").iter().map(job_fields).collect();
    want.sort_by_key(|j| j["id"].as_str().map(String::from));
    assert_eq!(got, want, "jobs as the old build listed them");
    let killed = client.get_job(KILLED).await.expect("the killed job");
    assert_eq!((killed.version, killed.state.as_str()), (2, "killed"));
    let tasks = client.list_tasks(&TaskQuery { limit: Some(100), ..TaskQuery::default() }).await.expect("tasks");
    let mut got: Vec<Value> = tasks
        .tasks
        .iter()
        .map(|t| serde_json::json!({"id": t.id, "jobId": t.job_id, "jobVersion": t.job_version}))
        .collect();
    // The scheduled job runs every minute, so it may have started a run since: its new tasks are extra.
    got.retain(|t| t["jobId"] != SCHEDULED || expected["tasks"].as_array().is_some_and(|want| want.contains(t)));
    got.sort_by_key(|t| t["id"].as_str().map(String::from));
    assert_eq!(Value::Array(got), expected["tasks"], "tasks as the old build listed them");
}

fn snapshot_formats(dir: &Path) -> Vec<u64> {
    let mut formats = Vec::new();
    for entry in std::fs::read_dir(dir.join("data/raft/snapshots")).expect("snapshots dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "snap") {
            let v: Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
            formats.push(v["format"].as_u64().expect("format"));
        }
    }
    formats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_by_the_previous_build_loads_and_moves_to_the_new_snapshot_format() {
    let expected: Value =
        serde_json::from_slice(&std::fs::read(Path::new(FIXTURE).join("expected.json")).expect("expected.json"))
            .expect("expected json");
    // Snapshots often, so that a few writes make one in the new format; and ended tasks kept for ten years, so that
    // the fixture's (ended on the day it was made) are still there to compare.
    let config = TEST_CONFIG.replace("snapshot_every = 100", "snapshot_every = 5")
        + "[scheduler]\ntask_retention_ms = 315360000000\n";
    let mut cell = Cluster::configure(1, &config);
    let dir = cell.member(1).dir.clone();
    copy_dir(&Path::new(FIXTURE).join("raft"), &dir.join("data/raft"));
    assert_eq!(snapshot_formats(&dir), vec![1]);
    cell.restart(1);
    cell.leader(Duration::from_secs(20)).await;
    answers_as_the_old_build(cell.member(1), &expected).await;

    // New writes on top of the old ones, until a snapshot in the new format replaces the old one.
    let client = cell.member(1).client();
    let mut made = Vec::new();
    for i in 0..6 {
        let job = client.submit_raw(spec(&format!("new-{i}")).into_bytes(), BodyFormat::Json, None).await;
        made.push(job.expect("a new job on the upgraded store").id);
    }
    eventually(Duration::from_secs(20), "a format 3 snapshot", || {
        let formats = snapshot_formats(&dir);
        async move { formats == vec![u64::from(titan_scheduler::snapshot::FORMAT)] }
    })
    .await;

    // And it starts again from that one.
    cell.member(1).kill();
    cell.restart(1);
    cell.leader(Duration::from_secs(20)).await;
    let client = cell.member(1).client();
    for id in &made {
        assert!(client.get_job(id).await.is_ok(), "job {id} survives the restart");
    }
    let old: Vec<Value> = expected["jobs"].as_array().expect("jobs").clone();
    for job in old {
        let id = job["id"].as_str().expect("id");
        let got = serde_json::to_value(client.get_job(id).await.expect("old job")).expect("json");
        assert_eq!(job_fields(&got), job_fields(&job), "job {id} after the restart");
    }
}
