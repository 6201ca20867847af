//! The EC2 fleet: an Auto Scaling group driven through the AWS SDK. It grows by setting the group's desired
//! capacity, removes chosen instances with `TerminateInstanceInAutoScalingGroup` and a decrement (never by lowering
//! the desired capacity, which would let AWS pick), and protects busy instances from scale-in. Region, endpoint and
//! credentials come from the SDK's usual chain (`AWS_REGION`, `AWS_ENDPOINT_URL`, profiles, instance roles). AWS
//! lifecycle hooks are not relied on: the cell drains an agent before its instance is removed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use aws_sdk_autoscaling::Client;
use tokio::sync::OnceCell;

use crate::fleet::{Fleet, FleetError, FleetFuture, Instance, InstanceState};

pub struct Ec2 {
    asg: String,
    client: OnceCell<Client>,
    /// When each instance was first seen (the ASG API does not say when it launched).
    first_seen: Mutex<HashMap<String, u64>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// An SDK error as a fleet error, by its AWS code.
fn classify<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    e: aws_sdk_autoscaling::error::SdkError<E, R>,
) -> FleetError {
    use aws_sdk_autoscaling::error::SdkError;
    let text = match &e {
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or_default().to_string();
            let message = s.err().message().unwrap_or_default().to_string();
            return match code.as_str() {
                "Throttling" | "ThrottlingException" | "RequestLimitExceeded" => FleetError::Throttled(message),
                "InvalidClientTokenId"
                | "SignatureDoesNotMatch"
                | "AccessDenied"
                | "UnrecognizedClientException"
                | "AuthFailure" => FleetError::Auth(format!("{code}: {message}")),
                "ValidationError" if message.contains("not found") || message.contains("does not exist") => {
                    FleetError::NotFound(message)
                }
                _ => FleetError::Other(format!("{code}: {message}")),
            };
        }
        SdkError::TimeoutError(_) => return FleetError::Timeout(format!("{e:?}")),
        other => format!("{other:?}"),
    };
    if text.contains("timed out") || text.contains("Timeout") {
        FleetError::Timeout(text)
    } else {
        FleetError::Other(text)
    }
}

impl Ec2 {
    pub fn new(asg: String) -> Ec2 {
        Ec2 { asg, client: OnceCell::new(), first_seen: Mutex::new(HashMap::new()) }
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
                Client::new(&config)
            })
            .await
    }
}

impl Fleet for Ec2 {
    fn describe(&self) -> FleetFuture<'_, Vec<Instance>> {
        Box::pin(async move {
            let out = self
                .client()
                .await
                .describe_auto_scaling_groups()
                .auto_scaling_group_names(&self.asg)
                .send()
                .await
                .map_err(classify)?;
            let group = out
                .auto_scaling_groups()
                .first()
                .ok_or_else(|| FleetError::NotFound(format!("auto scaling group {}", self.asg)))?;
            let now = now_ms();
            let mut seen = self.first_seen.lock().unwrap_or_else(|p| p.into_inner());
            let instances: Vec<Instance> = group
                .instances()
                .iter()
                .filter_map(|i| {
                    let id = i.instance_id()?.to_string();
                    let state = match i.lifecycle_state().map(|s| s.as_str()).unwrap_or_default() {
                        "InService" => InstanceState::Running,
                        s if s.starts_with("Pending") => InstanceState::Pending,
                        s if s.starts_with("Terminat") => InstanceState::Terminating,
                        "Detaching" | "Detached" | "EnteringStandby" | "Standby" => InstanceState::Terminating,
                        _ => InstanceState::Pending,
                    };
                    let launched_ms = *seen.entry(id.clone()).or_insert(now);
                    Some(Instance { id, state, launched_ms })
                })
                .collect();
            seen.retain(|id, _| instances.iter().any(|i| &i.id == id));
            Ok(instances)
        })
    }

    fn grow(&self, size: u32) -> FleetFuture<'_, ()> {
        Box::pin(async move {
            self.client()
                .await
                .set_desired_capacity()
                .auto_scaling_group_name(&self.asg)
                .desired_capacity(size as i32)
                .honor_cooldown(false)
                .send()
                .await
                .map_err(classify)?;
            Ok(())
        })
    }

    fn protect(&self, busy: Vec<String>, idle: Vec<String>) -> FleetFuture<'_, ()> {
        Box::pin(async move {
            let client = self.client().await;
            for (ids, on) in [(busy, true), (idle, false)] {
                if ids.is_empty() {
                    continue;
                }
                client
                    .set_instance_protection()
                    .auto_scaling_group_name(&self.asg)
                    .set_instance_ids(Some(ids))
                    .protected_from_scale_in(on)
                    .send()
                    .await
                    .map_err(classify)?;
            }
            Ok(())
        })
    }

    fn remove(&self, ids: Vec<String>) -> FleetFuture<'_, ()> {
        Box::pin(async move {
            let client = self.client().await;
            for id in ids {
                client
                    .terminate_instance_in_auto_scaling_group()
                    .instance_id(&id)
                    .should_decrement_desired_capacity(true)
                    .send()
                    .await
                    .map_err(classify)?;
            }
            Ok(())
        })
    }
}
