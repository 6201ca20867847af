//! What a member asks of its leader, in one typed call over the kept Raft stream (`LEADER` frames): the read index
//! of a consistent read, why tasks are pending (the leader's scheduler knows), membership changes, and agents'
//! heartbeats (leases live on the leader). Forwarded writes travel beside them as `PROPOSE` frames, unchanged
//! since the first version so that members of two versions keep committing each other's writes.

use super::*;

/// A call to the leader.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToLeader {
    ReadIndex,
    Pending(Vec<String>),
    AddMember(AddMember),
    RemoveMember(u64),
    Heartbeat {
        agent: String,
        beat: Heartbeat,
    },
    /// Heartbeats a follower gathered (`beats`); answered with `FromLeader::Leases`, one per beat, in order.
    Heartbeats(Vec<(String, Heartbeat)>),
}

/// The leader's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromLeader {
    ReadIndex(Result<u64, ApiError>),
    Pending(BTreeMap<String, String>),
    Cluster(Result<ClusterView, ApiError>),
    Lease(Result<Lease, ApiError>),
    /// The member called does not lead (any more).
    NotLeader,
    Leases(Vec<Result<Lease, ApiError>>),
}

impl ToLeader {
    fn kind(&self) -> &'static str {
        match self {
            ToLeader::ReadIndex => "read_index",
            ToLeader::Pending(_) => "pending",
            ToLeader::AddMember(_) => "add_member",
            ToLeader::RemoveMember(_) => "remove_member",
            ToLeader::Heartbeat { .. } => "heartbeat",
            ToLeader::Heartbeats(_) => "heartbeats",
        }
    }
}

impl FromLeader {
    pub(crate) fn cluster(self) -> Result<ClusterView, ApiError> {
        match self {
            FromLeader::Cluster(r) => r,
            other => Err(other.unexpected()),
        }
    }

    pub(crate) fn lease(self) -> Result<Lease, ApiError> {
        match self {
            FromLeader::Lease(r) => r,
            other => Err(other.unexpected()),
        }
    }

    pub(crate) fn leases(self) -> Result<Vec<Result<Lease, ApiError>>, ApiError> {
        match self {
            FromLeader::Leases(r) => Ok(r),
            other => Err(other.unexpected()),
        }
    }

    fn unexpected(self) -> ApiError {
        match self {
            FromLeader::NotLeader => ApiError::new(ErrorCode::NotLeader, "leadership moved during the call; retry"),
            other => ApiError::internal(format!("the leader answered {other:?}")),
        }
    }
}

/// Sends `call` to the leader, member `leader` at `addr`, over a kept stream connection, within `timeout`.
pub(super) async fn call_leader(
    streams: &Streams,
    leader: &str,
    addr: &str,
    call: &ToLeader,
    timeout: Duration,
) -> Result<FromLeader, ApiError> {
    let body = codec::encode(call).map_err(|e| ApiError::internal(e.to_string()))?;
    // `not_leader` sends clients to the leader itself (they ask this member which one it is), which also serves a
    // leader of the previous version: it answers these over its public API, not over the stream.
    let unanswered = |e: String| {
        ApiError::new(
            ErrorCode::NotLeader,
            format!("the leader (member {leader} at {addr}) did not answer over the Raft stream: {e}; ask it directly"),
        )
    };
    let bytes = streams.call(leader, addr, LEADER, &body, timeout).await.map_err(|e| {
        tracing::debug!(call = call.kind(), leader = %leader, error = %e, "a call to the leader failed");
        unanswered(e.to_string())
    })?;
    let answer: FromLeader = codec::decode(&bytes).map_err(|e| unanswered(e.to_string()))?;
    match answer {
        FromLeader::NotLeader => Err(FromLeader::NotLeader.unexpected()),
        answer => Ok(answer),
    }
}

impl Cell {
    /// On the leader: the log index a linearizable read must see.
    pub(crate) async fn read_index_here(&self) -> Result<u64, ApiError> {
        match self.raft.ensure_linearizable().await {
            Ok(id) => Ok(id.map(|l| l.index).unwrap_or(0)),
            Err(e) => Err(ApiError::new(ErrorCode::NotLeader, format!("cannot confirm leadership: {e}"))),
        }
    }

