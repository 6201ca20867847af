//! `titan dev` as a newcomer runs it: one command gives a ready cell with a local agent registered.

mod common;

use common::*;
use titan_api::job::BodyFormat;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titan_dev_serves_a_cell_with_a_local_agent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dev = Dev::start(dir.path()).await;
    let client = dev.client();
    let hello = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello.yaml")).expect("example");
    let job = client.submit_raw(hello, BodyFormat::Yaml, None).await.expect("the README's example is accepted");
    assert_eq!(client.get_job(&job.id).await.expect("stored").instances.get("dev"), Some(&2));
}
