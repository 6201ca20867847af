//! Raft between members, the client side: `HttpNetwork` makes one `Peer` per target, which sends openraft's calls
//! over the kept `Streams`; `EarlyReplication` sends a new entry to followers while the leader syncs it itself.
//!
//! A remote Raft error travels back inside the answer, so the caller can tell "the peer said no" from "the peer
//! could not be reached". A peer that cannot be reached (nothing listens, or what listens does not speak this
//! protocol) is `Unreachable` to openraft, which then waits `membership::backoff()` between calls. A vote request
//! from a member that is not a voter in this member's membership is refused as `NotAMember`, and the candidate
//! stands down.

use std::sync::Arc;

use axum::body::Bytes;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::Backoff;
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::streams::{CallError, Streams, APPEND, SNAPSHOT, VOTE};
use super::{codec, membership, EncodedEntries, NodeId, Raft, TypeConfig};

/// Makes a `Peer` for each member Raft talks to.
pub struct HttpNetwork {
    encoded: EncodedEntries,
    streams: Streams,
}

impl HttpNetwork {
    pub fn new(encoded: EncodedEntries, streams: Streams) -> HttpNetwork {
        HttpNetwork { encoded, streams }
    }
}

/// `AppendEntriesRequest` on the wire: entries travel as their `codec` bytes, which the leader already has from
/// writing them to its own log, so they are encoded once however many followers there are. `E` is a borrowed byte
/// string when sending and an owned one when receiving.
#[derive(Serialize, Deserialize)]
pub(super) struct AppendWire<E> {
    pub(super) vote: openraft::Vote<NodeId>,
    pub(super) prev_log_id: Option<openraft::LogId<NodeId>>,
    pub(super) leader_commit: Option<openraft::LogId<NodeId>>,
    pub(super) entries: Vec<E>,
}

/// Sends a leader's new entries to its followers while it syncs them to its own log.
///
/// openraft 0.9 replicates an entry only after the leader's own sync of it returns, so a commit waited for the
/// leader's sync and then a follower's, one after the other. This sends the same append openraft will send (the
/// leader's vote, the entry before them, the entries, the commit index) as soon as the leader's log store has them,
/// before it writes and syncs them. A follower takes it like any append from its leader and answers once the entries
/// are durable; openraft's own append of the same bytes then takes that answer (`Streams::answered_early`) instead of
/// going out again. Commit still counts the leader only after its own sync (Raft thesis §10.2.1).
#[derive(Clone)]
pub struct EarlyReplication {
    node_id: NodeId,
    raft: Arc<std::sync::OnceLock<Raft>>,
    streams: Streams,
    encoded: EncodedEntries,
    proposals: Arc<std::sync::atomic::AtomicUsize>,
}

impl EarlyReplication {
    /// `raft` is filled once the member's Raft exists; until then nothing is sent. `proposals` counts the proposals
    /// in flight: with more than one, replication is busy anyway and sending every entry twice would only cost CPU.
    pub fn new(
        node_id: NodeId,
        raft: Arc<std::sync::OnceLock<Raft>>,
        streams: Streams,
        encoded: EncodedEntries,
        proposals: Arc<std::sync::atomic::AtomicUsize>,
    ) -> EarlyReplication {
        EarlyReplication { node_id, raft, streams, encoded, proposals }
    }

    /// Sends `entries` (following `prev`) to every follower whose log Raft knows to end at `prev`, when this member
    /// leads under `vote` and proposed them itself in that term. Answers are read but not waited for.
    pub async fn send(
        &self,
        vote: &openraft::Vote<NodeId>,
        prev: Option<openraft::LogId<NodeId>>,
        entries: &[openraft::Entry<TypeConfig>],
    ) {
        let leads = vote.committed && vote.leader_id.node_id == self.node_id;
        if !leads || entries.is_empty() || entries.iter().any(|e| e.log_id.leader_id != vote.leader_id) {
            return;
        }
        if self.proposals.load(std::sync::atomic::Ordering::Acquire) > 1 {
            self.streams.metrics().early.with_label_values(&["busy"]).inc();
            return;
        }
        let Some(raft) = self.raft.get() else { return };
        // Only to followers Raft knows have everything before these entries: one behind, restarting or being
        // probed is left to openraft's own replication.
        // The commit index it carries is the last applied entry's: committed, and with one proposal at a time the
        // one openraft's own append will carry, so that append finds these exact bytes already answered.
        let (peers, applied): (Vec<String>, _) = {
            let m = raft.metrics();
            let m = m.borrow();
            let Some(matched) = &m.replication else { return };
            let members = m.membership_config.membership();
            let peers = members
                .nodes()
                .filter(|(id, _)| **id != self.node_id && matched.get(*id).is_some_and(|l| *l == prev))
                .map(|(_, n)| n.addr.clone())
                .collect();
            (peers, m.last_applied)
        };
        if peers.is_empty() {
            return;
        }
        let Ok(body) = append_body(&self.encoded, *vote, prev, applied, entries) else { return };
        for addr in peers {
            let sent = self.streams.post_append(&addr, body.clone(), EARLY_TIMEOUT).await;
            self.streams.metrics().early.with_label_values(&[if sent { "sent" } else { "no_idle_connection" }]).inc();
        }
    }
}

