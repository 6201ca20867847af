//! Location levers, the pure part: a location's lever state and traffic weight as one replicated record, which
//! lever may be pulled from which state, the evacuation plan (each job's count in the location split over its
//! other locations within their quotas), and what a plan asks of each cell while it holds.
//!
//! A lever never rewrites a job. The job keeps its owners' counts; an evacuation is an overlay `desired` adds to
//! them: each target location runs the job's count plus the instances moved there, and the evacuated location runs
//! its count minus the moved instances already running elsewhere (make-before-break). A restore drops the overlay
//! the same way round: the extras elsewhere stop as the location's own tasks run again. So an owner's change
//! during an evacuation (a scale, an update) is a change to the job's own counts and is what a restore returns to.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::Change;
use crate::hlc::Hlc;
use crate::quota::{Demand, Limits, Resource};

/// Where a location stands: `active -> frozen -> evacuating -> evacuated -> restoring -> active`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeverState {
    #[default]
    Active,
    Frozen,
    Evacuating,
    Evacuated,
    Restoring,
}

impl LeverState {
    pub const ALL: [LeverState; 5] =
        [LeverState::Active, LeverState::Frozen, LeverState::Evacuating, LeverState::Evacuated, LeverState::Restoring];

    pub fn as_str(self) -> &'static str {
        match self {
            LeverState::Active => "active",
            LeverState::Frozen => "frozen",
            LeverState::Evacuating => "evacuating",
            LeverState::Evacuated => "evacuated",
            LeverState::Restoring => "restoring",
        }
    }

    /// Whether no count in the location may rise (and no job may newly ask for it).
    pub fn freezes(self) -> bool {
        matches!(self, LeverState::Frozen | LeverState::Evacuating | LeverState::Evacuated)
    }

    /// Whether an evacuation plan holds (instances moved out of the location run elsewhere).
    pub fn moved_out(self) -> bool {
        matches!(self, LeverState::Evacuating | LeverState::Evacuated)
    }
}

/// A lever as committed: what changes, decided at apply time against the location's state then.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Lever {
    Freeze,
    Unfreeze,
    Evacuate(Evacuation),
    Restore,
    Weight(u8),
    /// Every moved instance runs elsewhere: evacuating -> evacuated.
    Evacuated,
    /// The location runs its own counts again: restoring -> active, the plan dropped.
    Restored,
}

impl Lever {
    pub fn kind(&self) -> &'static str {
        match self {
            Lever::Freeze => "freeze",
            Lever::Unfreeze => "unfreeze",
            Lever::Evacuate(_) => "evacuate",
            Lever::Restore => "restore",
            Lever::Weight(_) => "weight",
            Lever::Evacuated => "evacuated",
            Lever::Restored => "restored",
        }
    }

    /// The state the lever leads to from `from`, or why it may not be pulled there.
    pub fn next(&self, from: LeverState) -> Result<LeverState, Illegal> {
        use LeverState::*;
        let to = match (self, from) {
            (Lever::Freeze, Active) => Frozen,
            (Lever::Unfreeze, Frozen) => Active,
            (Lever::Evacuate(_), Active | Frozen) => Evacuating,
            (Lever::Restore, Evacuating | Evacuated) => Restoring,
            (Lever::Weight(_), s) => s,
            (Lever::Evacuated, Evacuating) => Evacuated,
            (Lever::Restored, Restoring) => Active,
            _ => return Err(Illegal { lever: self.kind().to_string(), state: from }),
        };
        Ok(to)
    }
}

/// A lever that may not be pulled from the location's current state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{lever} is not possible while the location is {}", state.as_str())]
pub struct Illegal {
    pub lever: String,
    pub state: LeverState,
}

/// One job's part of an evacuation: its count in the location when the lever was pulled, the instances moved to
/// each other location, and what stays because it fits nowhere (with why).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMove {
    pub from: u32,
    pub to: BTreeMap<String, u32>,
    pub left: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why_left: Option<String>,
}

