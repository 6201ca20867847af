//! The cluster as placement sees it: agents with their totals, usage, attributes and eligibility, plus the
//! co-task counts that constraints read. Assignments and releases update it in place between placement calls,
//! so a caller keeps one snapshot alive instead of rebuilding it.

use std::collections::{BTreeMap, HashMap};

use crate::constraint::Scope;
use crate::filter::{self, Rejection};
use crate::pipeline::Placement;
use crate::ports::PortSet;
use crate::request::TaskRequest;
use crate::resources::{cpus_to_milli, Resources};

/// An agent's position in the snapshot; stable for the snapshot's life.
pub type AgentIdx = u32;
pub(crate) type AttrId = u32;
pub(crate) type ValueId = u32;

/// An agent as the caller describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Agent {
    pub id: String,
    pub hostname: String,
    /// Totals; `total.ports` is ignored in favour of `port_ranges`.
    pub total: Resources,
    /// Inclusive ranges dynamic ports are taken from.
    pub port_ranges: Vec<(u16, u16)>,
    pub attributes: BTreeMap<String, String>,
    /// False for disabled or draining agents: they keep their tasks but take no new ones.
    pub eligible: bool,
}

impl Agent {
    pub fn new(id: impl Into<String>) -> Agent {
        let id = id.into();
        Agent {
            hostname: id.clone(),
            id,
            total: Resources::default(),
            port_ranges: Vec::new(),
            attributes: BTreeMap::new(),
            eligible: true,
        }
    }

    pub fn hostname(mut self, h: impl Into<String>) -> Self {
        self.hostname = h.into();
        self
    }

    pub fn cpus(mut self, cpus: f64) -> Self {
        self.total.cpu_milli = cpus_to_milli(cpus);
        self
    }

    pub fn mem_mib(mut self, mib: u64) -> Self {
        self.total.mem_mib = mib;
        self
    }

    pub fn mem_gib(self, gib: u64) -> Self {
        self.mem_mib(gib * 1024)
    }

    pub fn disk_mib(mut self, mib: u64) -> Self {
        self.total.disk_mib = mib;
        self
    }

    pub fn net_mbps(mut self, mbps: u64) -> Self {
        self.total.net_mbps = mbps;
        self
    }

    pub fn ports(mut self, first: u16, last: u16) -> Self {
        self.port_ranges.push((first, last));
        self
    }

    pub fn scalar(mut self, name: &str, amount: u64) -> Self {
        self.total.scalars.set(name, amount);
        self
    }

    pub fn attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    pub fn zone(self, zone: &str) -> Self {
        self.attr("zone", zone)
    }

