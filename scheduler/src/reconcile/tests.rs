//! The reconciler's rules, each decided on a state built by applying commands.

use std::sync::Arc;

use titan_api::agent::{AgentRegistration, AgentResources};
use titan_api::job::{BodyFormat, JobSpec};
use titan_api::task::TaskStatus;

use super::*;
use crate::command::{Command, Meta, Response};
use crate::state::Effects;

const CELL: &str = "dc1";

fn meta(at_ms: u64) -> Meta {
    Meta { who: "test".into(), why: None, at_ms, request: String::new(), cell: String::new() }
}

fn spec(extra: &str) -> Arc<Spec> {
    let location = if extra.contains("location") { "" } else { r#","location":"dc1:3,dc2:5""# };
    let body = format!(
        r#"{{"name":"web","applicationName":"shop"{location},"cpus":1,"memory":256,"image":"busybox"{extra}}}"#
    );
    Arc::new(Spec::from(&JobSpec::parse(body.as_bytes(), BodyFormat::Json).expect("valid spec")))
}

fn register(s: &mut CellState, id: &str, cpus: f64, running: Vec<String>, at: u64) -> u64 {
    register_with_effects(s, id, cpus, running, at).0
}

fn register_with_effects(s: &mut CellState, id: &str, cpus: f64, running: Vec<String>, at: u64) -> (u64, Effects) {
    let registration = AgentRegistration {
        id: id.into(),
        hostname: id.into(),
        addr: "127.0.0.1:1".into(),
        resources: AgentResources { cpus, memory_mib: 4096, disk_mib: 100_000, port_ranges: vec![(31000, 31999)] },
        attributes: Default::default(),
        running,
    };
    match s.apply(&Command::RegisterAgent { registration: Box::new(registration.into()), meta: meta(at) }) {
        (Response::Agent { lease_epoch, .. }, fx) => (lease_epoch, fx),
        (other, _) => panic!("{other:?}"),
    }
}

struct World {
    state: CellState,
    config: SchedulerConfig,
    beats: HashMap<String, crate::lease::Heard>,
    /// Whether rounds check leases (the leader does every tenth of a lease, not in every round).
    check_leases: bool,
    next: u64,
}

impl World {
    fn new(agents: &[(&str, f64)], job: Arc<Spec>) -> World {
        let mut state = CellState::default();
        for (id, cpus) in agents {
            register(&mut state, id, *cpus, vec![], 0);
        }
        state.apply(&Command::PutJob { id: "j1".into(), spec: job, idempotency_key: None, meta: meta(0) });
        let config = SchedulerConfig { lease_ms: 100, lost_grace_ms: 1_000, ..SchedulerConfig::default() };
        let heard = crate::lease::Heard { at_ms: 0, lease_ms: config.lease_ms };
        let beats = agents.iter().map(|(id, _)| (id.to_string(), heard)).collect();
        World { state, config, beats, check_leases: true, next: 0 }
    }

    /// One round at `now`, applied; returns the decision.
    fn round(&mut self, now_ms: u64) -> Decision {
        let seen = Observed {
            now_ms,
            leader_since_ms: 0,
            heartbeats: self.check_leases.then_some(&self.beats),
            lost_last_minute: 0,
            retry_pending: true,
            jobs: None,
            elsewhere: Default::default(),
        };
        let mut next = self.next;
        let d = reconcile(&self.state, CELL, &seen, &self.config, &mut || {
            next += 1;
            format!("t{next:03}")
        });
        self.next = next;
        let (r, _) = self.state.apply(&Command::Round { round: Box::new(d.round.clone()), meta: meta(now_ms) });
        assert!(matches!(&r, Response::Round(o) if o.refused.is_empty()), "{r:?}");
        d
    }

    fn beat(&mut self, now_ms: u64) {
        for v in self.beats.values_mut() {
            v.at_ms = now_ms;
        }
    }

    /// The leader hears from `agent` at `at_ms` and gives it the configured lease.
    fn heard(&mut self, agent: &str, at_ms: u64) {
        self.beats.insert(agent.into(), crate::lease::Heard { at_ms, lease_ms: self.config.lease_ms });
    }

    fn report(&mut self, task: &str, state: TaskState, exit_code: Option<i64>, at: u64) -> Effects {
        let status = TaskStatus {
            task_id: task.into(),
            state,
            reason: exit_code.map(|_| Reason::Exited),
            message: None,
            exit_code,
            health: TaskHealth::Unknown,
            at_ms: at,
        };
        self.apply_status(status)
    }

    /// The task's agent reports `status` under its current epoch.
    fn apply_status(&mut self, status: TaskStatus) -> Effects {
        let agent = self.state.task(&status.task_id).and_then(|t| t.agent.clone()).expect("placed");
        let epoch = self.state.agent(&agent).map(|a| a.lease_epoch).unwrap_or(0);
        let at = status.at_ms;
        let cmd = Command::TaskStatuses { agent, lease_epoch: epoch, statuses: vec![status.into()], meta: meta(at) };
        let (answer, fx) = self.state.apply(&cmd);
        assert_eq!(answer, Response::Statuses { applied: 1, ignored: 0 });
        fx
    }

    fn in_state(&self, state: TaskState) -> Vec<String> {
        self.state.tasks().filter(|t| t.state == state).map(|t| t.id.clone()).collect()
    }
}

#[test]
fn a_snapshot_of_the_state_loads_back_to_it() {
    let mut w = World::new(&[("a1", 4.0), ("a2", 4.0)], spec(""));
    w.round(10);
    assert_eq!(w.state.tasks().count(), 3, "a state with agents, a job and placed tasks");
    let mut bytes = Vec::new();
    crate::snapshot::write(&mut bytes, &w.state.snapshot()).expect("writes");
    let back = CellState::from_snapshot(crate::snapshot::read(&bytes).expect("reads"));
    // Its derived fields are the whole state's, rebuilt the same way (the live state keeps counts that went to
    // zero, which a rebuild leaves out).
    let mut whole = w.state.clone();
    whole.reindex();
    assert_eq!(back, whole, "the derived fields come back from the replicated ones");
}
#[test]
fn a_job_gets_its_count_for_this_cell_placed_and_nothing_more() {
    let mut w = World::new(&[("a1", 2.0), ("a2", 2.0)], spec(""));
    let d = w.round(10);
    assert_eq!((d.round.create.len(), d.round.place.len()), (3, 3), "dc1:3; dc2 is another cell's");
    assert_eq!(w.in_state(TaskState::Assigned).len(), 3);
    let d = w.round(20);
    assert!(d.round.is_empty(), "a second round changes nothing: {:?}", d.round);
    // Placements respect capacity: 4 cpus for 3 one-cpu tasks, at most 2 per agent.
    for a in ["a1", "a2"] {
        assert!(w.state.tasks_on_agent(a).count() <= 2);
    }
}

#[test]
fn what_does_not_fit_stays_accepted_with_a_reason() {
    let mut w = World::new(&[("a1", 2.0)], spec(""));
    let d = w.round(10);
    assert_eq!((d.round.create.len(), d.round.place.len(), d.pending.len()), (3, 2, 1));
    let pending = w.in_state(TaskState::Accepted);
    assert_eq!(pending.len(), 1);
    assert!(d.pending[&pending[0]].contains("cpu"), "{:?}", d.pending);
    assert!(w.round(20).round.create.is_empty(), "the accepted task counts: no second copy");
    register(&mut w.state, "a2", 2.0, vec![], 30);
    w.heard("a2", 30);
    let d = w.round(40);
    assert_eq!(d.round.place.len(), 1, "placed once capacity arrives");
}

#[test]
fn scale_down_stops_the_surplus_unplaced_first_and_disable_stops_all() {
    let mut w = World::new(&[("a1", 2.0)], spec(""));
    w.round(10);
    let unplaced = w.in_state(TaskState::Accepted);
    let set = |n: u32, at| Command::SetInstances {
        id: "j1".into(),
        instances: BTreeMap::from([(CELL.to_string(), n)]),
        if_version: None,
        meta: meta(at),
    };
    w.state.apply(&set(2, 20));
    let d = w.round(30);
    assert_eq!(d.round.stop, vec![(unplaced[0].clone(), Reason::ScaledDown)]);
    assert_eq!(w.state.task(&unplaced[0]).map(|t| t.state), Some(TaskState::Killed), "never placed: killed");
    w.state.apply(&Command::SetEnabled { id: "j1".into(), enabled: false, meta: meta(40) });
    let d = w.round(50);
    assert_eq!(d.round.stop.len(), 2);
    assert_eq!(w.in_state(TaskState::Killing).len(), 2, "placed tasks are killed by their agent");
    assert!(w.round(60).round.is_empty(), "killing tasks are not stopped twice");
}

/// The agent rejects a task (as Docker does when a host port is held by a process outside Titan).
fn reject(w: &mut World, task: &str, at: u64) {
    w.apply_status(TaskStatus {
        task_id: task.into(),
        state: TaskState::Rejected,
        reason: Some(Reason::LaunchError),
        message: Some("Bind for 127.0.0.1:31000 failed: port is already allocated".into()),
        exit_code: None,
        health: TaskHealth::Unknown,
        at_ms: at,
    });
}

#[test]
fn a_replacement_goes_to_another_agent_than_where_its_predecessors_failed_while_one_fits() {
    let mut w = World::new(&[("a1", 2.0), ("a2", 2.0), ("a3", 2.0)], spec(r#","location":"dc1:1""#));
    w.round(10);
    let first = w.in_state(TaskState::Assigned)[0].clone();
    let first_agent = w.state.task(&first).and_then(|t| t.agent.clone()).expect("placed");
    reject(&mut w, &first, 20);
    let mut at = 20 + w.config.backoff_ms(0);
    w.beat(at);
    let d = w.round(at);
    let second = &d.round.create[0].id;
    let second_agent = d.round.place.iter().find(|p| &p.task_id == second).map(|p| p.agent.clone());
    assert!(second_agent.is_some() && second_agent.as_ref() != Some(&first_agent), "{second_agent:?}");
    assert_eq!(d.retries_placed, RetriesPlaced { elsewhere: 1, where_failed: 0 });
    // Failing on the second agent too: the third goes to the one left.
    reject(&mut w, &second.clone(), at + 10);
    at += 10 + w.config.backoff_ms(1);
    w.beat(at);
    let d = w.round(at);
    let third = &d.round.create[0].id;
    let third_agent = d.round.place.iter().find(|p| &p.task_id == third).map(|p| p.agent.clone());
    let failed = [Some(first_agent.clone()), second_agent.clone()];
    assert!(third_agent.is_some() && !failed.contains(&third_agent), "{third_agent:?} after {failed:?}");
}

#[test]
fn a_replacement_still_goes_where_its_predecessor_failed_when_nothing_else_fits() {
    let mut w = World::new(&[("a1", 2.0)], spec(r#","location":"dc1:1""#));
    w.round(10);
    let first = w.in_state(TaskState::Assigned)[0].clone();
    reject(&mut w, &first, 20);
    let at = 20 + w.config.backoff_ms(0);
    w.beat(at);
    let d = w.round(at);
    assert_eq!(d.round.place.len(), 1, "a preference, not a rule: {:?}", d.pending);
    assert_eq!(d.round.place[0].agent, "a1");
    assert_eq!(d.retries_placed, RetriesPlaced { elsewhere: 0, where_failed: 1 });
}

#[test]
fn failures_are_retried_with_backoff_until_retries_run_out() {
    let mut w = World::new(&[("a1", 8.0)], spec(r#","location":"dc1:1","numRetries":1"#));
    w.round(10);
    let first = w.in_state(TaskState::Assigned)[0].clone();
    w.report(&first, TaskState::Running, None, 20);
    w.report(&first, TaskState::Failed, Some(3), 30);
    let backoff = w.config.backoff_ms(0);
    assert!(w.round(31).round.create.is_empty(), "waits for the backoff");
    let d = w.round(30 + backoff);
    assert_eq!(d.round.create.len(), 1);
    let second = &d.round.create[0];
    assert_eq!((second.attempt, second.replaces.as_deref(), second.retries_used), (1, Some(first.as_str()), 1));
    w.report(&second.id.clone(), TaskState::Failed, Some(3), 40 + backoff);
    let d = w.round(1_000_000);
    assert!(d.round.create.is_empty(), "numRetries 1 is spent: {:?}", d.round.create);
}

#[test]
fn a_silent_agent_goes_unreachable_then_lost_and_its_tasks_are_replaced() {
    let mut w = World::new(&[("a1", 2.0), ("a2", 2.0), ("a3", 2.0), ("a4", 2.0)], spec(""));
    w.round(10);
    let on_a1: Vec<String> = w.state.tasks_on_agent("a1").map(|t| t.id.clone()).collect();
    assert!(!on_a1.is_empty());
    // Everyone but a1 keeps beating.
    let beat_others = |w: &mut World, now| {
        for a in ["a2", "a3", "a4"] {
            w.heard(a, now);
        }
    };
    beat_others(&mut w, 150);
    let d = w.round(150);
    assert_eq!(d.round.unreachable, vec!["a1".to_string()]);
    assert!(on_a1.iter().all(|t| w.state.task(t).map(|t| t.state) == Some(TaskState::Unreachable)));
    beat_others(&mut w, 1_200);
    let d = w.round(1_200);
    assert_eq!(d.lost_agents, vec!["a1".to_string()]);
    assert!(on_a1.iter().all(|t| w.state.task(t).map(|t| t.state) == Some(TaskState::Lost)));
    beat_others(&mut w, 1_300);
    let d = w.round(1_300);
    assert_eq!(d.round.create.len(), on_a1.len(), "replaced: a system failure, so right away");
    assert!(d.round.create.iter().all(|n| n.retries_used == 0 && n.replaces.is_some()));
    assert!(d.round.place.iter().all(|p| p.agent != "a1"), "not on the unreachable agent");
}

#[test]
fn a_lease_grown_with_the_fleet_holds_its_agent_and_its_tasks_longer() {
    let fleet: Vec<(String, f64)> = (1..=7).map(|i| (format!("a{i}"), 2.0)).collect();
    let fleet: Vec<(&str, f64)> = fleet.iter().map(|(a, c)| (a.as_str(), *c)).collect();
    let mut w = World::new(&fleet, spec(""));
    // Seven agents beating three times a lease at most 35 times a second: a lease of 600 ms, not 100.
    w.config.max_heartbeats_per_second = 35;
    assert_eq!(crate::lease::lease_ms(&w.config, 7), 600);
    w.round(10);
    let on_a1: Vec<String> = w.state.tasks_on_agent("a1").map(|t| t.id.clone()).collect();
    assert!(!on_a1.is_empty());
    // a1 was told 600 ms at 0; a7 was never heard by this leader (judged from its start, with the fleet's lease).
    w.beats.insert("a1".into(), crate::lease::Heard { at_ms: 0, lease_ms: 600 });
    w.beats.remove("a7");
    let beat = |w: &mut World, now| {
        for a in ["a2", "a3", "a4", "a5", "a6"] {
            w.heard(a, now);
        }
    };
    beat(&mut w, 600);
    let d = w.round(600);
    assert!(d.round.unreachable.is_empty(), "within the grown lease: {d:?}");
    beat(&mut w, 601);
    let d = w.round(601);
    assert_eq!(d.round.unreachable, vec!["a1".to_string(), "a7".to_string()]);
    // Lost after that lease and the loss grace, not the configured lease's.
    beat(&mut w, 1_600);
    assert!(w.round(1_600).lost_agents.is_empty());
    beat(&mut w, 1_601);
    assert_eq!(w.round(1_601).lost_agents, vec!["a1".to_string()], "a7 runs nothing to lose");
    assert!(on_a1.iter().all(|t| w.state.task(t).map(|t| t.state) == Some(TaskState::Lost)));
}

#[test]
fn a_round_that_does_not_check_leases_changes_no_agent_and_the_next_check_catches_up() {
    let mut w = World::new(&[("a1", 2.0), ("a2", 2.0), ("a3", 2.0), ("a4", 2.0)], spec(""));
    w.round(10);
    let on_a1: Vec<String> = w.state.tasks_on_agent("a1").map(|t| t.id.clone()).collect();
    for a in ["a2", "a3", "a4"] {
        w.heard(a, 5_000);
    }
    w.check_leases = false;
    let d = w.round(5_000);
    assert!(d.round.unreachable.is_empty() && d.lost_agents.is_empty() && !d.breaker_open, "{d:?}");
    assert!(on_a1.iter().all(|t| w.state.task(t).map(|t| t.state) == Some(TaskState::Running)
        || w.state.task(t).map(|t| t.state) == Some(TaskState::Assigned)));
    w.check_leases = true;
    let d = w.round(5_001);
    assert_eq!(d.round.unreachable, vec!["a1".to_string()]);
    assert_eq!(d.lost_agents, vec!["a1".to_string()], "silent past lease and grace: lost at the first check");
}

#[test]
fn a_job_that_stops_on_disconnect_is_replaced_only_after_its_agent_stopped_it() {
    let stopping = spec(r#","location":"dc1:1","disconnect":{"stopAfterSeconds":5}"#);
    let mut w = World::new(&[("a1", 2.0)], stopping.clone());
    let plain = spec(r#","location":"dc1:1""#);
    w.state.apply(&Command::PutJob { id: "j2".into(), spec: plain, idempotency_key: None, meta: meta(0) });
    w.round(10);
    let task_of = |w: &World, job: &str| {
        w.state.tasks().find(|t| t.job_id == job && t.replaces.is_none()).map(|t| t.id.clone()).expect("created")
    };
    let (waits, plain_task) = (task_of(&w, "j1"), task_of(&w, "j2"));
    assert_eq!(w.state.task(&waits).and_then(|t| t.agent.clone()).as_deref(), Some("a1"));
    assert_eq!(w.state.task(&plain_task).and_then(|t| t.agent.clone()).as_deref(), Some("a1"));
    // Others join, where the replacements can go (three, so one silent agent is not a partition).
    for a in ["a2", "a3", "a4"] {
        register(&mut w.state, a, 2.0, vec![], 20);
    }
    let beat_others = |w: &mut World, now| {
        for a in ["a2", "a3", "a4"] {
            w.heard(a, now);
        }
    };
    // a1 last heard at 0. The plain job's task goes after lease + loss grace, and its replacement may run
    // beside it while a1 stays unreachable.
    let state = |w: &World, id: &str| w.state.task(id).map(|t| t.state);
    let plain_after = w.config.lease_ms + w.config.lost_grace_ms;
    beat_others(&mut w, plain_after + 1);
    w.round(plain_after + 1);
    assert_eq!(state(&w, &plain_task), Some(TaskState::Lost));
    assert_eq!(state(&w, &waits), Some(TaskState::Unreachable), "its agent has not stopped it yet");
    beat_others(&mut w, plain_after + 2);
    w.round(plain_after + 2);
    let replacement = w.state.task(&plain_task).and_then(|t| t.replaced_by.clone()).expect("replaced");
    let replacement = w.state.task(&replacement).expect("exists");
    assert_eq!(may_run_beside(&w.state, replacement), Some(plain_task.clone()));
    // The job that asked waits for lease + stop-after + kill grace + margin: not a millisecond less.
    let deadline = w.config.lease_ms + 5_000 + crate::config::KILL_GRACE_MS + w.config.disconnect_margin_ms;
    assert_eq!(w.config.lose_after_ms(Some(&stopping), w.config.lease_ms), deadline);
    beat_others(&mut w, deadline);
    let d = w.round(deadline);
    assert!(d.round.lose.is_empty() && d.round.create.is_empty(), "{:?}", d.round);
    assert_eq!(state(&w, &waits), Some(TaskState::Unreachable));
    beat_others(&mut w, deadline + 1);
    let d = w.round(deadline + 1);
    assert_eq!(d.round.lose, vec![(waits.clone(), Reason::AgentLost)]);
    beat_others(&mut w, deadline + 2);
    let d = w.round(deadline + 2);
    assert_eq!(d.round.create.len(), 1, "replaced once the original is surely stopped");
    let replacement = w.state.task(&d.round.create[0].id).expect("exists");
    assert_eq!(may_run_beside(&w.state, replacement), None, "its original was stopped by its agent");
    // The grace never falls below the loss grace.
    w.config.lost_grace_ms = 60_000;
    assert_eq!(w.config.lose_after_ms(Some(&stopping), w.config.lease_ms), 60_100);
}

#[test]
fn a_task_its_agent_stopped_on_disconnect_is_replaced_at_once() {
    let mut w = World::new(&[("a1", 2.0)], spec(r#","location":"dc1:1","disconnect":{"stopAfterSeconds":5}"#));
    w.round(10);
    let first = w.in_state(TaskState::Assigned)[0].clone();
    w.apply_status(TaskStatus {
        task_id: first.clone(),
        state: TaskState::Killed,
        reason: Some(Reason::Disconnected),
        message: None,
        exit_code: None,
        health: TaskHealth::Unknown,
        at_ms: 20,
    });
    assert_eq!(w.state.task(&first).and_then(|t| t.reason), Some(Reason::Disconnected));
    w.beat(21);
    let d = w.round(21);
    assert_eq!(d.round.create.len(), 1, "a system failure: no backoff, no retry spent");
    assert_eq!(d.round.create[0].retries_used, 0);
}

#[test]
fn the_breaker_declares_nothing_lost_when_many_agents_go_silent_at_once() {
    let mut w = World::new(&[("a1", 2.0), ("a2", 2.0), ("a3", 2.0)], spec(""));
    w.round(10);
    w.heard("a3", 5_000);
    let d = w.round(5_000);
    assert!(d.breaker_open);
    assert!(d.round.lose.is_empty() && d.lost_agents.is_empty());
    assert_eq!(w.in_state(TaskState::Lost).len(), 0);
    // They come back: their tasks carry on.
    w.beat(5_050);
    let d = w.round(5_050);
    assert_eq!(d.round.reachable.len(), 2);
    assert_eq!(w.in_state(TaskState::Unreachable).len(), 0);
}

#[test]
fn the_loss_rate_limit_caps_agents_lost_per_minute() {
    let mut w = World::new(&[("a1", 1.0), ("a2", 1.0), ("a3", 1.0), ("a4", 1.0)], spec(""));
    w.config.breaker_fraction = 1.0;
    w.config.max_lost_agents_per_minute = 1;
    w.round(10);
    w.heard("a4", 2_000);
    let d = w.round(2_000);
    assert_eq!(d.lost_agents.len(), 1, "three overdue, one allowed");
}

#[test]
fn a_restarted_agent_keeps_what_it_still_runs_and_loses_the_rest() {
    let mut w = World::new(&[("a1", 4.0)], spec(""));
    w.round(10);
    let tasks = w.in_state(TaskState::Assigned);
    w.report(&tasks[0], TaskState::Running, None, 20);
    w.report(&tasks[1], TaskState::Running, None, 20);
    let epoch = register(&mut w.state, "a1", 4.0, vec![tasks[0].clone()], 30);
    assert_eq!(epoch, 2);
    let state = |id: &str| w.state.task(id).map(|t| (t.state, t.lease_epoch, t.reason));
    assert_eq!(state(&tasks[0]), Some((TaskState::Running, 2, None)), "re-adopted");
    assert_eq!(state(&tasks[1]), Some((TaskState::Lost, 1, Some(Reason::AgentRestarted))));
    assert_eq!(state(&tasks[2]), Some((TaskState::Assigned, 2, None)), "not started yet: still to start");
}

#[test]
fn a_plan_for_an_old_epoch_or_a_full_agent_is_refused_at_apply() {
    let mut w = World::new(&[("a1", 1.0)], spec(r#","location":"dc1:2""#));
    let seen = Observed {
        now_ms: 10,
        leader_since_ms: 0,
        heartbeats: Some(&w.beats),
        lost_last_minute: 0,
        retry_pending: true,
        jobs: None,
        elsewhere: Default::default(),
    };
    let mut n = 0;
    let d = reconcile(&w.state, CELL, &seen, &w.config, &mut || {
        n += 1;
        format!("x{n}")
    });
    assert_eq!(d.round.place.len(), 1, "one cpu: one task");
    // The agent re-registers between the plan and its commit.
    register(&mut w.state, "a1", 1.0, vec![], 11);
    let mut stale = d.round.clone();
    stale.place.push(Placed { task_id: "x2".into(), agent: "a1".into(), lease_epoch: 2, ports: vec![] });
    match w.state.apply(&Command::Round { round: Box::new(stale), meta: meta(12) }).0 {
        Response::Round(o) => {
            assert_eq!(o.placed, 1, "the second, fresh-epoch placement of x2 fits");
            assert_eq!(o.refused.len(), 1);
            assert!(o.refused[0].1.contains("epoch"), "{:?}", o.refused);
        }
        other => panic!("{other:?}"),
    }
    // Capacity holds: nothing more fits.
    let over = Round {
        place: vec![Placed { task_id: "x1".into(), agent: "a1".into(), lease_epoch: 2, ports: vec![] }],
        ..Round::default()
    };
    match w.state.apply(&Command::Round { round: Box::new(over), meta: meta(13) }).0 {
        Response::Round(o) => assert_eq!((o.placed, o.refused.len()), (0, 1)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unhealthy_service_task_is_replaced_once_spending_a_retry() {
    let mut w = World::new(&[("a1", 8.0)], spec(r#","location":"dc1:2","numRetries":3"#));
    w.round(10);
    let tasks = w.in_state(TaskState::Assigned);
    w.report(&tasks[0], TaskState::Running, None, 20);
    w.report(&tasks[1], TaskState::Running, None, 20);
    let t = w.state.task(&tasks[0]).expect("task").clone();
    let sick = TaskStatus {
        task_id: t.id.clone(),
        state: TaskState::Running,
        reason: None,
        message: None,
        exit_code: None,
        health: TaskHealth::Unhealthy,
        at_ms: 30,
    };
    let cmd = Command::TaskStatuses { agent: "a1".into(), lease_epoch: 1, statuses: vec![sick.into()], meta: meta(30) };
    w.state.apply(&cmd);
    let d = w.round(40);
    assert_eq!(d.round.stop, vec![(t.id.clone(), Reason::Unhealthy)]);
    assert!(d.round.create.is_empty(), "no second task while the first is replaced: {:?}", d.round.create);
    let d = w.round(40 + w.config.backoff_ms(0));
    assert_eq!(d.round.create.len(), 1);
    assert_eq!((d.round.create[0].replaces.as_deref(), d.round.create[0].retries_used), (Some(t.id.as_str()), 1));
    assert!(w.round(1_000_000).round.create.is_empty());
}

#[test]
fn a_scaled_down_task_lost_with_its_agent_is_not_replaced() {
    let mut w = World::new(&[("a1", 1.0), ("a2", 1.0)], spec(r#","location":"dc1:2""#));
    w.round(10);
    let scale = Command::SetInstances {
        id: "j1".into(),
        instances: BTreeMap::from([(CELL.to_string(), 1)]),
        if_version: None,
        meta: meta(20),
    };
    w.state.apply(&scale);
    // Whichever task scale-down picks, its agent dies before it has stopped it.
    let d = w.round(30);
    let victim = d.round.stop[0].0.clone();
    let agent = w.state.task(&victim).and_then(|t| t.agent.clone()).expect("placed");
    let other = if agent == "a1" { "a2" } else { "a1" };
    w.heard(other, 2_000);
    w.round(2_000);
    assert_eq!(w.state.task(&victim).map(|t| (t.state, t.reason)), Some((TaskState::Lost, Some(Reason::ScaledDown))));
    w.heard(other, 2_100);
    let d = w.round(2_100);
    assert!(d.round.create.is_empty() && d.round.stop.is_empty(), "{:?}", d.round);
    assert_eq!(w.state.job_tasks("j1").map(|s| s.live.len()), Some(1));
}

#[test]
fn a_replacement_with_a_persistent_volume_goes_back_to_its_agent() {
    let volume = r#","location":"dc1:1","volumes":[{"name":"data","path":"/data","sizeGib":1,"persistent":true}]"#;
    let mut w = World::new(&[("a1", 4.0), ("a2", 4.0), ("a3", 4.0)], spec(volume));
    w.round(10);
    let first = w.in_state(TaskState::Assigned)[0].clone();
    let home = w.state.task(&first).and_then(|t| t.agent.clone()).expect("placed");
    w.report(&first, TaskState::Running, None, 20);
    for attempt in 0..4 {
        let current = w.state.tasks().find(|t| !t.is_terminal()).map(|t| t.id.clone()).expect("a live task");
        w.state.apply(&Command::KillTask { id: current.clone(), meta: meta(30 + attempt) });
        let d = w.round(40 + attempt);
        assert_eq!(d.round.place.len(), 1, "{d:?}");
        assert_eq!(d.round.place[0].agent, home, "attempt {attempt} stays with its volume");
        w.report(&current, TaskState::Killed, None, 50 + attempt);
    }
}

#[test]
fn a_scheduled_job_runs_on_each_tick_and_skips_or_replaces_an_overlapping_run() {
    let batch = |overlap: &str| spec(&format!(r#","location":"dc1:2","type":"batch","schedule":"* * * * *"{overlap}"#));
    let mut w = World::new(&[("a1", 8.0)], batch(""));
    w.beat(1_000_000);
    assert!(w.round(30_000).round.create.is_empty(), "nothing before the first tick");
    let d = w.round(60_000);
    assert_eq!(d.round.ticks.len(), 1);
    assert_eq!(d.round.create.len(), 2);
    assert!(d.round.create.iter().all(|n| n.run == Some(60_000)));
    let run1 = w.in_state(TaskState::Assigned);
    for t in &run1 {
        w.report(t, TaskState::Running, None, 61_000);
    }
    assert!(w.round(90_000).round.is_empty(), "a running run is left alone");
    let d = w.round(120_000);
    assert_eq!((d.round.ticks[0].start, d.round.create.len()), (false, 0), "skip: the previous run still goes");
    for t in &run1 {
        w.report(t, TaskState::Finished, Some(0), 130_000);
    }
    assert!(w.round(150_000).round.create.is_empty(), "done tasks of the run are not restarted");
    let d = w.round(185_000);
    assert_eq!(d.round.create.len(), 2, "the next tick starts a new run");
    assert!(d.round.create.iter().all(|n| n.run == Some(180_000)));

    let mut w = World::new(&[("a1", 8.0)], batch(r#","overlap":"replace""#));
    w.beat(1_000_000);
    w.round(60_000);
    let run1 = w.in_state(TaskState::Assigned);
    let d = w.round(125_000);
    let stopped: Vec<&String> = d.round.stop.iter().map(|(id, _)| id).collect();
    assert_eq!(stopped.len(), 2, "replace: the old run is stopped");
    assert!(run1.iter().all(|t| stopped.contains(&t)));
    assert!(d.round.create.iter().all(|n| n.run == Some(120_000)) && d.round.create.len() == 2);
    // Missed ticks collapse into the latest.
    let d = w.round(600_000);
    assert_eq!(d.round.ticks.iter().map(|t| t.at_ms).collect::<Vec<_>>(), vec![600_000]);
}

#[test]
fn ended_tasks_are_forgotten_after_their_retention_unless_they_still_count() {
    let mut w = World::new(&[("a1", 8.0)], spec(r#","location":"dc1:2","type":"batch","numRetries":0"#));
    w.beat(100_000_000);
    w.config.task_retention_ms = 1_000;
    w.round(10);
    let tasks = w.in_state(TaskState::Assigned);
    w.report(&tasks[0], TaskState::Finished, Some(0), 20);
    w.report(&tasks[1], TaskState::Failed, Some(1), 20);
    // A user kills... nothing; both ended and count (done, retries spent): kept past the retention.
    let d = w.round(5_000);
    assert!(d.round.forget.is_empty() && d.round.create.is_empty(), "{:?}", d.round);
    assert_eq!(w.state.tasks().count(), 2);
    // Once the job is killed, nothing needs them.
    w.state.apply(&Command::KillJob { id: "j1".into(), meta: meta(6_000) });
    let d = w.round(7_000);
    assert_eq!(d.round.forget.len(), 2);
    assert_eq!(w.state.tasks().count(), 0);
    assert_eq!(w.state.task_count(TaskState::Finished), 0);
    assert!(w.state.job_tasks("j1").is_some_and(|s| s.open.is_empty()));
    // And they do not come back after a snapshot.
    let mut back = w.state.clone();
    back.reindex();
    assert_eq!(back.tasks().count(), 0);
}

#[test]
fn a_spec_update_rolls_a_service_over_within_its_budget() {
    let budget = r#","location":"dc1:4","disruptionBudget":{"maxUnavailable":1}"#;
    let mut w = World::new(&[("a1", 8.0)], spec(budget));
    w.beat(1_000_000);
    w.round(10);
    for t in w.in_state(TaskState::Assigned) {
        w.report(&t, TaskState::Running, None, 20);
    }
    let old: BTreeSet<String> = w.in_state(TaskState::Running).into_iter().collect();
    let update = Command::UpdateJob {
        id: "j1".into(),
        spec: spec(&format!(r#"{budget},"env":{{"V":"2"}}"#)),
        if_version: None,
        meta: meta(30),
    };
    w.state.apply(&update);
    let mut now = 40;
    for _ in 0..20 {
        let d = w.round(now);
        let stops: Vec<&(String, Reason)> = d.round.stop.iter().collect();
        assert!(stops.len() <= 1, "one unavailable at a time: {stops:?}");
        assert!(stops.iter().all(|(_, r)| *r == Reason::Superseded));
        now += 10;
        // Agents do what they are told: stopped tasks end, new ones run.
        for t in w.in_state(TaskState::Killing) {
            w.report(&t, TaskState::Killed, None, now);
        }
        for t in w.in_state(TaskState::Assigned) {
            w.report(&t, TaskState::Running, None, now);
        }
        now += 10;
    }
    let running: BTreeSet<String> = w.in_state(TaskState::Running).into_iter().collect();
    assert_eq!(running.len(), 4);
    assert!(running.is_disjoint(&old), "every task rolled over");
    let version = w.state.job("j1").map(|j| j.spec_version).unwrap_or(0);
    assert!(w.state.tasks().filter(|t| t.state == TaskState::Running).all(|t| t.job_version == version));
    assert!(w.round(now).round.is_empty(), "and then it rests");
}

#[test]
fn pending_tasks_are_tried_again_only_when_capacity_may_have_changed() {
    let mut w = World::new(&[("a1", 2.0)], spec(""));
    w.beat(1_000_000);
    let d = w.round(10);
    assert_eq!(d.pending.len(), 1, "three one-cpu tasks, two cpus");
    let seen = Observed {
        now_ms: 20,
        leader_since_ms: 0,
        heartbeats: Some(&w.beats),
        lost_last_minute: 0,
        retry_pending: false,
        jobs: None,
        elsewhere: Default::default(),
    };
    let d = reconcile(&w.state, CELL, &seen, &w.config, &mut || "x".into());
    assert!(d.round.place.is_empty() && d.pending.is_empty() && d.placement.is_none(), "nothing tried");
    // Capacity frees up: applying says so, which is what makes the leader try again.
    let running = w.in_state(TaskState::Assigned)[0].clone();
    assert!(w.report(&running, TaskState::Finished, Some(0), 30).capacity_moved);
    let (_, fx) = register_with_effects(&mut w.state, "a2", 1.0, vec![], 40);
    assert!(fx.capacity_moved, "a new agent moves it too");
}

fn set_quota(w: &mut World, group: &str, limits: crate::quota::Limits, at: u64) {
    let cmd = Command::PutQuota {
        group: group.into(),
        locations: BTreeMap::from([(CELL.to_string(), limits)]),
        if_version: None,
        meta: meta(at),
    };
    assert!(matches!(w.state.apply(&cmd).0, Response::Quota { .. }));
}

#[test]
fn tasks_over_this_locations_quota_wait_with_reason_quota_and_start_when_room_appears() {
    // The job was admitted (in another cell, say) before the quota here was lowered to 2 instances.
    let mut w = World::new(&[("a1", 8.0)], spec(""));
    set_quota(&mut w, "shop", crate::quota::Limits { instances: Some(2), ..Default::default() }, 5);
    let d = w.round(10);
    assert_eq!((d.round.create.len(), d.round.place.len()), (3, 2));
    let waiting = w.in_state(TaskState::Accepted);
    assert_eq!(waiting.len(), 1);
    assert!(d.pending[&waiting[0]].starts_with("quota: capacity group shop"), "{:?}", d.pending);
    // Lowered again: nothing placed is stopped.
    set_quota(&mut w, "shop", crate::quota::Limits { instances: Some(1), ..Default::default() }, 15);
    let d = w.round(20);
    assert!(d.round.stop.is_empty() && d.round.place.is_empty(), "{:?}", d.round);
    // Raised: the waiting task starts.
    set_quota(&mut w, "shop", crate::quota::Limits { instances: Some(3), ..Default::default() }, 25);
    assert_eq!(w.round(30).round.place.len(), 1);
    assert!(w.in_state(TaskState::Accepted).is_empty());
}

#[test]
fn under_contention_a_group_within_its_guarantee_is_placed_first() {
    let job = |group: &str| spec(&format!(r#","capacityGroup":"{group}","location":"dc1:4""#));
    let mut w = World::new(&[("a1", 4.0)], job("batch"));
    w.state.apply(&Command::PutJob { id: "j2".into(), spec: job("web"), idempotency_key: None, meta: meta(1) });
    set_quota(&mut w, "web", crate::quota::Limits { guaranteed_cpus: Some(3.0), ..Default::default() }, 2);
    let d = w.round(10);
    assert_eq!(d.round.place.len(), 4, "4 cpus for 8 one-cpu tasks");
    let placed_of =
        |job: &str| d.round.place.iter().filter(|p| w.state.task(&p.task_id).is_some_and(|t| t.job_id == job)).count();
    assert_eq!((placed_of("j2"), placed_of("j1")), (3, 1), "web gets its guarantee of 3 cpus, batch the rest");
}

#[test]
fn an_agent_is_woken_for_what_the_cell_changes_not_for_what_it_reported() {
    let mut w = World::new(&[("a1", 8.0)], spec(r#","location":"dc1:1""#));
    w.round(10);
    let task = w.in_state(TaskState::Assigned).remove(0);
    let version = |w: &World| w.state.agent("a1").map(|a| a.version).expect("a1");
    let placed = version(&w);
    // Its own reports (starting, running, a health change) change nothing it is assigned: no wake-up.
    w.report(&task, TaskState::Starting, None, 20);
    w.report(&task, TaskState::Running, None, 21);
    let sick = TaskStatus {
        task_id: task.clone(),
        state: TaskState::Running,
        reason: None,
        message: None,
        exit_code: None,
        health: TaskHealth::Unhealthy,
        at_ms: 22,
    };
    let fx = w.apply_status(sick);
    assert_eq!(version(&w), placed, "no version rise for the agent's own reports");
    assert!(fx.touched.is_empty(), "no waiter woken: {:?}", fx.touched);
    assert_eq!(w.in_state(TaskState::Running), vec![task.clone()]);
    // A kill asked of the cell is a change it must see.
    w.state.apply(&Command::KillTask { id: task.clone(), meta: meta(30) });
    assert!(version(&w) > placed, "a kill wakes the agent");
}
