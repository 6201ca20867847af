//! Location quotas on the wire: what a capacity group may run in each location, and what it uses there.
//!
//! A group is a job's `capacityGroup`, or its `applicationName` when it names none. A quota lists locations; a
//! location left out has no limit, and so does a resource left out of a location.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorCode};
use crate::view::HistoryEntry;

/// The body of `PUT /v1/quotas/{group}`: limits per location, all locations at once.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaSpec {
    pub locations: BTreeMap<String, LocationQuota>,
}

/// One location's limits. Every field is optional: a resource left out has no limit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocationQuota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, rename = "memoryMiB", skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(default, rename = "diskGiB", skip_serializing_if = "Option::is_none")]
    pub disk_gib: Option<u64>,
    /// The share the scheduler places first under contention (fenzo's capacity-group guarantee).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guaranteed: Option<Guaranteed>,
}

/// A location's guaranteed cpus and memory: within the limit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Guaranteed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, rename = "memoryMiB", skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
}

/// What a group asks for or runs in one location.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub instances: u64,
    pub cpus: f64,
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u64,
    #[serde(rename = "diskGiB")]
    pub disk_gib: f64,
}

/// One location of a group as `GET /v1/quotas` shows it: the limit (absent: none), the desired usage of the
/// group's enabled jobs, and what runs there as this cell knows it (this cell's own location only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocationQuotaView {
    pub location: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<LocationQuota>,
    pub used: Usage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<Usage>,
}

/// A group's quota and usage, one record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaView {
    pub group: String,
    /// 0 for a group with usage but no quota.
    pub version: u64,
    pub locations: Vec<LocationQuotaView>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
}

/// Every group with a quota or usage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaList {
    pub quotas: Vec<QuotaView>,
}

/// The answer to a quota write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaRef {
    pub group: String,
    pub version: u64,
}

/// `?dryRun=true` on a job write.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DryRunQuery {
    /// Check the write against the quotas and answer what it would do, writing nothing.
    pub dry_run: Option<bool>,
}

/// The answer to a job write asked with `?dryRun=true` that would be admitted (one that would not gets the same 403
/// `quota_exceeded` as the write). Nothing was written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DryRun {
    pub dry_run: bool,
    pub group: String,
    /// Each location the job asks for after the write: the group's desired usage then, and its limit there.
    pub locations: Vec<LocationQuotaView>,
}

/// The job write a dry run checks.
#[derive(Clone, Debug)]
pub enum JobWrite {
    Submit(crate::job::JobSpec),
    Update { id: String, spec: crate::job::JobSpec },
    Scale { id: String, counts: BTreeMap<String, u32> },
}

/// Whether `group` is a group name (as application names: 1-64 of a-z, A-Z, 0-9, '-', '_', '.').
pub fn is_group_name(group: &str) -> bool {
    !group.is_empty()
        && group.len() <= 64
        && group.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl QuotaSpec {
    /// Parses a JSON body, naming the field of the first error.
    pub fn parse(body: &[u8]) -> Result<QuotaSpec, ApiError> {
        let spec: QuotaSpec = serde_json::from_slice(body).map_err(|e| {
            let msg = e.to_string();
            let code = if e.is_syntax() || e.is_eof() { ErrorCode::MalformedBody } else { ErrorCode::InvalidSpec };
            let field = field_of(&msg);
            let err = ApiError::new(code, format!("not a quota: {msg}"));
            match field {
                Some(f) => err.with_field(f),
                None => err,
            }
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Every rule a quota must hold, the first broken one naming its field.
    pub fn validate(&self) -> Result<(), ApiError> {
        let bad = |field: String, why: String| Err(ApiError::new(ErrorCode::InvalidSpec, why).with_field(field));
        for (location, q) in &self.locations {
            let at = |f: &str| format!("locations.{location}.{f}");
            if !crate::job::is_location_name(location) {
                return bad(format!("locations.{location}"), format!("{location:?} is not a location name"));
            }
            if let Some(c) = q.cpus {
                if !(c.is_finite() && c >= 0.0) {
                    return bad(at("cpus"), format!("cpus must be a number of at least 0, got {c}"));
                }
            }
            if let Some(g) = &q.guaranteed {
                if let Some(c) = g.cpus {
                    if !(c.is_finite() && c >= 0.0) {
                        return bad(at("guaranteed.cpus"), format!("guaranteed cpus must be at least 0, got {c}"));
                    }
                    if q.cpus.is_some_and(|limit| c > limit) {
                        return bad(
                            at("guaranteed.cpus"),
                            format!("guaranteed cpus {c} is above the limit {}", q.cpus.unwrap_or_default()),
                        );
                    }
                }
                if let (Some(m), Some(limit)) = (g.memory_mib, q.memory_mib) {
                    if m > limit {
                        return bad(
                            at("guaranteed.memoryMiB"),
                            format!("guaranteed memoryMiB {m} is above the limit {limit}"),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// The field a serde error is about, when its message names one (`unknown field `x``, `invalid type ... at`).
fn field_of(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let end = start + msg[start..].find('`')?;
    Some(msg[start..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_reads_as_the_issue_writes_it_and_each_broken_rule_names_its_field() {
        let q = QuotaSpec::parse(
            br#"{"locations": {"dc1": {"instances": 40, "cpus": 64, "memoryMiB": 131072, "guaranteed": {"cpus": 16}}}}"#,
        )
        .expect("valid");
        assert_eq!(q.locations["dc1"].instances, Some(40));
        assert_eq!(q.locations["dc1"].guaranteed.as_ref().and_then(|g| g.cpus), Some(16.0));

        let err = |body: &str| QuotaSpec::parse(body.as_bytes()).expect_err(body);
        let e = err(r#"{"locations": {"dc1": {"gpus": 1}}}"#);
        assert_eq!((e.code, e.field.as_deref()), (ErrorCode::InvalidSpec, Some("gpus")));
        let e = err(r#"{"locations": {"dc1": {"instances": -1}}}"#);
        assert_eq!(e.code, ErrorCode::InvalidSpec);
        let e = err(r#"{"locations": {"dc1": {"cpus": "many"}}}"#);
        assert_eq!(e.code, ErrorCode::InvalidSpec);
        let e = err(r#"{"locations": {"dc1": {"cpus": -2}}}"#);
        assert_eq!(e.field.as_deref(), Some("locations.dc1.cpus"));
        let e = err(r#"{"locations": {"dc1": {"cpus": 4, "guaranteed": {"cpus": 8}}}}"#);
        assert_eq!(e.field.as_deref(), Some("locations.dc1.guaranteed.cpus"));
        let e = err(r#"{"locations": {"dc1": {"memoryMiB": 4, "guaranteed": {"memoryMiB": 8}}}}"#);
        assert_eq!(e.field.as_deref(), Some("locations.dc1.guaranteed.memoryMiB"));
        let e = err(r#"{"locations": {"DC 1": {}}}"#);
        assert_eq!(e.field.as_deref(), Some("locations.DC 1"));
        assert_eq!(err("{").code, ErrorCode::MalformedBody);
        assert!(is_group_name("shop-web") && !is_group_name("") && !is_group_name("a/b"));
    }
}
