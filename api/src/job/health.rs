//! Health checks: how an agent decides a task is healthy, and the rules of each kind.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::*;
use crate::error::ApiError;

/// How a health check probes a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckType {
    /// A GET of `path` on the task's port `port` answers 2xx.
    Http,
    /// A TCP connection to the task's port `port` opens.
    Tcp,
    /// `command` run inside the container exits 0.
    Command,
}

/// How the agent decides a task is healthy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheckSpec {
    #[serde(rename = "type")]
    pub check_type: HealthCheckType,
    /// For `http`: the path to GET, starting with `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// For `http` and `tcp`: which of the task's dynamic ports to probe, counted from 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// For `command`: the command and its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default = "default_health_interval")]
    pub interval_seconds: u32,
    #[serde(default = "default_health_timeout")]
    pub timeout_seconds: u32,
    /// How long after start failures do not count.
    #[serde(default = "default_health_grace_period")]
    pub grace_period_seconds: u32,
    /// Consecutive failures before the task is unhealthy.
    #[serde(default = "default_health_failure_threshold")]
    pub failure_threshold: u32,
}

impl HealthCheckSpec {
    /// `ports` is the job's number of dynamic ports, which `port` indexes.
    pub(super) fn validate(&self, at: &str, ports: u32) -> Result<(), ApiError> {
        let field = |name: &str| join(at, name);
        let kind = self.check_type;
        match (kind, &self.path) {
            (HealthCheckType::Http, Some(path)) if path.starts_with('/') => {}
            (HealthCheckType::Http, Some(_)) => return Err(ApiError::field(field("path"), "must start with /")),
            (HealthCheckType::Http, None) => {
                return Err(ApiError::field(field("path"), "an http check needs a path to GET"));
            }
            (_, None) => {}
            (_, Some(_)) => return Err(ApiError::field(field("path"), "only an http check has a path")),
        }
        match (kind, self.port) {
            (HealthCheckType::Command, Some(_)) => {
                return Err(ApiError::field(field("port"), "a command check probes no port"));
            }
            (HealthCheckType::Command, None) => {}
            (_, None) => {
                return Err(ApiError::field(field("port"), "http and tcp checks need the index of the port to probe"));
            }
            (_, Some(port)) if port >= ports => {
                return Err(ApiError::field(
                    field("port"),
                    format!("port {port} is an index into the job's dynamic ports, and the job has {ports}"),
                ));
            }
            (_, Some(_)) => {}
        }
        match (kind, &self.command) {
            (HealthCheckType::Command, Some(command)) => check_command(command, &field("command"))?,
            (HealthCheckType::Command, None) => {
                return Err(ApiError::field(field("command"), "a command check needs a command"));
            }
            (_, None) => {}
            (_, Some(_)) => return Err(ApiError::field(field("command"), "only a command check has a command")),
        }
        if !(1..=MAX_HEALTH_INTERVAL_SECONDS).contains(&self.interval_seconds) {
            return Err(ApiError::field(
                field("intervalSeconds"),
                format!("must be 1 to {MAX_HEALTH_INTERVAL_SECONDS}"),
            ));
        }
        // A probe that may outlast its interval would overlap the next one.
        if !(1..=self.interval_seconds).contains(&self.timeout_seconds) {
            return Err(ApiError::field(
                field("timeoutSeconds"),
                format!("must be 1 to intervalSeconds ({})", self.interval_seconds),
            ));
        }
        if self.grace_period_seconds > MAX_HEALTH_GRACE_PERIOD_SECONDS {
            return Err(ApiError::field(
                field("gracePeriodSeconds"),
                format!("must be at most {MAX_HEALTH_GRACE_PERIOD_SECONDS}"),
            ));
        }
        if !(1..=MAX_HEALTH_FAILURE_THRESHOLD).contains(&self.failure_threshold) {
            return Err(ApiError::field(
                field("failureThreshold"),
                format!("must be 1 to {MAX_HEALTH_FAILURE_THRESHOLD}"),
            ));
        }
        Ok(())
    }
}
