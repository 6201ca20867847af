//! The state's rules, command by command.

use super::*;
use titan_api::job::{BodyFormat, JobSpec};

use crate::command::Meta;

fn spec(name: &str, app: &str) -> Arc<Spec> {
    let body = format!(
        r#"{{"name":"{name}","applicationName":"{app}","location":"dc1:2,dc2:1","cpus":1,"memory":512,"image":"busybox"}}"#
    );
    Arc::new(Spec::from(&JobSpec::parse(body.as_bytes(), BodyFormat::Json).expect("valid spec")))
}

fn meta(at_ms: u64) -> Meta {
    Meta { who: "alice".into(), why: Some("test".into()), at_ms, request: String::new(), cell: String::new() }
}

fn put(id: &str, key: Option<&str>, at: u64) -> Command {
    Command::PutJob { id: id.into(), spec: spec("web", "shop"), idempotency_key: key.map(String::from), meta: meta(at) }
}

fn job(id: &str, version: u64) -> Response {
    Response::Job(JobRef { id: id.into(), version, unseen_locations: Vec::new() })
}

#[test]
fn a_task_runs_as_the_spec_it_was_made_from_until_it_ends() {
    let mut state = CellState::default();
    state.apply(&put("j1", None, 1));
    let create = |ids: &[&str]| Command::Round {
        round: Box::new(Round {
            create: ids.iter().map(|id| NewTask::fresh(id.to_string(), "j1", None)).collect(),
            ..Round::default()
        }),
        meta: meta(2),
    };
    state.apply(&create(&["t1"]));
    let mut v2 = (*spec("web", "shop")).clone();
    v2.image = "busybox:2".into();
    state.apply(&Command::UpdateJob { id: "j1".into(), spec: Arc::new(v2), if_version: None, meta: meta(3) });
    state.apply(&create(&["t2"]));
    let job = state.job("j1").expect("job");
    let image = |task: &str| state.task(task).map(|t| job.spec_for(t.spec_version).image.clone());
    assert_eq!(image("t1").as_deref(), Some("busybox"), "made from version 1, not started: still version 1");
    assert_eq!(image("t2").as_deref(), Some("busybox:2"));
    assert_eq!(job.older_specs.keys().collect::<Vec<_>>(), [&1]);
    // Once no task of version 1 is left, its spec is not kept.
    let stop = Round { stop: vec![("t1".into(), Reason::ScaledDown)], ..Round::default() };
    state.apply(&Command::Round { round: Box::new(stop), meta: meta(4) });
    assert!(state.job("j1").is_some_and(|j| j.older_specs.is_empty()));
    // t2 (spec version 2) keeps version 2 through the next update; with t2 gone, an update keeps nothing.
    let update =
        |at| Command::UpdateJob { id: "j1".into(), spec: spec("web", "shop"), if_version: None, meta: meta(at) };
    state.apply(&update(5));
    assert_eq!(state.job("j1").map(|j| j.older_specs.keys().copied().collect::<Vec<_>>()), Some(vec![2]));
    let stop = Round { stop: vec![("t2".into(), Reason::ScaledDown)], ..Round::default() };
    state.apply(&Command::Round { round: Box::new(stop), meta: meta(6) });
    state.apply(&update(7));
    assert!(state.job("j1").is_some_and(|j| j.older_specs.is_empty()));
}

#[test]
fn accepted_tasks_come_oldest_first_and_the_oldest_is_known_without_a_scan() {
    let mut state = CellState::default();
    state.apply(&put("j1", None, 1));
    let round = |ids: &[&str]| {
        Box::new(Round {
            create: ids.iter().map(|id| NewTask::fresh(id.to_string(), "j1", None)).collect(),
            ..Round::default()
        })
    };
    // Ids sort the other way round from their ages.
    state.apply(&Command::Round { round: round(&["t-z"]), meta: meta(100) });
    state.apply(&Command::Round { round: round(&["t-m", "t-a"]), meta: meta(200) });
    let order: Vec<&str> = state.accepted_tasks().map(|t| t.id.as_str()).collect();
    assert_eq!(order, ["t-z", "t-a", "t-m"], "oldest first, ties by id");
    assert_eq!(state.oldest_accepted_ms(), Some(100));
    state.apply(&Command::Round {
        round: Box::new(Round { stop: vec![("t-z".into(), Reason::ScaledDown)], ..Round::default() }),
        meta: meta(300),
    });
    assert_eq!(state.oldest_accepted_ms(), Some(200), "a stopped task is no longer pending");
    state.reindex();
    assert_eq!(state.accepted_tasks().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["t-a", "t-m"]);
}

