//! A cell member's configuration: plain data with named defaults and a `validate` that names each broken rule.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub const DEFAULT_HEARTBEAT_MS: u64 = 100;
pub const DEFAULT_ELECTION_MIN_MS: u64 = 400;
pub const DEFAULT_ELECTION_MAX_MS: u64 = 800;
/// Entries applied since the last snapshot before a new one is taken.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;
/// Entries kept in the log behind a snapshot, so a slightly lagging member catches up without one.
pub const DEFAULT_KEEP_LOGS: u64 = 1_000;
/// The largest piece of a snapshot sent to a member in one call, in KiB.
pub const DEFAULT_SNAPSHOT_CHUNK_KIB: u64 = 4096;
/// A chunk travels in one frame (`raft::network::MAX_INTERNAL_BODY`, 64 MiB), encoded at up to twice its size.
pub const MAX_SNAPSHOT_CHUNK_KIB: u64 = 16 * 1024;
/// How long a write may wait for a leader and a commit before it is answered 503.
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 10_000;
/// How long adding a member waits for it, as a learner, to answer and catch up before it is left a learner.
pub const DEFAULT_MEMBER_CATCH_UP_MS: u64 = 10_000;

/// Raft timing, log compaction and the engine under the Raft store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub snapshot_every: u64,
    pub keep_logs: u64,
    /// The largest piece of a snapshot sent to a member that needs one, in KiB.
    pub snapshot_chunk_kib: u64,
    pub write_timeout_ms: u64,
    /// How long adding a member waits for the new learner to answer and reach the leader's log before it votes;
    /// past it the member is left a learner and the request answered 503.
    pub member_catch_up_ms: u64,
    /// `"file"` or `"sled"`; any other value is refused when the configuration is read, naming the two.
    pub storage: crate::store::StorageKind,
    /// A leader sends new entries to its followers while it syncs them itself, when no other proposal is in flight
    /// (`raft::EarlyReplication`); off, a commit waits for the leader's sync and then a follower's.
    pub early_append: bool,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            election_min_ms: DEFAULT_ELECTION_MIN_MS,
            election_max_ms: DEFAULT_ELECTION_MAX_MS,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            keep_logs: DEFAULT_KEEP_LOGS,
            snapshot_chunk_kib: DEFAULT_SNAPSHOT_CHUNK_KIB,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
            member_catch_up_ms: DEFAULT_MEMBER_CATCH_UP_MS,
            storage: crate::store::StorageKind::default(),
            early_append: true,
        }
    }
}

/// One member of one cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellConfig {
    /// The cell (fault domain) name, e.g. `dc1`.
    pub cell: String,
    pub node_id: u64,
    pub listen: SocketAddr,
    /// The members the cell starts with (this one included); empty to join later through the admin endpoint.
    #[serde(default)]
    pub peers: BTreeMap<u64, SocketAddr>,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub raft: RaftTuning,
    #[serde(default)]
    pub scheduler: crate::reconcile::SchedulerConfig,
}

/// A configuration rule that does not hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cell name {0:?} must be 1-32 characters of a-z, 0-9 and '-'")]
    CellName(String),
    #[error("node id must be at least 1")]
    NodeId,
    #[error("peers must list this member ({node_id}) at its listen address {listen}, or be empty")]
    SelfNotInPeers { node_id: u64, listen: SocketAddr },
    #[error("a cell has 1, 3 or 5 members at bootstrap, not {0}")]
    PeerCount(usize),
    #[error("election timeout must satisfy heartbeat < min < max, got heartbeat {heartbeat} min {min} max {max}")]
    ElectionTimeout { heartbeat: u64, min: u64, max: u64 },
    #[error("snapshot_every must be at least 1")]
    SnapshotEvery,
    #[error("snapshot_chunk_kib must be 1 to {MAX_SNAPSHOT_CHUNK_KIB} (a chunk travels in one frame), got {0}")]
    SnapshotChunk(u64),
    #[error("member_catch_up_ms must be at least 1")]
    MemberCatchUp,
    #[error("{0}")]
    Scheduler(String),
}