impl JobMove {
    pub fn moved(&self) -> u32 {
        self.to.values().sum()
    }

    /// The instances that move while the job asks for `now` in the location (an owner may have scaled it down
    /// since the plan): the plan's, cut to `now`, targets taken in order.
    pub fn moving(&self, now: u32) -> BTreeMap<String, u32> {
        let mut budget = now.min(self.moved());
        self.to
            .iter()
            .map(|(l, n)| {
                let take = (*n).min(budget);
                budget -= take;
                (l.clone(), take)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// An evacuation: when and how it was pulled, and each job's moves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evacuation {
    pub started_ms: u64,
    /// Pulled by auto-failover, with its evidence.
    #[serde(default)]
    pub automatic: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// The targets the SRE named (empty: each job's own locations or failover preference).
    #[serde(default)]
    pub targets: Vec<String>,
    /// The location's weight before, given back by the restore.
    pub weight_before: u8,
    pub moves: BTreeMap<String, JobMove>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evacuated_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_started_ms: Option<u64>,
}

/// The default traffic weight of a location.
pub const DEFAULT_WEIGHT: u8 = 100;
/// The most history entries a location keeps.
pub const MAX_HISTORY: usize = 100;

/// A location's levers as every cell holds them: one replicated register, last writer wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationRecord {
    pub name: String,
    pub state: LeverState,
    pub weight: u8,
    /// Counts changes, for `If-Match` and history.
    pub version: u64,
    pub hlc: Hlc,
    pub history: Vec<Change>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evacuation: Option<Evacuation>,
}

impl LocationRecord {
    /// A location no lever was ever pulled on.
    pub fn new(name: &str) -> LocationRecord {
        LocationRecord {
            name: name.to_string(),
            state: LeverState::Active,
            weight: DEFAULT_WEIGHT,
            version: 0,
            hlc: Hlc::default(),
            history: Vec::new(),
            evacuation: None,
        }
    }

    /// Pulls `lever` (already checked legal) as `change` says: the state, weight and plan move, the history grows.
    pub fn pull(&mut self, lever: &Lever, to: LeverState, hlc: Hlc, at_ms: u64, mut change: Change) {
        match lever {
            Lever::Evacuate(plan) => {
                let mut plan = plan.clone();
                plan.weight_before = self.weight;
                self.evacuation = Some(plan);
                self.weight = 0;
            }
            Lever::Weight(w) => self.weight = *w,
            Lever::Restore => {
                if let Some(e) = self.evacuation.as_mut() {
                    e.restore_started_ms = Some(at_ms);
                }
            }
            Lever::Evacuated => {
                if let Some(e) = self.evacuation.as_mut() {
                    e.evacuated_ms = Some(at_ms);
                }
            }
            Lever::Restored => {
                if let Some(e) = self.evacuation.take() {
                    self.weight = e.weight_before;
                }
            }
            Lever::Freeze | Lever::Unfreeze => {}
        }
        self.state = to;
        self.hlc = hlc;
        self.version += 1;
        change.version = self.version;
        self.history.push(change);
        if self.history.len() > MAX_HISTORY {
            self.history.remove(0);
        }
    }

    /// The plan while it holds (evacuating, evacuated or restoring).
    pub fn plan(&self) -> Option<&Evacuation> {
        self.evacuation.as_ref().filter(|_| self.state.moved_out() || self.state == LeverState::Restoring)
    }
}

/// The key of a location in the federation's outbox (job ids are UUIDs, never with a '/').
pub fn outbox_key(name: &str) -> String {
    format!("location/{name}")
}

/// The location an outbox key names, if it is a location's.
pub fn name_of_key(key: &str) -> Option<&str> {
    key.strip_prefix("location/")
}

/// Whether to take an incoming record over the one held: the newer write wins; and whether ours won over another
/// cell's write (a conflict).
pub fn takes(ours: Option<&LocationRecord>, incoming: &LocationRecord) -> (bool, bool) {
    match ours {
        None => (true, false),
        Some(l) if incoming.hlc > l.hlc => (true, false),
        Some(l) => (false, incoming.hlc < l.hlc && incoming.hlc.cell != l.hlc.cell),
    }
}

/// The running figures of jobs in other locations, as this cell last heard them (federation heartbeats).
pub trait Elsewhere {
    /// How many tasks of `job` run in `location`, if that location's cell reported it.
    fn running(&self, location: &str, job: &str) -> Option<u32>;
    /// Whether `location`'s cell is seen down.
    fn is_down(&self, location: &str) -> bool;
}

/// No figures from anywhere (a standalone cell, tests).
pub struct Nowhere;

impl Elsewhere for Nowhere {
    fn running(&self, _: &str, _: &str) -> Option<u32> {
        None
    }
    fn is_down(&self, _: &str) -> bool {
        false
    }
}

/// The job's figures a plan needs: its counts per location now.
pub type Counts = BTreeMap<String, u32>;

/// Extra instances of a job location `here` runs for the plan of `record` (a location other than `here`), given
/// the job's counts now: the moved instances while evacuating or evacuated; while restoring, those the evacuated
/// location does not yet run again itself (all of them while its figures are unknown).
pub fn extra(record: &LocationRecord, job: &str, counts: &Counts, here: &str, seen: &dyn Elsewhere) -> u32 {
    let Some(mv) = record.plan().and_then(|p| p.moves.get(job)) else { return 0 };
    let home = counts.get(&record.name).copied().unwrap_or(0);
    let moving = mv.moving(home);
    if record.state.moved_out() {
        return moving.get(here).copied().unwrap_or(0);
    }
    // Restoring: the instances the location still lacks, taken from the targets in order.
    let total: u32 = moving.values().sum();
    let running = if seen.is_down(&record.name) { None } else { seen.running(&record.name, job) };
    let mut lacking = match running {
        Some(r) => home.saturating_sub(r).min(total),
        None => total,
    };
    for (l, n) in &moving {
        let take = (*n).min(lacking);
        lacking -= take;
        if l == here {
            return take;
        }
    }
    0
}

/// How many of a job's moved instances run in the other locations: each target's tasks beyond its own count,
/// up to what was moved there (figures not heard count as none).
pub fn running_elsewhere(record: &LocationRecord, job: &str, counts: &Counts, seen: &dyn Elsewhere) -> u32 {
    let Some(mv) = record.plan().and_then(|p| p.moves.get(job)) else { return 0 };
    let home = counts.get(&record.name).copied().unwrap_or(0);
    mv.moving(home)
        .iter()
        .map(|(l, n)| {
            let own = counts.get(l).copied().unwrap_or(0);
            seen.running(l, job).map_or(0, |r| r.saturating_sub(own).min(*n))
        })
        .sum()
}

/// The instances of a job the evacuated location itself should run under `record`: its count, less the moved
/// instances already running elsewhere (make-before-break: a task here stops only once its replacement runs).
pub fn home_count(record: &LocationRecord, job: &str, counts: &Counts, seen: &dyn Elsewhere) -> u32 {
    let home = counts.get(&record.name).copied().unwrap_or(0);
    if !record.state.moved_out() {
        return home;
    }
    home.saturating_sub(running_elsewhere(record, job, counts, seen))
}

/// One job's progress in a move.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobProgress {
    pub job: String,
    /// Instances to move (the plan cut to the job's count now).
    pub to_move: u32,
    /// Of those, running elsewhere.
    pub started_elsewhere: u32,
    /// Tasks the location stopped (its count less what it runs), while it reports.
    pub stopped_home: u32,
    pub left: u32,
    pub why_left: Option<String>,
    /// While restoring: tasks the location runs again of its count.
    pub running_home: Option<u32>,
}

/// Where a move stands, summed over its jobs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub to_move: u32,
    pub started_elsewhere: u32,
    pub stopped_home: u32,
    pub left: u32,
    pub jobs: Vec<JobProgress>,
    /// The move is complete: evacuating -> evacuated, or restoring -> active, may be committed.
    pub done: bool,
}

