//! Federation in the state: versions for local writes, the outbox of changed jobs other cells are sent, how far
//! this cell merged each other cell's outbox, and the merge of a pushed batch.

use super::*;
use crate::command::{MergeOutcome, Meta};
use crate::federation::register::{self, Registers};
use crate::federation::{hlc, JobVersions, ReplicatedJob};

impl CellState {
    /// A version for a write `meta` makes (its time, raised past every version this cell has made or taken in).
    pub(super) fn stamp(&mut self, meta: &Meta) -> Hlc {
        self.clock.tick(meta.at_ms, &meta.cell)
    }

    /// Puts `job` at the end of the outbox.
    pub(super) fn note_outbox(&mut self, job: &str) {
        self.outbox_seq += 1;
        if let Some(old) = self.outbox_of.insert(job.to_string(), self.outbox_seq) {
            self.outbox.remove(&old);
        }
        self.outbox.insert(self.outbox_seq, job.to_string());
    }

    /// The last change number of the outbox.
    pub fn outbox_seq(&self) -> u64 {
        self.outbox_seq
    }

    /// Jobs changed after change `after`, oldest first, at most `n`, each with its change number.
    pub fn outbox_after(&self, after: u64, n: usize) -> impl Iterator<Item = (u64, &JobRecord)> + '_ {
        self.outbox.range(after + 1..).take(n).filter_map(|(seq, id)| self.jobs.get(id).map(|j| (*seq, j.as_ref())))
    }

    /// How many jobs changed after change `after`.
    pub fn outbox_waiting(&self, after: u64) -> usize {
        self.outbox.range(after + 1..).count()
    }

    /// Whether this state already holds every register of `incoming` at least as new (merging it changes nothing).
    pub fn covers(&self, incoming: &ReplicatedJob) -> bool {
        self.jobs.get(&incoming.id).is_some_and(|j| j.versions.covers(&incoming.versions))
    }

    /// A job's tasks here: running, not placed yet, and the first of those (for its pending reason).
    pub fn figures(&self, job: &str) -> (u32, u32, Option<&str>) {
        let (mut running, mut pending, mut first) = (0, 0, None);
        for t in self.tasks_of_job(job) {
            match t.state {
                titan_api::task::TaskState::Running => running += 1,
                titan_api::task::TaskState::Accepted if t.desired == titan_api::task::Desired::Run => {
                    pending += 1;
                    first.get_or_insert(t.id.as_str());
                }
                _ => {}
            }
        }
        (running, pending, first)
    }

    /// How far this cell has merged `cell`'s outbox.
    pub fn position(&self, cell: &str) -> u64 {
        self.positions.get(cell).copied().unwrap_or(0)
    }

    /// Merges a batch `from` another cell, register by register, and moves its position to `upto`.
    pub(super) fn merge_jobs(
        &mut self,
        from: &str,
        upto: u64,
        jobs: &[ReplicatedJob],
        max_skew_ms: u64,
        meta: &Meta,
    ) -> MergeOutcome {
        let mut out = MergeOutcome::default();
        for incoming in jobs {
            if let Err(e) = newest(&incoming.versions).map_or(Ok(()), |v| hlc::check_skew(v, meta.at_ms, max_skew_ms)) {
                out.refused.push((incoming.id.clone(), e.to_string()));
                continue;
            }
            for v in incoming.versions.all() {
                // Within the bound, checked above.
                let _ = self.clock.observe(v, meta.at_ms, max_skew_ms);
            }
            let was = self.jobs.get(&incoming.id).map(|j| (j.state, j.version));
            // Tasks made from the spec being replaced keep running as it said until they end.
            let current = self.jobs.get(&incoming.id).map(|j| j.spec_version);
            let keep = current.is_some_and(|v| self.job_tasks.get(&incoming.id).is_some_and(|s| s.uses_spec(v)));
            let merged = match self.jobs.get_mut(&incoming.id).map(Arc::make_mut) {
                Some(job) => merge_into(job, incoming, keep, from, meta),
                None => {
                    self.jobs.insert(incoming.id.clone(), Arc::new(record_of(incoming, from, meta)));
                    Some(())
                }
            };
            match merged {
                Some(()) => {
                    out.changed += 1;
                    self.fx.capacity_moved = true;
                    self.job_changed(&incoming.id, was);
                }
                None => out.unchanged += 1,
            }
        }
        let position = self.positions.entry(from.to_string()).or_insert(0);
        *position = (*position).max(upto);
        out.position = *position;
        out
    }
}

