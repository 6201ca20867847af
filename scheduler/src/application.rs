//! Applications as dashboards plot them, taken purely from the state: per application (the jobs'
//! `applicationName`), its desired instances per location and its tasks here by state, and the agents by state.
//! Series are per application, never per job or task, so their number is bounded by the applications.

use std::collections::BTreeMap;

use titan_api::agent::AgentState;
use titan_api::task::TaskState;

use crate::state::CellState;

/// One application's figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    /// Desired instances of its enabled jobs, per location.
    pub instances: BTreeMap<String, u64>,
    /// Its tasks held in this cell, per state.
    pub tasks: BTreeMap<TaskState, u64>,
}

/// Every application's figures. O(jobs + tasks), allocating per application, not per task.
pub fn report(state: &CellState) -> BTreeMap<String, Figures> {
    let mut out: BTreeMap<&str, Figures> = BTreeMap::new();
    for j in state.jobs().filter(|j| j.state != titan_api::view::JobState::Killed) {
        let f = out.entry(j.spec.application_name.as_str()).or_default();
        if j.state == titan_api::view::JobState::Enabled {
            for (location, n) in &j.counts {
                *f.instances.entry(location.clone()).or_insert(0) += u64::from(*n);
            }
        }
    }
    for t in state.tasks() {
        let Some(j) = state.job(&t.job_id) else { continue };
        let f = out.entry(j.spec.application_name.as_str()).or_default();
        *f.tasks.entry(t.state).or_insert(0) += 1;
    }
    out.into_iter().map(|(app, f)| (app.to_string(), f)).collect()
}

/// The agents by state as the control plane shows them: `active`, `draining`, `drained` and `unreachable` (an
/// agent whose lease expired, whatever its state); gone agents are not counted.
pub fn agents(state: &CellState) -> BTreeMap<&'static str, u64> {
    let mut out: BTreeMap<&'static str, u64> =
        ["active", "draining", "drained", "unreachable"].into_iter().map(|s| (s, 0)).collect();
    for a in state.agents().filter(|a| a.state != AgentState::Gone) {
        let key = if !a.reachable { "unreachable" } else { a.state.as_str() };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use titan_api::agent::{AgentRegistration, AgentResources};
    use titan_api::job::{BodyFormat, JobSpec};

    use super::*;
    use crate::command::{Command, Meta, NewTask, Placed, Round};

    fn meta() -> Meta {
        Meta { who: "t".into(), why: None, at_ms: 1, request: String::new(), cell: String::new() }
    }

    fn submit(state: &mut CellState, id: &str, app: &str, location: &str) {
        let body = format!(
            r#"{{"name":"{id}","applicationName":"{app}","location":"{location}","cpus":1,"memory":64,"image":"busybox"}}"#
        );
        let spec = Arc::new(crate::spec::Spec::from(&JobSpec::parse(body.as_bytes(), BodyFormat::Json).expect("spec")));
        state.apply(&Command::PutJob { id: id.into(), spec, idempotency_key: None, meta: meta() });
    }

    #[test]
    fn figures_are_per_application_with_instances_per_location_and_tasks_by_state() {
        let mut state = CellState::default();
        let registration = AgentRegistration {
            id: "a1".into(),
            hostname: "a1".into(),
            addr: "127.0.0.1:1".into(),
            resources: AgentResources { cpus: 8.0, memory_mib: 1024, disk_mib: 0, port_ranges: Vec::new() },
            attributes: Default::default(),
            running: Vec::new(),
        };
        state.apply(&Command::RegisterAgent { registration: Box::new(registration.into()), meta: meta() });
        submit(&mut state, "j1", "web", "dc1:2,dc2:1");
        submit(&mut state, "j2", "web", "dc1:1");
        submit(&mut state, "j3", "batch", "dc2:4");
        let create = vec![NewTask::fresh("t1".into(), "j1", None), NewTask::fresh("t2".into(), "j1", None)];
        let place = vec![Placed { task_id: "t1".into(), agent: "a1".into(), lease_epoch: 1, ports: Vec::new() }];
        state.apply(&Command::Round { round: Box::new(Round { create, place, ..Round::default() }), meta: meta() });

        let r = report(&state);
        assert_eq!(r["web"].instances, BTreeMap::from([("dc1".to_string(), 3), ("dc2".to_string(), 1)]));
        assert_eq!(r["batch"].instances, BTreeMap::from([("dc2".to_string(), 4)]));
        assert_eq!(r["web"].tasks.get(&TaskState::Assigned), Some(&1));
        assert_eq!(r["web"].tasks.get(&TaskState::Accepted), Some(&1));
        assert!(r["batch"].tasks.is_empty());

        let a = agents(&state);
        assert_eq!((a["active"], a["draining"], a["unreachable"]), (1, 0, 0));
    }
}