/// The progress of `record`'s move over `jobs` (id and counts now; jobs killed or disabled since have counts of
/// nothing and are done).
pub fn progress<'a>(
    record: &LocationRecord,
    jobs: impl Iterator<Item = (&'a str, &'a Counts)>,
    seen: &dyn Elsewhere,
) -> Progress {
    let mut p = Progress::default();
    let Some(plan) = record.plan() else { return p };
    let home_down = seen.is_down(&record.name);
    let mut done = true;
    let counts_of: BTreeMap<&str, &Counts> = jobs.collect();
    let empty = Counts::new();
    for (job, mv) in &plan.moves {
        let counts = counts_of.get(job.as_str()).copied().unwrap_or(&empty);
        let home = counts.get(&record.name).copied().unwrap_or(0);
        let to_move: u32 = mv.moving(home).values().sum();
        let started = running_elsewhere(record, job, counts, seen);
        let running_home = if home_down { None } else { seen.running(&record.name, job) };
        let stopped = running_home.map_or(0, |r| home.saturating_sub(r).min(to_move));
        if record.state.moved_out() {
            // Every moved instance runs elsewhere, and the location stopped as many (or cannot be asked).
            done &= started >= to_move && (home_down || running_home.is_some_and(|r| r <= home - to_move));
        } else {
            done &= running_home.is_some_and(|r| r >= home);
        }
        p.to_move += to_move;
        p.started_elsewhere += started;
        p.stopped_home += stopped;
        p.left += mv.left;
        p.jobs.push(JobProgress {
            job: job.clone(),
            to_move,
            started_elsewhere: started,
            stopped_home: stopped,
            left: mv.left,
            why_left: mv.why_left.clone(),
            running_home: (record.state == LeverState::Restoring).then_some(running_home.unwrap_or(0)),
        });
    }
    p.done = done;
    p
}

