//! The supervisor's decisions, pure: what to do with an assignments answer given the tasks this agent holds
//! (`plan`), whether a new task fits beside them (`fit`), what its volumes are called, and what an exit means.
//! No IO, no clock: the shell in `supervisor` carries out the actions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use titan_api::agent::AgentResources;
use titan_api::task::{Assignment, Assignments, Desired, Reason, TaskHealth, TaskState};

use crate::health::Health;

/// Where a task this agent holds is in its life, as far as planning cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Found by its labels after the agent restarted, not yet claimed by an answer.
    Found,
    /// Being started, or running, as the cell asked.
    Active,
    /// Being stopped.
    Stopping,
    /// Ended here (exited, stopped or rejected). Kept until the cell stops listing it, so an answer that still
    /// says Run (the cell has not yet taken the terminal status) never starts it twice: a restart is the cell's
    /// decision, made with a new task id.
    Ended,
}

/// One local task as `plan` sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Local {
    pub phase: Phase,
    /// Between SIGTERM and SIGKILL when it is stopped.
    pub kill_grace: Duration,
    /// Its job's `disconnect.stopAfterSeconds`: stop it once the lease has gone this long without a renewal.
    pub stop_after: Option<Duration>,
}

/// Why a task is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopWhy {
    /// The cell's assignment says Stop.
    Requested,
    /// The cell does not list it: it does not know it, and nothing may run that the cell does not know about.
    Unlisted,
    /// Its job asked to stop it once the agent had not renewed its lease for a while, and that time has passed.
    Disconnected,
}

/// What the shell does next.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// The answer is for another lease epoch than the one held: act on none of it. `register_again` when the
    /// answer's epoch is newer than the agent's (the agent missed a registration of its own).
    Refuse { held: Option<u64>, offered: u64, register_again: bool },
    /// A task found after a restart that the cell still wants: watch it again, do not restart it.
    Adopt(Assignment),
    /// Stop it, remove it, report Killed. The assignment, when the cell listed one, names its volumes.
    Stop { task_id: String, grace: Duration, why: StopWhy, assignment: Option<Assignment> },
    /// The cell asks to stop a task this agent does not have: report it Killed so the cell can close it.
    ReportGone { task_id: String },
    /// An ended task the cell no longer lists: its record can go.
    Forget { task_id: String },
    /// A new task: check that it fits, then launch it.
    Start(Assignment),
}

/// Decides what to do with `answer`. Stops and forgets come before adoptions and starts, so a start is checked
/// against what is left.
pub fn plan(
    held: Option<u64>,
    answer: &Assignments,
    local: &BTreeMap<String, Local>,
    default_grace: Duration,
) -> Vec<Action> {
    if held != Some(answer.lease_epoch) {
        let register_again = held.is_none_or(|h| answer.lease_epoch > h);
        return vec![Action::Refuse { held, offered: answer.lease_epoch, register_again }];
    }
    let mut listed = BTreeSet::new();
    let (mut stops, mut adopts, mut starts) = (Vec::new(), Vec::new(), Vec::new());
    for a in &answer.tasks {
        if !listed.insert(a.task_id.as_str()) {
            // Listed twice: the first wins, and nothing starts twice.
            continue;
        }
        let grace = Duration::from_millis(a.kill_grace_ms);
        match (a.desired, local.get(&a.task_id).map(|l| l.phase)) {
            (Desired::Run, None) => starts.push(Action::Start(a.clone())),
            (Desired::Run, Some(Phase::Found)) => adopts.push(Action::Adopt(a.clone())),
            (Desired::Run, Some(_)) => {}
            (Desired::Stop, None) => stops.push(Action::ReportGone { task_id: a.task_id.clone() }),
            (Desired::Stop, Some(Phase::Found | Phase::Active)) => stops.push(Action::Stop {
                task_id: a.task_id.clone(),
                grace,
                why: StopWhy::Requested,
                assignment: Some(a.clone()),
            }),
            (Desired::Stop, Some(Phase::Stopping | Phase::Ended)) => {}
        }
    }
    let mut out = Vec::new();
    for (id, l) in local {
        if listed.contains(id.as_str()) {
            continue;
        }
        match l.phase {
            Phase::Found => out.push(Action::Stop {
                task_id: id.clone(),
                grace: default_grace,
                why: StopWhy::Unlisted,
                assignment: None,
            }),
            Phase::Active => out.push(Action::Stop {
                task_id: id.clone(),
                grace: l.kill_grace,
                why: StopWhy::Unlisted,
                assignment: None,
            }),
            Phase::Stopping => {}
            Phase::Ended => out.push(Action::Forget { task_id: id.clone() }),
        }
    }
    out.extend(stops);
    out.extend(adopts);
    out.extend(starts);
    out
}