/// How long an early append may take to be written and answered before its connection is dropped.
const EARLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// An append as `AppendWire`, its entries as the log store's own encoding of them.
fn append_body(
    encoded: &EncodedEntries,
    vote: openraft::Vote<NodeId>,
    prev_log_id: Option<openraft::LogId<NodeId>>,
    leader_commit: Option<openraft::LogId<NodeId>>,
    entries: &[openraft::Entry<TypeConfig>],
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let bytes = entries.iter().map(|e| encoded.get(e)).collect::<Result<Vec<Bytes>, _>>()?;
    let entries = bytes.iter().map(|b| serde_bytes::Bytes::new(b)).collect();
    codec::encode(&AppendWire { vote, prev_log_id, leader_commit, entries })
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            label: target.to_string(),
            addr: node.addr.clone(),
            encoded: self.encoded.clone(),
            streams: self.streams.clone(),
        }
    }
}

pub struct Peer {
    target: NodeId,
    /// `target` as the metrics' `peer` label.
    label: String,
    addr: String,
    encoded: EncodedEntries,
    streams: Streams,
}

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        kind: u8,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.call_body(kind, &body, option).await
    }

    /// `call` with the request already encoded.
    async fn call_body<Resp, E>(
        &self,
        kind: u8,
        body: &[u8],
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer = self
            .streams
            .call(&self.label, &self.addr, kind, body, option.hard_ttl())
            .await
            .map_err(CallError::into_rpc)?;
        self.answer(&answer)
    }

    /// A peer's answer frame: its result, or the error it gave.
    fn answer<Resp, E>(&self, answer: &[u8]) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Resp, E> = codec::decode(answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let body = append_body(&self.encoded, rpc.vote, rpc.prev_log_id, rpc.leader_commit, &rpc.entries)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if !rpc.entries.is_empty() {
            if let Some(answer) = self.streams.answered_early(&self.addr, &body, option.hard_ttl()).await {
                return self.answer(&answer);
            }
        }
        self.call_body(APPEND, &body, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let body = codec::encode(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer = self
            .streams
            .call(&self.label, &self.addr, VOTE, &body, option.hard_ttl())
            .await
            .map_err(CallError::into_rpc)?;
        match codec::decode(&answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))? {
            VoteAnswer::Ok(resp) => Ok(resp),
            VoteAnswer::Err(e) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            VoteAnswer::NotAMember { membership } => {
                self.streams.stand_down.told_not_a_member(self.target, membership);
                // A refusal at the candidate's own vote: it counts for nothing and changes nothing.
                Ok(VoteResponse::new(rpc.vote, None, false))
            }
        }
    }

    /// Exponential and capped: a peer that stays unreachable costs a call every few seconds, not one per tick.
    fn backoff(&self) -> Backoff {
        Backoff::new(membership::backoff())
    }
}

/// The answer to a vote request. `Ok` and `Err` encode as `Result` does, so members that answer with a plain
/// `Result` are understood.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum VoteAnswer {
    Ok(VoteResponse<NodeId>),
    Err(RaftError<NodeId>),
    /// The candidate is no voter in the membership (as of this log id) this member knows.
    NotAMember {
        membership: Option<openraft::LogId<NodeId>>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vote_answers_are_read_as_plain_results_and_plain_results_as_vote_answers() {
        let vote = openraft::Vote::new(3, 2);
        let plain: Result<VoteResponse<NodeId>, RaftError<NodeId>> = Ok(VoteResponse::new(vote, None, true));
        let read: VoteAnswer = codec::decode(&codec::encode(&plain).expect("encode")).expect("decode");
        assert!(matches!(&read, VoteAnswer::Ok(r) if r.vote_granted && r.vote == vote), "{read:?}");
        let answer = VoteAnswer::Ok(VoteResponse::new(vote, None, false));
        let read: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
            codec::decode(&codec::encode(&answer).expect("encode")).expect("decode");
        assert!(matches!(&read, Ok(r) if !r.vote_granted), "{read:?}");
        let refused = VoteAnswer::NotAMember { membership: None };
        let read: VoteAnswer = codec::decode(&codec::encode(&refused).expect("encode")).expect("decode");
        assert!(matches!(read, VoteAnswer::NotAMember { membership: None }), "{read:?}");
    }
}
