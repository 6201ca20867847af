//! A job spec as the cell stores and replicates it: the scheduler's own type, converted from and to the REST
//! contract's `JobSpec` at the edge, so the wire can change without changing what is in the log and snapshots.
//!
//! Its serialized shape is the one log entries have always carried (the wire's field names), which is how entries
//! written before this type existed still decode. A change to it is a new snapshot format with a migration
//! (`snapshot`), never an edit in place. The conversions destructure every field, so a field added to the wire type
//! does not compile until it is given a place here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use titan_api::job as wire;

/// A job's spec. `location` and `locations` are the user's form of the instance counts, kept to show it back as
/// written; what the cell runs is the job record's `counts`, resolved once when the spec is applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub name: String,
    pub application_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locations: Option<BTreeMap<String, u32>>,
    pub cpus: f64,
    pub memory: u64,
    pub disk: u64,
    pub ports: u32,
    pub restart_on_failure: bool,
    pub num_retries: u32,
    pub restart_on_success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_group: Option<String>,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(rename = "type", default)]
    pub job_type: JobType,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<Overlap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption_budget: Option<DisruptionBudget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<Disconnect>,
    /// Where instances go when a location the job runs in alone is evacuated, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobType {
    #[default]
    Service,
    Batch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Operator {
    Equals,
    NotEquals,
    In,
    Unique,
    Exclusive,
    Balanced,
    MaxPer,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Constraint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<u32>,
    #[serde(default)]
    pub soft: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    pub path: String,
    pub size_gib: u64,
    #[serde(default)]
    pub persistent: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    Http,
    Tcp,
    Command,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    #[serde(rename = "type")]
    pub check_type: CheckType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    pub interval_seconds: u32,
    pub timeout_seconds: u32,
    pub grace_period_seconds: u32,
    pub failure_threshold: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    Skip,
    Replace,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DisruptionBudget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable_percent: Option<u32>,
}

/// Stop the job's tasks once their agent has not renewed its lease for this long (`disconnect.stopAfterSeconds`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disconnect {
    pub stop_after_seconds: u64,
}

impl Disconnect {
    pub fn stop_after_ms(&self) -> u64 {
        self.stop_after_seconds.saturating_mul(1000)
    }
}

impl Spec {
    /// The instance counts per location the user's form names (empty when it names none usable, which an
    /// admitted spec never is): the one place the shorthand is read, through the contract's own parser.
    pub fn counts(&self) -> BTreeMap<String, u32> {
        match (&self.location, &self.locations) {
            (Some(shorthand), _) => wire::parse_location(shorthand).unwrap_or_default(),
            (None, Some(map)) => map.clone(),
            (None, None) => BTreeMap::new(),
        }
    }

    /// Sets new counts, written back in the form the user chose (the shorthand stays a shorthand).
    pub fn set_counts(&mut self, counts: &BTreeMap<String, u32>) {
        if self.location.is_some() {
            self.location = Some(wire::format_location(counts));
        } else {
            self.locations = Some(counts.clone());
        }
    }
}

/// Moves the wire spec in: a submission is converted once, on its way into the log, and copies nothing.
impl From<wire::JobSpec> for Spec {
    fn from(s: wire::JobSpec) -> Spec {
        let wire::JobSpec {
            name,
            application_name,
            version,
            location,
            locations,
            cpus,
            memory,
            disk,
            ports,
            restart_on_failure,
            num_retries,
            restart_on_success,
            owner,
            capacity_group,
            image,
            command,
            env,
            job_type,
            constraints,
            volumes,
            health_check,
            schedule,
            overlap,
            disruption_budget,
            disconnect,
            failover,
        } = s;
        Spec {
            failover: failover.clone().unwrap_or_default(),
            name,
            application_name,
            version,
            location,
            locations,
            cpus,
            memory,
            disk,
            ports,
            restart_on_failure,
            num_retries,
            restart_on_success,
            owner,
            capacity_group,
            image,
            command,
            env,
            job_type: match job_type {
                wire::JobType::Service => JobType::Service,
                wire::JobType::Batch => JobType::Batch,
            },
            constraints: constraints.iter().map(Constraint::from).collect(),
            volumes: volumes.iter().map(Volume::from).collect(),
            health_check: health_check.as_ref().map(HealthCheck::from),
            schedule,
            overlap: overlap.map(|o| match o {
                wire::OverlapPolicy::Skip => Overlap::Skip,
                wire::OverlapPolicy::Replace => Overlap::Replace,
            }),
            disruption_budget: disruption_budget.as_ref().map(|b| DisruptionBudget {
                max_unavailable: b.max_unavailable,
                max_unavailable_percent: b.max_unavailable_percent,
            }),
            disconnect: disconnect.as_ref().map(|d| Disconnect { stop_after_seconds: d.stop_after_seconds }),
        }
    }
}

