//! The cell's capacity as dashboards plot it, taken purely from the state: per instance group (the agents'
//! `instanceGroup` attribute, `none` without one) and resource, what the reachable, working agents offer, what the
//! tasks on them take, and what is stranded: free on agents where the smallest pending task fits nowhere.

use std::collections::BTreeMap;

use crate::state::CellState;

/// A resource as the capacity metrics name it, in base units.
pub const RESOURCES: [&str; 4] = ["cpus", "memory_bytes", "disk_bytes", "ports"];

/// One group's figures per resource (in `RESOURCES` order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    pub total: [f64; 4],
    pub allocated: [f64; 4],
    /// Free on agents where the smallest pending task does not fit (nothing when none is pending).
    pub stranded: [f64; 4],
}

const MIB: f64 = 1024.0 * 1024.0;

/// Every instance group's figures. O(agents).
pub fn report(state: &CellState) -> BTreeMap<String, Figures> {
    // The smallest pending shape (cpus, memory), if any task waits.
    let smallest = state
        .accepted_tasks()
        .filter(|t| t.desired == titan_api::task::Desired::Run)
        .map(|t| (t.ask.cpus, t.ask.memory_mib))
        .fold(None, |acc: Option<(f64, u64)>, (c, m)| match acc {
            None => Some((c, m)),
            Some((ac, am)) => Some((ac.min(c), am.min(m))),
        });
    let mut out: BTreeMap<String, Figures> = BTreeMap::new();
    for a in state.agents().filter(|a| a.takes_work()) {
        let r = &a.registration.resources;
        let group = a.registration.attributes.get(crate::autoscaling::GROUP_ATTRIBUTE).map_or("none", String::as_str);
        let ports: f64 = r.port_ranges.iter().map(|(lo, hi)| f64::from(hi.saturating_sub(*lo)) + 1.0).sum();
        let total = [r.cpus, r.memory_mib as f64 * MIB, r.disk_mib as f64 * MIB, ports];
        // What runs there, as fenzo's view keeps it per agent (O(1), not a walk over its tasks).
        let used = state.capacity().usage(&a.registration.id).map_or([0.0; 4], |(u, _)| {
            [u.cpu_milli as f64 / 1000.0, u.mem_mib as f64 * MIB, u.disk_mib as f64 * MIB, f64::from(u.ports)]
        });
        let f = out.entry(group.to_string()).or_default();
        let stranded = smallest.is_some_and(|(c, m)| total[0] - used[0] < c || total[1] - used[1] < m as f64 * MIB);
        for i in 0..4 {
            f.total[i] += total[i];
            f.allocated[i] += used[i];
            if stranded {
                f.stranded[i] += (total[i] - used[i]).max(0.0);
            }
        }
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

    fn agent(state: &mut CellState, id: &str, cpus: f64, group: Option<&str>) {
        let registration = AgentRegistration {
            id: id.into(),
            hostname: id.into(),
            addr: "127.0.0.1:1".into(),
            resources: AgentResources { cpus, memory_mib: 1024, disk_mib: 0, port_ranges: vec![(31000, 31099)] },
            attributes: group.map(|g| [("instanceGroup".to_string(), g.to_string())].into()).unwrap_or_default(),
            running: Vec::new(),
        };
        state.apply(&Command::RegisterAgent { registration: Box::new(registration.into()), meta: meta() });
    }

    #[test]
    fn capacity_is_per_instance_group_and_resource_and_stranded_where_the_smallest_pending_task_fits_nowhere() {
        let mut state = CellState::default();
        agent(&mut state, "a1", 2.0, Some("small"));
        agent(&mut state, "a2", 4.0, Some("small"));
        agent(&mut state, "b1", 8.0, None);
        let body =
            br#"{"name":"w","applicationName":"app","location":"dc1:3","cpus":1.5,"memory":256,"image":"busybox"}"#;
        let spec = Arc::new(crate::spec::Spec::from(&JobSpec::parse(body, BodyFormat::Json).expect("spec")));
        state.apply(&Command::PutJob { id: "j".into(), spec, idempotency_key: None, meta: meta() });
        let create = (1..=3).map(|i| NewTask::fresh(format!("t{i}"), "j", None)).collect();
        let place = vec![Placed { task_id: "t1".into(), agent: "a1".into(), lease_epoch: 1, ports: Vec::new() }];
        state.apply(&Command::Round { round: Box::new(Round { create, place, ..Round::default() }), meta: meta() });
        let r = report(&state);
        let small = &r["small"];
        assert_eq!((small.total[0], small.allocated[0]), (6.0, 1.5));
        assert_eq!(small.total[1], 2.0 * 1024.0 * MIB);
        assert_eq!(small.total[3], 200.0, "two ranges of 100 ports");
        // 1.5 cpus wait: a1 has 0.5 free (stranded), a2 has 4 (not).
        assert_eq!(small.stranded[0], 0.5);
        assert_eq!(r["none"].total[0], 8.0);
        assert_eq!(r["none"].stranded[0], 0.0);
    }
}