#[test]
fn jobs_are_created_changed_and_killed_with_history() {
    let mut s = CellState::default();
    assert_eq!(s.apply(&put("j1", None, 1)).0, job("j1", 1));
    assert_eq!(s.apply(&put("j1", None, 1)).0, job("j1", 1), "a re-proposed create changes nothing");
    let scale = |v| Command::SetInstances {
        id: "j1".into(),
        instances: BTreeMap::from([("dc1".to_string(), 5)]),
        if_version: v,
        meta: meta(2),
    };
    assert_eq!(s.apply(&scale(Some(1))).0, job("j1", 2));
    assert_eq!(
        s.apply(&scale(Some(1))).0,
        Response::Rejected(Rejection::VersionMismatch { id: "j1".into(), expected: 1, current: 2 })
    );
    let instances = BTreeMap::from([("dc1".to_string(), 5), ("dc2".to_string(), 1)]);
    assert_eq!(s.job("j1").map(|j| j.view().instances), Some(instances), "only the named location changes");
    let form = s.job("j1").map(|j| (j.spec.location.clone(), j.spec.locations.clone()));
    assert_eq!(form, Some((Some("dc1:5,dc2:1".to_string()), None)), "the shorthand the job was written with stays");
    let off = Command::SetEnabled { id: "j1".into(), enabled: false, meta: meta(3) };
    assert_eq!(s.apply(&off).0, job("j1", 3));
    assert_eq!(s.apply(&Command::KillJob { id: "j1".into(), meta: meta(4) }).0, job("j1", 4));
    assert_eq!(s.apply(&off).0, Response::Rejected(Rejection::Killed { id: "j1".into() }));
    let what: Vec<&str> = s.job("j1").map(|j| j.history.iter().map(|h| h.what.as_str()).collect()).unwrap_or_default();
    assert_eq!(what, vec!["created", "instances dc1=5", "disabled", "killed"]);
    assert_eq!((s.count(JobState::Enabled), s.count(JobState::Disabled), s.count(JobState::Killed)), (0, 0, 1));
    let mut rebuilt = s.clone();
    rebuilt.by_state.clear();
    rebuilt.reindex();
    assert_eq!(rebuilt.count(JobState::Killed), 1, "counts are rebuilt from the jobs");
    assert_eq!(
        s.apply(&Command::KillJob { id: "nope".into(), meta: meta(5) }).0,
        Response::Rejected(Rejection::NotFound { id: "nope".into() })
    );
}

#[test]
fn idempotency_keys_return_the_first_answer_until_they_expire() {
    let mut s = CellState::default();
    assert_eq!(s.apply(&put("j1", Some("k"), 10)).0, job("j1", 1));
    assert_eq!(s.apply(&put("j2", Some("k"), 20)).0, job("j1", 1), "a retry gets the first job");
    assert_eq!(s.job_count(), 1);
    let other = Command::PutJob {
        id: "j3".into(),
        spec: spec("api", "shop"),
        idempotency_key: Some("k".into()),
        meta: meta(30),
    };
    assert_eq!(s.apply(&other).0, Response::Rejected(Rejection::IdempotencyKeyReused { key: "k".into() }));
    assert_eq!(
        s.apply(&put("j4", Some("k"), 10 + IDEMPOTENCY_TTL_MS + 1)).0,
        job("j4", 1),
        "expired keys are forgotten"
    );
}

#[test]
fn a_batch_applies_in_order_and_answers_each_command() {
    let mut s = CellState::default();
    let batch = Command::Batch(vec![
        put("j1", None, 1),
        Command::KillJob { id: "j1".into(), meta: meta(2) },
        Command::KillJob { id: "j1".into(), meta: meta(3) },
    ]);
    assert_eq!(
        s.apply(&batch).0,
        Response::Batch(vec![job("j1", 1), job("j1", 2), Response::Rejected(Rejection::Killed { id: "j1".into() })])
    );
}

