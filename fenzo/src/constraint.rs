//! Hard and soft placement constraints as the caller writes them. How one agent is judged against them is the
//! filters' business (`filter::Compiled`).

use std::fmt;

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
