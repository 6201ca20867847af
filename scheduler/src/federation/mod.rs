//! Federation: a cell in every fault domain, every job in every cell, each cell running its own location's count.
//!
//! Across cells Titan chooses availability: any cell takes writes while others are down, and all converge. Every
//! replicated register carries a hybrid-logical-clock version (`hlc`); a merge keeps the higher one per register
//! (`register`). Each cell's leader pushes the jobs changed since a peer's acknowledged position to that peer, in
//! batches it applies as one Raft command (`Command::Merge`), and heartbeats every peer (`wire` is what they send;
//! the worker and the routes are the member's, `member::federation`). Positions and
//! the outbox are in the replicated state, so a push resumes where it stopped after a restart or a new leader on
//! either side. Anti-entropy (`digest`) repairs whatever a stream missed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::address::PeerAddr;

pub mod digest;
pub mod register;
pub mod wire;

pub use crate::hlc::{self, Clock, Hlc};
pub use register::{JobVersions, ReplicatedJob};

pub const DEFAULT_HEARTBEAT_MS: u64 = 1_000;
pub const DEFAULT_SUSPECT_MS: u64 = 3_000;
pub const DEFAULT_DOWN_MS: u64 = 15_000;
/// How far ahead of a cell's clock another cell's version may be and still be taken.
pub const DEFAULT_MAX_SKEW_MS: u64 = 60_000;
/// Most jobs in one pushed batch.
pub const DEFAULT_BATCH: usize = 500;
/// How often a cell's leader compares digests with each other cell (and once each time a stream catches up).
pub const DEFAULT_DIGEST_MS: u64 = 30_000;

/// `[federation]`: the other cells and how this one talks to them. Empty `cells`: a standalone cell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Every other cell by name, with its members' (or a load balancer's) API addresses, `HOST:PORT` each.
    pub cells: BTreeMap<String, Vec<PeerAddr>>,
    pub heartbeat_ms: u64,
    /// Silence after which a cell is `suspect`, then `down`.
    pub suspect_ms: u64,
    pub down_ms: u64,
    pub max_skew_ms: u64,
    pub batch: usize,
    /// How often anti-entropy runs against each other cell.
    pub digest_ms: u64,
    /// `[federation.failover]`: automatic evacuation of a dead location.
    pub failover: FailoverConfig,
}

/// How long a location's cell must be silent before auto-failover evacuates it.
pub const DEFAULT_AUTO_AFTER_MS: u64 = 300_000;

/// `[federation.failover]`: off by default. On, a location whose cell this cell has not heard for
/// `auto_after_ms` and that a majority of the other cells see down is evacuated, one location at a time, and never
/// by a cell that does not itself reach a majority of the cells.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    pub enabled: bool,
    pub auto_after_ms: u64,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig { enabled: false, auto_after_ms: DEFAULT_AUTO_AFTER_MS }
    }
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            cells: BTreeMap::new(),
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            suspect_ms: DEFAULT_SUSPECT_MS,
            down_ms: DEFAULT_DOWN_MS,
            max_skew_ms: DEFAULT_MAX_SKEW_MS,
            batch: DEFAULT_BATCH,
            digest_ms: DEFAULT_DIGEST_MS,
            failover: FailoverConfig::default(),
        }
    }
}

/// A `[federation]` rule that does not hold; each names its setting.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FederationError {
    #[error("federation.cells: {0:?} is not a cell name (1-32 characters of a-z, 0-9 and '-')")]
    CellName(String),
    #[error("federation.cells: {0} is this cell; list only the others")]
    ItSelf(String),
    #[error("federation.cells: cell {0} has no member address")]
    NoAddress(String),
    #[error("federation.heartbeat_ms must be above 0 and below suspect_ms, and suspect_ms below down_ms; got {heartbeat}, {suspect}, {down}")]
    Timing { heartbeat: u64, suspect: u64, down: u64 },
    #[error("federation.batch must be 1 to 10000, got {0}")]
    Batch(usize),
    #[error("federation.digest_ms must be above 0, got 0")]
    DigestInterval,
    #[error("federation.failover.auto_after_ms must be at least federation.down_ms ({down}), got {auto_after}")]
    AutoAfter { auto_after: u64, down: u64 },
}

