//! The autoscaler's view of each instance group, taken purely from the cell's state: the group's agents (by their
//! `instanceGroup` attribute, mapped to fleet instances by `instanceId`), the slots their tasks take, and what the
//! pending tasks need, from a trial fenzo placement with autoscale hints (the shortfall per group, computed on
//! phantom agents shaped like the group's, and its idle agents in a zone-balanced release order).

use std::collections::BTreeMap;

use titan_api::agent::AgentState;
use titan_autoscaler::config::GroupConfig;
use titan_autoscaler::plan::Agent;

use crate::placement;
use crate::state::CellState;

/// The attribute naming an agent's instance group, and its instance.
pub const GROUP_ATTRIBUTE: &str = "instanceGroup";
pub const INSTANCE_ATTRIBUTE: &str = "instanceId";

/// One group as the cell holds it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Group {
    /// Its agents that run on a fleet instance (they carry `instanceId`).
    pub agents: Vec<Agent>,
    /// Its agents by state (active, draining, drained), unreachable ones apart.
    pub agent_states: BTreeMap<String, u32>,
    /// Slots (cpus, rounded up) its agents' tasks take.
    pub used_slots: u32,
    /// Slots of the pending tasks this group is asked to make room for.
    pub pending_slots: u32,
    /// More instances fenzo's trial placement says the pending tasks need.
    pub shortfall: u32,
    /// Idle agents, in the order to release them.
    pub release_order: Vec<String>,
}

/// Every configured group's view. Pending tasks that fit nowhere now are tried on phantom agents of each group that
/// has agents; a group with none (scaled to zero) is asked for all of them, as slots.
pub fn groups(state: &CellState, configs: &[GroupConfig]) -> BTreeMap<String, Group> {
    let mut out: BTreeMap<String, Group> = configs.iter().map(|g| (g.name.clone(), Group::default())).collect();
    for a in state.agents() {
        let attrs = &a.registration.attributes;
        let Some(group) = attrs.get(GROUP_ATTRIBUTE).and_then(|g| out.get_mut(g)) else { continue };
        if a.state == AgentState::Gone {
            continue;
        }
        let tasks: Vec<_> = state.tasks_on_agent(&a.registration.id).filter(|t| !t.is_terminal()).collect();
        let cpus: f64 = tasks.iter().map(|t| t.ask.cpus).sum();
        group.used_slots += cpus.ceil() as u32;
        let label = if a.reachable { a.state.as_str() } else { "unreachable" };
        *group.agent_states.entry(label.to_string()).or_insert(0) += 1;
        if let Some(instance) = attrs.get(INSTANCE_ATTRIBUTE) {
            group.agents.push(Agent {
                id: a.registration.id.clone(),
                instance: instance.clone(),
                tasks: tasks.len() as u32,
                draining: matches!(a.state, AgentState::Draining | AgentState::Drained),
            });
        }
    }
    // The pending tasks, placed on trial with autoscale hints.
    let requests: Vec<fenzo::TaskRequest> = state
        .accepted_tasks()
        .filter(|t| t.desired == titan_api::task::Desired::Run)
        .filter_map(|t| {
            let job = state.job(&t.job_id)?;
            Some(placement::request(t, &job.spec, state.placement_group(&job.spec)))
        })
        .collect();
    let autoscale = fenzo::AutoscaleConfig { group_attribute: GROUP_ATTRIBUTE.to_string(), ..Default::default() };
    let config = fenzo::PlacementConfig { autoscale: Some(autoscale), ..fenzo::PlacementConfig::default() };
    let placed = fenzo::place(state.capacity(), &requests, &config);
    let unplaced: std::collections::HashSet<&str> = placed.unplaced.iter().map(|u| u.task_id.as_str()).collect();
    let unplaced_cpus: f64 = requests
        .iter()
        .filter(|r| unplaced.contains(r.id.as_str()))
        .map(|r| r.resources.cpu_milli as f64 / 1000.0)
        .sum();
    for hint in &placed.autoscale {
        if let Some(group) = out.get_mut(&hint.group) {
            group.shortfall = hint.shortfall;
            group.release_order = hint.idle.clone();
        }
    }
    for (name, group) in out.iter_mut() {
        let slots = configs.iter().find(|g| &g.name == name).map_or(1, |g| g.slots.max(1));
        group.pending_slots = if group.agents.is_empty() && group.agent_states.is_empty() {
            unplaced_cpus.ceil() as u32
        } else {
            group.shortfall * slots
        };
        if group.release_order.is_empty() {
            group.release_order = group.agents.iter().filter(|a| a.tasks == 0).map(|a| a.id.clone()).collect();
        }
    }
    out
}
