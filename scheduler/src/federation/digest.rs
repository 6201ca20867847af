//! Anti-entropy digests: what repairs a job a stream missed. A cell sums the hash of each job's id and register
//! versions into one of `BUCKETS` buckets by the hash of its id; two cells compare their sums, list each job's hash
//! in the buckets that differ, and the sender pushes only the jobs whose hash differs. A cell that matches except for
//! a few jobs exchanges 8 KiB and those jobs, however long it was away.
//!
//! The hash is FNV-1a over a fixed encoding, so it is the same in every cell and every build.

use serde::{Deserialize, Serialize};

use super::register::JobVersions;
use super::Hlc;

/// Buckets of a digest.
pub const BUCKETS: usize = 1024;

/// A cell's digest: the sum of its jobs' hashes per bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub buckets: Vec<u64>,
}

impl Default for Digest {
    fn default() -> Self {
        Digest { buckets: vec![0; BUCKETS] }
    }
}

impl Digest {
    /// Adds one job.
    pub fn add(&mut self, id: &str, versions: &JobVersions) {
        let b = bucket(id);
        self.buckets[b] = self.buckets[b].wrapping_add(job_hash(id, versions));
    }

    /// Adds one object by its key and hash (a quota: `quota_hash`).
    pub fn add_hash(&mut self, key: &str, hash: u64) {
        let b = bucket(key);
        self.buckets[b] = self.buckets[b].wrapping_add(hash);
    }

    /// The buckets where `other` differs from this (a digest of another size differs everywhere).
    pub fn differing(&self, other: &Digest) -> Vec<u16> {
        if other.buckets.len() != self.buckets.len() {
            return (0..BUCKETS as u16).collect();
        }
        (0..BUCKETS).filter(|&i| self.buckets[i] != other.buckets[i]).map(|i| i as u16).collect()
    }
}

/// One job in a bucket that differs, as the cell answering a digest holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub hash: u64,
    /// Its newest register version.
    pub newest: Hlc,
    /// A job's kill, whose register keeps the earliest version, not the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed: Option<Hlc>,
}

impl Entry {
    pub fn of(id: &str, v: &JobVersions) -> Entry {
        Entry {
            id: id.to_string(),
            hash: job_hash(id, v),
            newest: v.all().max().cloned().unwrap_or_default(),
            killed: v.killed.clone(),
        }
    }
}

/// Whether a cell holding `ours` of a job sends it to a cell that answered `theirs` for it: when that cell lacks it,
/// or holds another version and no newer write than ours. The side with the newest write leaves it to the other to
/// send (its own digest does), so a job on its way is not pushed back; on a tie both send, which is what settles a
/// job where each side has a register the other lacks. A kill keeps the earliest version, so the side with the
/// earlier kill sends too.
pub fn should_send(id: &str, ours: &JobVersions, theirs: Option<&Entry>) -> bool {
    match theirs {
        None => true,
        Some(t) => {
            let earlier_kill = ours.killed.as_ref().is_some_and(|k| t.killed.as_ref().is_none_or(|theirs| k < theirs));
            t.hash != job_hash(id, ours) && (earlier_kill || ours.all().max().is_some_and(|n| *n >= t.newest))
        }
    }
}

/// The bucket of job `id`.
pub fn bucket(id: &str) -> usize {
    (Fnv::new().bytes(id.as_bytes()).0 % BUCKETS as u64) as usize
}

/// The hash of one job's id and every register version: equal in two cells exactly when they hold the same writes.
pub fn job_hash(id: &str, v: &JobVersions) -> u64 {
    let mut h = Fnv::new().bytes(id.as_bytes()).hlc(&v.spec).hlc(&v.enabled);
    for (location, version) in &v.counts {
        h = h.bytes(location.as_bytes()).hlc(version);
    }
    if let Some(k) = &v.killed {
        h = h.bytes(b"killed").hlc(k);
    }
    h.0
}