/// One job as a plan sees it.
pub struct Candidate<'a> {
    pub id: &'a str,
    pub counts: &'a Counts,
    /// The job's own failover preference, in order.
    pub failover: &'a [String],
    /// The quota group it counts toward, and one instance's demand.
    pub group: &'a str,
    pub one: Demand,
}

/// How many more instances of `one` fit a location's quota `limits` where the group already uses `used`
/// (`u32::MAX` without a limit), and the resource that binds.
pub fn room(limits: Option<&Limits>, used: &Demand, one: &Demand) -> (u32, Option<Resource>) {
    let Some(limits) = limits else { return (u32::MAX, None) };
    let mut best = (u32::MAX, None);
    for r in Resource::ALL {
        let (Some(limit), per) = (limits.get(r), one.get(r)) else { continue };
        if per <= 0.0 {
            continue;
        }
        let fits = ((limit - used.get(r)) / per).floor().max(0.0);
        let fits = if fits >= f64::from(u32::MAX) { u32::MAX } else { fits as u32 };
        if fits < best.0 {
            best = (fits, Some(r));
        }
    }
    best
}

/// Splits `n` over `weights` in proportion (largest remainders, ties in order); all-zero weights split evenly.
pub fn split(n: u32, weights: &[(String, u32)]) -> Vec<(String, u32)> {
    if weights.is_empty() {
        return Vec::new();
    }
    let total: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
    let weights: Vec<(String, u64)> = if total == 0 {
        weights.iter().map(|(l, _)| (l.clone(), 1)).collect()
    } else {
        weights.iter().map(|(l, w)| (l.clone(), u64::from(*w))).collect()
    };
    let total: u64 = weights.iter().map(|(_, w)| *w).sum();
    let mut out: Vec<(String, u32, u64)> = weights
        .iter()
        .map(|(l, w)| {
            let exact = u64::from(n) * w;
            (l.clone(), (exact / total) as u32, exact % total)
        })
        .collect();
    let mut rest = n - out.iter().map(|(_, k, _)| *k).sum::<u32>();
    let mut order: Vec<usize> = (0..out.len()).collect();
    order.sort_by(|a, b| out[*b].2.cmp(&out[*a].2).then(a.cmp(b)));
    for i in order {
        if rest == 0 {
            break;
        }
        out[i].1 += 1;
        rest -= 1;
    }
    out.into_iter().map(|(l, k, _)| (l, k)).collect()
}

