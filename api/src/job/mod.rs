//! Job specs as users submit them: the wire types of `POST /v1/jobs` and `PUT /v1/jobs/{id}/instances`, how a
//! JSON or YAML body becomes one, and the rules a spec must satisfy before a cell will store it.
//!
//! The spec is Titan's (name, applicationName, version, location, cpus, memory, disk, ports, restartOnFailure,
//! numRetries, restartOnSuccess) plus our extensions. Every rejection names the offending field by its wire path
//! (`healthCheck.intervalSeconds`, `volumes[1].path`, `locations.dc1`) so a user can fix a spec without reading
//! our source.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_path_to_error::Segment;
use utoipa::ToSchema;

use crate::error::ApiError;

// Limits. Each bounds what one spec may ask of a cell; raising one is a product decision, not a refactor.

/// Longest job name, volume name and application name: a DNS label, so names can appear in hostnames.
pub const MAX_NAME_LEN: usize = 63;

/// Whether `name` is a location name (`[a-z0-9][a-z0-9-]*`, at most 32 characters).
pub fn is_location_name(name: &str) -> bool {
    locations::check_location_name(name).is_ok()
}
/// Longest location (cell) name.
pub const MAX_LOCATION_NAME_LEN: usize = 32;
/// Most locations one job may name.
pub const MAX_LOCATIONS: usize = 64;
/// Most instances of one job in one location.
pub const MAX_INSTANCES_PER_LOCATION: u32 = 10_000;
/// Most CPUs one task may ask for.
pub const MAX_CPUS: f64 = 1024.0;
/// Most memory one task may ask for: 4 TiB, in MiB.
pub const MAX_MEMORY_MIB: u64 = 4 * 1024 * 1024;
/// Most disk one task (or one of its volumes) may ask for, in GiB.
pub const MAX_DISK_GIB: u64 = 65_536;
/// Most dynamic ports one task may ask for.
pub const MAX_PORTS: u32 = 64;
/// Most retries of a failed task.
pub const MAX_RETRIES: u32 = 1000;
/// Most environment variables.
pub const MAX_ENV_VARS: usize = 256;
/// Most placement constraints.
pub const MAX_CONSTRAINTS: usize = 64;
/// The most locations a job's failover preference names.
pub const MAX_FAILOVER: usize = 16;
/// Most volumes.
pub const MAX_VOLUMES: usize = 32;
/// Longest image reference.
pub const MAX_IMAGE_LEN: usize = 512;
/// Longest free-form label: version, owner, capacity group, volume source.
pub const MAX_LABEL_LEN: usize = 256;
/// Longest agent attribute name in a constraint.
pub const MAX_ATTRIBUTE_LEN: usize = 128;
/// Longest volume mount path (Linux's PATH_MAX).
pub const MAX_MOUNT_PATH_LEN: usize = 4096;
/// Longest interval between health checks.
pub const MAX_HEALTH_INTERVAL_SECONDS: u32 = 3600;
/// Longest grace period before health checks count.
pub const MAX_HEALTH_GRACE_PERIOD_SECONDS: u32 = 3600;
/// Most consecutive failed health checks before a task is declared unhealthy.
pub const MAX_HEALTH_FAILURE_THRESHOLD: u32 = 100;

// Defaults, named so the wire contract and the OpenAPI document say the same thing.

pub const DEFAULT_DISK_GIB: u64 = 0;
pub const DEFAULT_PORTS: u32 = 0;
pub const DEFAULT_RESTART_ON_FAILURE: bool = true;
pub const DEFAULT_NUM_RETRIES: u32 = 3;
pub const DEFAULT_RESTART_ON_SUCCESS: bool = false;
pub const DEFAULT_HEALTH_INTERVAL_SECONDS: u32 = 10;
pub const DEFAULT_HEALTH_TIMEOUT_SECONDS: u32 = 5;
pub const DEFAULT_HEALTH_GRACE_PERIOD_SECONDS: u32 = 0;
pub const DEFAULT_HEALTH_FAILURE_THRESHOLD: u32 = 3;

fn default_disk() -> u64 {
    DEFAULT_DISK_GIB
}
fn default_ports() -> u32 {
    DEFAULT_PORTS
}
fn default_restart_on_failure() -> bool {
    DEFAULT_RESTART_ON_FAILURE
}
fn default_num_retries() -> u32 {
    DEFAULT_NUM_RETRIES
}
fn default_restart_on_success() -> bool {
    DEFAULT_RESTART_ON_SUCCESS
}
fn default_health_interval() -> u32 {
    DEFAULT_HEALTH_INTERVAL_SECONDS
}
fn default_health_timeout() -> u32 {
    DEFAULT_HEALTH_TIMEOUT_SECONDS
}
fn default_health_grace_period() -> u32 {
    DEFAULT_HEALTH_GRACE_PERIOD_SECONDS
}
fn default_health_failure_threshold() -> u32 {
    DEFAULT_HEALTH_FAILURE_THRESHOLD
}

