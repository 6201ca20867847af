//! The autoscaler on the wire: per instance group, what it wants and has, and its last decisions with why.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /v1/autoscaler`: the leader's view of every instance group it scales.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerView {
    /// The member that answered scales the groups (only the leader does).
    pub leading: bool,
    pub groups: Vec<GroupView>,
}

/// One instance group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupView {
    pub name: String,
    /// local, simulated or ec2.
    pub fleet: String,
    pub policy: String,
    pub min: u32,
    pub max: u32,
    /// Slots (cpus) per instance.
    pub slots: u32,
    /// The size its policy wants now.
    pub desired: u32,
    /// The fleet's instances by state (pending, running, terminating).
    pub instances: BTreeMap<String, u32>,
    /// Instances launched whose agent has not registered yet.
    pub booting: u32,
    /// The group's agents by state (active, draining, drained).
    pub agents: BTreeMap<String, u32>,
    /// Agents with no task.
    pub idle: u32,
    /// Slots wanted now (running and pending tasks), and the instances fenzo's trial placement says are missing.
    pub demand_slots: u32,
    pub shortfall: u32,
    /// The slots the policy expected (predictive policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast_slots: Option<u32>,
    /// The latest decisions that changed something, newest last.
    pub decisions: Vec<DecisionView>,
    /// The last fleet error, if the last call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One decision.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DecisionView {
    pub at_ms: u64,
    /// up, down or hold.
    pub direction: String,
    pub desired: u32,
    pub reason: String,
    /// What it did: instances launched, agents drained or put back, instances removed.
    pub actions: Vec<String>,
}
