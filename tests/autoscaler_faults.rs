//! The autoscaler when AWS fails: a real cell whose ec2 group's endpoint answers every call with `Throttling` (a
//! stand-in server on loopback; the SDK's own retries run first). The failure is counted by kind, raised as an event
//! with its reason, shown on `GET /v1/autoscaler`, and retried with back-off; scheduling goes on meanwhile. Its own
//! process: the AWS endpoint is the process's environment, which the cell inherits.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use titan_api::job::BodyFormat;

const WITHIN: Duration = Duration::from_secs(60);

/// An AWS Query API endpoint that throttles everything, counting the calls.
async fn throttling_aws(calls: Arc<AtomicU64>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new().fallback(move || {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            (
                axum::http::StatusCode::BAD_REQUEST,
                [("content-type", "text/xml")],
                "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message>\
                 </Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>",
            )
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_fleet_is_counted_raised_and_retried_while_scheduling_goes_on() {
    let calls = Arc::new(AtomicU64::new(0));
    let port = throttling_aws(calls.clone()).await;
    std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let config = format!(
        "{TEST_CONFIG}[autoscaler]\ninterval_ms = 300\n[[autoscaler.groups]]\nname = \"g\"\nfleet = \"ec2\"\n\
         asg = \"titan-g\"\nmax = 3\nslots = 2\n"
    );
    let cell = Cluster::start_with(1, &config);
    cell.leader(Duration::from_secs(20)).await;
    let client = cell.members[0].client();
    let record = Arc::new(common::sim::Record::default());
    let _agent = common::sim::start(vec![cell.addrs()], common::sim::registration("plain", 4.0, 4096, "a"), record);
    let spec = titan_api::job::JobSpec::parse(
        br#"{"name":"runs","applicationName":"fleet","location":"dc1:2","cpus":1,"memory":64,"image":"busybox"}"#,
        BodyFormat::Json,
    )
    .expect("spec");
    let job = client.submit_job(&spec, None).await.expect("submitted").id;
    eventually(WITHIN, "the job running beside a failing fleet", || async {
        client.get_job(&job).await.is_ok_and(|j| j.locations.iter().map(|l| l.running).sum::<u32>() == 2)
    })
    .await;
    let addr = cell.members[0].addr;
    eventually(WITHIN, "the throttling counted", || async {
        let text = reqwest::get(format!("http://{addr}/metrics")).await.expect("m").text().await.expect("t");
        metric(&text, "titan_fleet_errors_total", "kind=\"throttled\"") >= 1.0
    })
    .await;
    let view = client.autoscaler().await.expect("view");
    assert!(view.groups[0].error.as_deref().unwrap_or("").contains("Rate exceeded"), "{view:?}");
    let events = reqwest::get(format!("http://{addr}/v1/events?topic=fleet&from=0&timeoutSeconds=1"))
        .await
        .expect("events")
        .text()
        .await
        .expect("text");
    assert!(events.contains("fleet call failed") && events.contains("throttled"), "{events}");
    // Backed off, not hammered: a few calls (with the SDK's own retries), not one per 300 ms tick per attempt.
    let before = calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = calls.load(Ordering::SeqCst) - before;
    assert!(during <= 12, "{during} calls in 2 s: the back-off does not hold");
}
