//! What a group does next, decided purely from its instances, its agents and the size its policy wants:
//! drain-safe scale-in. Instances are removed only once their agent is drained and holds no task; agents are
//! drained in fenzo's release order (idle first, zones kept balanced), never more than a share of the group at once;
//! a drain is cancelled (the agent put back to work) when demand returns before its instance is gone; an instance
//! whose agent never registered is removed only once it is older than the boot grace.

use std::collections::BTreeSet;

use crate::fleet::{Instance, InstanceState};

/// A group's agent as the cell holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    pub id: String,
    /// Its `instanceId` attribute: the instance it runs on.
    pub instance: String,
    /// Tasks on it that are not terminal.
    pub tasks: u32,
    pub draining: bool,
}

/// Everything the plan looks at.
#[derive(Clone, Debug)]
pub struct View<'a> {
    pub instances: &'a [Instance],
    pub agents: &'a [Agent],
    /// Idle agents in the order to release them (fenzo's autoscale hint).
    pub release_order: &'a [String],
    pub desired: u32,
    /// The most of the group draining at once, as a share (0.0-1.0) of its instances, at least one.
    pub max_drain_share: f64,
    pub now_ms: u64,
    /// How long an instance may run without its agent registering before it is taken for broken.
    pub boot_grace_ms: u64,
}

/// What to do, in this order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Grow the group to this size.
    pub grow_to: Option<u32>,
    /// Agents to put back to work (a drain cancelled).
    pub undrain: Vec<String>,
    /// Agents to drain (nothing new lands on them).
    pub drain: Vec<String>,
    /// Instances to remove: drained agents that hold no task, and instances whose agent never came.
    pub remove: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }
}

pub fn plan(v: &View<'_>) -> Plan {
    let mut p = Plan::default();
    let live: Vec<&Instance> = v.instances.iter().filter(|i| i.state != InstanceState::Terminating).collect();
    let agent_of = |instance: &str| v.agents.iter().find(|a| a.instance == instance);
    // Instances whose agent never registered within the grace: broken, removed.
    let broken: BTreeSet<&str> = live
        .iter()
        .filter(|i| agent_of(&i.id).is_none() && v.now_ms.saturating_sub(i.launched_ms) > v.boot_grace_ms)
        .map(|i| i.id.as_str())
        .collect();
    let draining: Vec<&Agent> = v.agents.iter().filter(|a| a.draining).collect();
    // Working: live instances that are not broken and whose agent is not draining.
    let working =
        live.iter().filter(|i| !broken.contains(i.id.as_str()) && !agent_of(&i.id).is_some_and(|a| a.draining)).count()
            as u32;
    if v.desired > working {
        // Demand came back: first the drains not finished yet, then new instances.
        let mut want = v.desired - working;
        for a in &draining {
            if want == 0 {
                break;
            }
            p.undrain.push(a.id.clone());
            want -= 1;
        }
        if want > 0 {
            p.grow_to = Some(live.len() as u32 - broken.len() as u32 + want);
        }
    } else if v.desired < working {
        let share = ((live.len() as f64 * v.max_drain_share).floor() as usize).max(1);
        let room = share.saturating_sub(draining.len());
        let excess = (working - v.desired) as usize;
        for id in v.release_order {
            if p.drain.len() == excess.min(room) {
                break;
            }
            if let Some(a) = v.agents.iter().find(|a| &a.id == id && !a.draining && a.tasks == 0) {
                if live.iter().any(|i| i.id == a.instance) {
                    p.drain.push(a.id.clone());
                }
            }
        }
    }
    // Drained and empty: their instances go (unless demand just took them back).
    for a in draining.iter().filter(|a| a.tasks == 0 && !p.undrain.contains(&a.id)) {
        if live.iter().any(|i| i.id == a.instance) {
            p.remove.push(a.instance.clone());
        }
    }
    p.remove.extend(broken.iter().map(|s| s.to_string()));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, state: InstanceState, at: u64) -> Instance {
        Instance { id: id.into(), state, launched_ms: at }
    }

    fn agent(id: &str, instance: &str, tasks: u32, draining: bool) -> Agent {
        Agent { id: id.into(), instance: instance.into(), tasks, draining }
    }

    fn view<'a>(instances: &'a [Instance], agents: &'a [Agent], order: &'a [String], desired: u32) -> View<'a> {
        View {
            instances,
            agents,
            release_order: order,
            desired,
            max_drain_share: 0.5,
            now_ms: 10_000,
            boot_grace_ms: 60_000,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scale_in_drains_idle_agents_in_release_order_within_the_share_and_removes_only_empty_ones() {
        let i: Vec<Instance> = (1..=4).map(|n| inst(&format!("i{n}"), InstanceState::Running, 0)).collect();
        let a = vec![
            agent("a1", "i1", 3, false),
            agent("a2", "i2", 0, false),
            agent("a3", "i3", 0, false),
            agent("a4", "i4", 0, false),
        ];
        let order = names(&["a4", "a2", "a3"]);
        let p = plan(&view(&i, &a, &order, 1));
        assert_eq!(p.drain, names(&["a4", "a2"]), "half the group at most, in release order");
        assert!(p.remove.is_empty(), "nothing is removed before it is drained");
        let a = vec![
            agent("a1", "i1", 3, false),
            agent("a2", "i2", 1, true),
            agent("a3", "i3", 0, false),
            agent("a4", "i4", 0, true),
        ];
        let p = plan(&view(&i, &a, &order, 1));
        assert_eq!(p.remove, names(&["i4"]), "a drained agent still holding a task keeps its instance");
        assert!(p.drain.is_empty(), "two of four draining is the share");
    }

    #[test]
    fn demand_returning_cancels_drains_before_launching_and_broken_instances_go() {
        let i: Vec<Instance> = (1..=3).map(|n| inst(&format!("i{n}"), InstanceState::Running, 0)).collect();
        let a = vec![agent("a1", "i1", 2, false), agent("a2", "i2", 0, true), agent("a3", "i3", 0, true)];
        let p = plan(&view(&i, &a, &[], 2));
        assert_eq!((p.undrain, p.grow_to), (names(&["a2"]), None));
        assert_eq!(p.remove, names(&["i3"]), "the drain not cancelled completes");
        let p = plan(&view(&i, &a, &[], 5));
        assert_eq!((p.undrain.len(), p.grow_to), (2, Some(5)));
        assert!(p.remove.is_empty());
        // An instance whose agent never came within the grace is removed; a young one waits.
        let i = vec![inst("old", InstanceState::Running, 0), inst("young", InstanceState::Pending, 30_000)];
        let p = plan(&View { now_ms: 70_000, ..view(&i, &[], &[], 2) });
        assert_eq!(p.remove, names(&["old"]));
        assert_eq!(p.grow_to, Some(2), "the broken one is replaced");
    }
}