/// The tasks to stop because the lease has gone `since_renewal` without a renewal: the running ones, and those
/// found after a restart (their container keeps the stop-after), whose job asked to stop after less than that.
/// Ones already stopping or ended need nothing.
pub fn disconnected(local: &BTreeMap<String, Local>, since_renewal: Duration) -> Vec<Action> {
    local
        .iter()
        .filter(|(_, l)| matches!(l.phase, Phase::Active | Phase::Found))
        .filter(|(_, l)| l.stop_after.is_some_and(|after| since_renewal > after))
        .map(|(id, l)| Action::Stop {
            task_id: id.clone(),
            grace: l.kill_grace,
            why: StopWhy::Disconnected,
            assignment: None,
        })
        .collect()
}

/// How often to renew the lease: a third of it, or a third of the shortest `stopAfterSeconds` of the tasks that
/// run, when that is sooner. The cell's lease grows with its fleet (30 s at 10,000 agents); a task that stops on a
/// disconnect after 5 s must not be stopped between two beats of a healthy agent.
pub fn beat_every(local: impl IntoIterator<Item = Local>, lease_third: Duration) -> Duration {
    local
        .into_iter()
        .filter(|l| matches!(l.phase, Phase::Active | Phase::Found))
        .filter_map(|l| l.stop_after)
        .map(|after| after / 3)
        .fold(lease_third, Duration::min)
}

/// What a local task holds of the agent's capacity.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Held {
    pub cpus: f64,
    pub memory_mib: u64,
    pub disk_mib: u64,
    pub ports: Vec<u16>,
}

impl Held {
    pub fn of(a: &Assignment) -> Held {
        Held { cpus: a.cpus, memory_mib: a.memory_mib, disk_mib: a.disk_mib, ports: a.ports.clone() }
    }
}

/// Why a task cannot run here; reported as Rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub message: String,
}

impl Rejection {
    fn short(message: String) -> Rejection {
        Rejection { reason: Reason::InsufficientResources, message }
    }
}

/// What the agent can do besides its capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Abilities {
    /// A volume driver (ZFS pool or directory root) is configured.
    pub volumes: bool,
    /// The runtime mounts volumes into tasks.
    pub mounts: bool,
}

/// Whether `a` fits beside the tasks holding `held` on an agent of `capacity`: cpus, memory and disk within
/// what is left, its ports inside the agent's ranges, used by no other local task and not repeated, and a place
/// for its volumes.
pub fn fit(a: &Assignment, capacity: &AgentResources, held: &[Held], can: Abilities) -> Result<(), Rejection> {
    const EPSILON: f64 = 1e-9;
    let cpus: f64 = held.iter().map(|h| h.cpus).sum();
    if cpus + a.cpus > capacity.cpus + EPSILON {
        return Err(Rejection::short(format!(
            "needs {} cpus; {} of {} are held by other tasks",
            a.cpus, cpus, capacity.cpus
        )));
    }
    let memory: u64 = held.iter().map(|h| h.memory_mib).sum();
    if memory + a.memory_mib > capacity.memory_mib {
        return Err(Rejection::short(format!(
            "needs {} MiB of memory; {memory} of {} are held by other tasks",
            a.memory_mib, capacity.memory_mib
        )));
    }
    let disk: u64 = held.iter().map(|h| h.disk_mib).sum();
    if a.disk_mib > 0 && disk + a.disk_mib > capacity.disk_mib {
        return Err(Rejection::short(format!(
            "needs {} MiB of disk; {disk} of {} are held by other tasks",
            a.disk_mib, capacity.disk_mib
        )));
    }
    let mut seen = BTreeSet::new();
    for &port in &a.ports {
        if !capacity.port_ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&port)) {
            return Err(Rejection::short(format!("port {port} is outside this agent's ranges")));
        }
        if !seen.insert(port) {
            return Err(Rejection::short(format!("port {port} is listed twice")));
        }
        if held.iter().any(|h| h.ports.contains(&port)) {
            return Err(Rejection::short(format!("port {port} is in use by another task")));
        }
    }
    if !a.volumes.is_empty() && !can.volumes {
        return Err(Rejection::short("volumes asked for, and this agent has no volume pool".into()));
    }
    if !a.volumes.is_empty() && !can.mounts {
        return Err(Rejection::short("volumes asked for, and this agent's runtime cannot mount them".into()));
    }
    Ok(())
}