/// The hash of a quota's register (its key, version and whether it is deleted).
pub fn quota_hash(key: &str, version: &Hlc, deleted: bool) -> u64 {
    Fnv::new().bytes(key.as_bytes()).hlc(version).bytes(&[u8::from(deleted)]).0
}

/// Whether a cell holding a quota at `ours` sends it to a cell that answered `theirs` for it (as `should_send`).
pub fn should_send_quota(key: &str, ours: &Hlc, deleted: bool, theirs: Option<&Entry>) -> bool {
    match theirs {
        None => true,
        Some(t) => t.hash != quota_hash(key, ours, deleted) && *ours >= t.newest,
    }
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(mut self, bytes: &[u8]) -> Fnv {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        self
    }

    fn hlc(self, v: &Hlc) -> Fnv {
        self.bytes(&v.ms.to_le_bytes()).bytes(&v.counter.to_le_bytes()).bytes(v.cell.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const PINNED_HASH: u64 = 17_950_526_316_926_803_410;
    const PINNED_BUCKET: usize = 672;

    fn versions(ms: u64) -> JobVersions {
        JobVersions {
            spec: Hlc::new(ms, 0, "dc1"),
            counts: BTreeMap::from([("dc1".into(), Hlc::new(ms, 1, "dc1"))]),
            enabled: Hlc::new(ms, 0, "dc1"),
            killed: None,
        }
    }

    #[test]
    fn two_cells_with_the_same_writes_agree_in_any_order_and_one_changed_job_differs_in_one_bucket() {
        let (mut a, mut b) = (Digest::default(), Digest::default());
        for i in 0..1000 {
            a.add(&format!("job-{i}"), &versions(i));
        }
        for i in (0..1000).rev() {
            b.add(&format!("job-{i}"), &versions(i));
        }
        assert_eq!(a, b);
        assert!(a.differing(&b).is_empty());

        let mut c = Digest::default();
        for i in 0..1000 {
            let mut v = versions(i);
            if i == 7 {
                v.counts.insert("dc2".into(), Hlc::new(5, 0, "dc2"));
            }
            c.add(&format!("job-{i}"), &v);
        }
        assert_eq!(a.differing(&c), [bucket("job-7") as u16]);
        assert_ne!(job_hash("job-7", &versions(7)), job_hash("job-7", &versions(8)));
    }

    #[test]
    fn a_job_is_sent_when_the_other_lacks_it_or_holds_no_newer_write_and_both_sides_settle() {
        let (old, new) = (versions(1), versions(2));
        assert!(should_send("j", &old, None));
        assert!(!should_send("j", &old, Some(&Entry::of("j", &old))), "the same: nothing to send");
        assert!(!should_send("j", &old, Some(&Entry::of("j", &new))), "theirs is newer: they send");
        assert!(should_send("j", &new, Some(&Entry::of("j", &old))));
        // Each side has a register the other lacks, at the same newest version: both send, and both merge.
        let mut a = versions(5);
        a.counts.insert("dc2".into(), Hlc::new(3, 0, "dc2"));
        let mut b = versions(5);
        b.counts.insert("dc3".into(), Hlc::new(4, 0, "dc3"));
        assert!(should_send("j", &a, Some(&Entry::of("j", &b))));
        assert!(should_send("j", &b, Some(&Entry::of("j", &a))));
        // Killed in both, earlier here, though the other's newest write is later: this side sends.
        let mut early = versions(5);
        early.killed = Some(Hlc::new(6, 0, "dc1"));
        let mut late = versions(5);
        late.killed = Some(Hlc::new(9, 0, "dc2"));
        assert!(should_send("j", &early, Some(&Entry::of("j", &late))));
    }

    #[test]
    fn the_hash_is_fixed_across_builds() {
        // Cells of different builds compare digests: these values must never change.
        assert_eq!(job_hash("j", &versions(1)), PINNED_HASH);
        assert_eq!(bucket("web-1"), PINNED_BUCKET);
    }
}
