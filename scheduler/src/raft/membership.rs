//! Membership decisions, pure: when a learner may vote, whether a change leaves a reachable quorum, how calls to a
//! peer that does not answer back off and are reported, and when a member removed from the cell stands down.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use openraft::LogId;

use super::NodeId;

/// The first wait after a call to a peer found it unreachable.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// The longest wait between calls to an unreachable peer.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// At most one warning per peer in this long about calls it did not answer; the rest are counted.
pub const WARN_EVERY: Duration = Duration::from_secs(30);

/// Waits between calls to a peer that stays unreachable: doubling from `BACKOFF_FIRST`, capped at `BACKOFF_MAX`.
/// openraft asks for a new one at the first failure of a streak and drops it at the next answer.
pub fn backoff() -> impl Iterator<Item = Duration> + Send + 'static {
    std::iter::successors(Some(BACKOFF_FIRST), |d| Some((*d * 2).min(BACKOFF_MAX)))
}

/// Failed calls to one peer and when they were last reported, so a peer that never answers costs one warning per
/// `WARN_EVERY`, not one per call.
#[derive(Debug, Default)]
pub struct FailureLog {
    last_warned: Option<Instant>,
    suppressed: u64,
    /// Calls failed since the peer last answered.
    streak: u64,
}

impl FailureLog {
    /// A call failed at `now`: `Some(n)` when it is to be reported, with the `n` failures not reported before it.
    pub fn failed(&mut self, now: Instant) -> Option<u64> {
        self.streak += 1;
        match self.last_warned {
            Some(at) if now.duration_since(at) < WARN_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_warned = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// Calls failed since the peer last answered.
    pub fn streak(&self) -> u64 {
        self.streak
    }

    /// The peer answered: the failed calls since its last answer (worth a line when there were any).
    pub fn answered(&mut self) -> u64 {
        self.suppressed = 0;
        self.last_warned = None;
        std::mem::take(&mut self.streak)
    }
}

/// Whether a learner may become a voter: it has answered and holds the log up to `target`, the leader's last entry
/// when it was added. A learner that never answered has no matched entry at all.
pub fn caught_up(matched: Option<u64>, target: u64) -> bool {
    matched.is_some_and(|m| m >= target)
}

/// A membership change Raft could not commit, or that would leave the cell unable to commit after it.
#[derive(Debug, PartialEq, Eq)]
pub struct NoQuorum {
    pub voters: BTreeSet<NodeId>,
    pub answering: BTreeSet<NodeId>,
}

impl std::fmt::Display for NoQuorum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the change would leave no reachable quorum: of the voters {:?} only {:?} answered recently, not a majority",
            self.voters, self.answering
        )
    }
}

/// Refuses a change from `old` to `new` voters unless a majority of each answers (`answering`, the leader
/// included): Raft commits a change in both configurations (joint consensus), and the cell must commit after it.
pub fn quorum_after_change(
    old: &BTreeSet<NodeId>,
    new: &BTreeSet<NodeId>,
    answering: &BTreeSet<NodeId>,
) -> Result<(), NoQuorum> {
    for voters in [old, new] {
        let up: BTreeSet<NodeId> = voters.intersection(answering).copied().collect();
        if up.len() * 2 <= voters.len() {
            return Err(NoQuorum { voters: voters.clone(), answering: up });
        }
    }
    Ok(())
}

/// Whether a member refuses a vote request from a candidate that is no voter in its membership (as of `ours`): only
/// when it has one and the candidate's log ends before it. A member with no membership yet (a fresh cell before its
/// first leader) refuses nobody, and a candidate holding that membership entry would know its own place in it.
pub fn refuses_vote(
    candidate_is_voter: bool,
    candidate_last_log: Option<LogId<NodeId>>,
    ours: Option<LogId<NodeId>>,
) -> bool {
    !candidate_is_voter && ours.is_some() && candidate_last_log < ours
}

/// Whether a member stands down when a peer whose membership (as of `theirs`) leaves it out refuses its vote request:
/// only when that membership is at least as new as its own (`ours`). A peer that has not yet heard of a newer one
/// that lists this member is out of date, not authoritative.
pub fn stands_down(ours: Option<LogId<NodeId>>, theirs: Option<LogId<NodeId>>) -> bool {
    theirs >= ours
}

