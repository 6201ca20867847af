//! What a member knows of the other cells: when each was last heard, its leader and members, how far each has
//! merged the others' outboxes, and the lag of the latest batch merged from it. Kept in memory (heartbeats refresh
//! it every second), on every member, so `GET /v1/cells` answers anywhere.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::federation::wire::{Beat, Summary};

/// One other cell as last heard.
#[derive(Clone, Debug, Default)]
pub struct Heard {
    pub beat: Beat,
    /// Its jobs' figures, gathered from its heartbeats (each sends only what changed), and when each came.
    pub summaries: BTreeMap<String, (Summary, Instant)>,
    pub at: Option<Instant>,
    /// From a write there to its merge here, for the latest batch merged from it.
    pub lag_in: Option<Duration>,
}

/// A cell's state from how long it has been silent.
pub fn state_of(silent: Option<Duration>, suspect: Duration, down: Duration) -> &'static str {
    match silent {
        Some(s) if s < suspect => "up",
        Some(s) if s < down => "suspect",
        _ => "down",
    }
}

#[derive(Default)]
pub struct Cells(Mutex<BTreeMap<String, Heard>>);

impl Cells {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Heard>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn heard(&self, mut beat: Beat) {
        let now = Instant::now();
        let mut cells = self.lock();
        let heard = cells.entry(beat.cell.clone()).or_default();
        for (job, s) in std::mem::take(&mut beat.summaries) {
            heard.summaries.insert(job, (s, now));
        }
        heard.beat = beat;
        heard.at = Some(now);
    }

    /// What `cell` last reported of `job`, and how long ago.
    pub fn summary(&self, cell: &str, job: &str) -> Option<(Summary, Duration)> {
        self.lock().get(cell)?.summaries.get(job).map(|(s, at)| (s.clone(), at.elapsed()))
    }

    pub fn merged(&self, cell: &str, lag: Duration) {
        self.lock().entry(cell.to_string()).or_default().lag_in = Some(lag);
    }

    pub fn get(&self, cell: &str) -> Option<Heard> {
        self.lock().get(cell).cloned()
    }

    /// The outbox change number `cell` last reported.
    pub fn outbox_seq(&self, cell: &str) -> Option<u64> {
        self.lock().get(cell).filter(|h| h.at.is_some()).map(|h| h.beat.outbox_seq)
    }

    /// How this member sees each other cell: up, suspect or down.
    pub fn sees(&self, config: &crate::federation::FederationConfig) -> BTreeMap<String, String> {
        let (suspect, down) = (Duration::from_millis(config.suspect_ms), Duration::from_millis(config.down_ms));
        let cells = self.lock();
        config
            .cells
            .keys()
            .map(|c| {
                let silent = cells.get(c).and_then(|h| h.at).map(|t| t.elapsed());
                (c.clone(), state_of(silent, suspect, down).to_string())
            })
            .collect()
    }

    /// How long each cell of `config` has been silent (never heard: `since_start`), and how each cell heard
    /// within `down` sees the others.
    pub fn silences(
        &self,
        config: &crate::federation::FederationConfig,
        since_start: Duration,
    ) -> (BTreeMap<String, Duration>, BTreeMap<String, BTreeMap<String, String>>) {
        let down = Duration::from_millis(config.down_ms);
        let cells = self.lock();
        let mut silent = BTreeMap::new();
        let mut theirs = BTreeMap::new();
        for c in config.cells.keys() {
            let heard = cells.get(c);
            let s = heard.and_then(|h| h.at).map_or(since_start, |t| t.elapsed().min(since_start));
            silent.insert(c.clone(), s);
            if let Some(h) = heard.filter(|_| s < down) {
                theirs.insert(c.clone(), h.beat.sees.clone());
            }
        }
        (silent, theirs)
    }

    /// When each cell was last heard.
    pub fn last_heard(&self) -> BTreeMap<String, Option<Instant>> {
        self.lock().iter().map(|(c, h)| (c.clone(), h.at)).collect()
    }
}

/// The other cells' figures as a member heard them, for evacuation moves (`location::Elsewhere`).
pub struct Seen<'a> {
    cells: &'a Cells,
    down: Duration,
    known: &'a BTreeMap<String, Vec<crate::address::PeerAddr>>,
}

impl<'a> Seen<'a> {
    pub fn new(cells: &'a Cells, config: &'a crate::federation::FederationConfig) -> Seen<'a> {
        Seen { cells, down: Duration::from_millis(config.down_ms), known: &config.cells }
    }
}

impl crate::location::Elsewhere for Seen<'_> {
    fn running(&self, location: &str, job: &str) -> Option<u32> {
        self.cells.summary(location, job).map(|(s, _)| s.running)
    }

    fn is_down(&self, location: &str) -> bool {
        if !self.known.contains_key(location) {
            return false;
        }
        let silent = self.cells.lock().get(location).and_then(|h| h.at).map(|t| t.elapsed());
        state_of(silent, self.down, self.down) == "down"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_is_suspect_then_down_as_its_silence_grows() {
        let (suspect, down) = (Duration::from_secs(3), Duration::from_secs(15));
        assert_eq!(state_of(Some(Duration::from_millis(900)), suspect, down), "up");
        assert_eq!(state_of(Some(Duration::from_secs(4)), suspect, down), "suspect");
        assert_eq!(state_of(Some(Duration::from_secs(16)), suspect, down), "down");
        assert_eq!(state_of(None, suspect, down), "down", "never heard");
    }
}
