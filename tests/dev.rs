//! `titan dev` as a newcomer runs it: one command gives a ready cell with a local agent registered.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use titan_api::job::BodyFormat;
use titan_api::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titan_dev_serves_a_cell_with_a_local_agent() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The agent takes the next port; find a pair that is free.
    let port = loop {
        let p = free_port();
        if std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_titan"))
        .args(["dev", "--listen", &addr])
        .arg("--data-dir")
        .arg(dir.path())
        .env("TITAN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start titan dev");
    let client = Client::new(&addr);
    let c = client.clone();
    eventually(Duration::from_secs(30), "the dev cell ready with its agent", || {
        let c = c.clone();
        async move { c.list_agents().await.is_ok_and(|a| a.len() == 1 && a[0].last_heartbeat_ms.is_some()) }
    })
    .await;
    let hello = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello.yaml")).expect("example");
    let job = client.submit_raw(hello, BodyFormat::Yaml, None).await.expect("the README's example is accepted");
    assert_eq!(client.get_job(&job.id).await.expect("stored").instances.get("dev"), Some(&2));
    let _ = child.kill();
    let _ = child.wait();
}
