//! A cell member's configuration: plain data with named defaults and a `validate` that names each broken rule.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::address::PeerAddr;
use crate::spec::Spec;

pub const DEFAULT_HEARTBEAT_MS: u64 = 100;
pub const DEFAULT_ELECTION_MIN_MS: u64 = 400;
pub const DEFAULT_ELECTION_MAX_MS: u64 = 800;

/// Between SIGTERM and SIGKILL when a task is stopped (Docker's default).
pub const KILL_GRACE_MS: u64 = 10_000;
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
    /// What the member's socket binds, e.g. `0.0.0.0:7070`.
    pub listen: SocketAddr,
    /// How the other members reach this one, `HOST:PORT` (a DNS name or an IP); `listen` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<PeerAddr>,
    /// The members the cell starts with (this one included, at its advertised address), each `HOST:PORT`; empty to
    /// join later through the admin endpoint. A member's address is its identity in Raft's membership.
    #[serde(default)]
    pub peers: BTreeMap<u64, PeerAddr>,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub raft: RaftTuning,
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    /// The other cells (`[federation]`); none for a standalone cell.
    #[serde(default)]
    pub federation: crate::federation::FederationConfig,
    /// The instance groups the leader scales (`[autoscaler]`); none by default.
    #[serde(default)]
    pub autoscaler: titan_autoscaler::config::AutoscalerConfig,
    /// API tokens (`[auth]`); off by default.
    #[serde(default)]
    pub auth: AuthConfig,
    /// `[tls]`: the API is served over HTTPS, and every connection, to it and from this member to other members,
    /// cells and agents, is mutual TLS with certificates signed by `ca`; plain HTTP when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<titan_api::tls::TlsFiles>,
}

/// `[auth]`: whether requests need an API token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Every route but `/healthz`, `/readyz` and `/openapi.json` needs `Authorization: Bearer <token>`.
    pub enabled: bool,
    /// `/metrics` needs a token too.
    pub metrics_need_token: bool,
    /// Where the bootstrap admin token's secret is written (mode 0600) when the cell first starts with no token;
    /// `<data_dir>/admin.token` when unset. A file that exists already is read instead, so cells started together
    /// (`titan dev --cells`) share one admin token.
    pub bootstrap_token_file: Option<PathBuf>,
}

impl CellConfig {
    /// Where the bootstrap admin token's secret lives.
    pub fn bootstrap_token_file(&self) -> PathBuf {
        self.auth.bootstrap_token_file.clone().unwrap_or_else(|| self.data_dir.join(BOOTSTRAP_TOKEN_FILE))
    }
}

/// The bootstrap admin token's file name in a member's data directory.
pub const BOOTSTRAP_TOKEN_FILE: &str = "admin.token";

