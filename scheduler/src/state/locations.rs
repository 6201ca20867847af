//! Location levers in the state: each location's record (one replicated register), levers pulled here, records
//! merged from other cells, and the rule that a frozen location's counts never rise.

use super::*;
use crate::command::Meta;
use crate::location::{self, Lever, LeverState, LocationRecord};

impl CellState {
    /// A location's record, if a lever was ever pulled on it.
    pub fn location(&self, name: &str) -> Option<&LocationRecord> {
        self.locations.get(name)
    }

    /// Every location with a record.
    pub fn locations(&self) -> impl Iterator<Item = &LocationRecord> {
        self.locations.values()
    }

    /// A location's lever state (active when no lever was ever pulled).
    pub fn lever_state(&self, name: &str) -> LeverState {
        self.locations.get(name).map_or(LeverState::Active, |l| l.state)
    }

    /// Refuses counts that rise in a frozen location: `after` against `before` (a new job: nothing before).
    pub fn check_frozen(
        &self,
        before: Option<&BTreeMap<String, u32>>,
        after: &BTreeMap<String, u32>,
    ) -> Result<(), Rejection> {
        if self.locations.is_empty() {
            return Ok(());
        }
        for (l, n) in after {
            let was = before.and_then(|b| b.get(l)).copied().unwrap_or(0);
            let state = self.lever_state(l);
            if *n > was && state.freezes() {
                return Err(Rejection::LocationFrozen { location: l.clone(), state });
            }
        }
        Ok(())
    }

    /// Pulls `lever` on `name` if its state allows.
    pub(super) fn pull_lever(&mut self, name: &str, lever: &Lever, meta: &Meta) -> Response {
        let from = self.lever_state(name);
        let to = match lever.next(from) {
            Ok(to) => to,
            Err(e) => return Response::Rejected(Rejection::LeverIllegal(e)),
        };
        let hlc = self.stamp(meta);
        let what = describe(lever, from, to);
        let record = self.locations.entry(name.to_string()).or_insert_with(|| LocationRecord::new(name));
        let change = crate::history::Change {
            version: 0,
            at_ms: meta.at_ms,
            who: meta.who.clone(),
            why: meta.why.clone(),
            what: what.clone(),
            cell: meta.cell.clone(),
        };
        record.pull(lever, to, hlc, meta.at_ms, change);
        let (state, version) = (record.state, record.version);
        self.location_changed(name);
        self.event(Topic::Location, &what, name, None, None, meta.why.as_deref(), meta.at_ms);
        Response::Location { name: name.to_string(), state, version }
    }

    /// Merges location records another cell sent: the newer write wins. Returns how many changed here and how
    /// many incoming writes lost to a newer one made in another cell.
    pub(super) fn merge_locations(&mut self, from: &str, incoming: &[LocationRecord], meta: &Meta) -> (u32, u32) {
        let (mut changed, mut conflicts) = (0, 0);
        for l in incoming {
            let (take, lost) = location::takes(self.locations.get(&l.name), l);
            conflicts += u32::from(lost);
            if !take {
                continue;
            }
            let what = l.history.last().map_or_else(|| "changed".to_string(), |c| c.what.clone());
            self.locations.insert(l.name.clone(), l.clone());
            changed += 1;
            self.location_changed(&l.name);
            self.event(Topic::Location, &format!("{what} (from {from})"), &l.name, None, None, None, meta.at_ms);
        }
        (changed, conflicts)
    }

    /// After a location's record changed: other cells are sent it, and the jobs it concerns are looked at again.
    fn location_changed(&mut self, name: &str) {
        self.note_outbox(&location::outbox_key(name));
        let planned: Vec<String> = self
            .locations
            .get(name)
            .and_then(|l| l.evacuation.as_ref())
            .map(|e| e.moves.keys().cloned().collect())
            .unwrap_or_default();
        let asking = self.jobs.values().filter(|j| j.counts.contains_key(name)).map(|j| j.id.clone());
        let dirty: Vec<String> = asking.chain(planned).collect();
        self.fx.dirty_jobs.extend(dirty);
    }
}

/// "frozen -> evacuating: evacuate (40 instances to move, 2 left)", for history and events.
fn describe(lever: &Lever, from: LeverState, to: LeverState) -> String {
    let detail = match lever {
        Lever::Evacuate(e) => {
            let moved: u32 = e.moves.values().map(|m| m.moved()).sum();
            let left: u32 = e.moves.values().map(|m| m.left).sum();
            let how = if e.automatic { "automatic " } else { "" };
            format!(" ({how}{moved} instances of {} jobs to move, {left} left behind)", e.moves.len())
        }
        Lever::Weight(w) => format!(" (weight {w})"),
        _ => String::new(),
    };
    if from == to {
        format!("{}{detail}", lever.kind())
    } else {
        format!("{}: {} -> {}{detail}", lever.kind(), from.as_str(), to.as_str())
    }
}