    pub fn eligible(mut self, eligible: bool) -> Self {
        self.eligible = eligible;
        self
    }
}

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

    fn intern(&mut self, name: &str, value: &str) -> (AttrId, ValueId) {
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
    attrs: Vec<(AttrId, ValueId)>,
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
        if task.constraints.iter().any(|c| matches!(c, crate::Constraint::ExclusiveHost)) {
            usage.exclusive = true;
        }
        let ports = match ports {
            Some(p) => {
                usage.ports.reserve(p);
                p.to_vec()
            }
            None => usage
                .ports
                .allocate(task.resources.ports, crate::ports::search_start(&task.id))
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

    fn unrecord(&mut self, agents: &[AgentInfo], record: &TaskRecord) {
        let idx = record.agent;
        let info = &agents[idx as usize];
        let usage = &mut self.usage[idx as usize];
        usage.used.sub(&record.task.resources);
        usage.tasks -= 1;
        if record.task.constraints.iter().any(|c| matches!(c, crate::Constraint::ExclusiveHost)) {
            usage.exclusive = false;
        }
        usage.ports.release(&record.ports);
        forget(&mut self.jobs, &record.task.job, idx, info);
        for g in &record.task.groups {
            forget(&mut self.named, g, idx, info);
        }
        let cg = record.task.capacity_group.clone().unwrap_or_default();
        if let Some(g) = self.capacity.get_mut(&cg) {
            g.resources.sub(&record.task.resources);
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

#[derive(Clone, Debug)]
struct TaskRecord {
    agent: AgentIdx,
    task: TaskRequest,
    ports: Vec<u16>,
}

/// Why the snapshot refused a change.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SnapshotError {
    #[error("agent {0} is already in the snapshot")]
    DuplicateAgent(String),
    #[error("no agent {0} in the snapshot")]
    UnknownAgent(String),
    #[error("task {0} is already assigned")]
    DuplicateTask(String),
    #[error("no task {0} in the snapshot")]
    UnknownTask(String),
    #[error("task {task} does not fit on agent {agent}: {reason}")]
    DoesNotFit { task: String, agent: String, reason: Rejection },
    #[error("task {task}: ports {ports:?} are outside agent {agent}'s ranges or already taken")]
    PortsUnavailable { task: String, agent: String, ports: Vec<u16> },
}

/// The cluster: agents, what runs on them, and the counts constraints need.
#[derive(Clone, Debug, Default)]
pub struct ClusterSnapshot {
    pub(crate) agents: Vec<AgentInfo>,
    pub(crate) interner: Interner,
    pub(crate) state: State,
    by_id: HashMap<String, AgentIdx>,
    tasks: HashMap<String, TaskRecord>,
}

impl ClusterSnapshot {
    pub fn new() -> ClusterSnapshot {
        ClusterSnapshot::default()
    }

    pub fn with_agents(agents: impl IntoIterator<Item = Agent>) -> Result<ClusterSnapshot, SnapshotError> {
        let mut s = ClusterSnapshot::new();
        for a in agents {
            s.add_agent(a)?;
        }
        Ok(s)
    }

    pub fn add_agent(&mut self, agent: Agent) -> Result<AgentIdx, SnapshotError> {
        if self.by_id.contains_key(&agent.id) {
            return Err(SnapshotError::DuplicateAgent(agent.id));
        }
        let idx = self.agents.len() as AgentIdx;
        let ports = PortSet::new(&agent.port_ranges);
        let mut total = agent.total.clone();
        total.ports = ports.total();
        let mut attrs: Vec<(AttrId, ValueId)> =
            agent.attributes.iter().map(|(k, v)| self.interner.intern(k, v)).collect();
        attrs.sort_unstable();
        self.state.usage.push(AgentUsage {
            used: Resources::default(),
            ports,
            tasks: 0,
            exclusive: false,
            eligible: agent.eligible,
        });
        self.by_id.insert(agent.id.clone(), idx);
        self.agents.push(AgentInfo { spec: agent, total, attrs });
        Ok(idx)
    }

    /// Marks an agent eligible or not (draining, disabled). Its tasks stay.
    pub fn set_eligible(&mut self, id: &str, eligible: bool) -> Result<(), SnapshotError> {
        let idx = self.index_of(id)?;
        self.state.usage[idx as usize].eligible = eligible;
        self.agents[idx as usize].spec.eligible = eligible;
        Ok(())
    }

    fn index_of(&self, id: &str) -> Result<AgentIdx, SnapshotError> {
        self.by_id.get(id).copied().ok_or_else(|| SnapshotError::UnknownAgent(id.to_string()))
    }

    /// Records a task on an agent after checking every hard rule against the current state, so a plan made on
    /// an older snapshot can be re-validated by applying it. `ports` are the task's concrete ports when it
    /// already has them (a running task, or a plan's allocation); otherwise the lowest free ones are taken.
    pub fn assign(
        &mut self,
        task: &TaskRequest,
        agent_id: &str,
        ports: Option<&[u16]>,
    ) -> Result<Vec<u16>, SnapshotError> {
        if self.tasks.contains_key(&task.id) {
            return Err(SnapshotError::DuplicateTask(task.id.clone()));
        }
        let idx = self.index_of(agent_id)?;
        let compiled = filter::CompiledTask::new(task, &self.interner);
        if let Err(reason) = filter::check(&self.agents, &self.state, idx, &compiled) {
            return Err(SnapshotError::DoesNotFit { task: task.id.clone(), agent: agent_id.to_string(), reason });
        }
        if let Some(p) = ports {
            let mut trial = self.state.usage[idx as usize].ports.clone();
            let bad = trial.reserve(p);
            if !bad.is_empty() || p.len() != task.resources.ports as usize {
                return Err(SnapshotError::PortsUnavailable {
                    task: task.id.clone(),
                    agent: agent_id.to_string(),
                    ports: bad,
                });
            }
        }
        let got = self.state.record(&self.agents, idx, task, ports);
        self.tasks.insert(task.id.clone(), TaskRecord { agent: idx, task: task.clone(), ports: got.clone() });
        Ok(got)
    }

    /// Frees a task's resources, ports and constraint counts.
    pub fn release(&mut self, task_id: &str) -> Result<(), SnapshotError> {
        let record = self.tasks.remove(task_id).ok_or_else(|| SnapshotError::UnknownTask(task_id.to_string()))?;
        self.state.unrecord(&self.agents, &record);
        Ok(())
    }

    /// Applies a placement's assignments, re-validating each; returns the ones refused. The requests are looked
    /// up by task id in `requests`.
    pub fn apply(&mut self, placement: &Placement, requests: &[TaskRequest]) -> Vec<SnapshotError> {
        let by_id: HashMap<&str, &TaskRequest> = requests.iter().map(|r| (r.id.as_str(), r)).collect();
        let mut refused = Vec::new();
        for a in &placement.assignments {
            let Some(task) = by_id.get(a.task_id.as_str()) else {
                refused.push(SnapshotError::UnknownTask(a.task_id.clone()));
                continue;
            };
            if let Err(e) = self.assign(task, &a.agent_id, Some(&a.ports)) {
                refused.push(e);
            }
        }
        refused
    }

    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    pub fn agent(&self, id: &str) -> Option<&Agent> {
        self.by_id.get(id).map(|&i| &self.agents[i as usize].spec)
    }

    /// What runs on an agent: resources used and number of tasks.
    pub fn usage(&self, id: &str) -> Option<(&Resources, u32)> {
        self.by_id.get(id).map(|&i| {
            let u = &self.state.usage[i as usize];
            (&u.used, u.tasks)
        })
    }

    /// The agent a task runs on, and its ports.
    pub fn task(&self, task_id: &str) -> Option<(&str, &[u16])> {
        self.tasks.get(task_id).map(|r| (self.agents[r.agent as usize].spec.id.as_str(), r.ports.as_slice()))
    }

    /// What a capacity group has running (`None` for tasks without one).
    pub fn capacity_group_usage(&self, group: Option<&str>) -> GroupUsage {
        self.state.capacity.get(group.unwrap_or("")).cloned().unwrap_or_default()
    }

    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.agents.iter().map(|a| &a.spec)
    }
}
