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

use crate::error::{ApiError, ErrorCode};

// Limits. Each bounds what one spec may ask of a cell; raising one is a product decision, not a refactor.

/// Longest job name, volume name and application name: a DNS label, so names can appear in hostnames.
pub const MAX_NAME_LEN: usize = 63;
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

/// The encoding of a request body, chosen from its Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Yaml,
}

impl BodyFormat {
    pub(crate) fn name(self) -> &'static str {
        match self {
            BodyFormat::Json => "JSON",
            BodyFormat::Yaml => "YAML",
        }
    }

    /// Decodes a body into `T` without validating it.
    ///
    /// A body that is not JSON (or YAML) at all is `MalformedBody`; one that is, but does not fit `T` (a wrong
    /// type, a missing, unknown or repeated field) is `InvalidSpec` naming the field's wire path.
    pub fn decode<T: DeserializeOwned>(self, body: &[u8]) -> Result<T, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::new(ErrorCode::MalformedBody, "the body is empty"));
        }
        crate::body::check(body, self)?;
        // The common case is a good body: decode it directly, and pay for path tracking only to explain a bad one.
        if let BodyFormat::Json = self {
            if let Ok(value) = serde_json::from_slice::<T>(body) {
                return Ok(value);
            }
        }
        // Syntax is checked over the whole body before any typing: a typed pass alone would blame the user's spec
        // for a type error in the first half of a body that was in fact cut short. YAML is parsed once, into a
        // value the typed pass then reads: parsing it is the expensive part.
        let malformed = |why: String| {
            ApiError::new(ErrorCode::MalformedBody, format!("the body is not valid {}: {why}", self.name()))
        };
        match self {
            BodyFormat::Json => {
                serde_json::from_slice::<IgnoredAny>(body).map_err(|e| malformed(e.to_string()))?;
                serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body)).map_err(misfit)
            }
            BodyFormat::Yaml => {
                let value = serde_yaml::from_slice::<serde_yaml::Value>(body).map_err(|e| malformed(e.to_string()))?;
                serde_path_to_error::deserialize(value).map_err(misfit)
            }
        }
    }
}

/// Turns a body that parsed but does not fit the type into `InvalidSpec` at the offending field's wire path.
fn misfit<E: Display>(err: serde_path_to_error::Error<E>) -> ApiError {
    let message = err.inner().to_string();
    let mut path = String::new();
    for segment in err.path() {
        match segment {
            Segment::Seq { index } => path += &format!("[{index}]"),
            Segment::Map { key } | Segment::Enum { variant: key } => path = join(&path, key),
            Segment::Unknown => path = join(&path, "?"),
        }
    }
    // An unknown field's path already ends with its key (serde_path_to_error records the key it was reading),
    // but serde reports missing and repeated fields at the struct that holds them: their name is only in the
    // message.
    if let Some(name) = named_field(&message, &["missing field `", "duplicate field `"]) {
        path = join(&path, name);
    }
    if path.is_empty() {
        // The body as a whole has the wrong shape (a list, a string): there is no field to name.
        ApiError::new(ErrorCode::InvalidSpec, message)
    } else {
        ApiError::field(path, message)
    }
}

/// The field name quoted after one of `prefixes` in a serde message (`missing field `name``).
fn named_field<'m>(message: &'m str, prefixes: &[&str]) -> Option<&'m str> {
    prefixes.iter().find_map(|prefix| {
        let rest = &message[message.find(prefix)? + prefix.len()..];
        let end = rest.find("`, ").or_else(|| rest.rfind('`'))?;
        Some(&rest[..end])
    })
}

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

/// How a constraint compares an agent attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum ConstraintOperator {
    /// The attribute equals `value`.
    Equals,
    /// The attribute does not equal `value`.
    NotEquals,
    /// The attribute is one of `values`.
    In,
    /// At most one task of the job per value of the attribute (`host`: one per agent).
    Unique,
    /// The job's tasks have their agents to themselves.
    Exclusive,
    /// Tasks are spread evenly over `expected` values of the attribute.
    Balanced,
    /// At most `max` tasks of the job per value of the attribute.
    MaxPer,
}

impl ConstraintOperator {
    /// The wire name, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ConstraintOperator::Equals => "equals",
            ConstraintOperator::NotEquals => "notEquals",
            ConstraintOperator::In => "in",
            ConstraintOperator::Unique => "unique",
            ConstraintOperator::Exclusive => "exclusive",
            ConstraintOperator::Balanced => "balanced",
            ConstraintOperator::MaxPer => "maxPer",
        }
    }
}

/// A placement constraint. Hard unless `soft`; a soft one only steers placement, with an optional `weight`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConstraintSpec {
    /// The agent attribute compared (`zone`, `instanceType`, `host` for the agent itself); none for `exclusive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    pub operator: ConstraintOperator,
    /// For `equals` and `notEquals`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// For `in`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
    /// For `maxPer`: tasks allowed per attribute value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// For `balanced`: how many attribute values the tasks spread over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<u32>,
    /// A soft constraint is a preference, not a filter.
    #[serde(default)]
    pub soft: bool,
    /// How much a soft constraint counts against other preferences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
}

impl ConstraintSpec {
    fn validate(&self, at: &str) -> Result<(), ApiError> {
        use ConstraintOperator as Op;
        let op = self.operator;
        let field = |name: &str| join(at, name);
        match (&self.attribute, op) {
            (Some(_), Op::Exclusive) => {
                return Err(ApiError::field(
                    field("attribute"),
                    "exclusive takes no attribute: it reserves whole agents",
                ));
            }
            (None, Op::Exclusive) => {}
            (None, _) => {
                return Err(ApiError::field(field("attribute"), format!("{} needs an attribute", op.as_str())));
            }
            (Some(attribute), _) => check_attribute(attribute).map_err(|m| ApiError::field(field("attribute"), m))?,
        }
        // Each operator reads some of the optional fields; one it ignores is a misunderstanding worth reporting
        // (`value` given to `in`, say) rather than a constraint silently different from the one meant.
        let unused = |name: &str| ApiError::field(field(name), format!("{} does not use {name}", op.as_str()));
        match (op, &self.value) {
            (Op::Equals | Op::NotEquals, None) => {
                return Err(ApiError::field(field("value"), format!("{} needs a value", op.as_str())));
            }
            (Op::Equals | Op::NotEquals, Some(_)) | (_, None) => {}
            (_, Some(_)) => return Err(unused("value")),
        }
        match (op, &self.values) {
            (Op::In, Some(values)) if !values.is_empty() => {}
            (Op::In, _) => return Err(ApiError::field(field("values"), "in needs a non-empty list of values")),
            (_, None) => {}
            (_, Some(_)) => return Err(unused("values")),
        }
        match (op, self.max) {
            (Op::MaxPer, Some(max)) if max >= 1 => {}
            (Op::MaxPer, _) => return Err(ApiError::field(field("max"), "maxPer needs max of at least 1")),
            (_, None) => {}
            (_, Some(_)) => return Err(unused("max")),
        }
        match (op, self.expected) {
            (Op::Balanced, Some(expected)) if expected >= 1 => {}
            (Op::Balanced, _) => {
                return Err(ApiError::field(field("expected"), "balanced needs expected of at least 1"));
            }
            (_, None) => {}
            (_, Some(_)) => return Err(unused("expected")),
        }
        if let Some(weight) = self.weight {
            if !self.soft {
                return Err(ApiError::field(field("weight"), "only a soft constraint has a weight"));
            }
            if !weight.is_finite() || weight <= 0.0 {
                return Err(ApiError::field(field("weight"), "must be a finite number above 0"));
            }
        }
        Ok(())
    }
}