/// Longest volume name a driver takes (see `volume::check_name`).
const MAX_VOLUME_NAME: usize = 64;

/// The node-local name of a volume: `<owner>-<volume>` in the drivers' alphabet, where the owner is the task (a
/// volume that ends with it) or the job (a persistent one, which the job's next tasks find again). Deterministic,
/// so a restarted agent finds the volumes of the tasks it adopts. Too long a name keeps its start and ends with a
/// hash of the whole.
pub fn volume_name(owner: &str, volume: &str) -> String {
    let whole = format!("{owner}-{volume}");
    let mut name: String = whole
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c) { c } else { '-' })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        name.insert(0, 'v');
    }
    if name.len() > MAX_VOLUME_NAME || name != whole {
        // Two owners that differ only in what was replaced or cut must not share a volume.
        let hash =
            whole.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        name.truncate(MAX_VOLUME_NAME - 17);
        name = format!("{name}-{hash:016x}");
    }
    name
}

/// `from` names a snapshot to seed a volume from: `VOLUME@SNAPSHOT`, volume being a node-local volume name.
pub fn parse_from(from: &str) -> Option<(&str, &str)> {
    from.split_once('@').filter(|(v, s)| !v.is_empty() && !s.is_empty())
}

/// What an exit means: status 0 finished, anything else failed, and an OOM kill says so.
pub fn exited(code: i64, oom_killed: bool) -> (TaskState, Reason) {
    match (code, oom_killed) {
        (_, true) => (TaskState::Failed, Reason::OomKilled),
        (0, false) => (TaskState::Finished, Reason::Exited),
        _ => (TaskState::Failed, Reason::Exited),
    }
}

