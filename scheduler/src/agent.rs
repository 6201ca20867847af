//! An agent as the cell stores it: its registration, lease epoch, reachability and the version its assignments
//! long-poll waits on.

use serde::{Deserialize, Serialize};
use titan_api::agent::{AgentRegistration, AgentState};

/// An agent as the cell stores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub registration: AgentRegistration,
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
