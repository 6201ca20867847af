//! The cluster as placement sees it: agents with their totals, usage, attributes and eligibility, plus the
//! co-task counts that constraints read. Assignments and releases update it in place between placement calls,
//! so a caller keeps one snapshot alive instead of rebuilding it.

use std::collections::HashMap;

use crate::agent::Agent;
use crate::filter::{self, Rejection};
use crate::placement::Placement;
use crate::ports::PortSet;
use crate::request::TaskRequest;
use crate::resources::Resources;
use crate::state::{AgentIdx, AgentInfo, AgentUsage, AttrId, GroupUsage, Interner, State, TaskRecord, ValueId};

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
        let id_hash = crate::state::fnv1a(agent.id.as_bytes());
        self.agents.push(AgentInfo { spec: agent, total, attrs, id_hash });
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
        self.tasks.insert(task.id.clone(), TaskRecord::new(idx, task, got.clone()));
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
