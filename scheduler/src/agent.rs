//! An agent as the cell stores it: its registration, lease epoch, reachability and the version its assignments
//! long-poll waits on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use titan_api::agent::{AgentRegistration, AgentResources, AgentState};

/// What an agent said about itself when it registered, as log entries and snapshots carry it: owned here, with the
/// serialized shape entries have always had, converted from the REST form at the edge. Unlike the REST form it
/// takes fields it does not know (a newer member's), so a mixed-version cell still applies every entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub id: String,
    pub hostname: String,
    pub addr: String,
    pub resources: Resources,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Tasks the agent found still running when it started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running: Vec<String>,
}

/// An agent's capacity, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    pub cpus: f64,
    pub memory_mib: u64,
    pub disk_mib: u64,
    /// Inclusive ranges dynamic ports are allocated from.
    pub port_ranges: Vec<(u16, u16)>,
}

impl From<AgentRegistration> for Registration {
    fn from(r: AgentRegistration) -> Registration {
        let AgentRegistration { id, hostname, addr, resources, attributes, running } = r;
        let AgentResources { cpus, memory_mib, disk_mib, port_ranges } = resources;
        Registration {
            id,
            hostname,
            addr,
            resources: Resources { cpus, memory_mib, disk_mib, port_ranges },
            attributes,
            running,
        }
    }
}

impl From<&Resources> for AgentResources {
    fn from(r: &Resources) -> AgentResources {
        let Resources { cpus, memory_mib, disk_mib, port_ranges } = r.clone();
        AgentResources { cpus, memory_mib, disk_mib, port_ranges }
    }
}

impl From<&Registration> for AgentRegistration {
    fn from(r: &Registration) -> AgentRegistration {
        AgentRegistration {
            id: r.id.clone(),
            hostname: r.hostname.clone(),
            addr: r.addr.clone(),
            resources: AgentResources::from(&r.resources),
            attributes: r.attributes.clone(),
            running: r.running.clone(),
        }
    }
}

/// An agent as the cell stores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub registration: Registration,
    pub state: AgentState,
    pub lease_epoch: u64,
    pub registered_at_ms: u64,
    /// False while its lease is expired (decided by the leader, committed in a round).
    #[serde(default = "reachable_default")]
    pub reachable: bool,
    /// Raised whenever what the agent must run changes: its assignments long-poll waits on it.
    #[serde(default)]
    pub version: u64,
}

fn reachable_default() -> bool {
    true
}

impl AgentRecord {
    /// Whether new tasks may be placed on it.
    pub fn takes_work(&self) -> bool {
        self.state == AgentState::Active && self.reachable
    }
}