/// The health tracker's verdict on the wire.
pub fn task_health(h: Health) -> TaskHealth {
    match h {
        Health::Starting => TaskHealth::Unknown,
        Health::Healthy => TaskHealth::Healthy,
        Health::Unhealthy => TaskHealth::Unhealthy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    fn task(id: &str, desired: Desired) -> Assignment {
        Assignment {
            task_id: id.into(),
            job_id: "job".into(),
            desired,
            image: "img".into(),
            command: None,
            env: BTreeMap::new(),
            cpus: 1.0,
            memory_mib: 256,
            disk_mib: 0,
            ports: vec![],
            volumes: vec![],
            health_check: None,
            kill_grace_ms: 2_000,
            stop_after_ms: None,
        }
    }

    fn answer(epoch: u64, tasks: Vec<Assignment>) -> Assignments {
        Assignments { lease_epoch: epoch, version: 1, tasks }
    }

    fn local(entries: &[(&str, Phase)]) -> BTreeMap<String, Local> {
        entries
            .iter()
            .map(|(id, phase)| (id.to_string(), Local { phase: *phase, kill_grace: GRACE, stop_after: None }))
            .collect()
    }

    #[test]
    fn a_disconnect_stops_the_running_tasks_whose_job_asked_once_their_time_has_passed() {
        let after = |secs| Some(Duration::from_secs(secs));
        let local: BTreeMap<String, Local> = [
            ("soon", Phase::Active, after(5)),
            ("late", Phase::Active, after(60)),
            ("rides-out", Phase::Active, None),
            ("found", Phase::Found, None),
            ("found-asked", Phase::Found, after(5)),
            ("stopping", Phase::Stopping, after(5)),
            ("ended", Phase::Ended, after(5)),
        ]
        .into_iter()
        .map(|(id, phase, stop_after)| (id.to_string(), Local { phase, kill_grace: GRACE, stop_after }))
        .collect();
        let stopped = |since| -> Vec<String> {
            disconnected(&local, Duration::from_secs(since))
                .into_iter()
                .map(|a| match a {
                    Action::Stop { task_id, why: StopWhy::Disconnected, grace, assignment: None } => {
                        assert_eq!(grace, GRACE, "the normal stop: SIGTERM, then SIGKILL after the grace");
                        task_id
                    }
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        assert!(stopped(5).is_empty(), "exactly the stop-after is not past it");
        assert_eq!(stopped(6), vec!["found-asked".to_string(), "soon".to_string()]);
        assert_eq!(stopped(3600), vec!["found-asked".to_string(), "late".to_string(), "soon".to_string()]);
    }

    #[test]
    fn the_lease_is_renewed_often_enough_for_the_shortest_stop_after_that_runs() {
        let third = Duration::from_secs(10);
        let task =
            |phase, secs: Option<u64>| Local { phase, kill_grace: GRACE, stop_after: secs.map(Duration::from_secs) };
        assert_eq!(beat_every([], third), third, "nothing running: a third of the lease");
        let plain = [task(Phase::Active, None), task(Phase::Active, Some(60))];
        assert_eq!(beat_every(plain, third), third, "a stop-after longer than three beats changes nothing");
        let short = [task(Phase::Active, Some(60)), task(Phase::Found, Some(6))];
        assert_eq!(beat_every(short, third), Duration::from_secs(2), "a third of the shortest stop-after");
        let ended = [task(Phase::Stopping, Some(6)), task(Phase::Ended, Some(3))];
        assert_eq!(beat_every(ended, third), third, "tasks already stopping do not count");
    }

    /// Plans `answer` for an agent holding epoch 7 and `held` tasks; compares the actions' short forms.
    fn check(answer: Assignments, held: &[(&str, Phase)], expected: &[&str]) {
        let actions = plan(Some(7), &answer, &local(held), GRACE);
        let short: Vec<String> = actions
            .iter()
            .map(|a| match a {
                Action::Refuse { offered, register_again, .. } => format!("refuse {offered} {register_again}"),
                Action::Adopt(a) => format!("adopt {}", a.task_id),
                Action::Stop { task_id, why, grace, .. } => format!("stop {task_id} {why:?} {}", grace.as_millis()),
                Action::ReportGone { task_id } => format!("gone {task_id}"),
                Action::Forget { task_id } => format!("forget {task_id}"),
                Action::Start(a) => format!("start {}", a.task_id),
            })
            .collect();
        assert_eq!(short, expected);
    }

    #[test]
    fn another_epoch_refuses_the_whole_plan() {
        let tasks = vec![task("t1", Desired::Run)];
        check(answer(6, tasks.clone()), &[("t9", Phase::Active)], &["refuse 6 false"]);
        check(answer(8, tasks.clone()), &[], &["refuse 8 true"]);
        assert_eq!(
            plan(None, &answer(1, tasks), &BTreeMap::new(), GRACE),
            vec![Action::Refuse { held: None, offered: 1, register_again: true }]
        );
    }

    #[test]
    fn new_tasks_start_once_and_known_ones_are_left_alone() {
        check(answer(7, vec![task("t1", Desired::Run), task("t1", Desired::Run)]), &[], &["start t1"]);
        check(answer(7, vec![task("t1", Desired::Run)]), &[("t1", Phase::Active)], &[]);
        check(answer(7, vec![task("t1", Desired::Run)]), &[("t1", Phase::Stopping)], &[]);
    }

    #[test]
    fn ended_tasks_are_not_restarted_and_are_forgotten_once_unlisted() {
        check(answer(7, vec![task("t1", Desired::Run)]), &[("t1", Phase::Ended)], &[]);
        check(answer(7, vec![task("t1", Desired::Stop)]), &[("t1", Phase::Ended)], &[]);
        check(answer(7, vec![]), &[("t1", Phase::Ended)], &["forget t1"]);
    }

    #[test]
    fn stop_assignments_stop_what_runs_and_close_what_is_gone() {
        check(
            answer(7, vec![task("t1", Desired::Stop), task("t2", Desired::Stop), task("t3", Desired::Stop)]),
            &[("t1", Phase::Active), ("t3", Phase::Found)],
            &["stop t1 Requested 2000", "gone t2", "stop t3 Requested 2000"],
        );
    }

    #[test]
    fn unlisted_tasks_are_stopped_and_found_ones_adopted_only_when_listed() {
        check(
            answer(7, vec![task("t2", Desired::Run), task("t4", Desired::Run)]),
            &[("t1", Phase::Active), ("t2", Phase::Found), ("t3", Phase::Found), ("t5", Phase::Stopping)],
            &["stop t1 Unlisted 10000", "stop t3 Unlisted 10000", "adopt t2", "start t4"],
        );
    }

    fn resources() -> AgentResources {
        AgentResources { cpus: 4.0, memory_mib: 1024, disk_mib: 1000, port_ranges: vec![(31000, 31009)] }
    }

    const ALL: Abilities = Abilities { volumes: true, mounts: true };

    #[test]
    fn a_task_fits_beside_the_others_or_says_what_is_short() {
        let mut a = task("t", Desired::Run);
        a.ports = vec![31001];
        let other = Held { cpus: 2.5, memory_mib: 512, disk_mib: 0, ports: vec![31000] };
        assert_eq!(fit(&a, &resources(), std::slice::from_ref(&other), ALL), Ok(()));
        let short = |a: &Assignment, held: &[Held], can: Abilities| {
            fit(a, &resources(), held, can).map_err(|r| (r.reason, r.message))
        };
        let msg = |r: Result<(), (Reason, String)>| r.expect_err("does not fit").1;
        assert!(msg(short(&a, &[other.clone(), other.clone()], ALL)).contains("cpus"));
        let mut big = a.clone();
        big.memory_mib = 600;
        assert!(msg(short(&big, std::slice::from_ref(&other), ALL)).contains("memory"));
        big = a.clone();
        big.disk_mib = 2000;
        assert!(msg(short(&big, &[], ALL)).contains("disk"));
        let mut clash = a.clone();
        clash.ports = vec![31000];
        assert_eq!(
            short(&clash, std::slice::from_ref(&other), ALL),
            Err((Reason::InsufficientResources, "port 31000 is in use by another task".into()))
        );
        clash.ports = vec![31002, 31002];
        assert!(msg(short(&clash, &[], ALL)).contains("twice"));
        clash.ports = vec![80];
        assert!(msg(short(&clash, &[], ALL)).contains("outside"));
        let mut vol = a.clone();
        vol.volumes = vec![titan_api::job::VolumeSpec {
            name: "data".into(),
            path: "/data".into(),
            size_gib: 1,
            persistent: false,
            from: None,
        }];
        assert!(msg(short(&vol, &[], Abilities { volumes: false, mounts: true })).contains("no volume pool"));
        assert!(msg(short(&vol, &[], Abilities { volumes: true, mounts: false })).contains("cannot mount"));
        assert_eq!(short(&vol, &[], ALL), Ok(()));
    }

    #[test]
    fn volume_names_are_valid_deterministic_and_distinct() {
        assert_eq!(volume_name("task-1", "data"), "task-1-data");
        let odd = volume_name("Job/A", "data");
        assert!(odd.starts_with("job-a-data-") && odd.len() == "job-a-data-".len() + 16, "{odd}");
        assert_ne!(volume_name("job-a", "data"), volume_name("Job/A", "data"));
        let long = volume_name(&"x".repeat(60), "data");
        assert_eq!(long.len(), 64);
        assert_eq!(long, volume_name(&"x".repeat(60), "data"));
        assert_ne!(long, volume_name(&"x".repeat(61), "data"));
        for name in [odd, long, volume_name("-a", "b")] {
            assert_eq!(crate::volume::check_name(&name), Ok(()), "{name}");
        }
        assert_eq!(parse_from("data@s1"), Some(("data", "s1")));
        assert_eq!(parse_from("data"), None);
        assert_eq!(parse_from("@s1"), None);
    }

    #[test]
    fn exits_map_to_terminal_states() {
        assert_eq!(exited(0, false), (TaskState::Finished, Reason::Exited));
        assert_eq!(exited(3, false), (TaskState::Failed, Reason::Exited));
        assert_eq!(exited(137, true), (TaskState::Failed, Reason::OomKilled));
        assert_eq!(task_health(Health::Starting), TaskHealth::Unknown);
        assert_eq!(task_health(Health::Unhealthy), TaskHealth::Unhealthy);
    }
}
