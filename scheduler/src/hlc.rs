//! Hybrid logical clock versions: the order in which writes to one register win across cells.
//!
//! A version is (physical ms, logical counter, origin cell), compared in that order, so two cells never make the
//! same version and every cell picks the same winner. The clock lives in the replicated state (`Clock`), so a
//! version is decided deterministically as a command applies: the command's own time (decided before it was
//! proposed), raised past every version the cell has made or taken in.

use serde::{Deserialize, Serialize};

/// The version of one register.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    pub ms: u64,
    pub counter: u32,
    /// The cell that made the write.
    pub cell: String,
}

impl Hlc {
    pub fn new(ms: u64, counter: u32, cell: &str) -> Hlc {
        Hlc { ms, counter, cell: cell.to_string() }
    }
}

impl std::fmt::Display for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}@{}", self.ms, self.counter, self.cell)
    }
}

/// A cell's clock, kept in its replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    ms: u64,
    counter: u32,
}

/// Why a version from another cell is not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("version {version} is {ahead_ms} ms ahead of this cell's time, more than the {bound_ms} ms skew allowed")]
pub struct TooFarAhead {
    pub version: Hlc,
    pub ahead_ms: u64,
    pub bound_ms: u64,
}

impl Clock {
    /// A version for a write this cell makes at `at_ms` (the command's time), after every version it has seen.
    pub fn tick(&mut self, at_ms: u64, cell: &str) -> Hlc {
        if at_ms > self.ms {
            self.ms = at_ms;
            self.counter = 0;
        } else {
            self.counter = self.counter.saturating_add(1);
        }
        Hlc::new(self.ms, self.counter, cell)
    }

    /// Takes in a version another cell made, so this cell's next versions come after it; refused when it is more
    /// than `bound_ms` ahead of `now_ms` (a clock far ahead would otherwise win every register for as long).
    pub fn observe(&mut self, version: &Hlc, now_ms: u64, bound_ms: u64) -> Result<(), TooFarAhead> {
        check_skew(version, now_ms, bound_ms)?;
        if (version.ms, version.counter) > (self.ms, self.counter) {
            self.ms = version.ms;
            self.counter = version.counter;
        }
        Ok(())
    }
}

/// Whether `version` is at most `bound_ms` ahead of `now_ms`.
pub fn check_skew(version: &Hlc, now_ms: u64, bound_ms: u64) -> Result<(), TooFarAhead> {
    let ahead_ms = version.ms.saturating_sub(now_ms);
    if ahead_ms > bound_ms {
        return Err(TooFarAhead { version: version.clone(), ahead_ms, bound_ms });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_time_then_counter_then_cell() {
        assert!(Hlc::new(5, 0, "dc9") < Hlc::new(6, 0, "dc1"));
        assert!(Hlc::new(5, 1, "dc1") > Hlc::new(5, 0, "dc9"));
        assert!(Hlc::new(5, 1, "dc2") > Hlc::new(5, 1, "dc1"), "the same instant in two cells: the cell decides");
    }

    #[test]
    fn a_clock_never_goes_back_and_counts_within_one_ms() {
        let mut c = Clock::default();
        assert_eq!(c.tick(100, "dc1"), Hlc::new(100, 0, "dc1"));
        assert_eq!(c.tick(100, "dc1"), Hlc::new(100, 1, "dc1"));
        assert_eq!(c.tick(90, "dc1"), Hlc::new(100, 2, "dc1"), "a command stamped earlier still comes after");
        assert_eq!(c.tick(120, "dc1"), Hlc::new(120, 0, "dc1"));
    }

    #[test]
    fn a_version_taken_in_moves_the_clock_past_it_and_one_too_far_ahead_is_refused() {
        let mut c = Clock::default();
        c.tick(100, "dc1");
        c.observe(&Hlc::new(150, 4, "dc2"), 100, 1_000).expect("within the bound");
        assert_eq!(c.tick(120, "dc1"), Hlc::new(150, 5, "dc1"), "after what dc2 wrote");
        let err = c.observe(&Hlc::new(5_000, 0, "dc3"), 100, 1_000).expect_err("4.9 s ahead");
        assert_eq!((err.ahead_ms, err.bound_ms), (4_900, 1_000));
        assert_eq!(c.tick(120, "dc1"), Hlc::new(150, 6, "dc1"), "the refused version moved nothing");
    }
}
