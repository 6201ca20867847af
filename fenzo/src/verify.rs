//! An independent check of a placement's result: no agent over any resource, ports distinct and inside the
//! agent's ranges, no new task on an ineligible agent, and every hard constraint holding in the final state.
//!
//! It shares no code with the filters on purpose: tests use it as the oracle the engine is held to, and the
//! scheduler can run it before committing a plan.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::constraint::{By, Constraint, Scope};
use crate::placement::Placement;
use crate::request::TaskRequest;
use crate::resources::Resources;
use crate::snapshot::ClusterSnapshot;

/// One broken rule, in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation(pub String);

/// Checks `placement` of `requests` made on `before`. Balanced constraints are checked as "no two expected
/// values differ by more than one task", which holds when the scope had no tasks before the round.
pub fn verify(before: &ClusterSnapshot, requests: &[TaskRequest], placement: &Placement) -> Vec<Violation> {
    let mut bad = Vec::new();
    let by_id: HashMap<&str, &TaskRequest> = requests.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut used: HashMap<&str, Resources> = HashMap::new();
    let mut ports: HashMap<&str, BTreeSet<u16>> = HashMap::new();
    let mut on: HashMap<&str, Vec<&TaskRequest>> = HashMap::new();
    let mut seen: BTreeSet<&str> = BTreeSet::new();

    for a in before.agents() {
        let (u, _) = before.usage(&a.id).expect("listed agents have usage");
        used.insert(a.id.as_str(), u.clone());
    }
    for a in &placement.assignments {
        let Some(task) = by_id.get(a.task_id.as_str()) else {
            bad.push(Violation(format!("{} was not requested", a.task_id)));
            continue;
        };
        if !seen.insert(a.task_id.as_str()) {
            bad.push(Violation(format!("{} assigned twice", a.task_id)));
        }
        let Some(agent) = before.agent(&a.agent_id) else {
            bad.push(Violation(format!("{} on unknown agent {}", a.task_id, a.agent_id)));
            continue;
        };
        if !agent.eligible {
            bad.push(Violation(format!("{} on ineligible agent {}", a.task_id, a.agent_id)));
        }
        used.entry(agent.id.as_str()).or_default().add(&task.resources);
        if a.ports.len() != task.resources.ports as usize {
            bad.push(Violation(format!("{} got {} ports for {}", a.task_id, a.ports.len(), task.resources.ports)));
        }
        let taken = ports.entry(agent.id.as_str()).or_default();
        for p in &a.ports {
            let in_range = agent.port_ranges.iter().any(|(lo, hi)| p >= lo && p <= hi);
            if !in_range || !taken.insert(*p) {
                bad.push(Violation(format!("{} port {p} on {} is taken or out of range", a.task_id, agent.id)));
            }
        }
        on.entry(agent.id.as_str()).or_default().push(task);
    }

    for agent in before.agents() {
        let u = &used[agent.id.as_str()];
        let mut total = agent.total.clone();
        total.ports = agent.port_ranges.iter().map(|(a, b)| u32::from(b - a) + 1).sum();
        if let Some(kind) = Resources::first_shortfall(&total, &Resources::default(), u) {
            bad.push(Violation(format!("agent {} over {kind}", agent.id)));
        }
        let tasks = on.get(agent.id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let existing = before.usage(&agent.id).map(|(_, n)| n).unwrap_or(0) as usize;
        for t in tasks {
            for c in &t.constraints {
                let attr = |n: &str| agent.attributes.get(n);
                let ok = match c {
                    Constraint::AttributeEquals { name, value } => attr(name) == Some(value),
                    Constraint::AttributeNotEquals { name, value } => attr(name) != Some(value),
                    Constraint::AttributeIn { name, values } => attr(name).is_some_and(|v| values.contains(v)),
                    Constraint::ExclusiveHost => tasks.len() + existing == 1,
                    _ => true,
                };
                if !ok {
                    bad.push(Violation(format!("{} on {} breaks {c}", t.id, agent.id)));
                }
            }
        }
    }

    // Per-scope counts by host and by attribute value, over this round's assignments.
    let mut counts: BTreeMap<(Scope, String, String), u32> = BTreeMap::new();
    for (agent_id, tasks) in &on {
        let agent = before.agent(agent_id).expect("checked above");
        for t in tasks {
            for scope in t.scopes() {
                *counts.entry((scope.clone(), "\0host".into(), agent_id.to_string())).or_insert(0) += 1;
                for (k, v) in &agent.attributes {
                    *counts.entry((scope.clone(), k.clone(), v.clone())).or_insert(0) += 1;
                }
            }
        }
    }
    let mut checked: BTreeSet<(Scope, String)> = BTreeSet::new();
    for r in requests.iter().filter(|r| seen.contains(r.id.as_str())) {
        for c in &r.constraints {
            let scope_of = |s: &Option<Scope>| s.clone().unwrap_or_else(|| Scope::Job(r.job.clone()));
            let (scope, key, max) = match c {
                Constraint::Unique { scope, by } => (scope_of(scope), by_key(by), 1),
                Constraint::MaxPer { scope, by, max } => (scope_of(scope), by_key(by), *max),
                Constraint::Balanced { scope, attribute, expected } => {
                    let scope = scope_of(scope);
                    if checked.insert((scope.clone(), c.to_string())) {
                        let values: Vec<u32> = counts
                            .range((scope.clone(), attribute.clone(), String::new())..)
                            .take_while(|((s, a, _), _)| *s == scope && a == attribute)
                            .map(|(_, n)| *n)
                            .collect();
                        let max = values.iter().copied().max().unwrap_or(0);
                        let min = if (values.len() as u32) < *expected {
                            0
                        } else {
                            values.iter().copied().min().unwrap_or(0)
                        };
                        if max > min + 1 {
                            bad.push(Violation(format!("{scope:?} unbalanced over {attribute}: {values:?}")));
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            if !checked.insert((scope.clone(), c.to_string())) {
                continue;
            }
            for ((s, k, v), n) in counts.range((scope.clone(), key.clone(), String::new())..) {
                if *s != scope || *k != key {
                    break;
                }
                if *n > max {
                    bad.push(Violation(format!("{scope:?} has {n} tasks on {k}={v}, over {max} ({c})")));
                }
            }
        }
    }
    bad
}

fn by_key(by: &By) -> String {
    match by {
        By::Host => "\0host".to_string(),
        By::Attribute(a) => a.clone(),
    }
}
