//! The EC2 fleet through the real AWS SDK against `moto_server` (PyPI `moto[server]`, installed by `scripts/deps`
//! at /opt/titan-moto, or `TITAN_MOTO_SERVER`), started here on a free loopback port and stopped at the end: a
//! launch configuration and an Auto Scaling group are created, the fleet grows the group, protects busy
//! instances, removes chosen ones with a decrement, and names an unknown group's error.

#![cfg(feature = "ec2")]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use titan_autoscaler::ec2::Ec2;
use titan_autoscaler::fleet::{Fleet, InstanceState};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> (Moto, u16) {
    let bin = std::env::var("TITAN_MOTO_SERVER").unwrap_or_else(|_| "/opt/titan-moto/bin/moto_server".into());
    assert!(std::path::Path::new(&bin).is_file(), "moto_server is missing at {bin}: run scripts/deps");
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (Moto(child), port)
}

#[tokio::test]
async fn the_ec2_fleet_grows_protects_and_removes_chosen_instances_of_a_real_auto_scaling_group() {
    let (_moto, port) = start_moto();
    // The SDK's usual chain: the endpoint, region and credentials from the environment.
    std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let asg = aws_sdk_autoscaling::Client::new(&config);
    asg.create_launch_configuration()
        .launch_configuration_name("titan-agents")
        .image_id("ami-12c6146b")
        .instance_type("t2.micro")
        .send()
        .await
        .expect("launch configuration");
    asg.create_auto_scaling_group()
        .auto_scaling_group_name("titan-small")
        .launch_configuration_name("titan-agents")
        .min_size(0)
        .max_size(6)
        .desired_capacity(0)
        .availability_zones("us-east-1a")
        .send()
        .await
        .expect("auto scaling group");

    let fleet = Ec2::new("titan-small".into());
    assert!(fleet.describe().await.expect("describe").is_empty());
    fleet.grow(3).await.expect("grow");
    let all = fleet.describe().await.expect("describe");
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(all.iter().all(|i| i.state != InstanceState::Terminating));
    let ids: Vec<String> = all.iter().map(|i| i.id.clone()).collect();

    fleet.protect(vec![ids[0].clone()], ids[1..].to_vec()).await.expect("protect");
    let seen = asg.describe_auto_scaling_instances().set_instance_ids(Some(ids.clone())).send().await.expect("d");
    let protected: Vec<&str> = seen
        .auto_scaling_instances()
        .iter()
        .filter(|i| i.protected_from_scale_in() == Some(true))
        .filter_map(|i| i.instance_id())
        .collect();
    assert_eq!(protected, vec![ids[0].as_str()]);

    fleet.remove(vec![ids[2].clone()]).await.expect("remove");
    let left = fleet.describe().await.expect("describe");
    let live: Vec<&str> =
        left.iter().filter(|i| i.state != InstanceState::Terminating).map(|i| i.id.as_str()).collect();
    assert!(!live.contains(&ids[2].as_str()), "{left:?}");
    let group = asg.describe_auto_scaling_groups().auto_scaling_group_names("titan-small").send().await.expect("g");
    assert_eq!(group.auto_scaling_groups()[0].desired_capacity(), Some(2), "removed with a decrement");

    let unknown = Ec2::new("no-such-group".into()).describe().await.expect_err("an unknown group");
    assert_eq!(unknown.kind(), "not_found", "{unknown}");
}