fn newest(v: &JobVersions) -> Option<&Hlc> {
    v.all().max()
}

/// Merges `incoming` into `job`; `None` when nothing changed.
fn merge_into(job: &mut JobRecord, incoming: &ReplicatedJob, keep: bool, from: &str, meta: &Meta) -> Option<()> {
    let mut regs = Registers {
        spec: job.spec.clone(),
        counts: job.counts.clone(),
        enabled: job.state != JobState::Disabled,
        versions: job.versions.clone(),
    };
    let m = register::merge(&mut regs, incoming);
    if !m.changed() {
        return None;
    }
    let mut what = Vec::new();
    if m.spec {
        let old = std::mem::replace(&mut job.spec, regs.spec);
        if keep {
            job.older_specs.insert(job.spec_version, old);
        }
        what.push("spec".to_string());
    }
    if !m.counts.is_empty() {
        job.counts = regs.counts;
        what.push(format!("instances {}", describe(&job.counts)));
    }
    if m.spec || !m.counts.is_empty() {
        // The spec's location, shown to users, follows the counts in every cell alike.
        let counts = job.counts.clone();
        Arc::make_mut(&mut job.spec).set_counts(&counts);
    }
    if m.enabled && job.state != JobState::Killed {
        job.state = if regs.enabled { JobState::Enabled } else { JobState::Disabled };
        what.push(if regs.enabled { "enabled".into() } else { "disabled".into() });
    }
    if m.killed {
        job.state = JobState::Killed;
        what.push("killed".into());
    }
    job.versions = regs.versions;
    // The change is the latest write's cell's (a relay is not its origin).
    let origin = newest(&incoming.versions).map(|v| v.cell.clone()).filter(|c| !c.is_empty());
    let change = Meta {
        who: format!("cell:{from}"),
        why: None,
        cell: origin.unwrap_or_else(|| from.to_string()),
        ..meta.clone()
    };
    job.change(&change, format!("{} (from {from})", what.join(", ")));
    if m.spec {
        job.spec_version = job.version;
    }
    Some(())
}

/// A job this cell had not seen, as `incoming` says.
fn record_of(incoming: &ReplicatedJob, from: &str, meta: &Meta) -> JobRecord {
    let state = match (&incoming.versions.killed, incoming.enabled) {
        (Some(_), _) => JobState::Killed,
        (None, true) => JobState::Enabled,
        (None, false) => JobState::Disabled,
    };
    let mut spec = incoming.spec.clone();
    Arc::make_mut(&mut spec).set_counts(&incoming.counts);
    let mut record = JobRecord::new(
        &incoming.id,
        spec,
        incoming.counts.clone(),
        state,
        incoming.created_at_ms,
        meta.at_ms,
        incoming.versions.clone(),
        &incoming.origin,
    );
    let change = Meta { who: format!("cell:{from}"), why: None, cell: incoming.origin.clone(), ..meta.clone() };
    record.change(&change, format!("created in {} (from {from})", incoming.origin));
    record
}

impl JobRecord {
    /// The job as one cell sends it to another.
    pub fn replicated(&self) -> ReplicatedJob {
        ReplicatedJob {
            id: self.id.clone(),
            spec: self.spec.clone(),
            counts: self.counts.clone(),
            enabled: self.state != JobState::Disabled,
            versions: self.versions.clone(),
            created_at_ms: self.created_at_ms,
            origin: self.origin.clone(),
        }
    }
}