mod constraint;
mod format;
mod health;
mod locations;
mod policy;
#[cfg(test)]
mod tests;
mod validate;
mod volume;

pub use constraint::*;
pub use format::*;
pub use health::*;
pub use locations::*;
pub use policy::*;
use validate::*;
pub use volume::*;

/// `parent.key`, or `key` at the top level.
fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Whether the job runs forever (replaced when it stops) or runs to completion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobType {
    #[default]
    Service,
    Batch,
}

/// The job spec as submitted: Titan's fields plus our extensions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSpec {
    /// The job's name: lowercase letters, digits and hyphens, at most 63 characters.
    pub name: String,
    /// The application the job belongs to; quotas are kept per application unless a capacity group is given.
    pub application_name: String,
    /// The application's version label, for people; the scheduler does not interpret it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Instances per location in Titan's shorthand: `"dc1:20,dc2:40"`. Give this or `locations`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Instances per location as a map: `{"dc1": 20, "dc2": 40}`. Give this or `location`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locations: Option<BTreeMap<String, u32>>,
    /// CPUs per task; fractions allowed.
    pub cpus: f64,
    /// Memory per task, in MiB.
    pub memory: u64,
    /// Disk per task, in GiB.
    #[serde(default = "default_disk")]
    pub disk: u64,
    /// Number of dynamic host ports per task.
    #[serde(default = "default_ports")]
    pub ports: u32,
    /// Whether a task that fails is retried.
    #[serde(default = "default_restart_on_failure")]
    pub restart_on_failure: bool,
    /// How many times a failed task is retried. Failures of the system (a lost agent) do not count.
    #[serde(default = "default_num_retries")]
    pub num_retries: u32,
    /// Whether a task that exits successfully is started again.
    #[serde(default = "default_restart_on_success")]
    pub restart_on_success: bool,
    /// Who to call about the job: an email address or a team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The capacity group whose quota the job draws on; the application's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_group: Option<String>,
    /// The container image, e.g. `busybox:latest`.
    pub image: String,
    /// The command and its arguments; the image's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Environment variables of the container.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// `service` (default) or `batch`.
    #[serde(rename = "type", default)]
    pub job_type: JobType,
    /// Placement constraints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<ConstraintSpec>,
    /// Volumes mounted into each task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeSpec>,
    /// How the agent decides a task is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    /// When a batch job runs, as a 5-field cron expression (`*/5 * * * *`, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// What a scheduled run does when the previous one is still going: `skip` (the default) or `replace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<OverlapPolicy>,
    /// How many tasks voluntary disruptions (drains, scale-in, evacuation) may take down at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption_budget: Option<DisruptionBudgetSpec>,
    /// What happens to the job's tasks while their agent cannot reach the cell; absent, they keep running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<DisconnectSpec>,
    /// Where the job's instances go, in order of preference, when a location it runs in is evacuated and it runs
    /// in no other (`["dc2", "dc3"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Vec<String>>,
}