/// A volume mounted into each task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeSpec {
    /// Unique within the job.
    pub name: String,
    /// Where it is mounted in the container: absolute, without `..`.
    pub path: String,
    /// Size in GiB.
    pub size_gib: u64,
    /// Whether the volume outlives its task (and follows the job's replacement tasks).
    #[serde(default)]
    pub persistent: bool,
    /// A snapshot of another volume to seed this one from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

impl VolumeSpec {
    fn validate(&self, at: &str) -> Result<(), ApiError> {
        let field = |name: &str| join(at, name);
        check_dns_label(&self.name).map_err(|m| ApiError::field(field("name"), m))?;
        check_mount_path(&self.path).map_err(|m| ApiError::field(field("path"), m))?;
        if self.size_gib == 0 || self.size_gib > MAX_DISK_GIB {
            return Err(ApiError::field(field("sizeGib"), format!("must be 1 to {MAX_DISK_GIB} GiB")));
        }
        if let Some(from) = &self.from {
            check_label(from).map_err(|m| ApiError::field(field("from"), m))?;
        }
        Ok(())
    }
}

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
    fn validate(&self, at: &str, ports: u32) -> Result<(), ApiError> {
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

/// What a scheduled run does when the previous run still has tasks going.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OverlapPolicy {
    /// The new run is skipped.
    Skip,
    /// The previous run's tasks are stopped and the new run starts.
    Replace,
}

/// Longest `disconnect.stopAfterSeconds`: a day. Past it the choice is hardly a choice, and the cell's replacement
/// grace grows with it.
pub const MAX_DISCONNECT_STOP_AFTER_SECONDS: u64 = 86_400;

/// A job's choice for a disconnect, as Nomad's `disconnect.stop_on_client_after`: its tasks are stopped by their
/// agent once it has not renewed its lease for `stopAfterSeconds`, and the cell replaces them only after a longer
/// grace, so an original and its replacement never run at once. Without it, tasks ride out a disconnect and a
/// replacement may run beside an unreachable original.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DisconnectSpec {
    /// Seconds without a lease renewal after which the agent stops the job's tasks; 1 to 86400.
    pub stop_after_seconds: u64,
}

impl DisconnectSpec {
    fn validate(&self, at: &str) -> Result<(), ApiError> {
        if !(1..=MAX_DISCONNECT_STOP_AFTER_SECONDS).contains(&self.stop_after_seconds) {
            return Err(ApiError::field(
                join(at, "stopAfterSeconds"),
                format!("must be 1 to {MAX_DISCONNECT_STOP_AFTER_SECONDS} seconds"),
            ));
        }
        Ok(())
    }

    pub fn stop_after_ms(&self) -> u64 {
        self.stop_after_seconds.saturating_mul(1000)
    }
}

/// How many of the job's tasks voluntary disruptions may take down at once: a count or a percentage, not both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DisruptionBudgetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    /// Of the job's instances in a location, rounded down but never below one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable_percent: Option<u32>,
}

impl DisruptionBudgetSpec {
    fn validate(&self, at: &str) -> Result<(), ApiError> {
        match (self.max_unavailable, self.max_unavailable_percent) {
            (None, None) => Err(ApiError::field(at, "give maxUnavailable or maxUnavailablePercent")),
            (Some(_), Some(_)) => Err(ApiError::field(
                join(at, "maxUnavailablePercent"),
                "give maxUnavailable or maxUnavailablePercent, not both",
            )),
            (Some(0), None) => Err(ApiError::field(
                join(at, "maxUnavailable"),
                "must be at least 1: a budget of 0 would block every drain",
            )),
            (None, Some(percent)) if !(1..=100).contains(&percent) => {
                Err(ApiError::field(join(at, "maxUnavailablePercent"), "must be 1 to 100"))
            }
            _ => Ok(()),
        }
    }
}

/// Body of `PUT /v1/jobs/{id}/instances`: the new instance counts, as exactly one of `location` (Titan's
/// shorthand) or `locations` (a map).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstancesRequest {
    /// `"dc1:20,dc2:40"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `{"dc1": 20, "dc2": 40}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locations: Option<BTreeMap<String, u32>>,
}

impl InstancesRequest {
    /// Parses and validates a body, with the same error rules as [`JobSpec::parse`].
    pub fn parse(body: &[u8], format: BodyFormat) -> Result<InstancesRequest, ApiError> {
        let request: InstancesRequest = format.decode(body)?;
        request.counts()?;
        Ok(request)
    }

    /// The validated instance counts per location.
    pub fn counts(&self) -> Result<BTreeMap<String, u32>, ApiError> {
        resolve_locations(self.location.as_deref(), self.locations.as_ref())
    }
}

/// The one rule for `location` / `locations`, shared by job specs and instance updates.
fn resolve_locations(
    location: Option<&str>,
    locations: Option<&BTreeMap<String, u32>>,
) -> Result<BTreeMap<String, u32>, ApiError> {
    let map = match (location, locations) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field("locations", "give either location or locations, not both"));
        }
        (None, None) => {
            return Err(ApiError::field(
                "location",
                "give the instances per location, as location \"dc1:3\" or locations {\"dc1\": 3}",
            ));
        }
        (Some(shorthand), None) => return parse_location(shorthand).map_err(|m| ApiError::field("location", m)),
        (None, Some(map)) => map,
    };
    if map.is_empty() {
        return Err(ApiError::field("locations", "a job needs at least one location"));
    }
    if map.len() > MAX_LOCATIONS {
        return Err(ApiError::field("locations", format!("at most {MAX_LOCATIONS} locations")));
    }
    for (name, &count) in map {
        check_location_name(name).map_err(|m| ApiError::field(join("locations", name), m))?;
        check_count(name, count).map_err(|m| ApiError::field(join("locations", name), m))?;
    }
    Ok(map.clone())
}