#[test]
fn every_event_of_a_batch_has_its_own_id_and_a_snapshot_goes_on_counting() {
    let mut s = CellState::default();
    let round = Box::new(Round {
        create: ["t1", "t2", "t3"].iter().map(|id| NewTask::fresh(id.to_string(), "j1", None)).collect(),
        ..Round::default()
    });
    let (_, fx) = s.apply(&Command::Batch(vec![put("j1", None, 1), Command::Round { round, meta: meta(2) }]));
    let ids: Vec<u64> = fx.events.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, vec![1, 2, 3, 4], "one entry, four events, four ids");
    let mut copy = Vec::new();
    crate::snapshot::write(&mut copy, &s.snapshot()).expect("serializes");
    let mut back = CellState::from_snapshot(crate::snapshot::read(&copy).expect("deserializes"));
    assert_eq!(back.events_made(), 4);
    let (_, fx) = back.apply(&Command::KillJob { id: "j1".into(), meta: meta(3) });
    assert_eq!(fx.events.first().map(|e| e.event_id), Some(5), "the count is replicated");
}

#[test]
fn agents_register_and_every_registration_raises_the_epoch() {
    let mut s = CellState::default();
    let reg = titan_api::agent::AgentRegistration {
        id: "a1".into(),
        hostname: "h".into(),
        addr: "127.0.0.1:1".into(),
        resources: titan_api::agent::AgentResources { cpus: 1.0, memory_mib: 1, disk_mib: 0, port_ranges: vec![] },
        attributes: Default::default(),
        running: vec![],
    };
    let cmd = Command::RegisterAgent { registration: Box::new(reg.into()), meta: meta(5) };
    assert_eq!(s.apply(&cmd).0, Response::Agent { id: "a1".into(), lease_epoch: 1 });
    assert_eq!(s.apply(&cmd).0, Response::Agent { id: "a1".into(), lease_epoch: 2 });
    assert_eq!(s.agent("a1").map(|a| (a.state, a.registered_at_ms)), Some((AgentState::Active, 5)));
}

#[test]
fn a_re_proposed_request_is_answered_not_applied_again() {
    let mut s = CellState::default();
    s.apply(&put("j1", None, 1));
    let kill = |request: &str, at| Command::SetEnabled {
        id: "j1".into(),
        enabled: false,
        meta: Meta { request: request.into(), ..meta(at) },
    };
    assert_eq!(s.apply(&kill("r1", 10)).0, job("j1", 2));
    assert_eq!(s.apply(&kill("r1", 10)).0, job("j1", 2), "the same request again: the first answer");
    assert_eq!(s.job("j1").map(|j| j.history.len()), Some(2), "applied once");
    assert_eq!(s.apply(&kill("r2", 20)).0, job("j1", 3), "a new request is applied");
    // Remembered ids expire, so the memory they take is bounded by the rate of writes.
    s.apply(&kill("r3", 20 + REQUEST_TTL_MS + 1));
    assert!(!s.applied.contains_key("r1"));
}

#[test]
fn state_survives_a_snapshot_round_trip() {
    let mut s = CellState::default();
    s.apply(&put("j1", Some("key-1"), 1));
    s.apply(&Command::KillJob { id: "j1".into(), meta: Meta { request: "r1".into(), ..meta(2) } });
    let mut bytes = Vec::new();
    crate::snapshot::write(&mut bytes, &s.snapshot()).expect("a snapshot serializes");
    let mut back = CellState::from_snapshot(crate::snapshot::read(&bytes).expect("and deserializes"));
    assert_eq!(back, s, "derived indexes are rebuilt");
    // Expiry still works on the restored state.
    let later = Meta { request: "r9".into(), ..meta(10 + IDEMPOTENCY_TTL_MS) };
    back.apply(&Command::PutJob { id: "j2".into(), spec: spec("api", "shop"), idempotency_key: None, meta: later });
    assert!(back.idempotency.is_empty(), "the idempotency key expired");
    assert_eq!(back.applied.keys().collect::<Vec<_>>(), vec!["r9"], "r1 expired");
}

