//! Location levers on the wire: a location's state, weight and history, the progress of a move, the bodies of
//! the levers SREs pull (each with a required reason), the plan a lever (or its dry run) answers, and a job's
//! endpoints per location for routers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorCode};
use crate::view::HistoryEntry;

/// The longest reason a lever takes.
pub const MAX_REASON: usize = 1024;

/// A lever's body: why (required), and for an evacuation the locations to move to (else each job's own).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeverRequest {
    #[serde(default)]
    pub reason: Option<String>,
    /// Evacuate only: where the instances go.
    #[serde(default)]
    pub to: Option<Vec<String>>,
}

/// `PUT /v1/locations/{name}/weight`'s body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightRequest {
    #[serde(default)]
    pub reason: Option<String>,
    /// 0 to 100: the share of traffic routers send the location, relative to the others.
    pub weight: Option<i64>,
}

/// Checks a lever's reason: present, not blank, not too long.
pub fn check_reason(reason: Option<&str>) -> Result<String, ApiError> {
    match reason.map(str::trim) {
        None | Some("") => {
            Err(ApiError::new(ErrorCode::InvalidParameter, "a lever needs a reason: say why").with_field("reason"))
        }
        Some(r) if r.len() > MAX_REASON => Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("the reason is {} bytes, more than {MAX_REASON}", r.len()),
        )
        .with_field("reason")),
        Some(r) => Ok(r.to_string()),
    }
}

impl WeightRequest {
    /// The weight, checked: 0 to 100.
    pub fn weight(&self) -> Result<u8, ApiError> {
        match self.weight {
            Some(w @ 0..=100) => Ok(w as u8),
            Some(w) => Err(ApiError::new(ErrorCode::InvalidParameter, format!("weight {w} is not within 0 to 100"))
                .with_field("weight")),
            None => Err(ApiError::new(ErrorCode::InvalidParameter, "give the weight, 0 to 100").with_field("weight")),
        }
    }
}

/// A lever's name in a path: `POST /v1/locations/{name}/{lever}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LeverKind {
    Freeze,
    Unfreeze,
    Evacuate,
    Restore,
}

impl LeverKind {
    pub fn parse(s: &str) -> Option<LeverKind> {
        match s {
            "freeze" => Some(LeverKind::Freeze),
            "unfreeze" => Some(LeverKind::Unfreeze),
            "evacuate" => Some(LeverKind::Evacuate),
            "restore" => Some(LeverKind::Restore),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LeverKind::Freeze => "freeze",
            LeverKind::Unfreeze => "unfreeze",
            LeverKind::Evacuate => "evacuate",
            LeverKind::Restore => "restore",
        }
    }
}

/// One location as SREs see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocationView {
    pub name: String,
    /// active, frozen, evacuating, evacuated or restoring.
    pub state: String,
    pub weight: u8,
    /// Its cell as the answering member sees it: self, up, suspect, down.
    pub cell_state: String,
    /// Counts lever changes.
    pub version: u64,
    /// The move under way or held (evacuating, evacuated, restoring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<MoveProgress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
}

/// Where an evacuation or a restore stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MoveProgress {
    pub started_at_ms: u64,
    pub automatic: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// The targets the SRE named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// Instances to move out of the location.
    pub to_move: u32,
    /// Of those, running elsewhere.
    pub started_elsewhere: u32,
    /// Tasks the location stopped.
    pub stopped_in_location: u32,
    /// Instances that fit nowhere and stay in the location.
    pub left_behind: u32,
    /// The move is complete.
    pub done: bool,
    pub jobs: Vec<JobMoveProgress>,
}

/// One job in a move.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobMoveProgress {
    pub job_id: String,
    pub name: String,
    /// Its count in the location when the lever was pulled.
    pub from: u32,
    /// Instances moved to each location.
    pub to: BTreeMap<String, u32>,
    pub to_move: u32,
    pub started_elsewhere: u32,
    pub stopped_in_location: u32,
    pub left_behind: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why_left: Option<String>,
    /// While restoring: its tasks running in the location again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_in_location: Option<u32>,
}

/// Every location of the federation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocationList {
    pub locations: Vec<LocationView>,
}

/// What a lever did, or (a dry run) would do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeverAnswer {
    pub location: String,
    pub lever: String,
    pub dry_run: bool,
    /// The state before and after.
    pub from: String,
    pub state: String,
    pub weight: u8,
    /// The location's lever version after (a dry run: unchanged).
    pub version: u64,
    /// Jobs whose counts in the location may no longer rise (freeze), or that move (evacuate, restore).
    pub jobs_affected: u32,
    /// For an evacuation or a restore: per job, what moves where.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<PlannedMove>,
    pub to_move: u32,
    pub left_behind: u32,
    /// Per target location, a trial placement of what goes there on that cell's current capacity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capacity: Vec<CapacityCheck>,
}

/// One job's moves in a plan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedMove {
    pub job_id: String,
    pub name: String,
    /// Its count in the location.
    pub from: u32,
    /// Instances to each location.
    pub to: BTreeMap<String, u32>,
    pub left_behind: u32,
    /// Why some stay: a quota (group, location, resource) or capacity shortfall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why_left: Option<String>,
}

/// A trial placement in one location.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapacityCheck {
    pub location: String,
    /// Instances tried, and placed.
    pub requested: u32,
    pub placed: u32,
    /// What the fleet would have to add for the rest, per instance group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fleet_needs: Vec<FleetNeed>,
    /// The cell could not be asked (down): capacity unknown, nothing trimmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// More agents one instance group needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetNeed {
    pub instance_group: String,
    pub agents: u32,
    pub tasks: u32,
}

/// A job's endpoints for traffic: per location, its state and weight and the running, healthy tasks' addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    pub job_id: String,
    pub locations: Vec<LocationEndpoints>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocationEndpoints {
    pub location: String,
    pub state: String,
    pub weight: u8,
    pub cell_state: String,
    pub endpoints: Vec<Endpoint>,
    /// The location's cell could not be asked: its endpoints are unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One task's address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub task_id: String,
    pub host: String,
    pub ports: Vec<u16>,
    /// `host:port` of the first port, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// `?local=true` on endpoints: only this cell's own location (what cells ask each other).
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct EndpointsQuery {
    pub local: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lever_needs_a_reason_and_a_weight_within_bounds() {
        assert_eq!(check_reason(None).unwrap_err().field.as_deref(), Some("reason"));
        assert_eq!(check_reason(Some("  ")).unwrap_err().field.as_deref(), Some("reason"));
        assert!(check_reason(Some(&"x".repeat(MAX_REASON + 1))).is_err());
        assert_eq!(check_reason(Some(" dc1 degraded ")).unwrap(), "dc1 degraded");
        let w = |v| WeightRequest { reason: None, weight: v }.weight();
        assert_eq!(w(Some(0)).unwrap(), 0);
        assert_eq!(w(Some(100)).unwrap(), 100);
        assert_eq!(w(Some(101)).unwrap_err().field.as_deref(), Some("weight"));
        assert!(w(Some(-1)).is_err());
        assert!(w(None).is_err());
        assert_eq!(LeverKind::parse("evacuate"), Some(LeverKind::Evacuate));
        assert_eq!(LeverKind::parse("nuke"), None);
    }
}