    /// Sends `call` to the leader when another member leads, within `timeout`; `None` when this member leads (the
    /// caller answers it here).
    pub(crate) async fn forward_to_leader(
        &self,
        call: &ToLeader,
        timeout: Duration,
    ) -> Result<Option<FromLeader>, ApiError> {
        let (leader, addr) = match self.proposer.leader_elsewhere() {
            Some(l) => l,
            None if self.is_leader() => return Ok(None),
            None => return Err(ApiError::new(ErrorCode::NotLeader, "no leader is elected")),
        };
        call_leader(&self.streams, &leader, &addr, call, timeout).await.map(Some)
    }

    /// Why these Accepted tasks wait, from the leader's latest rounds (asked of the leader by a follower; empty
    /// when it cannot be reached: the answer is informative, never required).
    pub(crate) async fn pending_reasons(&self, ids: Vec<String>) -> BTreeMap<String, String> {
        if ids.is_empty() {
            return BTreeMap::new();
        }
        let call = ToLeader::Pending(ids);
        match self.forward_to_leader(&call, Duration::from_secs(2)).await {
            Ok(None) => {
                let ToLeader::Pending(ids) = call else { unreachable!("built above") };
                ids.into_iter().filter_map(|id| self.scheduling.pending(&id).map(|r| (id, r))).collect()
            }
            Ok(Some(FromLeader::Pending(reasons))) => reasons,
            Ok(Some(other)) => {
                tracing::debug!(answer = ?other, "pending reasons: an unexpected answer from the leader");
                BTreeMap::new()
            }
            Err(e) => {
                tracing::debug!(error = %e, "pending reasons not fetched from the leader");
                BTreeMap::new()
            }
        }
    }

    /// The read index a consistent read on this member must wait for: the leader's, asked of it when another
    /// member leads.
    pub(crate) async fn read_index(&self) -> Result<u64, ApiError> {
        let timeout = Duration::from_millis(self.config.raft.write_timeout_ms);
        match self.forward_to_leader(&ToLeader::ReadIndex, timeout).await {
            Ok(None) => self.read_index_here().await,
            Ok(Some(FromLeader::ReadIndex(index))) => index,
            Ok(Some(other)) => Err(other.unexpected()),
            Err(e) => Err(ApiError::new(ErrorCode::NotLeader, format!("no read index: {}", e.message))),
        }
    }

    /// Answers a call another member made of this one as the leader.
    async fn answer_as_leader(&self, call: ToLeader) -> FromLeader {
        if !self.is_leader() {
            return FromLeader::NotLeader;
        }
        match call {
            ToLeader::ReadIndex => FromLeader::ReadIndex(self.read_index_here().await),
            ToLeader::Pending(ids) => FromLeader::Pending(
                ids.into_iter().filter_map(|id| self.scheduling.pending(&id).map(|r| (id, r))).collect(),
            ),
            ToLeader::AddMember(m) => FromLeader::Cluster(self.add_member(m).await),
            ToLeader::RemoveMember(id) => FromLeader::Cluster(self.remove_member(id).await),
            ToLeader::Heartbeat { agent, beat } => FromLeader::Lease(self.heartbeat(agent, beat).await),
            ToLeader::Heartbeats(beats) => FromLeader::Leases(self.heartbeats_here(beats)),
        }
    }
}

/// Answers the stream's `PROPOSE` and `LEADER` frames on this member.
pub(super) struct LeaderHere {
    pub(super) cell: std::sync::Weak<Cell>,
    pub(super) propose: ProposeHere,
}

impl crate::raft::Leader for LeaderHere {
    fn propose(&self, body: Vec<u8>) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<u8>>> + Send + '_>> {
        Box::pin(self.propose.propose(body))
    }

    fn call(&self, body: Vec<u8>) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<u8>>> + Send + '_>> {
        Box::pin(async move {
            let call: ToLeader = codec::decode(&body).map_err(std::io::Error::other)?;
            let answer = match self.cell.upgrade() {
                Some(cell) => cell.answer_as_leader(call).await,
                None => FromLeader::NotLeader,
            };
            codec::encode(&answer).map_err(std::io::Error::other)
        })
    }
}