impl JobSpec {
    /// Parses and validates a body.
    pub fn parse(body: &[u8], format: BodyFormat) -> Result<JobSpec, ApiError> {
        let spec: JobSpec = format.decode(body)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the rules no type can express; the first broken rule, in field order, is returned.
    pub fn validate(&self) -> Result<(), ApiError> {
        check_dns_label(&self.name).map_err(|m| ApiError::field("name", m))?;
        check_application_name(&self.application_name).map_err(|m| ApiError::field("applicationName", m))?;
        if let Some(version) = &self.version {
            check_label(version).map_err(|m| ApiError::field("version", m))?;
        }
        resolve_locations(self.location.as_deref(), self.locations.as_ref())?;
        self.validate_resources()?;
        if let Some(owner) = &self.owner {
            check_label(owner).map_err(|m| ApiError::field("owner", m))?;
        }
        if let Some(group) = &self.capacity_group {
            check_label(group).map_err(|m| ApiError::field("capacityGroup", m))?;
        }
        check_image(&self.image).map_err(|m| ApiError::field("image", m))?;
        if let Some(command) = &self.command {
            check_command(command, "command")?;
        }
        self.validate_env()?;
        if self.constraints.len() > MAX_CONSTRAINTS {
            return Err(ApiError::field("constraints", format!("at most {MAX_CONSTRAINTS} constraints")));
        }
        for (i, constraint) in self.constraints.iter().enumerate() {
            constraint.validate(&format!("constraints[{i}]"))?;
        }
        self.validate_volumes()?;
        if let Some(check) = &self.health_check {
            check.validate("healthCheck", self.ports)?;
        }
        if let Some(schedule) = &self.schedule {
            if self.job_type != JobType::Batch {
                return Err(ApiError::field("schedule", "only batch jobs run on a schedule; set `type: batch`"));
            }
            crate::cron::Cron::parse(schedule).map_err(|m| ApiError::field("schedule", m))?;
        } else if self.overlap.is_some() {
            return Err(ApiError::field("overlap", "only a job with a schedule has an overlap policy"));
        }
        if let Some(budget) = &self.disruption_budget {
            budget.validate("disruptionBudget")?;
        }
        if let Some(disconnect) = &self.disconnect {
            disconnect.validate("disconnect")?;
        }
        if let Some(failover) = &self.failover {
            if failover.len() > MAX_FAILOVER {
                return Err(ApiError::field("failover", format!("at most {MAX_FAILOVER} locations")));
            }
            for (i, l) in failover.iter().enumerate() {
                check_location_name(l).map_err(|m| ApiError::field(format!("failover[{i}]"), m))?;
                if failover[..i].contains(l) {
                    return Err(ApiError::field(format!("failover[{i}]"), format!("{l} is named twice")));
                }
            }
        }
        Ok(())
    }

    /// Instances per location, from whichever of `location` / `locations` was given.
    ///
    /// Call it on a validated spec: an invalid one has no usable locations and yields an empty map, which
    /// schedules nothing, rather than a panic.
    pub fn locations(&self) -> BTreeMap<String, u32> {
        resolve_locations(self.location.as_deref(), self.locations.as_ref()).unwrap_or_default()
    }

    fn validate_resources(&self) -> Result<(), ApiError> {
        // NaN fails every comparison, so finiteness is checked first and on its own.
        if !self.cpus.is_finite() {
            return Err(ApiError::field("cpus", "must be a finite number"));
        }
        if self.cpus <= 0.0 || self.cpus > MAX_CPUS {
            return Err(ApiError::field("cpus", format!("must be more than 0 and at most {MAX_CPUS}")));
        }
        if self.memory == 0 || self.memory > MAX_MEMORY_MIB {
            return Err(ApiError::field("memory", format!("must be 1 to {MAX_MEMORY_MIB} MiB")));
        }
        if self.disk > MAX_DISK_GIB {
            return Err(ApiError::field("disk", format!("must be at most {MAX_DISK_GIB} GiB")));
        }
        if self.ports > MAX_PORTS {
            return Err(ApiError::field("ports", format!("at most {MAX_PORTS} dynamic ports")));
        }
        if self.num_retries > MAX_RETRIES {
            return Err(ApiError::field("numRetries", format!("at most {MAX_RETRIES} retries")));
        }
        Ok(())
    }

    fn validate_env(&self) -> Result<(), ApiError> {
        if self.env.len() > MAX_ENV_VARS {
            return Err(ApiError::field("env", format!("at most {MAX_ENV_VARS} variables")));
        }
        for (key, value) in &self.env {
            let mut chars = key.chars();
            let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !well_formed {
                return Err(ApiError::field(
                    join("env", key),
                    "a variable name is letters, digits and `_`, not starting with a digit",
                ));
            }
            // The kernel passes the environment as NUL-terminated strings.
            if value.contains('\0') {
                return Err(ApiError::field(join("env", key), "a value cannot contain a NUL character"));
            }
        }
        Ok(())
    }

    fn validate_volumes(&self) -> Result<(), ApiError> {
        if self.volumes.len() > MAX_VOLUMES {
            return Err(ApiError::field("volumes", format!("at most {MAX_VOLUMES} volumes")));
        }
        let mut names = BTreeSet::new();
        let mut paths = BTreeSet::new();
        for (i, volume) in self.volumes.iter().enumerate() {
            let at = format!("volumes[{i}]");
            volume.validate(&at)?;
            if !names.insert(volume.name.as_str()) {
                return Err(ApiError::field(format!("{at}.name"), format!("volume {} is named twice", volume.name)));
            }
            // `/data`, `/data/` and `/data/./` are one mount point.
            let normal: Vec<&str> = volume.path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
            if !paths.insert(normal) {
                return Err(ApiError::field(
                    format!("{at}.path"),
                    format!("another volume is already mounted at {}", volume.path),
                ));
            }
        }
        Ok(())
    }
}