/// The targets of one job and their weights: the locations the SRE named, in proportion to the job's counts
/// there (evenly if it has none); else the job's other locations in proportion to its counts; else its failover
/// preference, the first taking everything it can. Only `open` locations (active, not this one) take instances.
pub fn targets(home: &str, job: &Candidate<'_>, named: &[String], open: &BTreeSet<String>) -> Vec<(String, u32)> {
    let count = |l: &String| job.counts.get(l).copied().unwrap_or(0);
    let usable = |l: &&String| *l != home && open.contains(*l);
    if !named.is_empty() {
        return named.iter().filter(usable).map(|l| (l.clone(), count(l))).collect();
    }
    let own: Vec<(String, u32)> =
        job.counts.keys().filter(usable).filter(|l| count(l) > 0).map(|l| (l.clone(), count(l))).collect();
    if !own.is_empty() {
        return own;
    }
    job.failover.iter().filter(usable).take(1).map(|l| (l.clone(), 1)).collect()
}

/// How many more instances of a group fit a location's quota: `(group, location, planned there so far, one
/// instance)` to the count and the binding resource.
pub type RoomOf<'a> = &'a dyn Fn(&str, &str, &Demand, &Demand) -> (u32, Option<Resource>);

/// Plans an evacuation of `home`: each job's count there split over its targets, within each target's quota room
/// (`room_of(group, location, demand planned so far there, one instance)`), spilling what one target cannot take to the job's
/// other targets (then its failover preference), and leaving the rest with why.
pub fn plan<'a>(
    home: &str,
    jobs: impl Iterator<Item = Candidate<'a>>,
    named: &[String],
    open: &BTreeSet<String>,
    room_of: RoomOf<'_>,
) -> BTreeMap<String, JobMove> {
    let mut planned: BTreeMap<(String, String), Demand> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for job in jobs {
        let n = job.counts.get(home).copied().unwrap_or(0);
        if n == 0 {
            continue;
        }
        let weights = targets(home, &job, named, open);
        let mut fallbacks: Vec<String> = weights.iter().map(|(l, _)| l.clone()).collect();
        if named.is_empty() {
            for l in job.failover.iter().filter(|l| *l != home && open.contains(*l)) {
                if !fallbacks.contains(l) {
                    fallbacks.push(l.clone());
                }
            }
        }
        let mut mv = JobMove { from: n, ..JobMove::default() };
        let mut overflow = 0u32;
        let mut binding: Option<String> = None;
        let mut take = |location: &str, want: u32, mv: &mut JobMove| -> u32 {
            let key = (job.group.to_string(), location.to_string());
            let used = planned.get(&key).copied().unwrap_or_default();
            let (fits, r) = room_of(job.group, location, &used, &job.one);
            let k = want.min(fits);
            if k < want && binding.is_none() {
                binding = Some(format!(
                    "quota: group {} has room for {k} more in {location} ({} limit)",
                    job.group,
                    r.map_or("instances", Resource::as_str)
                ));
            }
            if k > 0 {
                *mv.to.entry(location.to_string()).or_insert(0) += k;
                let e = planned.entry(key).or_default();
                e.add(&Demand {
                    instances: u64::from(k) * job.one.instances,
                    millicpus: u64::from(k) * job.one.millicpus,
                    memory_mib: u64::from(k) * job.one.memory_mib,
                    disk_gib: u64::from(k) * job.one.disk_gib,
                });
            }
            k
        };
        let shares = split(n, &weights);
        overflow += n - shares.iter().map(|(_, k)| *k).sum::<u32>();
        for (location, share) in shares {
            let got = take(&location, share, &mut mv);
            overflow += share - got;
        }
        for location in &fallbacks {
            if overflow == 0 {
                break;
            }
            overflow -= take(location, overflow, &mut mv);
        }
        if overflow > 0 {
            mv.left = overflow;
            mv.why_left = Some(binding.unwrap_or_else(|| {
                if fallbacks.is_empty() {
                    format!(
                        "no other location: the job asks only for {home} and names no failover location that is active"
                    )
                } else {
                    "no target took it".to_string()
                }
            }));
        }
        out.insert(job.id.to_string(), mv);
    }
    out
}

