//! The hard filters, in their fixed order: eligibility, then each resource, then each constraint. The first
//! failing filter is the agent's rejection reason, which explanations count.
//!
//! A constraint is data the caller builds; `Compiled` resolves its attribute names and values to the snapshot's
//! interned ids once per task, so judging an agent is integer compares and a few hash lookups.

use std::fmt;

use crate::constraint::{By, Constraint, Scope};
use crate::request::TaskRequest;
use crate::resources::{ResourceKind, Resources};
use crate::state::{AgentIdx, AgentInfo, AgentUsage, AttrId, GroupCounts, Interner, State, ValueId};

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

/// A constraint with names resolved against one snapshot.
#[derive(Clone, Debug)]
pub(crate) enum Compiled {
    Equals(Option<AttrId>, Option<ValueId>),
    NotEquals(Option<AttrId>, Option<ValueId>),
    In(Option<AttrId>, Vec<ValueId>),
    MaxPer { scope: Scope, by: Option<CompiledBy>, max: u32 },
    Exclusive,
    Balanced { scope: Scope, attr: Option<AttrId>, expected: u32 },
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum CompiledBy {
    Host,
    Attr(AttrId),
}

impl Compiled {
    pub(crate) fn new(c: &Constraint, job: &str, interner: &Interner) -> Compiled {
        let scope_of = |s: &Option<Scope>| s.clone().unwrap_or_else(|| Scope::Job(job.to_string()));
        let by_of = |b: &By| match b {
            By::Host => Some(CompiledBy::Host),
            // An attribute no agent has: nothing can be counted by it, so the rule has nothing to hold to.
            By::Attribute(a) => interner.attr(a).map(CompiledBy::Attr),
        };
        match c {
            Constraint::AttributeEquals { name, value } => {
                let a = interner.attr(name);
                Compiled::Equals(a, a.and_then(|a| interner.value(a, value)))
            }
            Constraint::AttributeNotEquals { name, value } => {
                let a = interner.attr(name);
                Compiled::NotEquals(a, a.and_then(|a| interner.value(a, value)))
            }
            Constraint::AttributeIn { name, values } => {
                let a = interner.attr(name);
                let ids = a.map(|a| values.iter().filter_map(|v| interner.value(a, v)).collect()).unwrap_or_default();
                Compiled::In(a, ids)
            }
            Constraint::Unique { scope, by } => Compiled::MaxPer { scope: scope_of(scope), by: by_of(by), max: 1 },
            Constraint::MaxPer { scope, by, max } => {
                Compiled::MaxPer { scope: scope_of(scope), by: by_of(by), max: *max }
            }
            Constraint::ExclusiveHost => Compiled::Exclusive,
            Constraint::Balanced { scope, attribute, expected } => {
                Compiled::Balanced { scope: scope_of(scope), attr: interner.attr(attribute), expected: *expected }
            }
        }
    }

    /// Whether placing the task on agent `idx` keeps this rule.
    pub(crate) fn holds(&self, info: &AgentInfo, usage: &AgentUsage, idx: AgentIdx, state: &State) -> bool {
        match self {
            Compiled::Equals(a, v) => {
                matches!((a, v), (Some(a), Some(v)) if info.attr(*a) == Some(*v))
            }
            Compiled::NotEquals(a, v) => match (a, v) {
                (Some(a), Some(v)) => info.attr(*a) != Some(*v),
                _ => true,
            },
            Compiled::In(a, vs) => a.and_then(|a| info.attr(a)).is_some_and(|v| vs.contains(&v)),
            Compiled::MaxPer { scope, by, max } => {
                let Some(counts) = state.group(scope) else {
                    return *max > 0;
                };
                let n = match by {
                    Some(CompiledBy::Host) => counts.on_agent(idx),
                    Some(CompiledBy::Attr(a)) => match info.attr(*a) {
                        Some(v) => counts.with_value(*a, v),
                        // An agent without the attribute is not in any of its values' counts.
                        None => 0,
                    },
                    None => 0,
                };
                n < *max
            }
            Compiled::Exclusive => usage.tasks == 0,
            Compiled::Balanced { scope, attr, expected } => {
                let Some(attr) = attr else { return false };
                let Some(target) = info.attr(*attr) else {
                    return false;
                };
                match state.group(scope) {
                    Some(counts) => balanced_allows(counts, *attr, target, *expected),
                    None => true,
                }
            }
        }
    }
}

/// Fenzo's balance rule: a value with no co-tasks is always open; otherwise the value may take one more only
/// while it holds fewer than the busiest value, or all values are level (an expected value not yet used
/// counts as level zero).
fn balanced_allows(counts: &GroupCounts, attr: AttrId, target: ValueId, expected: u32) -> bool {
    let here = counts.with_value(attr, target);
    if here == 0 {
        return true;
    }
    let (mut min, mut max, mut used) = (u32::MAX, 0u32, 0u32);
    for n in counts.values_of(attr) {
        min = min.min(n);
        max = max.max(n);
        used += 1;
    }
    if expected > used {
        min = 0;
    }
    min == max || here < max
}