/// A configuration rule that does not hold.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("cell name {0:?} must be 1-32 characters of a-z, 0-9 and '-'")]
    CellName(String),
    #[error("node id must be at least 1")]
    NodeId,
    #[error("{0}")]
    Autoscaler(String),
    #[error(
        "peers must list this member ({node_id}) at its advertised address {advertised} (advertise, else listen), \
         or be empty"
    )]
    SelfNotInPeers { node_id: u64, advertised: PeerAddr },
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
    #[error("scheduler.lease_ms must be above 0")]
    Lease,
    #[error("scheduler.breaker_fraction must be above 0 and at most 1, got {0}")]
    BreakerFraction(f64),
    #[error("scheduler.max_placements_per_round must be above 0")]
    MaxPlacements,
    #[error("scheduler: need min_round_interval_ms <= max_round_interval_ms and max above 0, got {min} and {max}")]
    RoundInterval { min: u64, max: u64 },
    #[error(transparent)]
    Federation(#[from] crate::federation::FederationError),
    #[error(transparent)]
    Tls(#[from] titan_api::tls::TlsError),
}

impl CellConfig {
    /// How the other members reach this one: `advertise`, else `listen`.
    pub fn advertised(&self) -> PeerAddr {
        self.advertise.clone().unwrap_or_else(|| PeerAddr::from(self.listen))
    }

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
        self.autoscaler.validate().map_err(ConfigError::Autoscaler)?;
        if !self.peers.is_empty() {
            let advertised = self.advertised();
            if self.peers.get(&self.node_id) != Some(&advertised) {
                return Err(ConfigError::SelfNotInPeers { node_id: self.node_id, advertised });
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
        self.scheduler.validate()?;
        self.federation.validate(&self.cell)?;
        self.load_tls()?;
        Ok(())
    }

    /// This member's TLS from `[tls]`'s files, read and checked (each exists and parses, the key goes with the
    /// certificate, the CA signed it); `None` without `[tls]`.
    pub fn load_tls(&self) -> Result<Option<titan_api::tls::NodeTls>, ConfigError> {
        let Some(files) = &self.tls else { return Ok(None) };
        Ok(Some(titan_api::tls::NodeTls::load(files, titan_api::tls::Settings::NODE)?))
    }
}

// The scheduler's defaults (`[scheduler]`).
pub const DEFAULT_LEASE_MS: u64 = 10_000;
pub const DEFAULT_MAX_HEARTBEATS_PER_SECOND: u32 = 1_000;
pub const DEFAULT_LOST_GRACE_MS: u64 = 60_000;
pub const DEFAULT_DISCONNECT_MARGIN_MS: u64 = 5_000;
pub const DEFAULT_MAX_LOST_AGENTS_PER_MINUTE: u32 = 20;
pub const DEFAULT_BREAKER_FRACTION: f64 = 0.3;
pub const DEFAULT_ASSIGNED_TIMEOUT_MS: u64 = 120_000;
pub const DEFAULT_STARTING_TIMEOUT_MS: u64 = 600_000;
pub const DEFAULT_KILLING_TIMEOUT_MS: u64 = 300_000;
pub const DEFAULT_BACKOFF_BASE_MS: u64 = 1_000;
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 60_000;
pub const DEFAULT_MAX_PLACEMENTS_PER_ROUND: usize = 20_000;
pub const DEFAULT_MIN_ROUND_INTERVAL_MS: u64 = 20;
pub const DEFAULT_MAX_ROUND_INTERVAL_MS: u64 = 1_000;
pub const DEFAULT_TASK_RETENTION_MS: u64 = 3_600_000;
/// Seven days.
pub const DEFAULT_TOMBSTONE_RETENTION_MS: u64 = 7 * 24 * 3_600_000;

/// The scheduler's knobs; `[scheduler]` in the server's TOML file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// How long an agent's lease lasts without a heartbeat, at least (see `max_heartbeats_per_second`).
    pub lease_ms: u64,
    /// Most heartbeats per second the whole fleet sends the leader: beyond `lease_ms` the lease grows with the
    /// fleet so that its beats (three per lease) stay within this (0: the lease stays `lease_ms`). See `lease`.
    pub max_heartbeats_per_second: u32,
    /// How long an unreachable agent's tasks wait before they are declared lost and replaced.
    pub lost_grace_ms: u64,
    /// Added to the grace of a job that stops its tasks on a disconnect (`disconnect.stopAfterSeconds`), beyond
    /// the lease, the stop-after and the kill grace: slack for the agent's check interval and timers, so the
    /// replacement starts strictly after the agent has stopped the original (see `lose_after_ms`).
    pub disconnect_margin_ms: u64,
    /// Most agents declared lost per minute.
    pub max_lost_agents_per_minute: u32,
    /// When more than this share of the agents (and more than one) are silent at once, nothing is declared lost
    /// (a partition until proven otherwise).
    pub breaker_fraction: f64,
    pub assigned_timeout_ms: u64,
    pub starting_timeout_ms: u64,
    pub killing_timeout_ms: u64,
    /// Replacement backoff: `base * 2^attempt`, at most `max`.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Most tasks placed in one round (the rest wait for the next).
    pub max_placements_per_round: usize,
    /// Shortest time between rounds, so bursts of changes share one.
    pub min_round_interval_ms: u64,
    /// Longest time between rounds when nothing changes (timeouts and backoffs still need checking).
    pub max_round_interval_ms: u64,
    /// How long an ended task stays visible (`GET /v1/tasks`) before it is dropped, when nothing needs it (it was
    /// replaced, scaled away, or its job killed). Ended tasks that still count (a batch job's completed ones) stay.
    pub task_retention_ms: u64,
    /// How long a killed job (its tombstone) is kept, once its tasks are gone, before it is dropped. In a
    /// federation a cell away for longer than this may bring the job back when it returns (0: kept for ever).
    pub tombstone_retention_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> SchedulerConfig {
        SchedulerConfig {
            lease_ms: DEFAULT_LEASE_MS,
            max_heartbeats_per_second: DEFAULT_MAX_HEARTBEATS_PER_SECOND,
            lost_grace_ms: DEFAULT_LOST_GRACE_MS,
            disconnect_margin_ms: DEFAULT_DISCONNECT_MARGIN_MS,
            max_lost_agents_per_minute: DEFAULT_MAX_LOST_AGENTS_PER_MINUTE,
            breaker_fraction: DEFAULT_BREAKER_FRACTION,
            assigned_timeout_ms: DEFAULT_ASSIGNED_TIMEOUT_MS,
            starting_timeout_ms: DEFAULT_STARTING_TIMEOUT_MS,
            killing_timeout_ms: DEFAULT_KILLING_TIMEOUT_MS,
            backoff_base_ms: DEFAULT_BACKOFF_BASE_MS,
            backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
            max_placements_per_round: DEFAULT_MAX_PLACEMENTS_PER_ROUND,
            min_round_interval_ms: DEFAULT_MIN_ROUND_INTERVAL_MS,
            max_round_interval_ms: DEFAULT_MAX_ROUND_INTERVAL_MS,
            task_retention_ms: DEFAULT_TASK_RETENTION_MS,
            tombstone_retention_ms: DEFAULT_TOMBSTONE_RETENTION_MS,
        }
    }
}

impl SchedulerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.lease_ms == 0 {
            return Err(ConfigError::Lease);
        }
        if !(self.breaker_fraction > 0.0 && self.breaker_fraction <= 1.0) {
            return Err(ConfigError::BreakerFraction(self.breaker_fraction));
        }
        if self.max_placements_per_round == 0 {
            return Err(ConfigError::MaxPlacements);
        }
        if self.min_round_interval_ms > self.max_round_interval_ms || self.max_round_interval_ms == 0 {
            return Err(ConfigError::RoundInterval {
                min: self.min_round_interval_ms,
                max: self.max_round_interval_ms,
            });
        }
        Ok(())
    }

    /// How long an agent given a lease of `lease_ms` may stay silent (since the last heartbeat the leader heard)
    /// before a task of a job with `spec` is declared lost. A job without `disconnect` waits the lease and the
    /// loss grace. A job with one waits at least the lease, its stop-after, the kill grace and the margin: its
    /// agent counts the stop-after from when it *sent* its last answered heartbeat, which is no later than when
    /// the leader heard it, and stops the task within the kill grace after that; the lease and the margin come on
    /// top, so the replacement is created strictly after the original stopped (clock rates, not clocks, must
    /// agree).
    pub fn lose_after_ms(&self, spec: Option<&Spec>, lease_ms: u64) -> u64 {
        let plain = lease_ms.saturating_add(self.lost_grace_ms);
        match spec.and_then(|s| s.disconnect.as_ref()) {
            None => plain,
            Some(d) => plain.max(
                lease_ms
                    .saturating_add(d.stop_after_ms())
                    .saturating_add(KILL_GRACE_MS)
                    .saturating_add(self.disconnect_margin_ms),
            ),
        }
    }

    /// How long before the replacement of a task that ended at its `attempt`.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        self.backoff_base_ms.saturating_mul(1u64 << attempt.min(20)).min(self.backoff_max_ms)
    }
}

