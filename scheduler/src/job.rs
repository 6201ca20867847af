//! A job as the cell stores it: its spec, its counts per location, its history, and the earlier specs its live
//! tasks were made from.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use titan_api::view::{JobRef, JobState, JobView};

pub use crate::history::Change;

use crate::command::Meta;
use crate::federation::JobVersions;
use crate::spec::Spec;

/// History entries kept per job; older ones are dropped first.
pub const MAX_HISTORY: usize = 1_000;

/// A job with its state and history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub spec: Arc<Spec>,
    /// Instances per location: what the cells run. Resolved once from the spec's `location` or `locations`
    /// (the user's form, kept for display) when the spec or the counts are written.
    pub counts: BTreeMap<String, u32>,
    pub version: u64,
    pub state: JobState,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub history: Vec<Change>,
    /// For a scheduled job: the latest tick handled (run or skipped), and the run whose tasks count now.
    #[serde(default)]
    pub last_tick_ms: Option<u64>,
    #[serde(default)]
    pub current_run: Option<u64>,
    /// The job version at which the spec itself last changed (not counts or state): tasks made from an older
    /// one are rolled over to it. 0 in records from before rolling updates: nothing rolls.
    #[serde(default)]
    pub spec_version: u64,
    /// Earlier specs that tasks not yet ended were made from, by spec version: a task is run as the spec it was
    /// made from said, not as a later one does (dropped once no such task is left).
    pub older_specs: BTreeMap<u64, Arc<Spec>>,
    /// The version of each replicated register (federation). Records from before it are migrated with versions
    /// older than any new write (`snapshot`).
    #[serde(default)]
    pub versions: JobVersions,
    /// The cell the job was submitted to.
    #[serde(default)]
    pub origin: String,
}

impl JobRecord {
    /// Its counts once a spec update to `spec` applies: the new spec's, and 0 in every location only the old one
    /// named (the update writes those count registers too).
    pub fn counts_after_update(&self, spec: &Spec) -> BTreeMap<String, u32> {
        self.counts.keys().map(|l| (l.clone(), 0)).chain(spec.counts()).collect()
    }

    /// Its counts once a scale setting `instances` applies (the locations it does not name keep theirs).
    pub fn counts_after_scale(&self, instances: &BTreeMap<String, u32>) -> BTreeMap<String, u32> {
        let mut counts = self.counts.clone();
        counts.extend(instances.iter().map(|(l, n)| (l.clone(), *n)));
        counts
    }
}

impl JobRecord {
    /// A job not yet changed (its first history entry is the caller's `change`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: &str,
        spec: Arc<Spec>,
        counts: BTreeMap<String, u32>,
        state: JobState,
        created_at_ms: u64,
        updated_at_ms: u64,
        versions: JobVersions,
        origin: &str,
    ) -> JobRecord {
        JobRecord {
            id: id.to_string(),
            spec,
            counts,
            version: 0,
            state,
            created_at_ms,
            updated_at_ms,
            history: Vec::new(),
            last_tick_ms: None,
            current_run: None,
            spec_version: 1,
            older_specs: BTreeMap::new(),
            versions,
            origin: origin.to_string(),
        }
    }

    pub fn view(&self) -> JobView {
        JobView {
            id: self.id.clone(),
            version: self.version,
            state: self.state,
            instances: self.counts.clone(),
            spec: titan_api::job::JobSpec::from(self.spec.as_ref()),
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            tasks: None,
            locations: Vec::new(),
            current_run_ms: self.current_run,
        }
    }

    /// The spec a task made at `spec_version` runs as: an older one while tasks made from it live, else the
    /// current one.
    pub fn spec_for(&self, spec_version: u64) -> &Spec {
        self.older_specs.get(&spec_version).unwrap_or(&self.spec)
    }

    pub(crate) fn change(&mut self, meta: &Meta, what: String) -> JobRef {
        self.version += 1;
        self.updated_at_ms = meta.at_ms;
        self.history.push(Change {
            version: self.version,
            at_ms: meta.at_ms,
            who: meta.who.clone(),
            why: meta.why.clone(),
            what,
            cell: meta.cell.clone(),
        });
        if self.history.len() > MAX_HISTORY {
            let excess = self.history.len() - MAX_HISTORY;
            self.history.drain(..excess);
        }
        JobRef { id: self.id.clone(), version: self.version, unseen_locations: Vec::new() }
    }
}

/// What an `Idempotency-Key` was used for: the job it made, a hash of the spec it came with, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub job: JobRef,
    pub fingerprint: u64,
    pub at_ms: u64,
}
