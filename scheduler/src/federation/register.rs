//! Replicated jobs, last writer wins per register: the spec is one register, each location's instance count its
//! own, enabled one, and a kill a tombstone that wins over every other write. Merging is pure: the same incoming
//! registers merged twice change nothing, and every cell that merges the same writes, in any order, holds the same
//! winners.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::hlc::Hlc;
use crate::spec::Spec;

/// The version of each of a job's registers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobVersions {
    pub spec: Hlc,
    /// Per location.
    pub counts: BTreeMap<String, Hlc>,
    pub enabled: Hlc,
    /// The kill, once there is one: a tombstone (killed jobs are kept, so it reaches every cell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed: Option<Hlc>,
}

/// One job as a cell sends it to another: every register with its value and version. Sending whole registers
/// (not operations) is what makes a merge idempotent and order-free.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicatedJob {
    pub id: String,
    pub spec: Arc<Spec>,
    pub counts: BTreeMap<String, u32>,
    pub enabled: bool,
    pub versions: JobVersions,
    pub created_at_ms: u64,
    /// The cell the job was submitted to.
    pub origin: String,
}

/// A job's registers as one cell holds them, for merging into.
#[derive(Clone, Debug, PartialEq)]
pub struct Registers {
    pub spec: Arc<Spec>,
    pub counts: BTreeMap<String, u32>,
    pub enabled: bool,
    pub versions: JobVersions,
}

/// What a merge changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    pub spec: bool,
    /// Locations whose count the incoming write won.
    pub counts: Vec<String>,
    pub enabled: bool,
    pub killed: bool,
    /// The job was killed here already, and the incoming kill is earlier: the tombstone's version moved to it.
    pub kill_earlier: bool,
    /// Registers where the incoming write lost to a newer one here made in another cell: two cells wrote the same
    /// register and this one's write won (a write relayed late counts too: a version alone cannot tell them apart).
    pub conflicts: u32,
}

impl Merged {
    pub fn changed(&self) -> bool {
        self.spec || !self.counts.is_empty() || self.enabled || self.killed || self.kill_earlier
    }
}

/// Whether `incoming` lost to `ours`, written in another cell.
fn lost(incoming: &Hlc, ours: &Hlc) -> bool {
    incoming < ours && incoming.cell != ours.cell && !incoming.cell.is_empty()
}

impl JobVersions {
    /// Every register's version.
    pub fn all(&self) -> impl Iterator<Item = &Hlc> {
        std::iter::once(&self.spec)
            .chain(self.counts.values())
            .chain(std::iter::once(&self.enabled))
            .chain(self.killed.iter())
    }

    /// Whether merging `incoming` would change nothing: no register of it is newer than this one's (a kill counts
    /// once either side has one).
    pub fn covers(&self, incoming: &JobVersions) -> bool {
        incoming.spec <= self.spec
            && incoming.enabled <= self.enabled
            && incoming.counts.iter().all(|(l, v)| self.counts.get(l).is_some_and(|ours| v <= ours))
            && incoming.killed.as_ref().is_none_or(|k| self.killed.as_ref().is_some_and(|ours| ours <= k))
    }

    /// Whether every register was last written by `cell` (it has them all, then).
    pub fn all_from(&self, cell: &str) -> bool {
        self.all().all(|v| v.cell == cell)
    }
}

