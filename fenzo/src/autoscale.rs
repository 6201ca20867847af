//! Autoscaling hints: per instance group (an agent attribute), which agents are idle and in what order to
//! release them so the group stays balanced across zones, and how many more agents of the group's shape the
//! pending tasks need. The shortfall comes from a trial placement of the pending tasks on phantom agents copied
//! from the group, so six tasks that fit on one agent ask for one agent, not six.

use std::collections::{BTreeMap, HashSet};

use crate::agent::Agent;
use crate::config::{AutoscaleConfig, Mode, PlacementConfig};
use crate::placement::{GroupHint, Placement};
use crate::request::TaskRequest;
use crate::snapshot::ClusterSnapshot;
use crate::state::AgentIdx;
use crate::work::Work;

/// A whole placement round: the trial placement of the pending tasks runs the pipeline again, and gets it as an
/// argument so that this stage, which the pipeline calls, does not call back into it by name.
pub(crate) type Place = fn(&ClusterSnapshot, &[TaskRequest], &PlacementConfig) -> Placement;

pub(crate) fn hints(
    work: &Work<'_>,
    pending: &[&TaskRequest],
    ac: &AutoscaleConfig,
    config: &PlacementConfig,
    place: Place,
) -> Vec<GroupHint> {
    let agents = &work.snap.agents;
    let mut groups: BTreeMap<&str, Vec<AgentIdx>> = BTreeMap::new();
    for (idx, info) in agents.iter().enumerate() {
        if let Some(g) = info.spec.attributes.get(&ac.group_attribute) {
            if work.state.usage[idx].eligible {
                groups.entry(g.as_str()).or_default().push(idx as AgentIdx);
            }
        }
    }

    let mut remaining: Vec<&TaskRequest> = pending.to_vec();
    let mut out = Vec::new();
    for (group, members) in groups {
        let zone_of =
            |idx: AgentIdx| agents[idx as usize].spec.attributes.get(&ac.zone_attribute).cloned().unwrap_or_default();
        let mut per_zone: BTreeMap<String, (u32, Vec<AgentIdx>)> = BTreeMap::new();
        for &idx in &members {
            let z = per_zone.entry(zone_of(idx)).or_default();
            z.0 += 1;
            if work.state.usage[idx as usize].tasks == 0 {
                z.1.push(idx);
            }
        }
        for (_, idle) in per_zone.values_mut() {
            // Released first: the highest rank, so the agents the packer fills first are kept.
            idle.sort_by_key(|&i| std::cmp::Reverse(work.index.rank(i)));
        }
        let mut idle = Vec::new();
        while let Some(zone) = per_zone
            .iter()
            .filter(|(_, (_, idle))| !idle.is_empty())
            .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.0.cmp(a.0)))
            .map(|(z, _)| z.clone())
        {
            let z = per_zone.get_mut(&zone).expect("picked from the map");
            z.0 -= 1;
            idle.push(agents[z.1.remove(0) as usize].spec.id.clone());
        }

        let (shortfall, covered) = trial(work, &members, &remaining, ac, config, group, place);
        remaining.retain(|r| !covered.contains(&r.id));
        out.push(GroupHint {
            group: group.to_string(),
            agents: members.len() as u32,
            idle,
            shortfall,
            pending_tasks: covered.len() as u32,
        });
    }
    out
}

/// Places `tasks` on phantom copies of the group's first agent, zones taken in turn from its members; returns
/// how many phantoms were used and which tasks they took.
fn trial(
    work: &Work<'_>,
    members: &[AgentIdx],
    tasks: &[&TaskRequest],
    ac: &AutoscaleConfig,
    config: &PlacementConfig,
    group: &str,
    place: Place,
) -> (u32, HashSet<String>) {
    let Some(&first) = members.first() else {
        return (0, HashSet::new());
    };
    if tasks.is_empty() {
        return (0, HashSet::new());
    }
    let model = &work.snap.agents[first as usize].spec;
    let mut zones: Vec<&String> =
        members.iter().filter_map(|&i| work.snap.agents[i as usize].spec.attributes.get(&ac.zone_attribute)).collect();
    zones.sort();
    zones.dedup();
    let count = (tasks.len() as u32).min(ac.max_new_agents);
    let mut phantoms = ClusterSnapshot::new();
    for k in 0..count {
        let mut a: Agent = model.clone();
        a.id = format!("phantom-{group}-{k:06}");
        a.hostname = a.id.clone();
        a.eligible = true;
        if !zones.is_empty() {
            a.attributes.insert(ac.zone_attribute.clone(), zones[k as usize % zones.len()].clone());
        }
        phantoms.add_agent(a).expect("phantom ids are distinct");
    }
    let requests: Vec<TaskRequest> = tasks.iter().map(|t| (*t).clone()).collect();
    let trial_config =
        PlacementConfig { mode: Mode::Best, autoscale: None, capacity_groups: BTreeMap::new(), ..config.clone() };
    let p = place(&phantoms, &requests, &trial_config);
    let mut used: Vec<&str> = p.assignments.iter().map(|a| a.agent_id.as_str()).collect();
    used.sort_unstable();
    used.dedup();
    (used.len() as u32, p.assignments.iter().map(|a| a.task_id.clone()).collect())
}
