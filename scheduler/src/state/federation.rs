//! Federation in the state: versions for local writes, the outbox of changed jobs other cells are sent, how far
//! this cell merged each other cell's outbox, and the merge of a pushed batch.

use super::*;
use crate::command::{MergeOutcome, Meta};
use crate::federation::digest::{self, Digest, Entry};
use crate::federation::register::{self, Registers};
use crate::federation::{JobVersions, ReplicatedJob};
use crate::hlc;

/// One replicated object in the outbox.
pub enum Outgoing<'a> {
    Job(&'a JobRecord),
    Quota(&'a crate::quota::QuotaRecord),
    Location(&'a crate::location::LocationRecord),
    Token(&'a crate::token::TokenRecord),
}

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

    /// Jobs and quotas changed after change `after`, oldest first, at most `n`, each with its change number.
    pub fn outbox_after(&self, after: u64, n: usize) -> impl Iterator<Item = (u64, Outgoing<'_>)> + '_ {
        self.outbox.range(after + 1..).take(n).filter_map(|(seq, key)| {
            if let Some(group) = crate::quota::group_of_key(key) {
                return self.quota_record(group).map(|q| (*seq, Outgoing::Quota(q)));
            }
            if let Some(name) = crate::location::name_of_key(key) {
                return self.location(name).map(|l| (*seq, Outgoing::Location(l)));
            }
            if let Some(name) = crate::token::name_of_key(key) {
                return self.token(name).map(|t| (*seq, Outgoing::Token(t)));
            }
            self.jobs.get(key).map(|j| (*seq, Outgoing::Job(j.as_ref())))
        })
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

    /// This cell's digest of its jobs, leaving out tombstones past their retention (both sides forget those).
    pub fn digest(&self, now_ms: u64, tombstone_ms: u64) -> Digest {
        let mut d = Digest::default();
        for j in self.jobs.values().filter(|j| !expired(&j.versions, now_ms, tombstone_ms)) {
            d.add(&j.id, &j.versions);
        }
        for (key, hlc, deleted) in self.registers() {
            d.add_hash(&key, digest::quota_hash(&key, hlc, deleted));
        }
        d
    }

    /// Every object replicated as one register (quotas, deleted ones too; location records; tokens), by outbox key,
    /// with its version and whether it is a deletion.
    fn registers(&self) -> impl Iterator<Item = (String, &Hlc, bool)> + '_ {
        let quotas = self.quota_keys().map(|(key, q)| (key, &q.hlc, q.deleted));
        let locations = self.location_keys().map(|(key, l)| (key, &l.hlc, false));
        let tokens = self.token_keys().map(|(key, t)| (key, &t.hlc, false));
        quotas.chain(locations).chain(tokens)
    }

    /// Every token with its outbox key.
    fn token_keys(&self) -> impl Iterator<Item = (String, &crate::token::TokenRecord)> + '_ {
        self.tokens.values().map(|t| (crate::token::outbox_key(&t.name), t))
    }

    /// Every location record with its outbox key.
    fn location_keys(&self) -> impl Iterator<Item = (String, &crate::location::LocationRecord)> + '_ {
        self.locations.values().map(|l| (crate::location::outbox_key(&l.name), l))
    }

    /// Every quota held (deleted ones too) with its outbox key.
    fn quota_keys(&self) -> impl Iterator<Item = (String, &crate::quota::QuotaRecord)> + '_ {
        self.quotas.values().map(|q| (crate::quota::outbox_key(&q.group), q))
    }

    /// Each job's and register's hash in `buckets`, by bucket (tombstones past retention left out, as in the
    /// digest).
    pub fn bucket_entries(&self, buckets: &[u16], now_ms: u64, tombstone_ms: u64) -> Vec<(u16, Vec<Entry>)> {
        let wanted: BTreeSet<usize> = buckets.iter().map(|b| usize::from(*b)).collect();
        let mut out: BTreeMap<u16, Vec<Entry>> = buckets.iter().map(|b| (*b, Vec::new())).collect();
        for j in self.jobs.values().filter(|j| !expired(&j.versions, now_ms, tombstone_ms)) {
            let b = digest::bucket(&j.id);
            if wanted.contains(&b) {
                out.entry(b as u16).or_default().push(Entry::of(&j.id, &j.versions));
            }
        }
        for (key, hlc, deleted) in self.registers() {
            let b = digest::bucket(&key);
            if wanted.contains(&b) {
                let hash = digest::quota_hash(&key, hlc, deleted);
                out.entry(b as u16).or_default().push(Entry { id: key, hash, newest: hlc.clone(), killed: None });
            }
        }
        out.into_iter().collect()
    }

    /// The jobs here in `theirs`' buckets that another cell's answer to a digest says it lacks, or holds in
    /// another version with no newer write (`digest::should_send`).
    pub fn differing_jobs(&self, theirs: &[(u16, Vec<Entry>)], now_ms: u64, tombstone_ms: u64) -> Vec<ReplicatedJob> {
        let (wanted, known) = wanted_and_known(theirs);
        self.jobs
            .values()
            .filter(|j| !expired(&j.versions, now_ms, tombstone_ms) && wanted.contains(&digest::bucket(&j.id)))
            .filter(|j| digest::should_send(&j.id, &j.versions, known.get(j.id.as_str()).copied()))
            .map(|j| j.replicated())
            .collect()
    }

    /// The quotas here in `theirs`' buckets that another cell's answer to a digest says it lacks or holds older.
    pub fn differing_quotas(&self, theirs: &[(u16, Vec<Entry>)]) -> Vec<crate::quota::ReplicatedQuota> {
        differing(theirs, self.quota_keys(), |q| (&q.hlc, q.deleted)).into_iter().map(|q| q.replicated()).collect()
    }

    /// The location records here in `theirs`' buckets that another cell's answer to a digest says it lacks or
    /// holds older.
    pub fn differing_locations(&self, theirs: &[(u16, Vec<Entry>)]) -> Vec<crate::location::LocationRecord> {
        differing(theirs, self.location_keys(), |l| (&l.hlc, false)).into_iter().cloned().collect()
    }

    /// The tokens here in `theirs`' buckets that another cell's answer to a digest says it lacks or holds older.
    pub fn differing_tokens(&self, theirs: &[(u16, Vec<Entry>)]) -> Vec<crate::token::TokenRecord> {
        differing(theirs, self.token_keys(), |t| (&t.hlc, false)).into_iter().cloned().collect()
    }

    /// Killed jobs whose tombstone is past its retention at `now_ms` and that have no task left, at most `n`.
    pub fn forgettable_jobs(&self, now_ms: u64, tombstone_ms: u64, n: usize) -> Vec<String> {
        let Some(horizon) = now_ms.checked_sub(tombstone_ms).filter(|_| tombstone_ms > 0) else { return Vec::new() };
        self.tombstones
            .range(..(horizon, String::new()))
            .filter(|(_, id)| self.by_job.get(id).is_none_or(BTreeSet::is_empty))
            .take(n)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Drops a killed job past its tombstone's retention with no task left; false if it is not one.
    pub(super) fn forget_job(&mut self, id: &str, now_ms: u64) -> bool {
        let Some(job) = self.jobs.get(id) else { return false };
        let Some(killed) = job.versions.killed.as_ref().filter(|_| job.state == JobState::Killed) else { return false };
        if killed.ms >= now_ms || self.by_job.get(id).is_some_and(|t| !t.is_empty()) {
            return false;
        }
        let key = (killed.ms, id.to_string());
        self.tombstones.remove(&key);
        self.jobs.remove(id);
        if let Some(n) = self.by_state.get_mut(&JobState::Killed) {
            *n = n.saturating_sub(1);
        }
        self.by_state.retain(|_, n| *n > 0);
        if let Some(seq) = self.outbox_of.remove(id) {
            self.outbox.remove(&seq);
        }
        self.by_job.remove(id);
        self.job_tasks.remove(id);
        self.fx.dirty_jobs.insert(id.to_string());
        self.event(Topic::Job, "forgotten", id, Some(id), None, Some("its tombstone's retention passed"), now_ms);
        true
    }

    /// The single-register objects of a batch (quotas, locations) whose version is within the skew allowed, the
    /// clock raised past each; the others are refused in `out`, by outbox key.
    fn within_skew<T: Clone>(
        &mut self,
        items: &[T],
        version: impl Fn(&T) -> (&Hlc, String),
        (max_skew_ms, meta): (u64, &Meta),
        out: &mut MergeOutcome,
    ) -> Vec<T> {
        let mut taken = Vec::new();
        for item in items {
            let (v, key) = version(item);
            match hlc::check_skew(v, meta.at_ms, max_skew_ms) {
                Ok(()) => {
                    let _ = self.clock.observe(v, meta.at_ms, max_skew_ms);
                    taken.push(item.clone());
                }
                Err(e) => out.refused.push((key, e.to_string())),
            }
        }
        taken
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
        (jobs, quotas, locations, tokens): (
            &[ReplicatedJob],
            &[crate::quota::ReplicatedQuota],
            &[crate::location::LocationRecord],
            &[crate::token::TokenRecord],
        ),
        (max_skew_ms, tombstone_ms): (u64, u64),
        meta: &Meta,
    ) -> MergeOutcome {
        let mut out = MergeOutcome::default();
        let quotas =
            self.within_skew(quotas, |q| (&q.hlc, crate::quota::outbox_key(&q.group)), (max_skew_ms, meta), &mut out);
        let (changed, conflicts) = self.merge_quotas(from, &quotas, meta);
        out.changed += changed;
        out.conflicts += conflicts;
        let locations = self.within_skew(
            locations,
            |l| (&l.hlc, crate::location::outbox_key(&l.name)),
            (max_skew_ms, meta),
            &mut out,
        );
        let (changed, conflicts) = self.merge_locations(from, &locations, meta);
        out.changed += changed;
        out.conflicts += conflicts;
        let tokens =
            self.within_skew(tokens, |t| (&t.hlc, crate::token::outbox_key(&t.name)), (max_skew_ms, meta), &mut out);
        let (changed, conflicts) = self.merge_tokens(from, &tokens, meta);
        out.changed += changed;
        out.conflicts += conflicts;
        for incoming in jobs {
            if !self.jobs.contains_key(&incoming.id) && expired(&incoming.versions, meta.at_ms, tombstone_ms) {
                // A tombstone past its retention that this cell already forgot (or never had): not taken back in.
                out.unchanged += 1;
                continue;
            }
            if let Err(e) = newest(&incoming.versions).map_or(Ok(()), |v| hlc::check_skew(v, meta.at_ms, max_skew_ms)) {
                out.refused.push((incoming.id.clone(), e.to_string()));
                continue;
            }
            for v in incoming.versions.all() {
                // Within the bound, checked above.
                let _ = self.clock.observe(v, meta.at_ms, max_skew_ms);
            }
            let was = self.jobs.get(&incoming.id).map(|j| (j.state, j.version));
            let kill_was = self.jobs.get(&incoming.id).and_then(|j| j.versions.killed.as_ref().map(|k| k.ms));
            // Tasks made from the spec being replaced keep running as it said until they end.
            let current = self.jobs.get(&incoming.id).map(|j| j.spec_version);
            let keep = current.is_some_and(|v| self.job_tasks.get(&incoming.id).is_some_and(|s| s.uses_spec(v)));
            let merged = match self.jobs.get_mut(&incoming.id).map(Arc::make_mut) {
                Some(job) => {
                    let (changed, conflicts) = merge_into(job, incoming, keep, from, meta);
                    out.conflicts += conflicts;
                    changed
                }
                None => {
                    self.jobs.insert(incoming.id.clone(), Arc::new(record_of(incoming, from, meta)));
                    true
                }
            };
            match merged {
                true => {
                    out.changed += 1;
                    self.fx.capacity_moved = true;
                    // An earlier kill moves the tombstone: its retention counts from the earlier one.
                    if let Some(ms) = kill_was {
                        self.tombstones.remove(&(ms, incoming.id.clone()));
                    }
                    self.job_changed(&incoming.id, was);
                }
                false => out.unchanged += 1,
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

/// Merges `incoming` into `job`: whether anything changed, and the registers where the incoming write lost.
fn merge_into(job: &mut JobRecord, incoming: &ReplicatedJob, keep: bool, from: &str, meta: &Meta) -> (bool, u32) {
    let mut regs = Registers {
        spec: job.spec.clone(),
        counts: job.counts.clone(),
        enabled: job.state != JobState::Disabled,
        versions: job.versions.clone(),
    };
    let m = register::merge(&mut regs, incoming);
    if !m.changed() {
        return (false, m.conflicts);
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
    if m.kill_earlier {
        what.push("kill dated to the earliest".into());
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
    (true, m.conflicts)
}

/// Whether a job's kill is older than `tombstone_ms` at `now_ms` (0: tombstones are kept for ever).
/// The buckets another cell's digest answer covers, and its entries by id.
fn wanted_and_known(theirs: &[(u16, Vec<Entry>)]) -> (BTreeSet<usize>, HashMap<&str, &Entry>) {
    let wanted = theirs.iter().map(|(b, _)| usize::from(*b)).collect();
    let known = theirs.iter().flat_map(|(_, e)| e.iter().map(|e| (e.id.as_str(), e))).collect();
    (wanted, known)
}

/// The registers of `keys` in `theirs`' buckets that the other cell lacks or holds older (`should_send_quota`);
/// `version` is a register's version and whether it is a deletion.
fn differing<'a, T: 'a>(
    theirs: &[(u16, Vec<Entry>)],
    keys: impl Iterator<Item = (String, &'a T)>,
    version: impl Fn(&T) -> (&Hlc, bool),
) -> Vec<&'a T> {
    let (wanted, known) = wanted_and_known(theirs);
    keys.filter(|(key, t)| {
        let (hlc, deleted) = version(t);
        wanted.contains(&digest::bucket(key))
            && digest::should_send_quota(key, hlc, deleted, known.get(key.as_str()).copied())
    })
    .map(|(_, t)| t)
    .collect()
}

pub(crate) fn expired(v: &JobVersions, now_ms: u64, tombstone_ms: u64) -> bool {
    tombstone_ms > 0 && v.killed.as_ref().is_some_and(|k| k.ms.saturating_add(tombstone_ms) < now_ms)
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