impl From<&wire::JobSpec> for Spec {
    fn from(s: &wire::JobSpec) -> Spec {
        Spec::from(s.clone())
    }
}

impl From<&Spec> for wire::JobSpec {
    fn from(s: &Spec) -> wire::JobSpec {
        let Spec {
            name,
            application_name,
            version,
            location,
            locations,
            cpus,
            memory,
            disk,
            ports,
            restart_on_failure,
            num_retries,
            restart_on_success,
            owner,
            capacity_group,
            image,
            command,
            env,
            job_type,
            constraints,
            volumes,
            health_check,
            schedule,
            overlap,
            disruption_budget,
            disconnect,
            failover,
        } = s;
        wire::JobSpec {
            failover: Some(failover.clone()).filter(|f| !f.is_empty()),
            name: name.clone(),
            application_name: application_name.clone(),
            version: version.clone(),
            location: location.clone(),
            locations: locations.clone(),
            cpus: *cpus,
            memory: *memory,
            disk: *disk,
            ports: *ports,
            restart_on_failure: *restart_on_failure,
            num_retries: *num_retries,
            restart_on_success: *restart_on_success,
            owner: owner.clone(),
            capacity_group: capacity_group.clone(),
            image: image.clone(),
            command: command.clone(),
            env: env.clone(),
            job_type: match job_type {
                JobType::Service => wire::JobType::Service,
                JobType::Batch => wire::JobType::Batch,
            },
            constraints: constraints.iter().map(wire::ConstraintSpec::from).collect(),
            volumes: volumes.iter().map(wire::VolumeSpec::from).collect(),
            health_check: health_check.as_ref().map(wire::HealthCheckSpec::from),
            schedule: schedule.clone(),
            overlap: overlap.map(|o| match o {
                Overlap::Skip => wire::OverlapPolicy::Skip,
                Overlap::Replace => wire::OverlapPolicy::Replace,
            }),
            disruption_budget: disruption_budget.as_ref().map(|b| wire::DisruptionBudgetSpec {
                max_unavailable: b.max_unavailable,
                max_unavailable_percent: b.max_unavailable_percent,
            }),
            disconnect: disconnect.as_ref().map(|d| wire::DisconnectSpec { stop_after_seconds: d.stop_after_seconds }),
        }
    }
}

impl From<wire::ConstraintOperator> for Operator {
    fn from(o: wire::ConstraintOperator) -> Operator {
        match o {
            wire::ConstraintOperator::Equals => Operator::Equals,
            wire::ConstraintOperator::NotEquals => Operator::NotEquals,
            wire::ConstraintOperator::In => Operator::In,
            wire::ConstraintOperator::Unique => Operator::Unique,
            wire::ConstraintOperator::Exclusive => Operator::Exclusive,
            wire::ConstraintOperator::Balanced => Operator::Balanced,
            wire::ConstraintOperator::MaxPer => Operator::MaxPer,
        }
    }
}

impl From<Operator> for wire::ConstraintOperator {
    fn from(o: Operator) -> wire::ConstraintOperator {
        match o {
            Operator::Equals => wire::ConstraintOperator::Equals,
            Operator::NotEquals => wire::ConstraintOperator::NotEquals,
            Operator::In => wire::ConstraintOperator::In,
            Operator::Unique => wire::ConstraintOperator::Unique,
            Operator::Exclusive => wire::ConstraintOperator::Exclusive,
            Operator::Balanced => wire::ConstraintOperator::Balanced,
            Operator::MaxPer => wire::ConstraintOperator::MaxPer,
        }
    }
}

impl From<&wire::ConstraintSpec> for Constraint {
    fn from(c: &wire::ConstraintSpec) -> Constraint {
        let wire::ConstraintSpec { attribute, operator, value, values, max, expected, soft, weight } = c;
        Constraint {
            attribute: attribute.clone(),
            operator: (*operator).into(),
            value: value.clone(),
            values: values.clone(),
            max: *max,
            expected: *expected,
            soft: *soft,
            weight: *weight,
        }
    }
}

impl From<&Constraint> for wire::ConstraintSpec {
    fn from(c: &Constraint) -> wire::ConstraintSpec {
        let Constraint { attribute, operator, value, values, max, expected, soft, weight } = c;
        wire::ConstraintSpec {
            attribute: attribute.clone(),
            operator: (*operator).into(),
            value: value.clone(),
            values: values.clone(),
            max: *max,
            expected: *expected,
            soft: *soft,
            weight: *weight,
        }
    }
}

impl From<&wire::VolumeSpec> for Volume {
    fn from(v: &wire::VolumeSpec) -> Volume {
        let wire::VolumeSpec { name, path, size_gib, persistent, from } = v;
        Volume {
            name: name.clone(),
            path: path.clone(),
            size_gib: *size_gib,
            persistent: *persistent,
            from: from.clone(),
        }
    }
}