#[test]
fn listing_filters_and_pages() {
    let mut s = CellState::default();
    for (i, app) in ["a", "b", "a", "a"].iter().enumerate() {
        let c = Command::PutJob { id: format!("j{i}"), spec: spec("web", app), idempotency_key: None, meta: meta(1) };
        s.apply(&c);
    }
    s.apply(&Command::KillJob { id: "j2".into(), meta: meta(2) });
    let q = ListQuery { application: Some("a".into()), limit: Some(1), ..ListQuery::default() };
    let (page, next) = s.list(&q);
    assert_eq!((page[0].id.as_str(), next.as_deref()), ("j0", Some("j0")));
    let (page, next) = s.list(&ListQuery { page_token: next, ..q.clone() });
    assert_eq!((page[0].id.as_str(), next.as_deref()), ("j3", None), "killed j2 is left out");
    let killed = ListQuery { state: Some("killed".into()), ..ListQuery::default() };
    assert_eq!(s.list(&killed).0.len(), 1);
}

#[test]
fn a_killed_job_is_forgotten_once_its_tombstone_retention_passed_and_its_tasks_are_gone() {
    const WEEK: u64 = 7 * 24 * 3_600_000;
    let mut state = CellState::default();
    state.apply(&put("j1", None, 1_000));
    let create = Round { create: vec![NewTask::fresh("t1".into(), "j1", None)], ..Round::default() };
    state.apply(&Command::Round { round: Box::new(create), meta: meta(1_001) });
    state.apply(&Command::KillJob { id: "j1".into(), meta: meta(2_000) });
    assert!(state.forgettable_jobs(2_000 + WEEK - 1, WEEK, 10).is_empty(), "within retention");
    assert!(state.forgettable_jobs(2_001 + WEEK, WEEK, 10).is_empty(), "its task is still there");
    let forget = |at| Command::Round {
        round: Box::new(Round { forget_jobs: vec!["j1".into()], ..Round::default() }),
        meta: meta(at),
    };
    // A plan that says so anyway is re-checked as it applies.
    state.apply(&forget(2_001 + WEEK));
    assert!(state.job("j1").is_some());
    let stop = Round { stop: vec![("t1".into(), Reason::KilledByUser)], forget: vec!["t1".into()], ..Round::default() };
    state.apply(&Command::Round { round: Box::new(stop), meta: meta(2_002 + WEEK) });
    assert_eq!(state.forgettable_jobs(2_003 + WEEK, WEEK, 10), ["j1"]);
    assert!(state.forgettable_jobs(2_003 + WEEK, 0, 10).is_empty(), "0 keeps tombstones for ever");
    let (_, fx) = state.apply(&forget(2_003 + WEEK));
    assert!(state.job("j1").is_none());
    assert!(fx.events.iter().any(|e| e.kind == "forgotten" && e.id == "j1"));
    assert_eq!(state.outbox_waiting(0), 0, "nothing left to send of it");
    // The same tombstone pushed back by a cell that kept it is not taken in again.
    let mut tomb = CellState::default();
    tomb.apply(&put("j1", None, 1_000));
    tomb.apply(&Command::KillJob { id: "j1".into(), meta: meta(2_000) });
    let incoming = tomb.job("j1").expect("job").replicated();
    let merge = Command::Merge {
        from: "dc2".into(),
        upto: 1,
        jobs: vec![incoming],
        max_skew_ms: 60_000,
        tombstone_ms: WEEK,
        meta: meta(2_004 + WEEK),
        quotas: Vec::new(),
        locations: Vec::new(),
        tokens: Vec::new(),
    };
    state.apply(&merge);
    assert!(state.job("j1").is_none());
}

