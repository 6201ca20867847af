//! What applying a command does besides changing the state: the events it made, the agents whose assignments
//! changed, the jobs it changed, whether capacity moved. `apply` returns them; the applier hands them on (to the
//! event stream, to agents' long-polls, to the leader's scheduler). They are never part of the state's value.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use titan_api::event::Event;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effects {
    /// Events made, in order; their log index is stamped by the applier.
    pub events: Vec<Event>,
    /// Agents whose assignments changed, each with the version of its change (repeats possible: see `agents`).
    pub touched: Vec<(String, u64)>,
    /// Jobs changed, themselves or their tasks: a round looks at these, and at every job only now and then.
    pub dirty_jobs: BTreeSet<String>,
    /// Whether a task that did not fit might fit now: capacity freed, an agent added, back or put to work, a
    /// job's spec changed. The leader re-places pending tasks only then.
    pub capacity_moved: bool,
}

impl Effects {
    /// The agents of `touched` (gathered from effects), each once with its latest version.
    pub fn latest(mut touched: Vec<(String, u64)>) -> Vec<(String, u64)> {
        let all = &mut touched;
        all.sort();
        all.reverse();
        all.dedup_by(|a, b| a.0 == b.0);
        touched
    }
}

/// What the leader's scheduler takes from the effects of applied commands: the jobs changed since it last looked,
/// and a counter raised whenever capacity may have moved. Filled by the applier, on every member.
#[derive(Debug, Default)]
pub struct Changes {
    dirty_jobs: Mutex<BTreeSet<String>>,
    capacity_seq: AtomicU64,
    /// Raised when a job changed or capacity moved: what wakes the scheduler (one permit kept when nobody waits).
    notify: tokio::sync::Notify,
}

impl Changes {
    /// Notes what one batch of commands changed.
    pub fn note(&self, dirty_jobs: BTreeSet<String>, capacity_moved: bool) {
        if capacity_moved {
            self.capacity_moved();
        }
        if !dirty_jobs.is_empty() {
            self.notify.notify_one();
            let mut dirty = self.dirty_jobs.lock().unwrap_or_else(|p| p.into_inner());
            if dirty.is_empty() {
                *dirty = dirty_jobs;
            } else {
                dirty.extend(dirty_jobs);
            }
        }
    }

    /// Capacity may have moved (a snapshot was installed).
    pub fn capacity_moved(&self) {
        self.capacity_seq.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_one();
    }

    /// Resolves once something was noted since the last time it resolved (at once if it was meanwhile).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }

    /// The jobs changed since the last call.
    pub fn take_dirty_jobs(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.dirty_jobs.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Raised whenever a task that did not fit might fit now.
    pub fn capacity_seq(&self) -> u64 {
        self.capacity_seq.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_touched_twice_is_handed_on_once_with_its_latest_version() {
        let touched = vec![("a1".into(), 3), ("a2".into(), 4), ("a1".into(), 5)];
        assert_eq!(Effects::latest(touched), vec![("a2".to_string(), 4), ("a1".to_string(), 5)]);
    }

    #[test]
    fn changed_jobs_gather_until_taken_and_the_capacity_counter_only_rises() {
        let changes = Changes::default();
        changes.note(BTreeSet::from(["j1".to_string()]), false);
        changes.note(BTreeSet::from(["j2".to_string()]), true);
        assert_eq!(changes.capacity_seq(), 1);
        assert_eq!(changes.take_dirty_jobs().len(), 2);
        assert!(changes.take_dirty_jobs().is_empty(), "taken");
        changes.capacity_moved();
        assert_eq!(changes.capacity_seq(), 2);
    }
}
