//! What placement reads and changes about the cluster: agents' fixed facts with interned attributes, what runs on
//! each, and the co-task counts that constraints read. A `ClusterSnapshot` owns one `State`; a placement works
//! on a copy of it.

use std::collections::{BTreeMap, HashMap};

use crate::agent::Agent;
use crate::constraint::{Constraint, Scope};
use crate::ports::{self, PortSet};
use crate::request::TaskRequest;
use crate::resources::Resources;

/// An agent's position in the snapshot; stable for the snapshot's life.
pub type AgentIdx = u32;
pub(crate) type AttrId = u32;
pub(crate) type ValueId = u32;

/// Attribute names and values as small integers, so constraint checks compare numbers.
#[derive(Clone, Debug, Default)]
pub(crate) struct Interner {
    attrs: HashMap<String, AttrId>,
    values: HashMap<(AttrId, String), ValueId>,
}

impl Interner {
    pub(crate) fn attr(&self, name: &str) -> Option<AttrId> {
        self.attrs.get(name).copied()
    }

    pub(crate) fn value(&self, attr: AttrId, value: &str) -> Option<ValueId> {
        self.values.get(&(attr, value.to_string())).copied()
    }

    pub(crate) fn intern(&mut self, name: &str, value: &str) -> (AttrId, ValueId) {
        let next = self.attrs.len() as AttrId;
        let a = *self.attrs.entry(name.to_string()).or_insert(next);
        let next = self.values.len() as ValueId;
        let v = *self.values.entry((a, value.to_string())).or_insert(next);
        (a, v)
    }
}

/// The fixed part of an agent: what it is, not what runs on it.
#[derive(Clone, Debug)]
pub(crate) struct AgentInfo {
    pub(crate) spec: Agent,
    /// Totals with the port count taken from the ranges.
    pub(crate) total: Resources,
    pub(crate) attrs: Vec<(AttrId, ValueId)>,
    /// FNV-1a of the id, made once: best mode's seeded tie-break order mixes the seed into it.
    pub(crate) id_hash: u64,
}

/// FNV-1a, 64 bit.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl AgentInfo {
    pub(crate) fn attr(&self, a: AttrId) -> Option<ValueId> {
        self.attrs.iter().find(|(x, _)| *x == a).map(|(_, v)| *v)
    }

    pub(crate) fn attrs(&self) -> &[(AttrId, ValueId)] {
        &self.attrs
    }
}

/// The changing part of an agent.
#[derive(Clone, Debug)]
pub(crate) struct AgentUsage {
    pub(crate) used: Resources,
    pub(crate) ports: PortSet,
    pub(crate) tasks: u32,
    /// An exclusive-host task runs here: nothing else may join.
    pub(crate) exclusive: bool,
    pub(crate) eligible: bool,
}

/// How many tasks of one scope run on each agent and on each attribute value.
#[derive(Clone, Debug, Default)]
pub(crate) struct GroupCounts {
    per_agent: HashMap<AgentIdx, u32>,
    per_value: HashMap<(AttrId, ValueId), u32>,
}

impl GroupCounts {
    pub(crate) fn on_agent(&self, idx: AgentIdx) -> u32 {
        self.per_agent.get(&idx).copied().unwrap_or(0)
    }

    pub(crate) fn with_value(&self, a: AttrId, v: ValueId) -> u32 {
        self.per_value.get(&(a, v)).copied().unwrap_or(0)
    }

    /// Counts of the values of attribute `a` that hold at least one task.
    pub(crate) fn values_of(&self, a: AttrId) -> impl Iterator<Item = u32> + '_ {
        self.per_value.iter().filter(move |((x, _), n)| *x == a && **n > 0).map(|(_, n)| *n)
    }

    fn add(&mut self, idx: AgentIdx, info: &AgentInfo) {
        *self.per_agent.entry(idx).or_insert(0) += 1;
        for &(a, v) in info.attrs() {
            *self.per_value.entry((a, v)).or_insert(0) += 1;
        }
    }

    fn remove(&mut self, idx: AgentIdx, info: &AgentInfo) {
        if let Some(n) = self.per_agent.get_mut(&idx) {
            *n -= 1;
            if *n == 0 {
                self.per_agent.remove(&idx);
            }
        }
        for &(a, v) in info.attrs() {
            if let Some(n) = self.per_value.get_mut(&(a, v)) {
                *n -= 1;
                if *n == 0 {
                    self.per_value.remove(&(a, v));
                }
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.per_agent.is_empty()
    }
}

/// What one capacity group has running.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupUsage {
    pub resources: Resources,
    pub tasks: u32,
}