#[test]
fn an_earlier_kill_from_another_cell_moves_the_tombstone_and_it_is_forgotten_once() {
    const WEEK: u64 = 7 * 24 * 3_600_000;
    let killed_at = |at: u64, cell: &str| {
        let mut s = CellState::default();
        s.apply(&put("j1", None, 1_000));
        s.apply(&Command::KillJob { id: "j1".into(), meta: Meta { cell: cell.into(), ..meta(at) } });
        s
    };
    let mut here = killed_at(3_000, "dc1");
    let earlier = killed_at(2_000, "dc2").job("j1").expect("job").replicated();
    let merge = Command::Merge {
        from: "dc2".into(),
        upto: 1,
        jobs: vec![earlier.clone()],
        max_skew_ms: 60_000,
        tombstone_ms: WEEK,
        meta: meta(4_000),
        quotas: Vec::new(),
        locations: Vec::new(),
        tokens: Vec::new(),
    };
    let (answer, _) = here.apply(&merge);
    assert!(matches!(answer, Response::Merged(ref o) if o.changed == 1), "{answer:?}");
    assert_eq!(here.job("j1").and_then(|j| j.versions.killed.clone()), earlier.versions.killed);
    // Retention counts from the earlier kill, and the later one left nothing behind to forget again.
    assert_eq!(here.forgettable_jobs(2_001 + WEEK, WEEK, 10), ["j1"]);
    let forget = Round { forget_jobs: vec!["j1".into()], ..Round::default() };
    here.apply(&Command::Round { round: Box::new(forget), meta: meta(2_001 + WEEK) });
    assert!(here.job("j1").is_none());
    assert!(here.forgettable_jobs(10 * WEEK, WEEK, 10).is_empty());
}

fn lever(location: &str, lever: crate::location::Lever, at: u64, cell: &str) -> Command {
    Command::Lever { location: location.into(), lever, meta: Meta { cell: cell.into(), ..meta(at) } }
}

#[test]
fn a_frozen_location_refuses_every_write_that_raises_a_count_there_and_takes_the_rest() {
    use crate::location::{Lever, LeverState};
    let mut state = CellState::default();
    state.apply(&put("j1", None, 1));
    let (answer, fx) = state.apply(&lever("dc1", Lever::Freeze, 2, "dc1"));
    assert_eq!(answer, Response::Location { name: "dc1".into(), state: LeverState::Frozen, version: 1 });
    assert!(fx.dirty_jobs.contains("j1"), "the jobs asking for dc1 are looked at again");
    let frozen = Response::Rejected(Rejection::LocationFrozen { location: "dc1".into(), state: LeverState::Frozen });
    let scale = |n: u32, l: &str, at: u64| Command::SetInstances {
        id: "j1".into(),
        instances: BTreeMap::from([(l.to_string(), n)]),
        if_version: None,
        meta: meta(at),
    };
    assert_eq!(state.apply(&scale(3, "dc1", 3)).0, frozen);
    assert_eq!(state.apply(&put("j9", None, 3)).0, frozen, "a new job asking for dc1");
    assert!(matches!(state.apply(&scale(1, "dc1", 4)).0, Response::Job(_)), "down is taken");
    assert!(matches!(state.apply(&scale(5, "dc2", 5)).0, Response::Job(_)), "other locations are not frozen");
    state.apply(&Command::SetEnabled { id: "j1".into(), enabled: false, meta: meta(6) });
    assert_eq!(state.apply(&Command::SetEnabled { id: "j1".into(), enabled: true, meta: meta(7) }).0, frozen);
    // Illegal levers are refused at apply, naming the state, and change nothing.
    let before = state.location("dc1").cloned();
    let (answer, _) = state.apply(&lever("dc1", Lever::Restore, 8, "dc1"));
    assert!(matches!(answer, Response::Rejected(Rejection::LeverIllegal(ref e)) if e.state == LeverState::Frozen));
    assert_eq!(state.location("dc1").cloned(), before);
    state.apply(&lever("dc1", Lever::Unfreeze, 9, "dc1"));
    assert!(matches!(state.apply(&scale(3, "dc1", 10)).0, Response::Job(_)), "active again");
    let l = state.location("dc1").expect("record");
    assert_eq!((l.version, l.history.len(), l.history[0].why.as_deref()), (2, 2, Some("test")));
}

