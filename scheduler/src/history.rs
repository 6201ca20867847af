//! A change to a replicated object (a job, a quota) as its record keeps it in its history.

use serde::{Deserialize, Serialize};
use titan_api::view::HistoryEntry;

/// One change to an object, as its record keeps it: who made it, why, when, and what it was. Owned here, in the shape
/// records have always had; `HistoryEntry` is its REST form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub version: u64,
    pub at_ms: u64,
    pub who: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    pub what: String,
    /// The cell that took the change; empty in records from before federation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cell: String,
}

impl From<&Change> for HistoryEntry {
    fn from(c: &Change) -> HistoryEntry {
        let Change { version, at_ms, who, why, what, cell } = c.clone();
        HistoryEntry { version, at_ms, who, why, what, cell: Some(cell).filter(|c| !c.is_empty()) }
    }
}
