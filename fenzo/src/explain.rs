//! Why a task is pending: one summary per task, counting the agents each filter rejected, never one record per
//! agent. Explanations are computed against the state after the round, and shared between tasks that ask for
//! the same thing (same job, resources and constraints), since those get the same answer.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::constraint::Constraint;
use crate::filter::{self, CompiledTask, Rejection};
use crate::resources::{ResourceKind, Resources};
use crate::state::{AgentInfo, State};

/// A pending task's answer to "why".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Explanation {
    /// Agents in the snapshot.
    pub agents: u32,
    /// Agents rejected, by the first filter that rejected them.
    pub rejected: BTreeMap<Rejection, u32>,
    /// Set when the task is larger than every agent even empty: no amount of waiting helps, only bigger agents.
    pub larger_than_any_agent: Option<ResourceKind>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(kind) = &self.larger_than_any_agent {
            write!(f, "larger than any agent ({kind}); ")?;
        }
        let feasible = self.agents - self.rejected.values().sum::<u32>();
        write!(f, "{feasible}/{} agents fit", self.agents)?;
        let mut by_count: Vec<_> = self.rejected.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (i, (why, n)) in by_count.into_iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { ", " })?;
            write!(f, "{n} {why}")?;
        }
        Ok(())
    }
}

type Signature = (String, Resources, Vec<Constraint>);

/// Explains tasks against the agents and the state a round ended with.
pub(crate) struct Explainer<'w> {
    agents: &'w [AgentInfo],
    state: &'w State,
    seen: HashMap<Signature, Explanation>,
}

impl<'w> Explainer<'w> {
    pub(crate) fn new(agents: &'w [AgentInfo], state: &'w State) -> Self {
        Explainer { agents, state, seen: HashMap::new() }
    }

    pub(crate) fn explain(&mut self, task: &CompiledTask<'_>) -> Explanation {
        let r = task.request;
        let key = (r.job.clone(), r.resources.clone(), r.constraints.clone());
        if let Some(e) = self.seen.get(&key) {
            return e.clone();
        }
        let agents = self.agents;
        let mut e = Explanation { agents: agents.len() as u32, ..Explanation::default() };
        let mut too_big: BTreeMap<ResourceKind, u32> = BTreeMap::new();
        for idx in 0..agents.len() as u32 {
            if let Err(why) = filter::check(agents, self.state, idx, task) {
                *e.rejected.entry(why).or_insert(0) += 1;
            }
            if let Some(kind) = Resources::exceeds(&agents[idx as usize].total, &r.resources) {
                *too_big.entry(kind).or_insert(0) += 1;
            }
        }
        if !agents.is_empty() && too_big.values().sum::<u32>() == e.agents {
            e.larger_than_any_agent =
                too_big.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0))).map(|(k, _)| k);
        }
        self.seen.insert(key, e.clone());
        e
    }
}
