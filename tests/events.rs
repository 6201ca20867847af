//! End to end: the event stream of a real 3-member cell, resumed from inside the events one Raft entry made, on
//! another member and after that member restarts, with nothing lost and nothing repeated.

mod common;

use std::time::Duration;

use common::{Cluster, TEST_CONFIG};
use titan_api::job::BodyFormat;

/// One server-sent event: its id, its event name (the topic) and its data.
type Sse = (u64, String, serde_json::Value);

/// Reads server-sent events until `count` have come or the time is up.
async fn read_events(mut resp: reqwest::Response, within: Duration, count: usize) -> Vec<Sse> {
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < count {
        let Ok(Ok(Some(bytes))) = tokio::time::timeout_at(deadline, resp.chunk()).await else { break };
        buf.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::new(), serde_json::Value::Null);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str(v.trim()).unwrap_or(serde_json::Value::Null);
                }
            }
            // Keep-alive comments have no id.
            if let Some(id) = id {
                out.push((id, event, data));
            }
        }
    }
    out
}

async fn stream(http: &reqwest::Client, addr: &str, last_event_id: u64) -> reqwest::Response {
    let resp = http
        .get(format!("http://{addr}/v1/events"))
        .header("last-event-id", last_event_id.to_string())
        .send()
        .await
        .expect("stream opens");
    assert_eq!(resp.status().as_u16(), 200);
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_inside_one_entrys_events_loses_and_repeats_nothing_on_any_member_and_after_a_restart() {
    let mut cell = Cluster::start_with(3, TEST_CONFIG);
    let leader = cell.leader(Duration::from_secs(20)).await;
    let http = reqwest::Client::new();
    let addr = |cell: &Cluster, id: u64| cell.members[id as usize - 1].addr.to_string();
    let spec = r#"{"name":"web","applicationName":"shop","location":"dc1:6","cpus":1,"memory":64,"image":"busybox"}"#;
    cell.member(leader).client().submit_raw(spec.as_bytes().to_vec(), BodyFormat::Json, None).await.expect("submitted");

    // No agents: the job's creation and its six tasks' acceptance, the tasks all made by one round.
    let all = read_events(stream(&http, &addr(&cell, leader), 0).await, Duration::from_secs(20), 7).await;
    assert_eq!(all.len(), 7, "{all:#?}");
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "ids strictly increase: {all:#?}");
    assert!(all.iter().all(|(id, _, d)| d["eventId"] == *id), "the SSE id is the event's id");
    // A cut after an event whose successor came from the same Raft entry.
    let cut = all.windows(2).position(|w| w[0].2["index"] == w[1].2["index"]).expect("one entry made several events");
    let rest = &all[cut + 1..];

    let other = (1..=3).find(|id| *id != leader).expect("a follower");
    let resumed =
        read_events(stream(&http, &addr(&cell, other), all[cut].0).await, Duration::from_secs(10), rest.len()).await;
    assert_eq!(resumed, rest, "resumed on member {other} after event {}", all[cut].0);

    cell.member(other).kill();
    cell.restart(other);
    let mut after_restart = Vec::new();
    for _ in 0..100 {
        if let Ok(resp) = http
            .get(format!("http://{}/v1/events", addr(&cell, other)))
            .header("last-event-id", all[cut].0.to_string())
            .send()
            .await
        {
            after_restart = read_events(resp, Duration::from_secs(2), rest.len()).await;
            if after_restart.len() == rest.len() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(after_restart, rest, "resumed on member {other} after it restarted");
}
