//! A real `titan agent` process against a real cell: it registers with detected resources and its attributes,
//! keeps its lease with heartbeats, survives a restart with the same id and a higher lease epoch, and a stale
//! epoch is refused.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use titan_api::ErrorCode;

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(cell: &str, dir: &std::path::Path, addr: &str) -> Agent {
    let child = Command::new(env!("CARGO_BIN_EXE_titan"))
        .args(["agent", "--cell-addr", cell, "--attr", "zone=a", "--attr", "instance_group=m5", "--cpus", "3"])
        .args(["--addr", addr])
        .arg("--data-dir")
        .arg(dir)
        .env("TITAN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start titan agent");
    Agent(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_registers_keeps_its_lease_and_comes_back_with_a_new_epoch() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader(Duration::from_secs(20)).await;
    // Registered through a follower: the registration is committed through Raft and heartbeats reach the leader.
    let follower = cluster.running().find(|m| m.id != leader).expect("a follower");
    let leader_client = cluster.running().find(|m| m.id == leader).expect("the leader").client();
    let dir = tempfile::tempdir().expect("temp dir");
    let agent_addr = format!("127.0.0.1:{}", free_port());
    let agent = start_agent(&follower.addr.to_string(), dir.path(), &agent_addr);

    let c = leader_client.clone();
    eventually(Duration::from_secs(20), "the agent registered and heartbeating", || {
        let c = c.clone();
        async move { matches!(c.list_agents().await.as_deref(), Ok([a]) if a.last_heartbeat_ms.is_some()) }
    })
    .await;
    let first = leader_client.list_agents().await.expect("listed").remove(0);
    assert_eq!(first.lease_epoch, 1);
    assert_eq!(first.resources.cpus, 3.0);
    assert!(first.resources.memory_mib > 0);
    assert_eq!(first.resources.port_ranges, vec![(31_000, 31_999)]);
    assert_eq!(first.attributes.get("zone").map(String::as_str), Some("a"));
    assert_eq!(first.attributes.get("instance_group").map(String::as_str), Some("m5"));
    // Every member lists it (registration is replicated).
    for m in cluster.running() {
        let c = m.client();
        let id = first.id.clone();
        eventually(Duration::from_secs(10), "the agent on every member", || {
            let (c, id) = (c.clone(), id.clone());
            async move { c.get_agent(&id).await.is_ok() }
        })
        .await;
    }

    // A restart keeps the id and raises the epoch; the old epoch is refused.
    drop(agent);
    let _agent = start_agent(&follower.addr.to_string(), dir.path(), &agent_addr);
    let (c, id) = (leader_client.clone(), first.id.clone());
    eventually(Duration::from_secs(20), "the agent re-registered", || {
        let (c, id) = (c.clone(), id.clone());
        async move { c.get_agent(&id).await.is_ok_and(|a| a.lease_epoch == 2) }
    })
    .await;
    let stale = leader_client.heartbeat(&first.id, 1).await.expect_err("epoch 1 is stale");
    assert_eq!(stale.code(), Some(ErrorCode::Conflict));
    let unknown = leader_client.heartbeat("no-such-agent", 1).await.expect_err("unknown agent");
    assert_eq!(unknown.code(), Some(ErrorCode::NotFound));
    assert_eq!(leader_client.list_agents().await.expect("listed").len(), 1, "a restart is the same agent");
    assert_eq!(leader_client.get_agent(&first.id).await.expect("known").addr, agent_addr);

    // The agent's own metrics show the lease it holds.
    let metrics = reqwest::get(format!("http://{agent_addr}/metrics")).await.expect("agent answers");
    let text = metrics.text().await.expect("body");
    assert!(text.contains("titan_agent_lease_epoch 2"), "{text}");
    // Its default task ports (31000-31999) lie below the kernel's ephemeral range: none can be a source port.
    assert!(text.contains("titan_agent_ports_in_ephemeral_range 0"), "{text}");

    // `titan node list` shows it.
    let out = Command::new(env!("CARGO_BIN_EXE_titan"))
        .args(["node", "list", "--addr", &follower.addr.to_string()])
        .output()
        .expect("titan node list");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(&first.id) && text.contains("zone=a"), "{text}");
}
