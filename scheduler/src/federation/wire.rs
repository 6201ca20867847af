//! What cells send each other: pushed batches of jobs and their answers, heartbeats with the figures of the jobs
//! that changed, and the routes both go to (MessagePack bodies).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::{Digest, Entry};
use super::ReplicatedJob;

/// The path a cell pushes batches to, and the one it heartbeats.
pub const PUSH_PATH: &str = "/internal/federation/push";
pub const BEAT_PATH: &str = "/internal/federation/heartbeat";
/// The path a cell sends its digest to (anti-entropy).
pub const DIGEST_PATH: &str = "/internal/federation/digest";
/// The path a cell asks another for a trial placement on its capacity (an evacuation's plan).
pub const TRIAL_PATH: &str = "/internal/federation/trial";
/// The content type of both (MessagePack).
pub const CONTENT_TYPE: &str = "application/msgpack";

/// A batch of jobs one cell pushes another.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Push {
    pub from: String,
    /// The sender's change number of the last job in the batch.
    pub upto: u64,
    pub jobs: Vec<ReplicatedJob>,
    /// Quotas changed in the same range of the outbox.
    #[serde(default)]
    pub quotas: Vec<crate::quota::ReplicatedQuota>,
    /// Location lever records changed in the same range.
    #[serde(default)]
    pub locations: Vec<crate::location::LocationRecord>,
    /// API tokens changed in the same range.
    #[serde(default)]
    pub tokens: Vec<crate::token::TokenRecord>,
}

/// The answer to a push.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pushed {
    /// How far the receiver has now merged the sender's outbox.
    pub position: u64,
    pub refused: Vec<(String, String)>,
}

/// A heartbeat between cells, and its answer: the sender's view of itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    pub cell: String,
    pub leader: Option<String>,
    pub members: Vec<String>,
    /// The sender's last outbox change number.
    pub outbox_seq: u64,
    /// How far the sender has merged each other cell's outbox.
    pub positions: BTreeMap<String, u64>,
    /// The sender's tasks of each job whose figures changed since its last heartbeat to this cell.
    #[serde(default)]
    pub summaries: BTreeMap<String, Summary>,
    /// How the sender sees each other cell (up, suspect, down): what auto-failover asks a majority of.
    #[serde(default)]
    pub sees: BTreeMap<String, String>,
}

/// One job's tasks in one cell, as the cell reports them to the others.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub running: u32,
    pub pending: u32,
    pub pending_reason: Option<String>,
}

/// A cell's digest of its jobs, sent to another for comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DigestOf {
    pub from: String,
    pub digest: Digest,
}

/// The answer to a digest: each job in the buckets where the receiver's digest differs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Differs {
    pub buckets: Vec<(u16, Vec<Entry>)>,
}

/// Instances of jobs (held by both cells) to place on the receiver's current capacity, trying only.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Trial {
    pub from: String,
    pub tasks: Vec<(String, u32)>,
}

/// What a trial placed of each job, and what the receiver's fleet would have to add for the rest: per instance
/// group, agents and the tasks they would take.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tried {
    pub placed: BTreeMap<String, u32>,
    pub needs: Vec<(String, u32, u32)>,
}