/// Whether a member that stood down when its membership was `at` may campaign again: a newer membership lists it as
/// a voter (it was added back).
pub fn rejoins(at: Option<LogId<NodeId>>, now: Option<LogId<NodeId>>, is_voter: bool) -> bool {
    is_voter && now > at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[NodeId]) -> BTreeSet<NodeId> {
        v.iter().copied().collect()
    }

    fn log(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(openraft::CommittedLeaderId::new(term, 1), index))
    }

    #[test]
    fn backoff_doubles_from_50_ms_to_at_most_5_s() {
        let waits: Vec<u64> = backoff().take(10).map(|d| d.as_millis() as u64).collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    #[test]
    fn failures_are_reported_once_per_period_with_a_count_of_the_rest() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        assert_eq!(log.failed(t0), Some(0), "the first failure is reported at once");
        for i in 1..=99 {
            assert_eq!(log.failed(t0 + Duration::from_millis(i * 100)), None);
        }
        assert_eq!(log.failed(t0 + WARN_EVERY), Some(99), "then one line with the count held back");
        assert_eq!(log.failed(t0 + WARN_EVERY + Duration::from_secs(1)), None);
        assert_eq!(log.answered(), 102, "an answer ends the streak");
        assert_eq!(log.failed(t0 + WARN_EVERY + Duration::from_secs(2)), Some(0), "a new streak is reported at once");
    }

    #[test]
    fn a_learner_votes_only_once_it_answered_and_holds_the_leaders_log() {
        let check = |matched, target, want| assert_eq!(caught_up(matched, target), want, "{matched:?} {target}");
        check(None, 0, false);
        check(None, 7, false);
        check(Some(6), 7, false);
        check(Some(7), 7, true);
        check(Some(9), 7, true);
    }

    #[test]
    fn a_change_needs_a_majority_answering_before_and_after() {
        let check = |old: &[NodeId], new: &[NodeId], up: &[NodeId], ok: bool| {
            let got = quorum_after_change(&ids(old), &ids(new), &ids(up));
            assert_eq!(got.is_ok(), ok, "{old:?} -> {new:?} with {up:?} answering: {got:?}");
        };
        // The dev cell: one member, adding one that never answers would need both.
        check(&[1], &[1, 2], &[1], false);
        check(&[1], &[1, 2], &[1, 2], true);
        // Three members, a fourth unreachable: 2 of 4 is no majority.
        check(&[1, 2, 3], &[1, 2, 3, 4], &[1, 2, 3], true);
        check(&[1, 2, 3], &[1, 2, 3, 4], &[1, 2], false);
        // Removing a live member while another is down leaves one of two.
        check(&[1, 2, 3], &[1, 2], &[1, 3], false);
        check(&[1, 2, 3], &[1, 2], &[1, 2], true);
        // The old configuration must commit the change too.
        check(&[1, 2, 3], &[1], &[1], false);
        let err = quorum_after_change(&ids(&[1, 2]), &ids(&[1, 2]), &ids(&[1])).expect_err("1 of 2");
        assert!(err.to_string().contains("no reachable quorum"), "{err}");
    }

    #[test]
    fn only_a_candidate_missing_the_membership_that_left_it_out_is_refused() {
        assert!(refuses_vote(false, log(1, 3), log(1, 5)), "removed while away");
        assert!(!refuses_vote(true, log(1, 3), log(1, 5)), "a voter");
        assert!(!refuses_vote(false, None, None), "a fresh cell: nobody has a membership yet");
        assert!(!refuses_vote(false, log(1, 5), log(1, 5)), "it holds the entry, so it knows its place");
    }

    #[test]
    fn a_member_stands_down_only_for_a_membership_as_new_as_its_own() {
        assert!(stands_down(log(1, 5), log(1, 9)), "the cell moved on without it");
        assert!(stands_down(log(1, 5), log(1, 5)), "the same membership leaves it out");
        assert!(!stands_down(log(2, 9), log(1, 5)), "the peer is behind: it has not seen this member added");
        assert!(rejoins(log(1, 5), log(1, 8), true), "added back later");
        assert!(!rejoins(log(1, 5), log(1, 8), false), "a learner again, no vote");
        assert!(!rejoins(log(1, 5), log(1, 5), true), "the membership it stood down in");
    }
}