/// Merges `incoming` into `local`, register by register: the higher version wins.
pub fn merge(local: &mut Registers, incoming: &ReplicatedJob) -> Merged {
    let mut out = Merged::default();
    let theirs = &incoming.versions;
    let ours = &mut local.versions;
    out.conflicts = u32::from(lost(&theirs.spec, &ours.spec))
        + u32::from(lost(&theirs.enabled, &ours.enabled))
        + theirs.counts.iter().filter(|(l, v)| ours.counts.get(*l).is_some_and(|o| lost(v, o))).count() as u32;
    if theirs.spec > ours.spec {
        local.spec = incoming.spec.clone();
        ours.spec = theirs.spec.clone();
        out.spec = true;
    }
    for (location, version) in &theirs.counts {
        let current = ours.counts.get(location);
        if current.is_none_or(|v| version > v) {
            local.counts.insert(location.clone(), incoming.counts.get(location).copied().unwrap_or(0));
            ours.counts.insert(location.clone(), version.clone());
            out.counts.push(location.clone());
        }
    }
    if theirs.enabled > ours.enabled {
        local.enabled = incoming.enabled;
        ours.enabled = theirs.enabled.clone();
        out.enabled = true;
    }
    if let Some(kill) = &theirs.killed {
        if ours.killed.as_ref().is_none_or(|k| kill < k) {
            // The earliest kill is the one every cell keeps, so the tombstone is the same everywhere.
            out.killed = ours.killed.is_none();
            out.kill_earlier = ours.killed.is_some();
            ours.killed = Some(kill.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use titan_api::job::{BodyFormat, JobSpec};

    fn spec(image: &str) -> Arc<Spec> {
        let body = format!(
            r#"{{"name":"web","applicationName":"shop","location":"dc1:1,dc2:1","cpus":1,"memory":64,"image":"{image}"}}"#
        );
        Arc::new(Spec::from(&JobSpec::parse(body.as_bytes(), BodyFormat::Json).expect("valid")))
    }

    fn v(ms: u64, cell: &str) -> Hlc {
        Hlc::new(ms, 0, cell)
    }

    fn base() -> Registers {
        Registers {
            spec: spec("a"),
            counts: BTreeMap::from([("dc1".into(), 1), ("dc2".into(), 1)]),
            enabled: true,
            versions: JobVersions {
                spec: v(10, "dc1"),
                counts: BTreeMap::from([("dc1".into(), v(10, "dc1")), ("dc2".into(), v(10, "dc1"))]),
                enabled: v(10, "dc1"),
                killed: None,
            },
        }
    }

    fn state_of(r: &Registers) -> ReplicatedJob {
        ReplicatedJob {
            id: "j".into(),
            spec: r.spec.clone(),
            counts: r.counts.clone(),
            enabled: r.enabled,
            versions: r.versions.clone(),
            created_at_ms: 1,
            origin: "dc1".into(),
        }
    }

    /// A cell's write of `count` at `location`, at `ms`.
    fn scale(r: &mut Registers, location: &str, count: u32, ms: u64, cell: &str) {
        r.counts.insert(location.into(), count);
        r.versions.counts.insert(location.into(), v(ms, cell));
    }

    #[test]
    fn scaling_different_locations_in_two_cells_keeps_both() {
        let (mut dc1, mut dc2) = (base(), base());
        scale(&mut dc1, "dc1", 5, 20, "dc1");
        scale(&mut dc2, "dc2", 7, 21, "dc2");
        let (from1, from2) = (state_of(&dc1), state_of(&dc2));
        let m = merge(&mut dc1, &from2);
        assert_eq!(m.counts, ["dc2"], "only dc2's register: dc1's own write to dc1 stands");
        merge(&mut dc2, &from1);
        assert_eq!(dc1, dc2);
        assert_eq!(dc1.counts, BTreeMap::from([("dc1".into(), 5), ("dc2".into(), 7)]));
    }

    #[test]
    fn a_conflict_on_one_register_resolves_to_the_same_winner_everywhere_in_any_order() {
        let (mut dc1, mut dc2, mut dc3) = (base(), base(), base());
        dc1.spec = spec("one");
        dc1.versions.spec = v(30, "dc1");
        dc2.spec = spec("two");
        dc2.versions.spec = v(30, "dc2");
        let (from1, from2) = (state_of(&dc1), state_of(&dc2));
        assert!(merge(&mut dc1, &from2).spec, "dc2's write at the same ms wins (the cell breaks the tie)");
        assert_eq!(merge(&mut dc1, &from2), Merged::default(), "merging the same again changes nothing");
        assert!(!merge(&mut dc2, &from1).changed(), "dc2 keeps its own");
        merge(&mut dc3, &from2);
        merge(&mut dc3, &from1);
        assert_eq!(dc1, dc2);
        assert_eq!(dc2, dc3);
        assert_eq!(dc3.spec, spec("two"));
    }

    #[test]
    fn a_job_whose_registers_are_all_as_new_here_changes_nothing_and_is_known_as_such_beforehand() {
        let (mut dc1, dc2) = (base(), base());
        assert!(dc1.versions.covers(&dc2.versions));
        assert!(dc1.versions.all_from("dc1"));
        let mut newer = base();
        scale(&mut newer, "dc2", 3, 40, "dc2");
        assert!(!dc1.versions.covers(&newer.versions));
        assert!(!newer.versions.all_from("dc1"));
        merge(&mut dc1, &state_of(&newer));
        assert!(dc1.versions.covers(&newer.versions), "after the merge it covers it");
        scale(&mut dc1, "dc1", 4, 50, "dc1");
        let mut late = state_of(&newer);
        late.versions.counts.insert("dc1".into(), v(45, "dc2"));
        assert_eq!(merge(&mut dc1, &late).conflicts, 1, "dc2's write to dc1's count lost to dc1's newer one");
    }

    #[test]
    fn a_kill_wins_over_later_writes_and_the_earliest_kill_is_kept() {
        let (mut dc1, mut dc2) = (base(), base());
        dc1.versions.killed = Some(v(50, "dc1"));
        scale(&mut dc2, "dc1", 9, 60, "dc2");
        dc2.versions.killed = Some(v(70, "dc2"));
        let from1 = state_of(&dc1);
        assert!(!dc2.versions.covers(&from1.versions), "an earlier kill is news to a cell killed later");
        let m = merge(&mut dc2, &from1);
        assert!(!m.killed, "already killed there");
        assert!(m.kill_earlier && m.changed(), "but its tombstone moves to the earlier kill");
        assert_eq!(dc2.versions.killed, Some(v(50, "dc1")), "the earliest tombstone");
        let from2 = state_of(&dc2);
        merge(&mut dc1, &from2);
        assert_eq!(dc1.versions, dc2.versions);
    }
}
