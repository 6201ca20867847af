//! Between the cell's records and fenzo: the placement request of a task, the fenzo agent of a registered agent,
//! and `Capacity`, the fenzo snapshot the state machine keeps of what runs where.
//!
//! `Capacity` is derived state: it is rebuilt from the agents and tasks whenever a snapshot is loaded, and kept
//! current as commands apply, so that every member re-validates a plan against the same numbers.

use crate::spec::{Constraint as SpecConstraint, Operator, Spec};
use fenzo::{By, ClusterSnapshot, Constraint, TaskRequest};

use crate::agent::AgentRecord;
use crate::task::{Ask, TaskRecord};

/// The attribute every agent carries with its own id, so a task can be pinned to one agent.
pub const AGENT_ATTRIBUTE: &str = "titan.agent";

/// MiB in a GiB: job specs give disk in GiB, agents in MiB.
pub const MIB_PER_GIB: u64 = 1024;

pub fn ask(spec: &Spec) -> Ask {
    Ask { cpus: spec.cpus, memory_mib: spec.memory, disk_mib: spec.disk * MIB_PER_GIB, ports: spec.ports }
}

fn by(attribute: &str) -> By {
    if attribute == "host" {
        By::Host
    } else {
        By::Attribute(attribute.to_string())
    }
}

/// `host` in an equality names the agent's hostname attribute.
fn attribute_name(attribute: &str) -> String {
    if attribute == "host" {
        "hostname".to_string()
    } else {
        attribute.to_string()
    }
}

/// The fenzo form of a validated constraint (validation guarantees the fields each operator needs).
pub fn constraint(c: &SpecConstraint) -> Constraint {
    let attribute = c.attribute.clone().unwrap_or_default();
    match c.operator {
        Operator::Equals => {
            Constraint::AttributeEquals { name: attribute_name(&attribute), value: c.value.clone().unwrap_or_default() }
        }
        Operator::NotEquals => Constraint::AttributeNotEquals {
            name: attribute_name(&attribute),
            value: c.value.clone().unwrap_or_default(),
        },
        Operator::In => {
            Constraint::AttributeIn { name: attribute_name(&attribute), values: c.values.clone().unwrap_or_default() }
        }
        Operator::Unique => Constraint::Unique { scope: None, by: by(&attribute) },
        Operator::Exclusive => Constraint::ExclusiveHost,
        Operator::Balanced => Constraint::Balanced { scope: None, attribute, expected: c.expected.unwrap_or(1) },
        Operator::MaxPer => Constraint::MaxPer { scope: None, by: by(&attribute), max: c.max.unwrap_or(1) },
    }
}

/// What fenzo places for a task: the resources it asked for, its job's current constraints, and the capacity group
/// fenzo counts it toward (`group`, see `CellState::placement_group`).
pub fn request(task: &TaskRecord, spec: &Spec, group: Option<&str>) -> TaskRequest {
    request_for(&task.id, &task.job_id, &task.ask, spec, group)
}

pub fn request_for(id: &str, job: &str, a: &Ask, spec: &Spec, group: Option<&str>) -> TaskRequest {
    let mut r = TaskRequest::new(id, job).cpus(a.cpus).mem_mib(a.memory_mib).disk_mib(a.disk_mib).ports(a.ports);
    if let Some(g) = group {
        r = r.capacity_group(g.to_string());
    }
    for c in &spec.constraints {
        if c.soft {
            r = r.prefer(constraint(c), c.weight.unwrap_or(1.0));
        } else {
            r = r.constraint(constraint(c));
        }
    }
    r
}

/// The fenzo agent of a registered agent; `eligible` says whether new tasks may go there.
pub fn agent(a: &AgentRecord, eligible: bool) -> fenzo::Agent {
    let r = &a.registration;
    let mut out = fenzo::Agent::new(r.id.clone())
        .hostname(r.hostname.clone())
        .cpus(r.resources.cpus)
        .mem_mib(r.resources.memory_mib)
        .disk_mib(r.resources.disk_mib)
        .eligible(eligible);
    for (first, last) in &r.resources.port_ranges {
        out = out.ports(*first, *last);
    }
    for (k, v) in &r.attributes {
        out = out.attr(k.clone(), v.clone());
    }
    out.attr(AGENT_ATTRIBUTE, r.id.clone())
}

/// What runs where, as fenzo sees it.
#[derive(Clone, Debug, Default)]
pub struct Capacity(pub ClusterSnapshot);

/// Derived from the records, which equality compares already.
impl PartialEq for Capacity {
    fn eq(&self, _: &Capacity) -> bool {
        true
    }
}

/// Fenzo's capacity groups for location `here`: each quota's guarantee and limits there. A task over a limit stays
/// pending with reason `quota`; groups below their guarantee are placed first.
pub fn capacity_groups<'a>(
    quotas: impl Iterator<Item = &'a crate::quota::QuotaRecord>,
    here: &str,
) -> std::collections::BTreeMap<String, fenzo::CapacityGroup> {
    quotas
        .filter_map(|q| {
            let l = q.locations.get(here)?;
            let guarantee = fenzo::Resources {
                cpu_milli: l.guaranteed_cpus.map_or(0, |c| (c * 1000.0).round() as u64),
                mem_mib: l.guaranteed_memory_mib.unwrap_or(0),
                ..Default::default()
            };
            let group = fenzo::CapacityGroup {
                guarantee,
                max_cpu_milli: l.cpus.map(|c| (c * 1000.0).round() as u64),
                max_mem_mib: l.memory_mib,
                max_tasks: l.instances.map(|n| n.min(u64::from(u32::MAX)) as u32),
            };
            Some((q.group.clone(), group))
        })
        .collect()
}
