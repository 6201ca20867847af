//! What the caller asks to place: one `TaskRequest` per task, with its resources, constraints, queue tier and
//! capacity group.

use crate::constraint::{Constraint, Preference, Scope};
use crate::resources::{cpus_to_milli, Resources};

/// One task to place.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskRequest {
    pub id: String,
    /// The job the task belongs to: constraints scoped to the job count its other tasks.
    pub job: String,
    /// Named co-location groups the task belongs to besides its job (a constraint scope).
    pub groups: Vec<String>,
    pub resources: Resources,
    /// Hard constraints: an agent that breaks one is not a candidate.
    pub constraints: Vec<Constraint>,
    /// Soft constraints: breaking one lowers an agent's score by its weight.
    pub preferences: Vec<Preference>,
    /// Queue tier: every task of tier 0 is considered before any of tier 1.
    pub tier: u8,
    /// Capacity group (fair-share bucket and quota holder); tasks without one share the default bucket.
    pub capacity_group: Option<String>,
}

impl TaskRequest {
    pub fn new(id: impl Into<String>, job: impl Into<String>) -> TaskRequest {
        TaskRequest {
            id: id.into(),
            job: job.into(),
            groups: Vec::new(),
            resources: Resources::default(),
            constraints: Vec::new(),
            preferences: Vec::new(),
            tier: 0,
            capacity_group: None,
        }
    }

    pub fn cpus(mut self, cpus: f64) -> Self {
        self.resources.cpu_milli = cpus_to_milli(cpus);
        self
    }

    pub fn mem_mib(mut self, mib: u64) -> Self {
        self.resources.mem_mib = mib;
        self
    }

    pub fn disk_mib(mut self, mib: u64) -> Self {
        self.resources.disk_mib = mib;
        self
    }

    pub fn net_mbps(mut self, mbps: u64) -> Self {
        self.resources.net_mbps = mbps;
        self
    }

    pub fn ports(mut self, count: u32) -> Self {
        self.resources.ports = count;
        self
    }

    pub fn scalar(mut self, name: &str, amount: u64) -> Self {
        self.resources.scalars.set(name, amount);
        self
    }

    pub fn group(mut self, name: impl Into<String>) -> Self {
        self.groups.push(name.into());
        self
    }

    pub fn constraint(mut self, c: Constraint) -> Self {
        self.constraints.push(c);
        self
    }

    pub fn prefer(mut self, c: Constraint, weight: f64) -> Self {
        self.preferences.push(Preference { constraint: c, weight });
        self
    }

    pub fn tier(mut self, tier: u8) -> Self {
        self.tier = tier;
        self
    }

    pub fn capacity_group(mut self, group: impl Into<String>) -> Self {
        self.capacity_group = Some(group.into());
        self
    }

    /// The co-location groups this task counts in: its job, then its named groups.
    pub fn scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        std::iter::once(Scope::Job(self.job.clone())).chain(self.groups.iter().map(|g| Scope::Group(g.clone())))
    }
}
