//! The autoscaler end to end: a real `titan server` cell with no agent of its own and an instance group on the
//! `local` fleet, whose agents are real `titan agent` processes (process runtime) the cell starts itself. Pending
//! tasks make agents appear and the tasks run there; once the job is killed the agents drain and go, and none is
//! removed while it holds a task (every task ends killed by its user, never lost).

mod common;

use std::time::Duration;

use common::*;
use titan_api::job::BodyFormat;

const WITHIN: Duration = Duration::from_secs(60);

fn config() -> String {
    format!(
        "{TEST_CONFIG}[autoscaler]\ninterval_ms = 300\n[[autoscaler.groups]]\nname = \"g\"\nmax = 3\nslots = 2\n\
         memory_mib = 1024\nboot_delay_ms = 1000\nmax_drain_share = 1.0\nlocal_runtime = \"process\"\n\
         policy = {{ kind = \"reactive\", headroom = 0, scale_in_cooldown_s = 1 }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_tasks_bring_agents_that_run_them_and_idle_agents_drain_and_go() {
    let cell = Cluster::start_with(1, &config());
    cell.leader(Duration::from_secs(20)).await;
    let client = cell.members[0].client();
    let view = client.autoscaler().await.expect("the autoscaler view");
    assert!(view.leading);
    assert_eq!((view.groups.len(), view.groups[0].desired), (1, 0), "nothing to run, no instance");

    let spec = titan_api::job::JobSpec::parse(
        br#"{"name":"grow","applicationName":"fleet","location":"dc1:3","cpus":1,"memory":64,"image":"busybox",
            "command":["sleep","600"]}"#,
        BodyFormat::Json,
    )
    .expect("spec");
    let job = client.submit_job(&spec, None).await.expect("submitted").id;
    // Three one-cpu tasks on two-cpu instances: two instances.
    eventually(WITHIN, "the three tasks running on new agents", || async {
        client.get_job(&job).await.is_ok_and(|j| j.locations.iter().any(|l| l.location == "dc1" && l.running == 3))
    })
    .await;
    eventually(WITHIN, "the view to show two running instances", || async {
        client.autoscaler().await.is_ok_and(|v| v.groups[0].instances.get("running") == Some(&2))
    })
    .await;
    let view = client.autoscaler().await.expect("view");
    let g = &view.groups[0];
    assert_eq!((g.desired, g.agents.get("active").copied(), g.demand_slots), (2, Some(2), 3), "{g:?}");
    assert!(g.decisions.iter().any(|d| d.direction == "up" && d.actions.iter().any(|a| a.starts_with("launched"))));
    let agents = client.list_agents().await.expect("agents");
    assert_eq!(agents.len(), 2);
    assert!(agents.iter().all(|a| a.attributes.get("instanceGroup").map(String::as_str) == Some("g")));
    let metrics =
        reqwest::get(format!("http://{}/metrics", cell.members[0].addr)).await.expect("m").text().await.expect("t");
    assert_eq!(metric(&metrics, "titan_fleet_launches_total", "group=\"g\""), 2.0);

    client.kill_job(&job).await.expect("killed");
    eventually(WITHIN, "the group back to no instance", || async {
        client.autoscaler().await.is_ok_and(|v| v.groups[0].instances.values().sum::<u32>() == 0)
    })
    .await;
    let view = client.autoscaler().await.expect("view");
    let actions: Vec<String> = view.groups[0].decisions.iter().flat_map(|d| d.actions.clone()).collect();
    assert!(actions.iter().any(|a| a.starts_with("draining agent")), "{actions:?}");
    assert!(actions.iter().any(|a| a.starts_with("removed")), "{actions:?}");
    let agents = client.list_agents().await.expect("agents");
    assert!(agents.iter().all(|a| a.state == titan_api::agent::AgentState::Gone), "{agents:?}");
    // No agent went away with a task on it: every task was killed by its user, none lost.
    let tasks = client.list_tasks(&titan_api::task::TaskQuery { job: Some(job.clone()), ..Default::default() }).await;
    let tasks = tasks.expect("tasks").tasks;
    assert_eq!(tasks.len(), 3);
    for t in tasks {
        assert_eq!(t.state, titan_api::task::TaskState::Killed, "{t:?}");
    }
    let metrics =
        reqwest::get(format!("http://{}/metrics", cell.members[0].addr)).await.expect("m").text().await.expect("t");
    assert_eq!(metric(&metrics, "titan_fleet_terminations_total", "group=\"g\""), 2.0);
}
