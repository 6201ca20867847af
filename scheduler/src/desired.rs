//! What this cell should run of each job: the one step every rule that changes a job's target goes through
//! (location levers and evacuation moves today), so the reconciler diffs running tasks against one number and
//! never works out a target itself. Pure: the state and the other locations' figures in, counts out.

use std::collections::BTreeMap;

use titan_api::view::JobState;

use crate::location::{self, Elsewhere};
use crate::state::{CellState, JobRecord};

/// The instances `cell` should run of `job`: while enabled, its count for the cell's location, less the moved
/// instances already running elsewhere while this location is evacuated (make-before-break), plus the instances
/// an evacuation of another location moved here; none while disabled or killed.
pub fn count(state: &CellState, job: &JobRecord, cell: &str, seen: &dyn Elsewhere) -> u32 {
    if job.state != JobState::Enabled {
        return 0;
    }
    let own = job.counts.get(cell).copied().unwrap_or(0);
    let mut n = match state.location(cell) {
        Some(home) => location::home_count(home, &job.id, &job.counts, seen),
        None => own,
    };
    for other in state.locations().filter(|l| l.name != cell && l.plan().is_some()) {
        n += location::extra(other, &job.id, &job.counts, cell, seen);
    }
    n
}

/// The other locations' figures as heard, and this cell's own from its state.
pub struct Here<'a> {
    pub state: &'a CellState,
    pub cell: &'a str,
    pub seen: &'a dyn Elsewhere,
}

impl Elsewhere for Here<'_> {
    fn running(&self, location: &str, job: &str) -> Option<u32> {
        if location == self.cell {
            return Some(self.state.figures(job).0);
        }
        self.seen.running(location, job)
    }

    fn is_down(&self, location: &str) -> bool {
        location != self.cell && self.seen.is_down(location)
    }
}

/// The instances `cell` should run of every job that asks for any there, by job id.
pub fn desired(state: &CellState, cell: &str, seen: &dyn Elsewhere) -> BTreeMap<String, u32> {
    state.jobs().map(|j| (j.id.clone(), count(state, j, cell, seen))).filter(|(_, n)| *n > 0).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use titan_api::job::{BodyFormat, JobSpec};

    use super::*;
    use crate::command::{Command, Meta};
    use crate::spec::Spec;

    fn meta() -> Meta {
        Meta { who: "alice".into(), why: None, at_ms: 1, request: String::new(), cell: String::new() }
    }

    fn put(state: &mut CellState, id: &str, location: &str) {
        let body = format!(
            r#"{{"name":"{id}","applicationName":"app","location":"{location}","cpus":1,"memory":64,"image":"busybox"}}"#
        );
        let spec = JobSpec::parse(body.as_bytes(), BodyFormat::Json).expect("valid spec");
        let cmd =
            Command::PutJob { id: id.into(), spec: Arc::new(Spec::from(&spec)), idempotency_key: None, meta: meta() };
        state.apply(&cmd);
    }

    fn check(state: &CellState, cell: &str, expected: &[(&str, u32)]) {
        let expected: BTreeMap<String, u32> = expected.iter().map(|(j, n)| (j.to_string(), *n)).collect();
        assert_eq!(desired(state, cell, &crate::location::Nowhere), expected, "cell {cell}");
    }

    #[test]
    fn each_cell_runs_its_own_locations_count_of_enabled_jobs() {
        let mut state = CellState::default();
        put(&mut state, "web", "dc1:20,dc2:40,dc5:60");
        put(&mut state, "api", "dc2:3");
        put(&mut state, "off", "dc1:1");
        state.apply(&Command::SetEnabled { id: "off".into(), enabled: false, meta: meta() });
        check(&state, "dc1", &[("web", 20)]);
        check(&state, "dc2", &[("web", 40), ("api", 3)]);
        check(&state, "dc9", &[]);
        state.apply(&Command::SetInstances {
            id: "web".into(),
            instances: BTreeMap::from([("dc1".into(), 5)]),
            if_version: None,
            meta: meta(),
        });
        check(&state, "dc1", &[("web", 5)]);
        check(&state, "dc2", &[("web", 40), ("api", 3)]);
        state.apply(&Command::SetInstances {
            id: "web".into(),
            instances: BTreeMap::from([("dc2".into(), 0)]),
            if_version: None,
            meta: meta(),
        });
        check(&state, "dc2", &[("api", 3)]);
        state.apply(&Command::KillJob { id: "api".into(), meta: meta() });
        check(&state, "dc2", &[]);
    }
}
