//! The hard filters, in their fixed order: eligibility, then each resource, then each constraint. The first
//! failing filter is the agent's rejection reason, which explanations count.

use std::fmt;

use crate::constraint::Compiled;
use crate::request::TaskRequest;
use crate::resources::{ResourceKind, Resources};
use crate::snapshot::{AgentIdx, AgentInfo, Interner, State};

/// Why one agent cannot take one task.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rejection {
    /// Disabled or draining.
    Ineligible,
    /// An exclusive-host task already runs there.
    OccupiedExclusively,
    /// Not enough of this resource left.
    Exhausted(ResourceKind),
    /// A hard constraint, as written by `Constraint`'s Display.
    Constraint(String),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Ineligible => f.write_str("agent not eligible (disabled or draining)"),
            Rejection::OccupiedExclusively => f.write_str("agent runs an exclusive-host task"),
            Rejection::Exhausted(kind) => write!(f, "insufficient {kind}"),
            Rejection::Constraint(c) => write!(f, "constraint {c}"),
        }
    }
}

/// A request with its constraints resolved against one snapshot's interned names.
#[derive(Debug)]
pub(crate) struct CompiledTask<'a> {
    pub(crate) request: &'a TaskRequest,
    pub(crate) constraints: Vec<Compiled>,
    pub(crate) preferences: Vec<(Compiled, f64)>,
}

impl<'a> CompiledTask<'a> {
    pub(crate) fn new(request: &'a TaskRequest, interner: &Interner) -> CompiledTask<'a> {
        CompiledTask {
            request,
            constraints: request.constraints.iter().map(|c| Compiled::new(c, &request.job, interner)).collect(),
            preferences: request
                .preferences
                .iter()
                .map(|p| (Compiled::new(&p.constraint, &request.job, interner), p.weight))
                .collect(),
        }
    }
}

/// Runs every hard filter of `task` against agent `idx`.
pub(crate) fn check(
    agents: &[AgentInfo],
    state: &State,
    idx: AgentIdx,
    task: &CompiledTask<'_>,
) -> Result<(), Rejection> {
    let info = &agents[idx as usize];
    let usage = &state.usage[idx as usize];
    if !usage.eligible {
        return Err(Rejection::Ineligible);
    }
    if usage.exclusive {
        return Err(Rejection::OccupiedExclusively);
    }
    if let Some(kind) = Resources::first_shortfall(&info.total, &usage.used, &task.request.resources) {
        return Err(Rejection::Exhausted(kind));
    }
    for (c, raw) in task.constraints.iter().zip(&task.request.constraints) {
        if !c.holds(info, usage, idx, state) {
            return Err(Rejection::Constraint(raw.to_string()));
        }
    }
    Ok(())
}

/// The weighted share of preferences an agent satisfies, in 0.0..=1.0 (1.0 when the task has none).
pub(crate) fn preference_score(agents: &[AgentInfo], state: &State, idx: AgentIdx, task: &CompiledTask<'_>) -> f64 {
    let total: f64 = task.preferences.iter().map(|(_, w)| w).sum();
    if total <= 0.0 {
        return 1.0;
    }
    let info = &agents[idx as usize];
    let usage = &state.usage[idx as usize];
    let kept: f64 = task.preferences.iter().filter(|(c, _)| c.holds(info, usage, idx, state)).map(|(_, w)| w).sum();
    kept / total
}