#[test]
fn location_records_merge_last_writer_wins_and_reach_the_outbox_and_the_digest() {
    use crate::location::{Lever, LeverState};
    let mut dc1 = CellState::default();
    dc1.apply(&lever("dc1", Lever::Freeze, 10, "dc1"));
    let mut dc2 = CellState::default();
    dc2.apply(&lever("dc1", Lever::Weight(40), 20, "dc2"));
    let theirs = dc2.location("dc1").cloned().expect("dc2's record");
    let ours = dc1.location("dc1").cloned().expect("dc1's record");
    let merge = |from: &str, l: crate::location::LocationRecord| Command::Merge {
        from: from.into(),
        upto: 1,
        jobs: Vec::new(),
        max_skew_ms: 60_000,
        tombstone_ms: 0,
        meta: meta(30),
        quotas: Vec::new(),
        locations: vec![l],
        tokens: Vec::new(),
    };
    dc1.apply(&merge("dc2", theirs.clone()));
    dc2.apply(&merge("dc1", ours));
    assert_eq!(dc1.location("dc1"), dc2.location("dc1"), "both hold the later write");
    let held = dc1.location("dc1").expect("record");
    assert_eq!((held.state, held.weight), (LeverState::Active, 40));
    assert!(dc1.outbox_after(0, 10).any(|(_, o)| matches!(o, Outgoing::Location(l) if l.name == "dc1")));
    assert_eq!(dc1.digest(30, 0), dc2.digest(30, 0));
}

#[test]
fn an_autoscaled_groups_demand_history_is_replicated_and_its_decisions_are_events() {
    let mut state = CellState::default();
    let record = |samples: Vec<(u64, u32)>, decision: Option<crate::command::FleetDecision>| Command::Fleet {
        group: "g".into(),
        samples,
        decision,
        meta: meta(5),
        error: None,
    };
    state.apply(&record(vec![(10, 4), (12, 6)], None));
    let decision = crate::command::FleetDecision {
        desired: 3,
        direction: "up".into(),
        reason: "6 slots wanted".into(),
        actions: vec!["launched 1".into()],
    };
    let (_, fx) = state.apply(&record(vec![(13, 2)], Some(decision)));
    let h = state.fleet_history("g").expect("history");
    assert_eq!(h.samples().collect::<Vec<_>>(), vec![(10, 4), (11, 4), (12, 6), (13, 2)]);
    assert_eq!(fx.events.len(), 1);
    assert_eq!(fx.events[0].kind, "scaled up to 3: launched 1");
    assert_eq!(fx.events[0].reason.as_deref(), Some("6 slots wanted"));
    let copy = CellState::from_snapshot(state.snapshot());
    assert_eq!(copy.fleet_history("g"), state.fleet_history("g"), "in the snapshot");
    let failed = Command::Fleet {
        group: "g".into(),
        samples: Vec::new(),
        decision: None,
        meta: meta(6),
        error: Some("throttled: Rate exceeded".into()),
    };
    let (_, fx) = state.apply(&failed);
    assert_eq!(
        (fx.events[0].kind.as_str(), fx.events[0].reason.as_deref()),
        ("fleet call failed", Some("throttled: Rate exceeded"))
    );
}

#[test]
fn the_last_admin_token_that_works_is_not_revoked() {
    use crate::token::TokenRecord;
    use titan_api::acl::Role;
    let mut state = CellState::default();
    let token = |name: &str, role| TokenRecord {
        name: name.into(),
        hash: crate::token::hash_hex(name),
        role,
        applications: Vec::new(),
        agent: None,
        created_at_ms: 0,
        created_by: String::new(),
        expires_at_ms: None,
        revoked_at_ms: None,
        hlc: Default::default(),
    };
    state.apply(&Command::PutToken { record: token("root", Role::Admin), meta: meta(1) });
    state.apply(&Command::PutToken { record: token("ci", Role::Reader), meta: meta(2) });
    let revoke = |name: &str, at| Command::RevokeToken { name: name.into(), meta: meta(at) };
    assert!(matches!(state.apply(&revoke("root", 3)).0, Response::Rejected(Rejection::LastAdminToken { .. })));
    assert!(state.token("root").is_some_and(|t| t.revoked_at_ms.is_none()));
    state.apply(&Command::PutToken { record: token("second", Role::Admin), meta: meta(4) });
    assert!(matches!(state.apply(&revoke("root", 5)).0, Response::Token { .. }));
    assert!(matches!(state.apply(&revoke("ci", 6)).0, Response::Token { .. }));
    assert_eq!(state.token_by_hash(&titan_api::acl::hash("second")).map(|t| t.name.as_str()), Some("second"));
}