/// Parses Titan's shorthand `"dc1:20,dc2:40,dc5:60"` (or the CLI's `"dc1=20,dc2=40"`) into counts per location.
///
/// A count of 0 is allowed: it keeps a location on the job with no instances in it.
pub fn parse_location(s: &str) -> Result<BTreeMap<String, u32>, String> {
    if s.trim().is_empty() {
        return Err("the location is empty: give name:count pairs like dc1:20,dc2:40".to_owned());
    }
    let mut counts = BTreeMap::new();
    for (i, item) in s.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("item {} of `{s}` is empty", i + 1));
        }
        let Some((name, count)) = item.split_once([':', '=']) else {
            return Err(format!("`{item}` has no count: write it as name:count"));
        };
        let (name, count) = (name.trim(), count.trim());
        check_location_name(name).map_err(|m| format!("`{item}`: {m}"))?;
        // Digits only: `u32::from_str` would also take `+5`, which is no count anyone means to write.
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("`{item}`: the count must be a non-negative integer"));
        }
        let count = count.parse::<u32>().unwrap_or(u32::MAX);
        check_count(name, count).map_err(|m| format!("`{item}`: {m}"))?;
        if counts.insert(name.to_owned(), count).is_some() {
            return Err(format!("{name} appears twice"));
        }
    }
    if counts.len() > MAX_LOCATIONS {
        return Err(format!("at most {MAX_LOCATIONS} locations"));
    }
    Ok(counts)
}

/// Writes counts in the shorthand `parse_location` reads (`"dc1:20,dc2:40"`), locations in name order.
pub fn format_location(counts: &BTreeMap<String, u32>) -> String {
    counts.iter().map(|(name, n)| format!("{name}:{n}")).collect::<Vec<_>>().join(",")
}

fn check_count(location: &str, count: u32) -> Result<(), String> {
    if count > MAX_INSTANCES_PER_LOCATION {
        return Err(format!("{location} asks for more than {MAX_INSTANCES_PER_LOCATION} instances"));
    }
    Ok(())
}

/// `[a-z0-9][a-z0-9-]*`, at most 32 characters.
fn check_location_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !well_formed || name.len() > MAX_LOCATION_NAME_LEN {
        return Err(format!(
            "`{name}` is not a location name: 1 to {MAX_LOCATION_NAME_LEN} lowercase letters, digits or hyphens, \
             starting with a letter or digit"
        ));
    }
    Ok(())
}

/// `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 63 characters: a DNS label.
fn check_dns_label(name: &str) -> Result<(), String> {
    check_name(name, |c| c == '-', "lowercase letters, digits or hyphens")
}

/// Like a job name, but `_` and `.` are allowed inside: Titan application names carry them.
fn check_application_name(name: &str) -> Result<(), String> {
    check_name(name, |c| matches!(c, '-' | '_' | '.'), "lowercase letters, digits, `-`, `_` or `.`")
}

/// 1 to 63 characters from `[a-z0-9]` plus the `inner` punctuation, which may not start or end the name.
fn check_name(name: &str, inner: impl Fn(char) -> bool, charset: &str) -> Result<(), String> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let well_formed = name.starts_with(alnum) && name.ends_with(alnum) && name.chars().all(|c| alnum(c) || inner(c));
    if !well_formed || name.len() > MAX_NAME_LEN {
        return Err(format!("must be 1 to {MAX_NAME_LEN} {charset}, starting and ending with a letter or digit"));
    }
    Ok(())
}

/// A free-form label: printable, on one line, not empty.
fn check_label(label: &str) -> Result<(), String> {
    if label.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(format!("must be at most {MAX_LABEL_LEN} bytes"));
    }
    if label.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(())
}

/// An image reference; the registry judges the rest when the agent pulls it.
fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("must name an image, e.g. busybox:latest".to_owned());
    }
    if image.len() > MAX_IMAGE_LEN {
        return Err(format!("must be at most {MAX_IMAGE_LEN} bytes"));
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace".to_owned());
    }
    Ok(())
}

/// A command line: at least the program, and no NUL, which `execve` cannot pass.
fn check_command(command: &[String], at: &str) -> Result<(), ApiError> {
    match command.first() {
        None => {
            return Err(ApiError::field(at, "must name at least the program (omit it to use the default)"));
        }
        Some(program) if program.is_empty() => {
            return Err(ApiError::field(format!("{at}[0]"), "the program must not be empty"));
        }
        Some(_) => {}
    }
    if let Some(i) = command.iter().position(|arg| arg.contains('\0')) {
        return Err(ApiError::field(format!("{at}[{i}]"), "must not contain a NUL character"));
    }
    Ok(())
}

/// `[A-Za-z0-9_.-]+`, at most 128 characters.
fn check_attribute(attribute: &str) -> Result<(), String> {
    let well_formed =
        !attribute.is_empty() && attribute.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !well_formed || attribute.len() > MAX_ATTRIBUTE_LEN {
        return Err(format!(
            "must be 1 to {MAX_ATTRIBUTE_LEN} letters, digits, `_`, `.` or `-` (`host` means the agent itself)"
        ));
    }
    Ok(())
}