/// Cuts a plan's moves to `location` to what a trial placement there placed of each job (`placed`), leaving the
/// rest in the evacuated location with `why`.
pub fn trim(moves: &mut BTreeMap<String, JobMove>, location: &str, placed: &BTreeMap<String, u32>, why: &str) {
    for (job, mv) in moves.iter_mut() {
        let Some(want) = mv.to.get(location).copied() else { continue };
        let got = placed.get(job).copied().unwrap_or(0).min(want);
        if got == want {
            continue;
        }
        if got == 0 {
            mv.to.remove(location);
        } else {
            mv.to.insert(location.to_string(), got);
        }
        mv.left += want - got;
        let note = format!("capacity: {location} placed {got} of {want} in a trial placement; {why}");
        mv.why_left = Some(match mv.why_left.take() {
            Some(earlier) => format!("{earlier}. {note}"),
            None => note,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Seen(BTreeMap<(String, String), u32>, BTreeSet<String>);

    impl Elsewhere for Seen {
        fn running(&self, location: &str, job: &str) -> Option<u32> {
            self.0.get(&(location.to_string(), job.to_string())).copied()
        }
        fn is_down(&self, location: &str) -> bool {
            self.1.contains(location)
        }
    }

    fn seen(figures: &[(&str, &str, u32)], down: &[&str]) -> Seen {
        Seen(
            figures.iter().map(|(l, j, n)| ((l.to_string(), j.to_string()), *n)).collect(),
            down.iter().map(|d| d.to_string()).collect(),
        )
    }

    fn counts(c: &[(&str, u32)]) -> Counts {
        c.iter().map(|(l, n)| (l.to_string(), *n)).collect()
    }

    fn open(l: &[&str]) -> BTreeSet<String> {
        l.iter().map(|x| x.to_string()).collect()
    }

    fn candidate<'a>(id: &'a str, c: &'a Counts, failover: &'a [String]) -> Candidate<'a> {
        Candidate {
            id,
            counts: c,
            failover,
            group: "g",
            one: Demand { instances: 1, millicpus: 1000, ..Default::default() },
        }
    }

    fn no_quota(_: &str, _: &str, _: &Demand, _: &Demand) -> (u32, Option<Resource>) {
        (u32::MAX, None)
    }

    #[test]
    fn levers_follow_the_state_machine_and_name_the_state_they_refuse() {
        use LeverState::*;
        let evac = Lever::Evacuate(Evacuation::default());
        assert_eq!(Lever::Freeze.next(Active), Ok(Frozen));
        assert_eq!(Lever::Unfreeze.next(Frozen), Ok(Active));
        assert_eq!(evac.next(Frozen), Ok(Evacuating));
        assert_eq!(evac.next(Active), Ok(Evacuating));
        assert_eq!(Lever::Evacuated.next(Evacuating), Ok(Evacuated));
        assert_eq!(Lever::Restore.next(Evacuated), Ok(Restoring));
        assert_eq!(Lever::Restored.next(Restoring), Ok(Active));
        assert_eq!(Lever::Weight(5).next(Evacuated), Ok(Evacuated));
        let e = Lever::Restore.next(Active).unwrap_err();
        assert_eq!(e.to_string(), "restore is not possible while the location is active");
        assert!(evac.next(Evacuated).is_err());
        assert!(Lever::Unfreeze.next(Active).is_err());
    }

    #[test]
    fn a_count_splits_over_targets_in_proportion_with_largest_remainders() {
        let w = |v: &[(&str, u32)]| v.iter().map(|(l, n)| (l.to_string(), *n)).collect::<Vec<_>>();
        assert_eq!(split(10, &w(&[("dc2", 20), ("dc3", 40)])), w(&[("dc2", 3), ("dc3", 7)]));
        assert_eq!(split(5, &w(&[("dc2", 0), ("dc3", 0)])), w(&[("dc2", 3), ("dc3", 2)]));
        assert_eq!(split(0, &w(&[("dc2", 1)])), w(&[("dc2", 0)]));
        assert_eq!(split(7, &[]), vec![]);
    }

    #[test]
    fn a_plan_takes_named_targets_then_the_jobs_own_locations_then_its_failover_preference() {
        let both = counts(&[("dc1", 10), ("dc2", 20), ("dc3", 20)]);
        let alone = counts(&[("dc1", 4)]);
        let failover = vec!["dc3".to_string(), "dc2".to_string()];
        let open3 = open(&["dc2", "dc3"]);
        let jobs = vec![candidate("both", &both, &[]), candidate("alone", &alone, &failover)];
        let p = plan("dc1", jobs.into_iter(), &[], &open3, &no_quota);
        assert_eq!(p["both"].to, counts(&[("dc2", 5), ("dc3", 5)]));
        assert_eq!(p["alone"].to, counts(&[("dc3", 4)]), "the first preference takes everything");
        let named = vec!["dc3".to_string()];
        let p = plan("dc1", vec![candidate("both", &both, &[])].into_iter(), &named, &open3, &no_quota);
        assert_eq!(p["both"].to, counts(&[("dc3", 10)]));
        let nowhere = plan("dc1", vec![candidate("alone", &alone, &[])].into_iter(), &[], &open3, &no_quota);
        assert_eq!((nowhere["alone"].left, nowhere["alone"].moved()), (4, 0));
        assert!(nowhere["alone"].why_left.as_deref().unwrap().starts_with("no other location"));
        let closed = plan("dc1", vec![candidate("both", &both, &[])].into_iter(), &[], &open(&["dc3"]), &no_quota);
        assert_eq!(closed["both"].to, counts(&[("dc3", 10)]), "a frozen location takes nothing");
    }

    #[test]
    fn what_a_targets_quota_cannot_take_spills_to_another_target_then_stays_with_why() {
        let c = counts(&[("dc1", 10), ("dc2", 1), ("dc3", 1)]);
        let jobs = || vec![candidate("a", &c, &[]), candidate("b", &c, &[])].into_iter();
        // dc2 has room for 6 instances in all, dc3 for 8.
        let room = |_: &str, l: &str, used: &Demand, _: &Demand| {
            let limit = if l == "dc2" { 6 } else { 8 };
            ((limit as u64).saturating_sub(used.instances) as u32, Some(Resource::Instances))
        };
        let p = plan("dc1", jobs(), &[], &open(&["dc2", "dc3"]), &room);
        assert_eq!(p["a"].to, counts(&[("dc2", 5), ("dc3", 5)]));
        assert_eq!(p["b"].to, counts(&[("dc2", 1), ("dc3", 3)]));
        assert_eq!(p["b"].left, 6);
        assert!(p["b"]
            .why_left
            .as_deref()
            .unwrap()
            .contains("quota: group g has room for 1 more in dc2 (instances limit)"));
    }

    #[test]
    fn quota_room_is_the_tightest_resource() {
        let limits = Limits { instances: Some(10), cpus: Some(4.0), ..Default::default() };
        let one = Demand { instances: 1, millicpus: 500, memory_mib: 64, disk_gib: 0 };
        let used = Demand { instances: 2, millicpus: 1000, ..Default::default() };
        assert_eq!(room(Some(&limits), &used, &one), (6, Some(Resource::Cpus)));
        assert_eq!(room(None, &used, &one).0, u32::MAX);
    }

    fn evacuating(state: LeverState) -> LocationRecord {
        let mut r = LocationRecord::new("dc1");
        r.state = state;
        r.evacuation = Some(Evacuation {
            moves: [(
                "web".to_string(),
                JobMove { from: 10, to: counts(&[("dc2", 6), ("dc3", 4)]), ..Default::default() },
            )]
            .into(),
            ..Default::default()
        });
        r
    }

    #[test]
    fn make_before_break_the_home_location_stops_only_what_runs_elsewhere() {
        let r = evacuating(LeverState::Evacuating);
        let c = counts(&[("dc1", 10), ("dc2", 2), ("dc3", 0)]);
        let nothing = seen(&[], &[]);
        assert_eq!(extra(&r, "web", &c, "dc2", &nothing), 6, "targets start their extras at once");
        assert_eq!(extra(&r, "web", &c, "dc3", &nothing), 4);
        assert_eq!(home_count(&r, "web", &c, &nothing), 10, "nothing runs elsewhere yet: dc1 keeps all");
        let some = seen(&[("dc2", "web", 5), ("dc3", "web", 4), ("dc1", "web", 10)], &[]);
        assert_eq!(running_elsewhere(&r, "web", &c, &some), 7, "dc2's own 2 are not extras");
        assert_eq!(home_count(&r, "web", &c, &some), 3);
        let p = progress(&r, [("web", &c)].into_iter(), &some);
        assert_eq!((p.to_move, p.started_elsewhere, p.done), (10, 7, false));
        let all = seen(&[("dc2", "web", 8), ("dc3", "web", 4), ("dc1", "web", 0)], &[]);
        assert!(progress(&r, [("web", &c)].into_iter(), &all).done);
        let dead = seen(&[("dc2", "web", 8), ("dc3", "web", 4), ("dc1", "web", 10)], &["dc1"]);
        assert!(progress(&r, [("web", &c)].into_iter(), &dead).done, "a dead location cannot be asked to stop");
    }

    #[test]
    fn an_owner_scaling_the_location_down_moves_fewer_and_a_restore_returns_the_owners_count() {
        let r = evacuating(LeverState::Evacuated);
        let scaled = counts(&[("dc1", 7), ("dc2", 2)]);
        let nothing = seen(&[], &[]);
        assert_eq!(extra(&r, "web", &scaled, "dc2", &nothing), 6);
        assert_eq!(extra(&r, "web", &scaled, "dc3", &nothing), 1, "7 move, dc2 first");
        let r = evacuating(LeverState::Restoring);
        assert_eq!(home_count(&r, "web", &scaled, &nothing), 7, "the owner's count returns");
        let back = seen(&[("dc1", "web", 3)], &[]);
        assert_eq!(extra(&r, "web", &scaled, "dc2", &back), 4, "extras stop as the location's tasks run");
        assert_eq!(extra(&r, "web", &scaled, "dc3", &back), 0);
        let unknown = seen(&[("dc1", "web", 7)], &["dc1"]);
        assert_eq!(extra(&r, "web", &scaled, "dc2", &unknown), 6, "a location not heard keeps the extras");
        let home = seen(&[("dc1", "web", 7)], &[]);
        assert!(progress(&r, [("web", &scaled)].into_iter(), &home).done);
        assert_eq!(extra(&r, "web", &scaled, "dc2", &home), 0);
    }

    #[test]
    fn a_trial_placement_cuts_moves_to_what_fits_and_says_so() {
        let mut moves: BTreeMap<String, JobMove> =
            [("web".to_string(), JobMove { from: 10, to: counts(&[("dc2", 6), ("dc3", 4)]), ..Default::default() })]
                .into();
        trim(&mut moves, "dc2", &counts(&[("web", 2)]), "the fleet would need 1 more agent of group g1");
        assert_eq!((moves["web"].to["dc2"], moves["web"].left), (2, 4));
        assert!(moves["web"].why_left.as_deref().unwrap().starts_with("capacity: dc2 placed 2 of 6"));
    }
}
