//! The autoscaler end to end: a real `titan server` cell with no agent of its own. On the `local` fleet its agents
//! are real `titan agent` processes (process runtime) the cell starts itself; on the `ec2` fleet the group is an Auto
//! Scaling group in moto_server, driven through the real SDK, and each instance moto launches is "booted" by the test
//! as a simulated agent carrying the instance's id. Pending tasks make instances appear and the tasks run there;
//! busy instances are protected from the group's own scale-in; once the job is killed the agents drain and their
//! instances go, and none is removed while it holds a task (every task ends killed by its user, never lost).

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
    // Each decision that acted is an event, with its reason.
    let url = format!("http://{}/v1/events?topic=fleet&from=0&timeoutSeconds=1", cell.members[0].addr);
    let events = reqwest::get(url).await.expect("events").text().await.expect("text");
    assert!(events.contains("scaled up to 2: launched 2"), "{events}");
    assert!(events.contains("scaled down to 0"), "{events}");
}

struct Moto(std::process::Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// moto_server on a free loopback port (`scripts/deps` installs it), and the SDK's environment pointed at it.
fn moto() -> Moto {
    let bin = std::env::var("TITAN_MOTO_SERVER").unwrap_or_else(|_| "/opt/titan-moto/bin/moto_server".into());
    assert!(std::path::Path::new(&bin).is_file(), "moto_server is missing at {bin}: run scripts/deps");
    let port = free_port();
    let child = std::process::Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start moto_server");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "moto_server did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Inherited by the cell the test starts: the SDK's usual chain finds them there too.
    std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    Moto(child)
}

/// The group's instances in moto: (id, protected from scale-in), and its desired capacity.
async fn asg_state(asg: &aws_sdk_autoscaling::Client) -> (Vec<(String, bool)>, i32) {
    let out = asg.describe_auto_scaling_groups().auto_scaling_group_names("titan-g").send().await.expect("describe");
    let g = &out.auto_scaling_groups()[0];
    let instances = g
        .instances()
        .iter()
        .filter(|i| !i.lifecycle_state().is_some_and(|s| s.as_str().starts_with("Terminat")))
        .map(|i| (i.instance_id().unwrap_or_default().to_string(), i.protected_from_scale_in().unwrap_or(false)))
        .collect();
    (instances, g.desired_capacity().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ec2_fleet_grows_an_auto_scaling_group_protects_busy_instances_and_removes_drained_ones() {
    let _moto = moto();
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let asg = aws_sdk_autoscaling::Client::new(&aws);
    asg.create_launch_configuration()
        .launch_configuration_name("titan-agents")
        .image_id("ami-12c6146b")
        .instance_type("t2.micro")
        .send()
        .await
        .expect("launch configuration");
    asg.create_auto_scaling_group()
        .auto_scaling_group_name("titan-g")
        .launch_configuration_name("titan-agents")
        .min_size(0)
        .max_size(4)
        .desired_capacity(0)
        .availability_zones("us-east-1a")
        .send()
        .await
        .expect("auto scaling group");
    let config = format!(
        "{TEST_CONFIG}[autoscaler]\ninterval_ms = 300\n[[autoscaler.groups]]\nname = \"g\"\nfleet = \"ec2\"\n\
         asg = \"titan-g\"\nmax = 3\nslots = 2\nboot_delay_ms = 1000\nmax_drain_share = 1.0\n\
         policy = {{ kind = \"reactive\", headroom = 0, scale_in_cooldown_s = 1 }}\n"
    );
    let cell = Cluster::start_with(1, &config);
    cell.leader(Duration::from_secs(20)).await;
    let client = cell.members[0].client();
    let spec = titan_api::job::JobSpec::parse(
        br#"{"name":"grow","applicationName":"fleet","location":"dc1:3","cpus":1,"memory":64,"image":"busybox"}"#,
        BodyFormat::Json,
    )
    .expect("spec");
    let job = client.submit_job(&spec, None).await.expect("submitted").id;

    // "Boot" every instance moto launches: a simulated agent carrying its instance id joins the cell.
    let record = std::sync::Arc::new(common::sim::Record::default());
    let mut agents: std::collections::BTreeMap<String, common::sim::SimAgent> = Default::default();
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let (instances, _) = asg_state(&asg).await;
        for (id, _) in &instances {
            if !agents.contains_key(id) {
                let mut reg = common::sim::registration(&format!("agent-{id}"), 2.0, 4096, "us-east-1a");
                reg.attributes.insert("instanceGroup".into(), "g".into());
                reg.attributes.insert("instanceId".into(), id.clone());
                agents.insert(id.clone(), common::sim::start(vec![cell.addrs()], reg, record.clone()));
            }
        }
        let running = client.get_job(&job).await.map(|j| j.locations.iter().map(|l| l.running).sum::<u32>());
        if running.is_ok_and(|n| n == 3) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the tasks never ran on the group's instances");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (instances, desired) = asg_state(&asg).await;
    assert_eq!((instances.len(), desired), (2, 2), "three one-cpu tasks on two-cpu instances");
    eventually(WITHIN, "both busy instances protected from scale-in", || async {
        asg_state(&asg).await.0.iter().all(|(_, protected)| *protected)
    })
    .await;

    client.kill_job(&job).await.expect("killed");
    eventually(WITHIN, "the group down to no instance", || async {
        let (instances, desired) = asg_state(&asg).await;
        instances.is_empty() && desired == 0
    })
    .await;
    drop(agents);
    let tasks = client.list_tasks(&titan_api::task::TaskQuery { job: Some(job), ..Default::default() }).await;
    for t in tasks.expect("tasks").tasks {
        assert_eq!(t.state, titan_api::task::TaskState::Killed, "no instance went away under a task: {t:?}");
    }
    let view = client.autoscaler().await.expect("view");
    let actions: Vec<String> = view.groups[0].decisions.iter().flat_map(|d| d.actions.clone()).collect();
    assert!(actions.iter().any(|a| a.starts_with("launched 2")), "{actions:?}");
    assert!(actions.iter().filter(|a| a.starts_with("removed")).count() >= 1, "{actions:?}");
}