/// Everything a placement changes; `place` works on a copy of it and leaves the snapshot untouched.
#[derive(Clone, Debug, Default)]
pub(crate) struct State {
    pub(crate) usage: Vec<AgentUsage>,
    jobs: HashMap<String, GroupCounts>,
    named: HashMap<String, GroupCounts>,
    /// Resources in use per capacity group ("" for tasks without one).
    pub(crate) capacity: BTreeMap<String, GroupUsage>,
}

impl State {
    pub(crate) fn group(&self, scope: &Scope) -> Option<&GroupCounts> {
        match scope {
            Scope::Job(j) => self.jobs.get(j),
            Scope::Group(g) => self.named.get(g),
        }
    }

    /// Records a task on an agent whose fit was already checked; allocates its ports unless given.
    pub(crate) fn record(
        &mut self,
        agents: &[AgentInfo],
        idx: AgentIdx,
        task: &TaskRequest,
        ports: Option<&[u16]>,
    ) -> Vec<u16> {
        let info = &agents[idx as usize];
        let usage = &mut self.usage[idx as usize];
        usage.used.add(&task.resources);
        usage.tasks += 1;
        if task.constraints.iter().any(|c| matches!(c, Constraint::ExclusiveHost)) {
            usage.exclusive = true;
        }
        let ports = match ports {
            Some(p) => {
                usage.ports.reserve(p);
                p.to_vec()
            }
            None => usage
                .ports
                .allocate(task.resources.ports, ports::search_start(&task.id))
                .expect("the port count was checked by the filter before recording"),
        };
        self.jobs.entry(task.job.clone()).or_default().add(idx, info);
        for g in &task.groups {
            self.named.entry(g.clone()).or_default().add(idx, info);
        }
        let cg = task.capacity_group.clone().unwrap_or_default();
        let group = self.capacity.entry(cg).or_default();
        group.resources.add(&task.resources);
        group.tasks += 1;
        ports
    }

    pub(crate) fn unrecord(&mut self, agents: &[AgentInfo], record: &TaskRecord) {
        let idx = record.agent;
        let info = &agents[idx as usize];
        let usage = &mut self.usage[idx as usize];
        usage.used.sub(&record.resources);
        usage.tasks -= 1;
        if record.exclusive {
            usage.exclusive = false;
        }
        usage.ports.release(&record.ports);
        forget(&mut self.jobs, &record.job, idx, info);
        for g in &record.groups {
            forget(&mut self.named, g, idx, info);
        }
        if let Some(g) = self.capacity.get_mut(record.capacity_group.as_deref().unwrap_or("")) {
            g.resources.sub(&record.resources);
            g.tasks = g.tasks.saturating_sub(1);
        }
    }
}

fn forget(map: &mut HashMap<String, GroupCounts>, key: &str, idx: AgentIdx, info: &AgentInfo) {
    if let Some(counts) = map.get_mut(key) {
        counts.remove(idx, info);
        if counts.is_empty() {
            map.remove(key);
        }
    }
}

/// A task the snapshot holds: where it runs and what recording it changed (its resources, whether it holds its
/// agent alone, its job, groups and capacity group, the ports it got), so releasing it undoes exactly that. Not the
/// whole request: its id is the snapshot's key, and its constraints and preferences matter only while placing.
#[derive(Clone, Debug)]
pub(crate) struct TaskRecord {
    pub(crate) agent: AgentIdx,
    pub(crate) exclusive: bool,
    pub(crate) resources: Resources,
    pub(crate) job: String,
    pub(crate) groups: Vec<String>,
    pub(crate) capacity_group: Option<String>,
    pub(crate) ports: Vec<u16>,
}

impl TaskRecord {
    pub(crate) fn new(agent: AgentIdx, task: &TaskRequest, ports: Vec<u16>) -> TaskRecord {
        TaskRecord {
            agent,
            exclusive: task.constraints.iter().any(|c| matches!(c, Constraint::ExclusiveHost)),
            resources: task.resources.clone(),
            job: task.job.clone(),
            groups: task.groups.clone(),
            capacity_group: task.capacity_group.clone(),
            ports,
        }
    }
}