/// Whether `name` is a valid cell (location) name.
pub fn is_cell_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl FederationConfig {
    pub fn is_federated(&self) -> bool {
        !self.cells.is_empty()
    }

    pub fn validate(&self, me: &str) -> Result<(), FederationError> {
        for (name, addrs) in &self.cells {
            if !is_cell_name(name) {
                return Err(FederationError::CellName(name.clone()));
            }
            if name == me {
                return Err(FederationError::ItSelf(name.clone()));
            }
            if addrs.is_empty() {
                return Err(FederationError::NoAddress(name.clone()));
            }
        }
        let (heartbeat, suspect, down) = (self.heartbeat_ms, self.suspect_ms, self.down_ms);
        if !(heartbeat > 0 && heartbeat < suspect && suspect < down) {
            return Err(FederationError::Timing { heartbeat, suspect, down });
        }
        if !(1..=10_000).contains(&self.batch) {
            return Err(FederationError::Batch(self.batch));
        }
        if self.digest_ms == 0 {
            return Err(FederationError::DigestInterval);
        }
        if self.failover.auto_after_ms < self.down_ms {
            return Err(FederationError::AutoAfter { auto_after: self.failover.auto_after_ms, down: self.down_ms });
        }
        Ok(())
    }

    /// Every location of the federation: the other cells and `me`.
    pub fn locations(&self, me: &str) -> Vec<String> {
        let mut all: Vec<String> = self.cells.keys().cloned().collect();
        all.push(me.to_string());
        all.sort();
        all
    }
}

/// Parses `--federation`: `CELL=HOST:PORT[|HOST:PORT...],...`, HOST a DNS name or an IP, e.g.
/// `dc2=127.0.0.1:7072,dc3=10.0.0.3:7070|10.0.0.4:7070,dc4=titan.dc4.example.com:7070`.
pub fn parse_cells(s: &str) -> Result<BTreeMap<String, Vec<PeerAddr>>, String> {
    let mut out = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, addrs) =
            item.split_once('=').ok_or_else(|| format!("{item:?} is not CELL=HOST:PORT[|HOST:PORT]"))?;
        let addrs = addrs
            .split('|')
            .map(|a| a.parse::<PeerAddr>().map_err(|e| format!("cell {}: {e}", name.trim())))
            .collect::<Result<Vec<_>, _>>()?;
        if out.insert(name.trim().to_string(), addrs).is_some() {
            return Err(format!("cell {name} appears twice"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_parse_from_the_flag_and_each_broken_rule_names_its_setting() {
        let cells = parse_cells("dc2=127.0.0.1:7072, dc3=127.0.0.1:7074|127.0.0.1:7075").expect("valid");
        assert_eq!(cells["dc3"].len(), 2);
        assert!(parse_cells("dc2").unwrap_err().contains("CELL=HOST:PORT"));
        assert!(parse_cells("dc2=nowhere").unwrap_err().contains("\"nowhere\""));
        assert!(parse_cells("dc2=127.0.0.1:1,dc2=127.0.0.1:2").unwrap_err().contains("twice"));
        let named = parse_cells("dc2=titan.dc2.example.com:7070|[fd00::2]:7070").expect("names and IPs");
        let spelled: Vec<&str> = named["dc2"].iter().map(PeerAddr::as_str).collect();
        assert_eq!(spelled, ["titan.dc2.example.com:7070", "[fd00::2]:7070"]);
        assert_eq!(parse_cells("dc2=x:0").unwrap_err(), "cell dc2: \"x:0\": the port must be 1-65535");
        assert!(parse_cells("dc2=http://x:1").unwrap_err().contains("not a DNS name"));

        let ok = FederationConfig { cells, ..Default::default() };
        assert_eq!(ok.validate("dc1"), Ok(()));
        assert_eq!(ok.locations("dc1"), ["dc1", "dc2", "dc3"]);
        assert_eq!(ok.validate("dc2"), Err(FederationError::ItSelf("dc2".into())));
        let bad = FederationConfig { cells: [("DC9".to_string(), vec![])].into(), ..Default::default() };
        assert!(bad.validate("dc1").unwrap_err().to_string().starts_with("federation.cells"));
        let slow = FederationConfig { suspect_ms: 20_000, ..Default::default() };
        assert!(slow.validate("dc1").unwrap_err().to_string().contains("federation.heartbeat_ms"));
    }
}
