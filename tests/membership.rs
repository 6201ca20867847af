//! Membership changes on real cells: a new member votes only once it answers and has caught up, a change that would
//! leave the cell without a reachable quorum is refused, a re-add under another address is a conflict, calls to an
//! unreachable peer back off, and a removed member stands down instead of campaigning against the cell it left.

mod common;

use std::time::{Duration, Instant};

use common::*;
use titan_api::view::{AddMember, ClusterView};
use titan_api::ErrorCode;

const LEADER_WAIT: Duration = Duration::from_secs(20);

/// Test timings, and a short wait for a new member to catch up, so a member that never answers is reported soon.
fn config() -> String {
    format!("{TEST_CONFIG}member_catch_up_ms = 2000\n")
}

fn role(view: &ClusterView, id: u64) -> Option<String> {
    view.members.iter().find(|m| m.id == id).map(|m| m.role.clone())
}

async fn metrics_of(addr: &str) -> String {
    reqwest::get(format!("http://{addr}/metrics")).await.expect("metrics").text().await.expect("metrics text")
}

/// The request, as sent: a member id at the address of `titan dev`'s own agent, which answers 404 to a Raft
/// stream. It never gets a vote and is removed again with a 400, the cell keeps committing, and the leader did not
/// hammer the address while it waited for an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_at_an_address_that_is_no_member_is_refused_and_writes_commit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dev = Dev::start(dir.path()).await;
    let port: u16 = dev.addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port");
    let agent = format!("127.0.0.1:{}", port + 1);
    let bogus = 1_796_280_407_831u64;
    let http = reqwest::Client::new();
    let answer = tokio::time::timeout(
        WRITE_WAIT,
        http.post(format!("http://{}/v1/cluster/members", dev.addr))
            .bearer_auth(&dev.token)
            .json(&serde_json::json!({"id": bogus, "addr": agent}))
            .send(),
    )
    .await
    .expect("the add is answered in bounded time")
    .expect("an answer");
    let status = answer.status();
    let body: serde_json::Value = answer.json().await.expect("an error body");
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    assert_eq!((&body["code"], &body["field"]), (&serde_json::json!("invalid_parameter"), &serde_json::json!("addr")));
    let client = dev.client();
    let view = client.cluster().await.expect("status");
    assert_eq!(role(&view, bogus), None, "the refused member is not left behind: {view:?}");
    for i in 0..5 {
        write(&client, &format!("after-{i}")).await.expect("the cell commits after the refused member");
    }
    // Calls to the bogus peer back off (50 ms doubling to 5 s): a handful over these seconds, not one per tick.
    let failures = metric(&metrics_of(&dev.addr).await, "titan_raft_rpc_failures_total", &format!("peer=\"{bogus}\""));
    assert!((1.0..=40.0).contains(&failures), "failed calls to the bogus member: {failures}");
}

/// A 3-member cell asked to add a member nobody runs: it never gets a vote (and is removed again), so the cell still commits
/// with one of its three members killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_member_is_refused_and_the_cell_still_tolerates_a_failure() {
    let mut cluster = Cluster::start_with(3, &config());
    let leader = cluster.leader(LEADER_WAIT).await;
    let client = cluster.member(leader).client();
    let nowhere = format!("127.0.0.1:{}", free_port());
    let err = client.add_member(&AddMember { id: 4, addr: nowhere }).await.expect_err("member 4 never answers");
    assert_eq!(err.code(), Some(ErrorCode::InvalidParameter), "{err}");
    let view = client.cluster().await.expect("status");
    assert_eq!(role(&view, 4), None, "never a voter, and not left behind: {view:?}");
    let follower = if leader == 1 { 2 } else { 1 };
    cluster.member(follower).kill();
    let alive = cluster.running().map(|m| m.client()).collect::<Vec<_>>();
    write(&alive[0], "with-one-down").await.expect("two of three voters commit");
    // Removing the live follower now would leave {leader, killed}: no reachable majority, refused at once.
    let leader = cluster.leader(LEADER_WAIT).await;
    // Long enough for the leader to have tried the killed member (heartbeats every 50 ms here).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let other = cluster.running().map(|m| m.id).find(|id| *id != leader).expect("a live follower");
    let err = cluster.member(leader).client().remove_member(other).await.expect_err("no reachable quorum after");
    assert_eq!(err.code(), Some(ErrorCode::Conflict), "{err}");
    assert!(err.to_string().contains("quorum"), "{err}");
    let view = cluster.member(leader).client().cluster().await.expect("status");
    assert_eq!(role(&view, other).as_deref(), Some("follower"), "nothing changed: {view:?}");
}

/// Adding a member again is idempotent at the same address and a conflict naming `addr` at another, as is adding a
/// new id at an address another member has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_adding_a_member_under_another_address_is_a_conflict() {
    let cluster = Cluster::start_with(3, &config());
    let leader = cluster.leader(LEADER_WAIT).await;
    let client = cluster.members[0].client();
    let two = cluster.members[1].addr.to_string();
    let view = client.add_member(&AddMember { id: 2, addr: two.clone() }).await.expect("same id, same address");
    assert!(matches!(role(&view, 2).as_deref(), Some("follower" | "leader")), "{view:?}");
    for (id, addr) in [(2, format!("127.0.0.1:{}", free_port())), (9, two)] {
        let err = match client.add_member(&AddMember { id, addr }).await.expect_err("a conflict") {
            titan_api::ClientError::Api { status, error } => (status, error),
            other => panic!("not an API error: {other}"),
        };
        assert_eq!(err.0, 409, "{:?}", err.1);
        assert_eq!(err.1.code, ErrorCode::Conflict, "{:?}", err.1);
        assert_eq!(err.1.field.as_deref(), Some("addr"), "{:?}", err.1);
    }
    let view = cluster.members[0].client().cluster().await.expect("status");
    assert_eq!(view.members.len(), 3, "nothing was added: {view:?}");
    assert_eq!(view.leader, Some(leader));
}

/// A member removed while it was down never saw its removal; started again with its old configuration it would
/// campaign. The cell refuses it as no member, it stands down, and the cell's term stays put while writes commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_stands_down() {
    let mut cluster = Cluster::start_with(3, &config());
    let leader = cluster.leader(LEADER_WAIT).await;
    let victim = if leader == 3 { 2 } else { 3 };
    cluster.member(victim).kill();
    let view = cluster.member(leader).client().remove_member(victim).await.expect("removed");
    assert_eq!(role(&view, victim), None, "{view:?}");
    cluster.restart(victim);
    let leader_client = cluster.member(leader).client();
    let term = leader_client.cluster().await.expect("status").term;
    // Many election timeouts (300-600 ms here) with the removed member running.
    let until = Instant::now() + Duration::from_secs(6);
    let mut i = 0;
    while Instant::now() < until {
        write(&leader_client, &format!("job-{i}")).await.expect("the cell commits");
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let view = leader_client.cluster().await.expect("status");
    assert_eq!(view.term, term, "the cell's term moved while the removed member ran: {view:?}");
    assert_eq!(view.leader, Some(leader), "{view:?}");
    assert!(cluster.member(victim).is_running());
    // The removed member stopped campaigning: its own term no longer rises either.
    let addr = cluster.member(victim).addr.to_string();
    let first = metric(&metrics_of(&addr).await, "titan_raft_term", "");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = metric(&metrics_of(&addr).await, "titan_raft_term", "");
    assert_eq!(first, later, "the removed member kept campaigning");
}