/// Why the given Accepted tasks wait, as this member (the leader) last found. Served over HTTP for members of the
/// previous version only.
pub(super) async fn pending_here(State(cell): State<Arc<Cell>>, Packed(ids): Packed<Vec<String>>) -> HttpResponse {
    let reasons: BTreeMap<String, String> =
        ids.into_iter().filter_map(|id| cell.scheduling.pending(&id).map(|r| (id, r))).collect();
    Packed(reasons).into_response()
}

/// The leader's read index for a follower's consistent read, over HTTP for members of the previous version only.
pub(super) async fn read_index(State(cell): State<Arc<Cell>>) -> HttpResponse {
    Packed(cell.read_index_here().await).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_answers_round_trip_and_a_wrong_answer_is_an_error_not_a_panic() {
        let call = ToLeader::Heartbeat { agent: "a1".into(), beat: Heartbeat { lease_epoch: 3 } };
        let back: ToLeader = codec::decode(&codec::encode(&call).unwrap()).unwrap();
        assert!(matches!(back, ToLeader::Heartbeat { ref agent, beat } if agent == "a1" && beat.lease_epoch == 3));

        let refused = FromLeader::Lease(Err(ApiError::not_found("agent", "a1")));
        let back: FromLeader = codec::decode(&codec::encode(&refused).unwrap()).unwrap();
        assert_eq!(back.lease().unwrap_err().code, ErrorCode::NotFound);

        let moved = FromLeader::NotLeader.cluster().unwrap_err();
        assert_eq!(moved.code, ErrorCode::NotLeader);
        let wrong = FromLeader::Pending(BTreeMap::new()).lease().unwrap_err();
        assert_eq!(wrong.code, ErrorCode::Internal);
    }

    /// The calls as the previous version knew them.
    #[derive(Debug, Serialize, Deserialize)]
    enum PreviousToLeader {
        ReadIndex,
        Pending(Vec<String>),
        AddMember(AddMember),
        RemoveMember(u64),
        Heartbeat { agent: String, beat: Heartbeat },
    }

    #[test]
    fn batched_heartbeats_round_trip_and_a_previous_leader_refuses_them_without_misreading() {
        let beats =
            vec![("a1".to_string(), Heartbeat { lease_epoch: 1 }), ("a2".to_string(), Heartbeat { lease_epoch: 2 })];
        let back: ToLeader = codec::decode(&codec::encode(&ToLeader::Heartbeats(beats.clone())).unwrap()).unwrap();
        assert!(
            matches!(back, ToLeader::Heartbeats(ref b) if b.len() == 2 && b[1].0 == "a2" && b[1].1.lease_epoch == 2)
        );
        let answer = FromLeader::Leases(vec![
            Ok(Lease { lease_epoch: 1, lease_ms: 30_000 }),
            Err(ApiError::not_found("agent", "a2")),
        ]);
        let back = codec::decode::<FromLeader>(&codec::encode(&answer).unwrap()).unwrap().leases().unwrap();
        assert_eq!(back[0].as_ref().unwrap().lease_ms, 30_000);
        assert_eq!(back[1].as_ref().unwrap_err().code, ErrorCode::NotFound);
        // A leader of the previous version cannot read the batch (the forwarder then sends beats one by one), and
        // reads the single beat as before.
        assert!(codec::decode::<PreviousToLeader>(&codec::encode(&ToLeader::Heartbeats(beats)).unwrap()).is_err());
        let one = ToLeader::Heartbeat { agent: "a1".into(), beat: Heartbeat { lease_epoch: 3 } };
        let old: PreviousToLeader = codec::decode(&codec::encode(&one).unwrap()).unwrap();
        assert!(matches!(old, PreviousToLeader::Heartbeat { ref agent, .. } if agent == "a1"));
    }
}