/// Parses `1=127.0.0.1:7001,2=titan-1.titan-peers:7001` into a member map (HOST a DNS name or an IP).
pub fn parse_peers(s: &str) -> Result<BTreeMap<u64, PeerAddr>, String> {
    let mut out = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, addr) = item.split_once('=').ok_or_else(|| format!("{item:?} is not ID=HOST:PORT"))?;
        let id: u64 = id.trim().parse().map_err(|_| format!("{id:?} is not a member id"))?;
        let addr: PeerAddr = addr.parse().map_err(|e| format!("member {id}: {e}"))?;
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
            advertise: None,
            peers: parse_peers("1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003").expect("valid"),
            data_dir: "/tmp/x".into(),
            raft: RaftTuning::default(),
            scheduler: Default::default(),
            federation: Default::default(),
            autoscaler: Default::default(),
            auth: Default::default(),
            tls: None,
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
            ConfigError::SelfNotInPeers { node_id: 4, advertised: "127.0.0.1:7001".parse().expect("valid") },
        );
        check(
            |c| c.advertise = Some("titan-0.titan-peers:7001".parse().expect("valid")),
            ConfigError::SelfNotInPeers { node_id: 1, advertised: "titan-0.titan-peers:7001".parse().expect("valid") },
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
        check(|c| c.scheduler.lease_ms = 0, ConfigError::Lease);
        check(|c| c.scheduler.breaker_fraction = 1.5, ConfigError::BreakerFraction(1.5));
        check(|c| c.scheduler.max_placements_per_round = 0, ConfigError::MaxPlacements);
        check(|c| c.scheduler.min_round_interval_ms = 5_000, ConfigError::RoundInterval { min: 5_000, max: 1_000 });
        check(|c| c.scheduler.max_round_interval_ms = 0, ConfigError::RoundInterval { min: 20, max: 0 });
        check(|c| c.raft.snapshot_chunk_kib = MAX_SNAPSHOT_CHUNK_KIB + 1, ConfigError::SnapshotChunk(16_385));
    }

    #[test]
    fn tls_files_must_exist_and_parse() {
        let tmp = tempfile::tempdir().expect("tmp");
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tls");
        let made = std::process::Command::new(script).arg(tmp.path()).args(["m1", "m2"]).status().expect("scripts/tls");
        assert!(made.success());
        let toml = |cert: &str, key: &str| {
            format!(
                "cell = \"dc1\"\nnode_id = 1\nlisten = \"127.0.0.1:7001\"\ndata_dir = \"/tmp/x\"\n[tls]\n\
                 cert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
                tmp.path().join(cert).display(),
                tmp.path().join(key).display(),
                tmp.path().join("ca.pem").display()
            )
        };
        let parsed: CellConfig = toml::from_str(&toml("m1.pem", "m1.key")).expect("[tls] parses");
        assert_eq!(parsed.tls.as_ref().map(|t| t.cert.clone()), Some(tmp.path().join("m1.pem")));
        assert_eq!(parsed.validate(), Ok(()));
        assert!(parsed.load_tls().expect("loads").is_some());
        assert_eq!(config().load_tls().map(|t| t.is_none()), Ok(true), "no [tls]: plain HTTP");
        let refused = |cert: &str, key: &str| {
            let c: CellConfig = toml::from_str(&toml(cert, key)).expect("parses");
            c.validate().expect_err("refused").to_string()
        };
        assert!(refused("nothing.pem", "m1.key").starts_with("tls.cert (--tls-cert): cannot read"));
        assert!(refused("m1.pem", "m2.key").starts_with("tls.key (--tls-key) does not go with tls.cert"));
        assert!(refused("m1.key", "m1.key").starts_with("tls.cert (--tls-cert): "));
        let unknown =
            toml::from_str::<CellConfig>(&toml("m1.pem", "m1.key").replace("[tls]\n", "[tls]\nkeyfile = 1\n"));
        assert!(unknown.expect_err("unknown key").to_string().contains("unknown field `keyfile`"));
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
        assert!(parse_peers("1=127.0.0.1:1,1=127.0.0.1:2").unwrap_err().contains("twice"));
        assert!(parse_peers("x=127.0.0.1:1").unwrap_err().contains("member id"));
        assert!(parse_peers("1").unwrap_err().contains("is not ID=HOST:PORT"));
        let err = parse_peers("1=nowhere").unwrap_err();
        assert_eq!(err, "member 1: \"nowhere\" is not HOST:PORT (no port)");
        assert!(parse_peers("2=localhost:0").unwrap_err().contains("port must be 1-65535"));
        assert!(parse_peers("3=bad_name:7070").unwrap_err().contains("not a DNS name"));
    }

    #[test]
    fn peers_are_names_or_ips_and_an_ip_keeps_its_spelling() {
        let peers = parse_peers("1=127.0.0.1:7001, 2=[::1]:7002,3=titan-2.titan-peers.ns.svc.cluster.local:7003")
            .expect("valid");
        let spelled: Vec<&str> = peers.values().map(PeerAddr::as_str).collect();
        assert_eq!(spelled, ["127.0.0.1:7001", "[::1]:7002", "titan-2.titan-peers.ns.svc.cluster.local:7003"]);
        // A member's Raft address is this string: for an IP, what `SocketAddr` printed before names were taken.
        let ip: SocketAddr = "127.0.0.1:7001".parse().expect("valid");
        assert_eq!(peers[&1].to_string(), ip.to_string());
    }

    #[test]
    fn this_member_is_in_peers_at_its_advertised_address() {
        let named = |c: &mut CellConfig| {
            c.listen = "0.0.0.0:7001".parse().expect("valid");
            c.peers = parse_peers("1=localhost:7001,2=localhost:7002,3=localhost:7003").expect("valid");
        };
        let mut c = config();
        named(&mut c);
        assert_eq!(c.advertised().as_str(), "0.0.0.0:7001", "advertise defaults to listen");
        assert_eq!(
            c.validate(),
            Err(ConfigError::SelfNotInPeers { node_id: 1, advertised: "0.0.0.0:7001".parse().expect("valid") })
        );
        c.advertise = Some("LOCALHOST:7001".parse().expect("valid"));
        assert_eq!(c.validate(), Ok(()), "names compare without case");
        assert_eq!(config().advertised().as_str(), "127.0.0.1:7001");
    }
}
