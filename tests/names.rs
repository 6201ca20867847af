//! Members known by DNS name: a 3-member cell whose `--peers` and `--advertise` say `localhost:PORT` while each
//! member listens on `127.0.0.1:PORT`. Raft, forwarded writes and catching up all go through the names, resolved
//! at each connection, and the membership keeps the names as given. Cells told of each other by name federate.

mod common;

use std::time::Duration;

use common::*;

const LEADER_WAIT: Duration = Duration::from_secs(20);

/// The cell elects a leader and commits a write a follower forwards to it; its leader is killed, the other two
/// elect one of themselves and commit; the killed member, started again with its name in its configuration file
/// (`advertise = ...`) rather than the flag, rejoins: it holds the write it missed and forwards a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_named_by_dns_elect_a_leader_commit_and_rejoin_after_a_restart() {
    let mut cluster = Cluster::configure_named("dc1", 3, TEST_CONFIG);
    assert!(cluster.peers.contains("1=localhost:"), "{}", cluster.peers);
    for id in 1..=3 {
        cluster.restart(id);
    }
    let leader = cluster.leader(LEADER_WAIT).await;
    let view = cluster.member(leader).client().cluster().await.expect("status");
    let members: Vec<(u64, String)> = view.members.iter().map(|m| (m.id, m.addr.clone())).collect();
    let named: Vec<(u64, String)> =
        cluster.members.iter().map(|m| (m.id, format!("localhost:{}", m.addr.port()))).collect();
    assert_eq!(members, named, "the membership holds each member's advertised name");

    let follower = if leader == 1 { 2 } else { 1 };
    let before = write(&cluster.member(follower).client(), "before").await.expect("a follower's write commits");

    cluster.member(leader).kill();
    let next = cluster.leader(LEADER_WAIT).await;
    assert_ne!(next, leader, "a running member leads");
    let missed = write(&cluster.member(next).client(), "missed").await.expect("two of three commit");

    let port = cluster.member(leader).addr.port();
    let config = format!("advertise = \"localhost:{port}\"\n{TEST_CONFIG}");
    let peers = cluster.peers.clone();
    let restarted = cluster.member(leader);
    restarted.advertise = None;
    restarted.start(&peers, &config);
    let client = restarted.client();
    eventually(Duration::from_secs(20), "the restarted member to catch up", || async {
        job_ids(&client).await.is_some_and(|ids| ids.contains(&before) && ids.contains(&missed))
    })
    .await;
    let view = client.cluster().await.expect("status");
    assert!(view.leader.is_some_and(|l| l != leader), "it follows the cell's leader: {view:?}");
    let members: Vec<(u64, String)> = view.members.iter().map(|m| (m.id, m.addr.clone())).collect();
    assert_eq!(members, named, "its restart changed no member's address");
    let after = write(&client, "after").await.expect("the rejoined member forwards a write by name");
    let other = cluster.member(next).client();
    eventually(Duration::from_secs(10), "the rejoined member's write on another member", || async {
        job_ids(&other).await.is_some_and(|ids| ids.contains(&after))
    })
    .await;
}

/// Two single-member cells, each named `localhost:PORT` by its `--advertise` and in the other's `[federation]
/// cells`: a job written in either reaches the other, and each sees the other up, with its member by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_named_by_dns_federate() {
    let mut dc1 = Cluster::configure_named("dc1", 1, TEST_CONFIG);
    let mut dc2 = Cluster::configure_named("dc2", 1, TEST_CONFIG);
    let by_name = |cell: &Cluster| format!("localhost:{}", cell.members[0].addr.port());
    common::federate_two(&mut dc1, &mut dc2, by_name, "", LEADER_WAIT).await;
    let (one, two) = (dc1.member(1).client(), dc2.member(1).client());
    let from_dc1 = write(&one, "from-dc1").await.expect("dc1 commits");
    let from_dc2 = write(&two, "from-dc2").await.expect("dc2 commits");
    eventually(Duration::from_secs(20), "each cell's job in the other", || async {
        let has = |ids: Option<Vec<String>>, id: &str| ids.is_some_and(|ids| ids.iter().any(|i| i == id));
        has(job_ids(&two).await, &from_dc1) && has(job_ids(&one).await, &from_dc2)
    })
    .await;
    let dc2_name = format!("localhost:{}", dc2.members[0].addr.port());
    eventually(Duration::from_secs(10), "dc1 to see dc2 up, its member by name", || async {
        let cells = one.cells().await.unwrap_or_default();
        cells.iter().any(|c| c.name == "dc2" && c.state == "up" && c.members == [dc2_name.clone()])
    })
    .await;
}