impl From<&Volume> for wire::VolumeSpec {
    fn from(v: &Volume) -> wire::VolumeSpec {
        let Volume { name, path, size_gib, persistent, from } = v;
        wire::VolumeSpec {
            name: name.clone(),
            path: path.clone(),
            size_gib: *size_gib,
            persistent: *persistent,
            from: from.clone(),
        }
    }
}

impl From<&wire::HealthCheckSpec> for HealthCheck {
    fn from(h: &wire::HealthCheckSpec) -> HealthCheck {
        let wire::HealthCheckSpec {
            check_type,
            path,
            port,
            command,
            interval_seconds,
            timeout_seconds,
            grace_period_seconds,
            failure_threshold,
        } = h;
        HealthCheck {
            check_type: match check_type {
                wire::HealthCheckType::Http => CheckType::Http,
                wire::HealthCheckType::Tcp => CheckType::Tcp,
                wire::HealthCheckType::Command => CheckType::Command,
            },
            path: path.clone(),
            port: *port,
            command: command.clone(),
            interval_seconds: *interval_seconds,
            timeout_seconds: *timeout_seconds,
            grace_period_seconds: *grace_period_seconds,
            failure_threshold: *failure_threshold,
        }
    }
}

impl From<&HealthCheck> for wire::HealthCheckSpec {
    fn from(h: &HealthCheck) -> wire::HealthCheckSpec {
        let HealthCheck {
            check_type,
            path,
            port,
            command,
            interval_seconds,
            timeout_seconds,
            grace_period_seconds,
            failure_threshold,
        } = h;
        wire::HealthCheckSpec {
            check_type: match check_type {
                CheckType::Http => wire::HealthCheckType::Http,
                CheckType::Tcp => wire::HealthCheckType::Tcp,
                CheckType::Command => wire::HealthCheckType::Command,
            },
            path: path.clone(),
            port: *port,
            command: command.clone(),
            interval_seconds: *interval_seconds,
            timeout_seconds: *timeout_seconds,
            grace_period_seconds: *grace_period_seconds,
            failure_threshold: *failure_threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use titan_api::job::{BodyFormat, JobSpec};

    use super::*;

    const FULL: &str = r#"{"name":"web","applicationName":"shop","version":"1.2","location":"dc1:2,dc2:3","cpus":0.5,
        "memory":64,"disk":2,"ports":2,"restartOnFailure":false,"numRetries":7,"restartOnSuccess":true,
        "owner":"team","capacityGroup":"cg","image":"busybox","command":["sh","-c","x"],"env":{"A":"1"},
        "type":"batch","constraints":[{"attribute":"zone","operator":"in","values":["a","b"]},
        {"operator":"exclusive"},{"attribute":"rack","operator":"maxPer","max":2,"soft":true,"weight":0.5}],
        "volumes":[{"name":"data","path":"/data","sizeGib":1,"persistent":true}],
        "healthCheck":{"type":"http","path":"/","port":1,"intervalSeconds":5,"timeoutSeconds":2},
        "schedule":"*/5 * * * *","overlap":"replace","disruptionBudget":{"maxUnavailablePercent":20},
        "disconnect":{"stopAfterSeconds":30}}"#;

    fn wire(body: &str) -> JobSpec {
        JobSpec::parse(body.as_bytes(), BodyFormat::Json).expect("valid spec")
    }

    #[test]
    fn a_spec_round_trips_through_the_stored_type_and_serializes_as_the_wire_one() {
        let w = wire(FULL);
        let stored = Spec::from(&w);
        assert_eq!(JobSpec::from(&stored), w);
        // Same bytes: entries logged before the stored type existed decode as it, and an idempotency key's
        // fingerprint (a hash of these bytes) still matches a retried submission.
        assert_eq!(serde_json::to_vec(&stored).expect("encodes"), serde_json::to_vec(&w).expect("encodes"));
        let back: Spec = serde_json::from_slice(&serde_json::to_vec(&w).expect("encodes")).expect("decodes");
        assert_eq!(back, stored);
    }

    #[test]
    fn counts_come_from_the_users_form_and_go_back_in_it() {
        let mut short = Spec::from(&wire(FULL));
        assert_eq!(short.counts(), BTreeMap::from([("dc1".into(), 2), ("dc2".into(), 3)]));
        short.set_counts(&BTreeMap::from([("dc1".into(), 4), ("dc3".into(), 1)]));
        assert_eq!(short.location.as_deref(), Some("dc1:4,dc3:1"));
        assert_eq!(short.locations, None);
        let mut map = Spec::from(&wire(&FULL.replace(r#""location":"dc1:2,dc2:3""#, r#""locations":{"dc1":2}"#)));
        map.set_counts(&BTreeMap::from([("dc1".into(), 5)]));
        assert_eq!((map.location, map.locations), (None, Some(BTreeMap::from([("dc1".into(), 5)]))));
    }
}
