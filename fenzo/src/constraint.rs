//! Hard and soft placement constraints, and how one agent is judged against them.
//!
//! A constraint is data the caller builds; `Compiled` resolves its attribute names and values to the snapshot's
//! interned ids once per task, so judging an agent is integer compares and a few hash lookups.

use std::fmt;

use crate::snapshot::{AgentIdx, AgentInfo, AgentUsage, AttrId, GroupCounts, Interner, State, ValueId};

/// Which co-tasks a constraint counts: the tasks of the same job, or of a named group (several jobs).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Job(String),
    Group(String),
}

/// What a per-location constraint counts by: the agent itself, or the value of one of its attributes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum By {
    Host,
    Attribute(String),
}

/// A placement rule. As a hard constraint it removes agents; as a preference it lowers their score.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Constraint {
    /// The agent's attribute `name` equals `value`.
    AttributeEquals { name: String, value: String },
    /// The agent lacks attribute `name` or it differs from `value`.
    AttributeNotEquals { name: String, value: String },
    /// The agent's attribute `name` is one of `values`.
    AttributeIn { name: String, values: Vec<String> },
    /// At most one task of the scope per host, or per attribute value. `scope: None` means the task's job.
    Unique { scope: Option<Scope>, by: By },
    /// At most `max` tasks of the scope per host, or per attribute value.
    MaxPer { scope: Option<Scope>, by: By, max: u32 },
    /// The task runs alone: only on an agent with no other task, and no task joins it later.
    ExclusiveHost,
    /// The scope's tasks spread evenly over `expected` values of `attribute` (Fenzo's
    /// `BalancedHostAttrConstraint`): an agent is refused when its value already holds the most co-tasks and
    /// the values are not level.
    Balanced { scope: Option<Scope>, attribute: String, expected: u32 },
}

impl fmt::Display for By {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            By::Host => f.write_str("host"),
            By::Attribute(a) => f.write_str(a),
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Constraint::AttributeEquals { name, value } => write!(f, "{name}={value}"),
            Constraint::AttributeNotEquals { name, value } => write!(f, "{name}!={value}"),
            Constraint::AttributeIn { name, values } => {
                write!(f, "{name} in [{}]", values.join(","))
            }
            Constraint::Unique { by, .. } => write!(f, "unique per {by}"),
            Constraint::MaxPer { by, max, .. } => write!(f, "at most {max} per {by}"),
            Constraint::ExclusiveHost => f.write_str("exclusive host"),
            Constraint::Balanced { attribute, expected, .. } => {
                write!(f, "balanced over {expected} values of {attribute}")
            }
        }
    }
}

/// A soft constraint: an agent that breaks it loses `weight` from its score (weights are relative to the
/// fitness function's weight of 1).
#[derive(Clone, Debug, PartialEq)]
pub struct Preference {
    pub constraint: Constraint,
    pub weight: f64,
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