impl CellConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ok_name = !self.cell.is_empty()
            && self.cell.len() <= 32
            && self.cell.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok_name {
            return Err(ConfigError::CellName(self.cell.clone()));
        }
        if self.node_id == 0 {
            return Err(ConfigError::NodeId);
        }
        if !self.peers.is_empty() {
            if self.peers.get(&self.node_id) != Some(&self.listen) {
                return Err(ConfigError::SelfNotInPeers { node_id: self.node_id, listen: self.listen });
            }
            if ![1, 3, 5].contains(&self.peers.len()) {
                return Err(ConfigError::PeerCount(self.peers.len()));
            }
        }
        let r = &self.raft;
        if !(r.heartbeat_ms < r.election_min_ms && r.election_min_ms < r.election_max_ms) {
            return Err(ConfigError::ElectionTimeout {
                heartbeat: r.heartbeat_ms,
                min: r.election_min_ms,
                max: r.election_max_ms,
            });
        }
        if r.snapshot_every == 0 {
            return Err(ConfigError::SnapshotEvery);
        }
        if !(1..=MAX_SNAPSHOT_CHUNK_KIB).contains(&r.snapshot_chunk_kib) {
            return Err(ConfigError::SnapshotChunk(r.snapshot_chunk_kib));
        }
        if r.member_catch_up_ms == 0 {
            return Err(ConfigError::MemberCatchUp);
        }
        self.scheduler.validate().map_err(ConfigError::Scheduler)?;
        Ok(())
    }
}

/// Parses `1=127.0.0.1:7001,2=127.0.0.1:7002` into a member map.
pub fn parse_peers(s: &str) -> Result<BTreeMap<u64, SocketAddr>, String> {
    let mut out = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, addr) = item.split_once('=').ok_or_else(|| format!("{item:?} is not ID=HOST:PORT"))?;
        let id: u64 = id.trim().parse().map_err(|_| format!("{id:?} is not a member id"))?;
        let addr: SocketAddr = addr.trim().parse().map_err(|_| format!("{addr:?} is not HOST:PORT"))?;
        if out.insert(id, addr).is_some() {
            return Err(format!("member {id} appears twice"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CellConfig {
        let listen: SocketAddr = "127.0.0.1:7001".parse().expect("valid");
        CellConfig {
            cell: "dc1".into(),
            node_id: 1,
            listen,
            peers: parse_peers("1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003").expect("valid"),
            data_dir: "/tmp/x".into(),
            raft: RaftTuning::default(),
            scheduler: Default::default(),
        }
    }

    #[test]
    fn each_rule_is_named() {
        assert_eq!(config().validate(), Ok(()));
        let check = |f: fn(&mut CellConfig), want: ConfigError| {
            let mut c = config();
            f(&mut c);
            assert_eq!(c.validate(), Err(want));
        };
        check(|c| c.cell = "DC 1".into(), ConfigError::CellName("DC 1".into()));
        check(|c| c.node_id = 0, ConfigError::NodeId);
        check(
            |c| c.node_id = 4,
            ConfigError::SelfNotInPeers { node_id: 4, listen: "127.0.0.1:7001".parse().expect("valid") },
        );
        check(
            |c| {
                c.peers.remove(&3);
            },
            ConfigError::PeerCount(2),
        );
        check(|c| c.raft.election_min_ms = 50, ConfigError::ElectionTimeout { heartbeat: 100, min: 50, max: 800 });
        check(|c| c.raft.snapshot_every = 0, ConfigError::SnapshotEvery);
        check(|c| c.raft.snapshot_chunk_kib = 0, ConfigError::SnapshotChunk(0));
        check(|c| c.raft.member_catch_up_ms = 0, ConfigError::MemberCatchUp);
        check(|c| c.raft.snapshot_chunk_kib = MAX_SNAPSHOT_CHUNK_KIB + 1, ConfigError::SnapshotChunk(16_385));
    }

    #[test]
    fn storage_is_file_or_sled() {
        let parse = |s: &str| serde_json::from_str::<RaftTuning>(&format!(r#"{{"storage":"{s}"}}"#));
        assert_eq!(parse("file").map(|t| t.storage).ok(), Some(crate::store::StorageKind::File));
        assert_eq!(parse("sled").map(|t| t.storage).ok(), Some(crate::store::StorageKind::Sled));
        let err = parse("rocks").expect_err("an unknown engine is refused").to_string();
        assert!(err.contains("unknown variant `rocks`, expected `file` or `sled`"), "{err}");
        assert_eq!(RaftTuning::default().storage, crate::store::StorageKind::File);
    }

    #[test]
    fn peers_parse_and_reject_duplicates() {
        assert_eq!(parse_peers("1=127.0.0.1:1").map(|p| p.len()), Ok(1));
        assert!(parse_peers("1=127.0.0.1:1,1=127.0.0.1:2").is_err());
        assert!(parse_peers("x=127.0.0.1:1").is_err());
        assert!(parse_peers("1=nowhere").is_err());
    }
}