/// An absolute path inside the container, never escaping upwards and never the root itself.
fn check_mount_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must be an absolute path".to_owned());
    }
    if path.len() > MAX_MOUNT_PATH_LEN {
        return Err(format!("must be at most {MAX_MOUNT_PATH_LEN} bytes"));
    }
    if path.contains('\0') {
        return Err("must not contain a NUL character".to_owned());
    }
    if path.split('/').any(|component| component == "..") {
        return Err("must not contain `..`".to_owned());
    }
    // Docker refuses a mount over the container's root, and the failure would only surface on the agent.
    if path.split('/').all(|component| component.is_empty() || component == ".") {
        return Err("cannot be the container's root".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// The smallest valid spec; tests change one field at a time.
    fn minimal() -> Value {
        json!({
            "name": "web",
            "applicationName": "shop",
            "location": "dc1:2",
            "cpus": 1.0,
            "memory": 512,
            "image": "busybox:latest",
        })
    }

    /// The minimal spec with `patch` merged in at the top level; a `null` in the patch removes the field.
    fn with(patch: Value) -> String {
        let mut spec = minimal();
        let (Value::Object(spec_fields), Value::Object(patch_fields)) = (&mut spec, patch) else {
            panic!("specs and patches are objects");
        };
        for (key, value) in patch_fields {
            if value.is_null() {
                spec_fields.remove(&key);
            } else {
                spec_fields.insert(key, value);
            }
        }
        spec.to_string()
    }

    fn check(body: &str, format: BodyFormat) -> Result<JobSpec, ApiError> {
        JobSpec::parse(body.as_bytes(), format)
    }

    #[track_caller]
    fn accepts(body: &str) -> JobSpec {
        match check(body, BodyFormat::Json) {
            Ok(spec) => spec,
            Err(e) => panic!("rejected {body}: {e}"),
        }
    }

    #[track_caller]
    fn rejects_as(format: BodyFormat, body: &str, field: &str) -> ApiError {
        match check(body, format) {
            Ok(spec) => panic!("accepted {body}: {spec:?}"),
            Err(e) => {
                assert_eq!((e.code, e.field.as_deref()), (ErrorCode::InvalidSpec, Some(field)), "{e}");
                e
            }
        }
    }

    #[track_caller]
    fn rejects(body: &str, field: &str) -> ApiError {
        rejects_as(BodyFormat::Json, body, field)
    }

    #[track_caller]
    fn malformed(body: &str, format: BodyFormat) -> ApiError {
        let e = check(body, format).expect_err("a malformed body is rejected");
        assert_eq!((e.code, e.field.as_deref()), (ErrorCode::MalformedBody, None), "{e}");
        e
    }

    const FULL_JSON: &str = r#"{
        "name": "checkout-api",
        "applicationName": "shop_checkout.v2",
        "version": "1.4.2",
        "location": "dc1:20, dc2:40,dc5:60",
        "cpus": 2.5,
        "memory": 4096,
        "disk": 20,
        "ports": 2,
        "restartOnFailure": true,
        "numRetries": 5,
        "restartOnSuccess": false,
        "owner": "checkout-team@example.com",
        "capacityGroup": "shop-critical",
        "image": "registry.example.com/shop/checkout:1.4.2",
        "command": ["/bin/checkout", "--port", "8080"],
        "env": {"LOG_LEVEL": "info", "_PRIVATE": "x"},
        "type": "service",
        "constraints": [
            {"attribute": "zone", "operator": "balanced", "expected": 3},
            {"attribute": "host", "operator": "unique"},
            {"attribute": "instanceType", "operator": "in", "values": ["m5.large", "m5.xlarge"]},
            {"attribute": "zone", "operator": "notEquals", "value": "us-east-1e", "soft": true, "weight": 0.5},
            {"attribute": "rack", "operator": "maxPer", "max": 4}
        ],
        "volumes": [
            {"name": "cache", "path": "/var/cache/checkout", "sizeGib": 10},
            {"name": "ledger", "path": "/data", "sizeGib": 100, "persistent": true, "from": "ledger-seed@daily"}
        ],
        "healthCheck": {
            "type": "http", "path": "/healthz", "port": 0,
            "intervalSeconds": 15, "timeoutSeconds": 3, "gracePeriodSeconds": 60, "failureThreshold": 5
        },
        "disruptionBudget": {"maxUnavailablePercent": 10}
    }"#;

    const FULL_YAML: &str = r#"
name: checkout-api
applicationName: shop_checkout.v2
version: "1.4.2"
location: "dc1:20, dc2:40,dc5:60"
cpus: 2.5
memory: 4096
disk: 20
ports: 2
restartOnFailure: true
numRetries: 5
restartOnSuccess: false
owner: checkout-team@example.com
capacityGroup: shop-critical
image: registry.example.com/shop/checkout:1.4.2
command: [/bin/checkout, --port, "8080"]
env:
  LOG_LEVEL: info
  _PRIVATE: x
type: service
constraints:
  - {attribute: zone, operator: balanced, expected: 3}
  - {attribute: host, operator: unique}
  - attribute: instanceType
    operator: in
    values: [m5.large, m5.xlarge]
  - {attribute: zone, operator: notEquals, value: us-east-1e, soft: true, weight: 0.5}
  - {attribute: rack, operator: maxPer, max: 4}
volumes:
  - {name: cache, path: /var/cache/checkout, sizeGib: 10}
  - name: ledger
    path: /data
    sizeGib: 100
    persistent: true
    from: ledger-seed@daily
healthCheck:
  type: http
  path: /healthz
  port: 0
  intervalSeconds: 15
  timeoutSeconds: 3
  gracePeriodSeconds: 60
  failureThreshold: 5
disruptionBudget:
  maxUnavailablePercent: 10
"#;

    #[test]
    fn a_full_titan_spec_parses_from_json_and_yaml_alike() {
        let spec = accepts(FULL_JSON);
        assert_eq!(spec.name, "checkout-api");
        assert_eq!(spec.application_name, "shop_checkout.v2");
        assert_eq!(spec.version.as_deref(), Some("1.4.2"));
        assert_eq!(spec.locations(), BTreeMap::from([("dc1".into(), 20), ("dc2".into(), 40), ("dc5".into(), 60)]));
        assert_eq!((spec.cpus, spec.memory, spec.disk, spec.ports), (2.5, 4096, 20, 2));
        assert_eq!(spec.job_type, JobType::Service);
        assert_eq!(spec.constraints[3].operator, ConstraintOperator::NotEquals);
        assert_eq!(spec.volumes[1].from.as_deref(), Some("ledger-seed@daily"));
        assert_eq!(spec.health_check.as_ref().map(|h| h.check_type), Some(HealthCheckType::Http));
        assert_eq!(spec.disruption_budget.as_ref().and_then(|b| b.max_unavailable_percent), Some(10));

        let from_yaml = check(FULL_YAML, BodyFormat::Yaml).expect("the YAML twin is valid");
        assert_eq!(from_yaml, spec);
    }

    #[test]
    fn a_spec_survives_a_round_trip_through_json_and_yaml() {
        let spec = accepts(FULL_JSON);
        let json = serde_json::to_vec(&spec).expect("serializable");
        assert_eq!(JobSpec::parse(&json, BodyFormat::Json), Ok(spec.clone()));
        let yaml = serde_yaml::to_string(&spec).expect("serializable");
        assert_eq!(JobSpec::parse(yaml.as_bytes(), BodyFormat::Yaml), Ok(spec.clone()));
        let minimal = accepts(&with(json!({})));
        let json = serde_json::to_vec(&minimal).expect("serializable");
        assert_eq!(JobSpec::parse(&json, BodyFormat::Json), Ok(minimal));
    }

    #[test]
    fn omitted_fields_take_titans_defaults() {
        let spec = accepts(&with(json!({})));
        assert_eq!(spec.disk, DEFAULT_DISK_GIB);
        assert_eq!(spec.ports, DEFAULT_PORTS);
        assert!(spec.restart_on_failure);
        assert_eq!(spec.num_retries, 3);
        assert!(!spec.restart_on_success);
        assert_eq!(spec.job_type, JobType::Service);
        assert_eq!((spec.version, spec.owner, spec.capacity_group, spec.command), (None, None, None, None));
        assert!(spec.env.is_empty() && spec.constraints.is_empty() && spec.volumes.is_empty());
        assert_eq!((spec.health_check, spec.schedule, spec.disruption_budget), (None, None, None));

        let spec = accepts(&with(json!({
            "ports": 1,
            "constraints": [{"attribute": "zone", "operator": "unique"}],
            "volumes": [{"name": "v", "path": "/v", "sizeGib": 1}],
            "healthCheck": {"type": "tcp", "port": 0},
        })));
        assert!(!spec.constraints[0].soft);
        assert_eq!(spec.constraints[0].weight, None);
        assert!(!spec.volumes[0].persistent);
        let check = spec.health_check.expect("given");
        assert_eq!(
            (check.interval_seconds, check.timeout_seconds, check.grace_period_seconds, check.failure_threshold),
            (10, 5, 0, 3)
        );
    }

    #[test]
    fn required_fields_are_named_when_missing() {
        for field in ["name", "applicationName", "cpus", "memory", "image"] {
            rejects(&with(json!({ field: null })), field);
        }
        rejects(&with(json!({"volumes": [{"name": "v", "path": "/v"}]})), "volumes[0].sizeGib");
        rejects(&with(json!({"healthCheck": {"port": 0}})), "healthCheck.type");
        rejects(&with(json!({"constraints": [{"attribute": "zone"}]})), "constraints[0].operator");
    }

    #[test]
    fn unknown_fields_are_named_at_any_depth() {
        rejects(&with(json!({"instances": 3})), "instances");
        rejects(&with(json!({"healthCheck": {"type": "tcp", "port": 0, "foo": 1}})), "healthCheck.foo");
        rejects(&with(json!({"volumes": [{"name": "v", "path": "/v", "sizeGib": 1, "ro": true}]})), "volumes[0].ro");
        rejects(
            &with(json!({"disruptionBudget": {"maxUnavailable": 1, "minAvailable": 2}})),
            "disruptionBudget.minAvailable",
        );
        // A field whose name repeats its parent's is still named once per level.
        rejects(&with(json!({"healthCheck": {"type": "tcp", "port": 0, "healthCheck": 1}})), "healthCheck.healthCheck");
        let e = rejects_as(BodyFormat::Yaml, "name: web\nwhat: 1\n", "what");
        assert!(e.message.contains("unknown field"), "{e}");
        rejects_as(BodyFormat::Yaml, "name: web\nhealthCheck:\n  type: tcp\n  bar: 1\n", "healthCheck.bar");
    }

    #[test]
    fn a_field_given_twice_is_named() {
        rejects(r#"{"name": "a", "name": "b"}"#, "name");
    }

    #[test]
    fn wrong_types_are_named_by_their_wire_path() {
        rejects(&with(json!({"cpus": "two"})), "cpus");
        rejects(&with(json!({"memory": -1})), "memory");
        rejects(&with(json!({"memory": 1.5})), "memory");
        rejects(&with(json!({"disk": -1})), "disk");
        rejects(&with(json!({"ports": "2"})), "ports");
        rejects(&with(json!({"numRetries": -1})), "numRetries");
        rejects(&with(json!({"restartOnFailure": "yes"})), "restartOnFailure");
        rejects(&with(json!({"type": "daemon"})), "type");
        rejects(&with(json!({"env": {"A": 1}})), "env.A");
        rejects(&with(json!({"command": "sleep 10"})), "command");
        rejects(&with(json!({"constraints": [{"attribute": "zone", "operator": "near"}]})), "constraints[0].operator");
        rejects(&with(json!({"volumes": [{"name": "v", "path": "/v", "sizeGib": -5}]})), "volumes[0].sizeGib");
        rejects(
            &with(json!({"healthCheck": {"type": "tcp", "port": 0, "intervalSeconds": -1}})),
            "healthCheck.intervalSeconds",
        );
        rejects(&with(json!({"name": null, "cpus": 1})), "name");
        rejects_as(BodyFormat::Yaml, "cpus: two\n", "cpus");
        rejects_as(BodyFormat::Yaml, "memory: -1\n", "memory");
    }

    #[test]
    fn a_body_of_the_wrong_shape_has_no_field() {
        for body in ["[]", "\"job\"", "3"] {
            let e = check(body, BodyFormat::Json).expect_err("not an object");
            assert_eq!((e.code, e.field), (ErrorCode::InvalidSpec, None), "{body}");
        }
    }

    #[test]
    fn malformed_bodies_say_where() {
        let e = malformed("{\"name\": \"web\",\n  \"cpus\": }", BodyFormat::Json);
        assert!(e.message.contains("line 2"), "{e}");
        // Cut short after a type error: still the transport's fault, not the spec's.
        malformed(r#"{"cpus": "two", "memory": 5"#, BodyFormat::Json);
        malformed(r#"{"name": "web"} trailing"#, BodyFormat::Json);
        malformed("", BodyFormat::Json);
        malformed("  \n", BodyFormat::Yaml);
        let e = malformed("name: web\n  cpus: [1\n", BodyFormat::Yaml);
        assert!(e.message.contains("line"), "{e}");
        malformed("name: web\n---\nname: other\n", BodyFormat::Yaml);
        malformed("{name: web", BodyFormat::Yaml);
    }

    #[test]
    fn the_shorthand_is_written_as_it_is_read() {
        let counts = BTreeMap::from([("dc1".to_string(), 5), ("dc9".to_string(), 0), ("dc2".to_string(), 4)]);
        assert_eq!(format_location(&counts), "dc1:5,dc2:4,dc9:0");
        assert_eq!(parse_location(&format_location(&counts)), Ok(counts));
    }

    #[test]
    fn deep_bodies_are_refused_before_parsing_in_both_formats() {
        let brackets = "[".repeat(1 << 20);
        for format in [BodyFormat::Json, BodyFormat::Yaml] {
            let e = check(&brackets, format).expect_err("too deep");
            assert_eq!((e.code, e.field.as_deref()), (ErrorCode::BodyTooComplex, Some("body")), "{format:?}");
            let e = InstancesRequest::parse(brackets.as_bytes(), format).expect_err("too deep");
            assert_eq!(e.code, ErrorCode::BodyTooComplex, "{format:?}");
        }
        check(FULL_YAML, BodyFormat::Yaml).expect("a full spec is well within the bounds");
    }

    #[test]
    fn names_follow_their_charsets() {
        accepts(&with(json!({"name": "a"})));
        accepts(&with(json!({"name": "web-2"})));
        accepts(&with(json!({"name": "a".repeat(MAX_NAME_LEN)})));
        for bad in ["", "Web", "web-", "-web", "web_1", "web.1", "wéb"] {
            rejects(&with(json!({"name": bad})), "name");
        }
        rejects(&with(json!({"name": "a".repeat(MAX_NAME_LEN + 1)})), "name");

        accepts(&with(json!({"applicationName": "shop_checkout.v2-x"})));
        for bad in ["", "Shop", "_shop", "shop.", "shop app"] {
            rejects(&with(json!({"applicationName": bad})), "applicationName");
        }
        rejects(&with(json!({"applicationName": "a".repeat(MAX_NAME_LEN + 1)})), "applicationName");
    }

    #[test]
    fn labels_are_one_line_and_not_empty() {
        rejects(&with(json!({"version": ""})), "version");
        rejects(&with(json!({"version": "1\n2"})), "version");
        rejects(&with(json!({"owner": " "})), "owner");
        rejects(&with(json!({"capacityGroup": "x".repeat(MAX_LABEL_LEN + 1)})), "capacityGroup");
    }

    #[test]
    fn resources_stay_within_limits() {
        accepts(&with(json!({"cpus": 0.25})));
        accepts(&with(json!({"cpus": MAX_CPUS, "memory": MAX_MEMORY_MIB, "disk": MAX_DISK_GIB})));
        accepts(&with(json!({"ports": MAX_PORTS, "numRetries": MAX_RETRIES})));
        for cpus in [json!(0), json!(-1), json!(MAX_CPUS + 0.5)] {
            rejects(&with(json!({ "cpus": cpus })), "cpus");
        }
        rejects(&with(json!({"memory": 0})), "memory");
        rejects(&with(json!({"memory": MAX_MEMORY_MIB + 1})), "memory");
        rejects(&with(json!({"disk": MAX_DISK_GIB + 1})), "disk");
        rejects(&with(json!({"ports": MAX_PORTS + 1})), "ports");
        rejects(&with(json!({"numRetries": MAX_RETRIES + 1})), "numRetries");
    }

    #[test]
    fn cpus_must_be_finite() {
        // JSON cannot say NaN or infinity, YAML can.
        let yaml = |cpus: &str| {
            format!("{{name: web, applicationName: shop, location: 'dc1:1', cpus: {cpus}, memory: 1, image: x}}")
        };
        check(&yaml("0.5"), BodyFormat::Yaml).expect("valid");
        rejects_as(BodyFormat::Yaml, &yaml(".nan"), "cpus");
        rejects_as(BodyFormat::Yaml, &yaml(".inf"), "cpus");
        let mut spec = accepts(&with(json!({})));
        spec.cpus = f64::NAN;
        assert_eq!(spec.validate().expect_err("NaN").field.as_deref(), Some("cpus"));
    }

    #[test]
    fn exactly_one_of_location_and_locations() {
        let spec = accepts(&with(json!({"location": null, "locations": {"dc1": 3, "dc2": 0}})));
        assert_eq!(spec.locations(), BTreeMap::from([("dc1".into(), 3), ("dc2".into(), 0)]));
        rejects(&with(json!({"locations": {"dc1": 3}})), "locations");
        rejects(&with(json!({"location": null})), "location");
        rejects(&with(json!({"location": ""})), "location");
        rejects(&with(json!({"location": "dc1:2,dc1:3"})), "location");
        rejects(&with(json!({"location": null, "locations": {}})), "locations");
        rejects(&with(json!({"location": null, "locations": {"DC1": 1}})), "locations.DC1");
        rejects(&with(json!({"location": null, "locations": {"dc1": -1}})), "locations.dc1");
        rejects(
            &with(json!({"location": null, "locations": {"dc1": MAX_INSTANCES_PER_LOCATION + 1}})),
            "locations.dc1",
        );
    }

    #[test]
    fn location_shorthand() {
        let counts = |pairs: &[(&str, u32)]| pairs.iter().map(|&(n, c)| (n.to_owned(), c)).collect::<BTreeMap<_, _>>();
        // Each input with its counts, or a phrase its error must contain.
        type Case<'a> = (&'a str, Result<BTreeMap<String, u32>, &'a str>);
        let cases: &[Case] = &[
            ("dc1:20,dc2:40,dc5:60", Ok(counts(&[("dc1", 20), ("dc2", 40), ("dc5", 60)]))),
            ("dc1=5,dc2=3", Ok(counts(&[("dc1", 5), ("dc2", 3)]))),
            ("  dc1:5 ,\tdc2 = 3  ", Ok(counts(&[("dc1", 5), ("dc2", 3)]))),
            ("dc1:0", Ok(counts(&[("dc1", 0)]))),
            ("us-east-1a:10000", Ok(counts(&[("us-east-1a", MAX_INSTANCES_PER_LOCATION)]))),
            ("dc1:007", Ok(counts(&[("dc1", 7)]))),
            ("", Err("empty")),
            ("   ", Err("empty")),
            ("dc1:5,,dc2:3", Err("item 2")),
            ("dc1:5,", Err("item 2")),
            ("dc1", Err("`dc1` has no count")),
            ("dc1:", Err("non-negative integer")),
            ("dc1:-5", Err("non-negative integer")),
            ("dc1:+5", Err("non-negative integer")),
            ("dc1:2.5", Err("non-negative integer")),
            ("dc1:five", Err("non-negative integer")),
            ("dc1:=5", Err("non-negative integer")),
            ("dc1:10001", Err("more than 10000")),
            ("dc1:99999999999999999999", Err("more than 10000")),
            ("DC1:5", Err("`DC1` is not a location name")),
            (":5", Err("`` is not a location name")),
            ("-dc:5", Err("not a location name")),
            ("dc_1:5", Err("not a location name")),
            ("dc1:5,dc1=6", Err("dc1 appears twice")),
        ];
        for (input, expected) in cases {
            match (parse_location(input), expected) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{input:?}"),
                (Err(got), Err(want)) => {
                    assert!(got.contains(want), "{input:?}: {got:?} lacks {want:?}")
                }
                (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
        let long = "a".repeat(MAX_LOCATION_NAME_LEN + 1);
        assert!(parse_location(&format!("{long}:1")).is_err());
        let many: Vec<String> = (0..=MAX_LOCATIONS).map(|i| format!("dc{i}:1")).collect();
        assert!(parse_location(&many.join(",")).is_err());
    }

    #[test]
    fn image_command_and_env() {
        rejects(&with(json!({"image": ""})), "image");
        rejects(&with(json!({"image": "busy box"})), "image");
        rejects(&with(json!({"image": "x".repeat(MAX_IMAGE_LEN + 1)})), "image");
        accepts(&with(json!({"command": ["sleep", "10", ""]})));
        rejects(&with(json!({"command": []})), "command");
        rejects(&with(json!({"command": ["", "x"]})), "command[0]");
        rejects(&with(json!({"command": ["sh", "a\u{0}b"]})), "command[1]");
        accepts(&with(json!({"env": {"A": "", "_X1": "y", "lower_case": "z"}})));
        rejects(&with(json!({"env": {"1BAD": "x"}})), "env.1BAD");
        rejects(&with(json!({"env": {"BAD-NAME": "x"}})), "env.BAD-NAME");
        rejects(&with(json!({"env": {"": "x"}})), "env.");
        rejects(&with(json!({"env": {"NUL": "a\u{0}"}})), "env.NUL");
        let too_many: serde_json::Map<String, Value> =
            (0..=MAX_ENV_VARS).map(|i| (format!("V{i}"), json!("x"))).collect();
        rejects(&with(json!({ "env": too_many })), "env");
    }

    #[test]
    fn schedules_are_for_batch_jobs_and_are_cron() {
        let batch = |schedule: &str| with(json!({"type": "batch", "schedule": schedule}));
        for good in [
            "*/5 * * * *",
            "0 0 * * *",
            "0,30 9-17 * * 1-5",
            "0 0 1 1 0",
            "59 23 31 12 7",
            "0-30/10 */2 1-15/7 * *",
            " 0  12 * * * ",
        ] {
            assert_eq!(accepts(&batch(good)).job_type, JobType::Batch, "{good}");
        }
        accepts(&with(json!({"type": "batch"})));
        rejects(&with(json!({"schedule": "* * * * *"})), "schedule");
        rejects(&with(json!({"type": "service", "schedule": "* * * * *"})), "schedule");
        for bad in [
            "",
            "* * * *",
            "* * * * * *",
            "@daily",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * 32 * *",
            "* * * 0 *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "*/61 * * * *",
            "5/10 * * * *",
            "30-10 * * * *",
            "1,,2 * * * *",
            "1, * * * *",
            "a * * * *",
            "-1 * * * *",
            "1-2-3 * * * *",
            "** * * * *",
            "* * * JAN *",
            "99999999999 * * * *",
            "0 0 31 2 *",
        ] {
            rejects(&batch(bad), "schedule");
        }
        rejects(&with(json!({"type": "batch", "overlap": "skip"})), "overlap");
        rejects(&with(json!({"type": "batch", "schedule": "* * * * *", "overlap": "sometimes"})), "overlap");
        let replace = JobSpec::parse(
            with(json!({"type": "batch", "schedule": "* * * * *", "overlap": "replace"})).as_bytes(),
            BodyFormat::Json,
        );
        assert_eq!(replace.map(|s| s.overlap), Ok(Some(OverlapPolicy::Replace)));
    }

    #[test]
    fn constraints_take_the_fields_their_operator_reads() {
        let constraint = |c: Value| with(json!({"constraints": [{"attribute": "zone", "operator": "unique"}, c]}));
        for good in [
            json!({"attribute": "zone", "operator": "equals", "value": "a"}),
            json!({"attribute": "zone", "operator": "notEquals", "value": "a"}),
            json!({"attribute": "zone", "operator": "in", "values": ["a", "b"]}),
            json!({"attribute": "host", "operator": "unique"}),
            json!({"operator": "exclusive"}),
            json!({"attribute": "zone", "operator": "balanced", "expected": 3}),
            json!({"attribute": "host", "operator": "maxPer", "max": 2, "soft": true}),
            json!({"attribute": "ec2.instance-type_x", "operator": "equals", "value": "a", "soft": true, "weight": 2.0}),
        ] {
            accepts(&constraint(good));
        }
        let cases = [
            (json!({"attribute": "zone", "operator": "equals"}), "value"),
            (json!({"attribute": "zone", "operator": "notEquals", "values": ["a"]}), "value"),
            (json!({"attribute": "zone", "operator": "in"}), "values"),
            (json!({"attribute": "zone", "operator": "in", "values": []}), "values"),
            (json!({"attribute": "zone", "operator": "in", "values": ["a"], "value": "a"}), "value"),
            (json!({"attribute": "zone", "operator": "unique", "max": 1}), "max"),
            (json!({"attribute": "zone", "operator": "maxPer"}), "max"),
            (json!({"attribute": "zone", "operator": "maxPer", "max": 0}), "max"),
            (json!({"attribute": "zone", "operator": "balanced"}), "expected"),
            (json!({"attribute": "zone", "operator": "balanced", "expected": 0}), "expected"),
            (json!({"attribute": "zone", "operator": "maxPer", "max": 1, "expected": 1}), "expected"),
            (json!({"operator": "unique"}), "attribute"),
            (json!({"operator": "equals", "value": "a"}), "attribute"),
            (json!({"attribute": "host", "operator": "exclusive"}), "attribute"),
            (json!({"attribute": "zone name", "operator": "unique"}), "attribute"),
            (json!({"attribute": "", "operator": "unique"}), "attribute"),
            (json!({"attribute": "a".repeat(MAX_ATTRIBUTE_LEN + 1), "operator": "unique"}), "attribute"),
            (json!({"attribute": "zone", "operator": "unique", "weight": 1.0}), "weight"),
            (json!({"attribute": "zone", "operator": "unique", "soft": true, "weight": 0.0}), "weight"),
            (json!({"attribute": "zone", "operator": "unique", "soft": true, "weight": -1.0}), "weight"),
        ];
        for (bad, field) in cases {
            rejects(&constraint(bad), &format!("constraints[1].{field}"));
        }
        let many: Vec<Value> = (0..=MAX_CONSTRAINTS).map(|_| json!({"operator": "exclusive"})).collect();
        rejects(&with(json!({ "constraints": many })), "constraints");
        let mut spec =
            accepts(&constraint(json!({"attribute": "z", "operator": "unique", "soft": true, "weight": 1.0})));
        spec.constraints[1].weight = Some(f64::INFINITY);
        assert_eq!(spec.validate().expect_err("infinite").field.as_deref(), Some("constraints[1].weight"));
    }

    #[test]
    fn volumes_have_unique_names_and_safe_paths() {
        let volumes =
            |second: Value| with(json!({"volumes": [{"name": "data", "path": "/data", "sizeGib": 1}, second]}));
        accepts(&volumes(
            json!({"name": "logs", "path": "/data/logs", "sizeGib": 1, "persistent": true, "from": "snap-1"}),
        ));
        let cases = [
            (json!({"name": "data", "path": "/other", "sizeGib": 1}), "name"),
            (json!({"name": "Logs", "path": "/logs", "sizeGib": 1}), "name"),
            (json!({"name": "logs", "path": "/data/", "sizeGib": 1}), "path"),
            (json!({"name": "logs", "path": "//data/.", "sizeGib": 1}), "path"),
            (json!({"name": "logs", "path": "logs", "sizeGib": 1}), "path"),
            (json!({"name": "logs", "path": "/logs/../etc", "sizeGib": 1}), "path"),
            (json!({"name": "logs", "path": "/..", "sizeGib": 1}), "path"),
            (json!({"name": "logs", "path": "/", "sizeGib": 1}), "path"),
            (json!({"name": "logs", "path": "", "sizeGib": 1}), "path"),
            (json!({"name": "logs", "path": "/logs", "sizeGib": 0}), "sizeGib"),
            (json!({"name": "logs", "path": "/logs", "sizeGib": MAX_DISK_GIB + 1}), "sizeGib"),
            (json!({"name": "logs", "path": "/logs", "sizeGib": 1, "from": ""}), "from"),
        ];
        for (bad, field) in cases {
            rejects(&volumes(bad), &format!("volumes[1].{field}"));
        }
        let many: Vec<Value> = (0..=MAX_VOLUMES)
            .map(|i| json!({"name": format!("v{i}"), "path": format!("/v{i}"), "sizeGib": 1}))
            .collect();
        rejects(&with(json!({ "volumes": many })), "volumes");
    }

    #[test]
    fn health_checks_fit_their_type_and_the_job() {
        let health = |check: Value| with(json!({"ports": 2, "healthCheck": check}));
        for good in [
            json!({"type": "http", "path": "/healthz", "port": 1}),
            json!({"type": "tcp", "port": 0}),
            json!({"type": "command", "command": ["pg_isready"]}),
            json!({"type": "tcp", "port": 0, "intervalSeconds": 3600, "timeoutSeconds": 3600, "gracePeriodSeconds": 3600, "failureThreshold": 100}),
            json!({"type": "tcp", "port": 0, "intervalSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1}),
        ] {
            accepts(&health(good));
        }
        let cases = [
            (json!({"type": "http", "port": 0}), "path"),
            (json!({"type": "http", "path": "healthz", "port": 0}), "path"),
            (json!({"type": "tcp", "path": "/x", "port": 0}), "path"),
            (json!({"type": "http", "path": "/x"}), "port"),
            (json!({"type": "tcp"}), "port"),
            (json!({"type": "tcp", "port": 2}), "port"),
            (json!({"type": "command", "command": ["x"], "port": 0}), "port"),
            (json!({"type": "command"}), "command"),
            (json!({"type": "command", "command": []}), "command"),
            (json!({"type": "tcp", "port": 0, "command": ["x"]}), "command"),
            (json!({"type": "tcp", "port": 0, "intervalSeconds": 0}), "intervalSeconds"),
            (json!({"type": "tcp", "port": 0, "intervalSeconds": 3601}), "intervalSeconds"),
            (json!({"type": "tcp", "port": 0, "timeoutSeconds": 0}), "timeoutSeconds"),
            (json!({"type": "tcp", "port": 0, "intervalSeconds": 4}), "timeoutSeconds"),
            (json!({"type": "tcp", "port": 0, "gracePeriodSeconds": 3601}), "gracePeriodSeconds"),
            (json!({"type": "tcp", "port": 0, "failureThreshold": 0}), "failureThreshold"),
            (json!({"type": "tcp", "port": 0, "failureThreshold": 101}), "failureThreshold"),
            (json!({"type": "grpc", "port": 0}), "type"),
        ];
        for (bad, field) in cases {
            rejects(&health(bad), &format!("healthCheck.{field}"));
        }
        // A job without dynamic ports has nothing for a tcp check to probe.
        rejects(&with(json!({"healthCheck": {"type": "tcp", "port": 0}})), "healthCheck.port");
        rejects(&health(json!({"type": "command", "command": ["", "x"]})), "healthCheck.command[0]");
    }

    #[test]
    fn disruption_budgets_are_a_count_or_a_percentage() {
        let budget = |b: Value| with(json!({ "disruptionBudget": b }));
        accepts(&budget(json!({"maxUnavailable": 1})));
        accepts(&budget(json!({"maxUnavailablePercent": 100})));
        rejects(&budget(json!({})), "disruptionBudget");
        rejects(
            &budget(json!({"maxUnavailable": 1, "maxUnavailablePercent": 5})),
            "disruptionBudget.maxUnavailablePercent",
        );
        rejects(&budget(json!({"maxUnavailable": 0})), "disruptionBudget.maxUnavailable");
        rejects(&budget(json!({"maxUnavailablePercent": 0})), "disruptionBudget.maxUnavailablePercent");
        rejects(&budget(json!({"maxUnavailablePercent": 101})), "disruptionBudget.maxUnavailablePercent");
        rejects(&budget(json!({"maxUnavailable": -1})), "disruptionBudget.maxUnavailable");
    }

    #[test]
    fn a_disconnect_stop_after_is_positive_and_bounded() {
        let disconnect = |d: Value| with(json!({ "disconnect": d }));
        let spec = accepts(&disconnect(json!({"stopAfterSeconds": 30})));
        assert_eq!(spec.disconnect.map(|d| d.stop_after_ms()), Some(30_000));
        assert_eq!(accepts(&with(json!({}))).disconnect, None, "absent: tasks ride out a disconnect");
        accepts(&disconnect(json!({"stopAfterSeconds": MAX_DISCONNECT_STOP_AFTER_SECONDS})));
        let e = rejects(&disconnect(json!({"stopAfterSeconds": 0})), "disconnect.stopAfterSeconds");
        assert!(e.message.contains("1 to 86400"), "{e}");
        rejects(
            &disconnect(json!({"stopAfterSeconds": MAX_DISCONNECT_STOP_AFTER_SECONDS + 1})),
            "disconnect.stopAfterSeconds",
        );
        rejects(&disconnect(json!({"stopAfterSeconds": -5})), "disconnect.stopAfterSeconds");
        rejects(&disconnect(json!({"stopAfterSeconds": 10, "lostAfter": 3})), "disconnect.lostAfter");
    }

    #[test]
    fn the_first_broken_rule_wins_in_field_order() {
        rejects(&with(json!({"name": "Bad", "cpus": -1, "image": ""})), "name");
        rejects(&with(json!({"cpus": -1, "image": ""})), "cpus");
    }

    #[test]
    fn instances_requests() {
        let check = |body: &str, format| InstancesRequest::parse(body.as_bytes(), format);
        let request = check(r#"{"location": "dc1:3, dc2=0"}"#, BodyFormat::Json).expect("valid");
        assert_eq!(request.counts(), Ok(BTreeMap::from([("dc1".into(), 3), ("dc2".into(), 0)])));
        let request = check(r#"{"locations": {"dc1": 4}}"#, BodyFormat::Json).expect("valid");
        assert_eq!(request.counts(), Ok(BTreeMap::from([("dc1".into(), 4)])));
        let request = check("locations:\n  dc1: 4\n", BodyFormat::Yaml).expect("valid");
        assert_eq!(request.counts(), Ok(BTreeMap::from([("dc1".into(), 4)])));

        let cases = [
            (r#"{}"#, ErrorCode::InvalidSpec, Some("location")),
            (r#"{"location": "dc1:1", "locations": {"dc1": 1}}"#, ErrorCode::InvalidSpec, Some("locations")),
            (r#"{"location": "dc1:1,dc1:2"}"#, ErrorCode::InvalidSpec, Some("location")),
            (r#"{"location": 5}"#, ErrorCode::InvalidSpec, Some("location")),
            (r#"{"locations": {"dc1": -1}}"#, ErrorCode::InvalidSpec, Some("locations.dc1")),
            (r#"{"locations": {}}"#, ErrorCode::InvalidSpec, Some("locations")),
            (r#"{"location": "dc1:1", "count": 3}"#, ErrorCode::InvalidSpec, Some("count")),
            (r#"{"location": "#, ErrorCode::MalformedBody, None),
        ];
        for (body, code, field) in cases {
            let e = check(body, BodyFormat::Json).expect_err(body);
            assert_eq!((e.code, e.field.as_deref()), (code, field), "{body}: {e}");
        }
        // counts() holds the rule for requests built in code, not only parsed ones.
        let built = InstancesRequest { location: None, locations: None };
        assert_eq!(built.counts().expect_err("empty").field.as_deref(), Some("location"));
    }

    #[test]
    fn the_openapi_schema_follows_the_wire_names_and_defaults() {
        let schema = serde_json::to_value(<JobSpec as utoipa::PartialSchema>::schema()).expect("serializable");
        let properties = schema["properties"].as_object().expect("an object schema");
        for field in ["applicationName", "restartOnFailure", "type", "healthCheck", "disruptionBudget", "locations"] {
            assert!(properties.contains_key(field), "{field} missing from {schema}");
        }
        let required: BTreeSet<&str> =
            schema["required"].as_array().expect("a list").iter().filter_map(Value::as_str).collect();
        assert_eq!(required, BTreeSet::from(["name", "applicationName", "cpus", "memory", "image"]));
    }
}
