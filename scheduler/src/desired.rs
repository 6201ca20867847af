//! What this cell should run of each job: the one step every later rule that changes a job's target goes through
//! (location levers, evacuation moves, quota clamps, in later issues), so the reconciler diffs running tasks
//! against one number and never works out a target itself. Pure: the state in, counts out.

use std::collections::BTreeMap;

use titan_api::view::JobState;

use crate::state::{CellState, JobRecord};

/// The instances `cell` should run of `job`: its count for the cell's location while enabled, none otherwise.
pub fn count(job: &JobRecord, cell: &str) -> u32 {
    match job.state {
        JobState::Enabled => job.counts.get(cell).copied().unwrap_or(0),
        JobState::Disabled | JobState::Killed => 0,
    }
}

/// The instances `cell` should run of every job that asks for any there, by job id.
pub fn desired(state: &CellState, cell: &str) -> BTreeMap<String, u32> {
    state.jobs().map(|j| (j.id.clone(), count(j, cell))).filter(|(_, n)| *n > 0).collect()
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
        assert_eq!(desired(state, cell), expected, "cell {cell}");
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
