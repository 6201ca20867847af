//! Agents on the wire: what an agent says about itself when it registers, how it keeps its lease, and how the cell
//! shows it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;

/// Most attributes one agent may carry.
pub const MAX_ATTRIBUTES: usize = 64;

/// An agent's capacity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentResources {
    pub cpus: f64,
    pub memory_mib: u64,
    pub disk_mib: u64,
    /// Inclusive ranges dynamic ports are allocated from.
    pub port_ranges: Vec<(u16, u16)>,
}

/// Body of `POST /v1/agents`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentRegistration {
    /// Stable across restarts of the agent (it keeps it in its data directory).
    pub id: String,
    pub hostname: String,
    /// host:port where the agent serves logs.
    pub addr: String,
    pub resources: AgentResources,
    /// zone, instance type, instance id, instance group, and any the operator adds.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Tasks the agent found still running when it started (by their labels) and re-adopted. The cell keeps
    /// those of them it still wants, and declares the rest of the agent's started tasks lost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running: Vec<String>,
}

fn label_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
}

impl AgentRegistration {
    /// Every rule, the first broken one named with its field.
    pub fn validate(&self) -> Result<(), ApiError> {
        if !label_ok(&self.id) {
            return Err(ApiError::field("id", "must be 1-128 characters of letters, digits, '-', '_', '.', ':'"));
        }
        if self.hostname.is_empty() || self.hostname.len() > 253 || self.hostname.chars().any(char::is_whitespace) {
            return Err(ApiError::field("hostname", "must be 1-253 characters without spaces"));
        }
        if self.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(ApiError::field("addr", "must be host:port with an IP address"));
        }
        let r = &self.resources;
        if !(r.cpus.is_finite() && r.cpus > 0.0 && r.cpus <= 4096.0) {
            return Err(ApiError::field("resources.cpus", "must be more than 0 and at most 4096"));
        }
        if r.memory_mib == 0 {
            return Err(ApiError::field("resources.memoryMib", "must be more than 0"));
        }
        for (i, (a, b)) in r.port_ranges.iter().enumerate() {
            if a > b || *a == 0 {
                return Err(ApiError::field(
                    format!("resources.portRanges[{i}]"),
                    "must be [first, last] with 0 < first <= last",
                ));
            }
        }
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(ApiError::field("attributes", format!("at most {MAX_ATTRIBUTES} attributes")));
        }
        for (k, v) in &self.attributes {
            if !label_ok(k) {
                return Err(ApiError::field(
                    format!("attributes.{k}"),
                    "names are letters, digits, '-', '_', '.', ':'",
                ));
            }
            if v.len() > 256 || v.chars().any(char::is_control) {
                return Err(ApiError::field(format!("attributes.{k}"), "values are at most 256 printable characters"));
            }
        }
        Ok(())
    }
}

/// Whether an agent takes new work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Active,
    Draining,
    Drained,
    Gone,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Active => "active",
            AgentState::Draining => "draining",
            AgentState::Drained => "drained",
            AgentState::Gone => "gone",
        }
    }
}

/// An agent as the cell knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    pub id: String,
    pub cell: String,
    pub hostname: String,
    pub addr: String,
    pub resources: AgentResources,
    pub attributes: BTreeMap<String, String>,
    pub state: AgentState,
    /// Raised at every registration: plans carry it, and an agent refuses work for an epoch that is not its own.
    pub lease_epoch: u64,
    pub registered_at_ms: u64,
    /// When the leader last heard from it; absent where this member has not (followers, a new leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_ms: Option<u64>,
}

/// Body of `POST /v1/agents/{id}/heartbeat`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Heartbeat {
    pub lease_epoch: u64,
}

/// The answer to a heartbeat: the lease holds for `lease_ms` more.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    pub lease_epoch: u64,
    pub lease_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration() -> AgentRegistration {
        AgentRegistration {
            id: "i-0abc".into(),
            hostname: "node-1".into(),
            addr: "127.0.0.1:7100".into(),
            resources: AgentResources {
                cpus: 2.0,
                memory_mib: 4096,
                disk_mib: 10_000,
                port_ranges: vec![(31000, 31999)],
            },
            attributes: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            running: vec![],
        }
    }

    #[test]
    fn each_rule_names_its_field() {
        assert_eq!(registration().validate(), Ok(()));
        let check = |f: fn(&mut AgentRegistration), field: &str| {
            let mut r = registration();
            f(&mut r);
            assert_eq!(r.validate().map_err(|e| e.field), Err(Some(field.to_string())));
        };
        check(|r| r.id = "a b".into(), "id");
        check(|r| r.hostname = String::new(), "hostname");
        check(|r| r.addr = "nowhere".into(), "addr");
        check(|r| r.resources.cpus = -1.0, "resources.cpus");
        check(|r| r.resources.memory_mib = 0, "resources.memoryMib");
        check(|r| r.resources.port_ranges = vec![(2, 1)], "resources.portRanges[0]");
        check(
            |r| {
                r.attributes.insert("bad key".into(), "x".into());
            },
            "attributes.bad key",
        );
    }
}
