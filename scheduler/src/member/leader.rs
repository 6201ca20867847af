//! What a member asks of its leader: the read index of a consistent read, why tasks are pending (the leader's
//! scheduler knows), and the leader's client for membership changes.

use super::*;

impl Cell {
    /// On the leader: the log index a linearizable read must see.
    pub(crate) async fn read_index_here(&self) -> Result<u64, ApiError> {
        match self.raft.ensure_linearizable().await {
            Ok(id) => Ok(id.map(|l| l.index).unwrap_or(0)),
            Err(e) => Err(ApiError::new(ErrorCode::NotLeader, format!("cannot confirm leadership: {e}"))),
        }
    }

    pub(crate) fn leader_client(&self) -> Result<Option<Client>, ApiError> {
        let m = self.raft.metrics().borrow().clone();
        match m.current_leader {
            Some(l) if l == self.config.node_id => Ok(None),
            Some(l) => {
                let addr = m
                    .membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.addr.clone())
                    .ok_or_else(|| ApiError::new(ErrorCode::NotLeader, "the leader's address is unknown"))?;
                Ok(Some(Client::with_http(&addr, self.peers.http.clone())))
            }
            None => Err(ApiError::new(ErrorCode::NotLeader, "no leader is elected")),
        }
    }

    /// Why these Accepted tasks wait, from the leader's latest rounds (asked of the leader by a follower; empty
    /// when it cannot be reached: the answer is informative, never required).
    pub(crate) async fn pending_reasons(&self, ids: Vec<String>) -> BTreeMap<String, String> {
        if ids.is_empty() {
            return BTreeMap::new();
        }
        let leader = match self.leader_client() {
            Ok(None) => {
                return ids.into_iter().filter_map(|id| self.scheduling.pending(&id).map(|r| (id, r))).collect()
            }
            Ok(Some(leader)) => leader,
            Err(_) => return BTreeMap::new(),
        };
        let Ok(body) = codec::encode(&ids) else { return BTreeMap::new() };
        let url = format!("{}/internal/pending", leader.base());
        let request =
            self.peers.http.post(url).timeout(Duration::from_secs(2)).header("content-type", codec::CONTENT_TYPE);
        match request.body(body).send().await {
            Ok(resp) => match resp.bytes().await {
                Ok(bytes) => codec::decode(&bytes).unwrap_or_default(),
                Err(_) => BTreeMap::new(),
            },
            Err(e) => {
                tracing::debug!(error = %e, "pending reasons not fetched from the leader");
                BTreeMap::new()
            }
        }
    }
}

/// Why the given Accepted tasks wait, as this member (the leader) last found.
pub(super) async fn pending_here(State(cell): State<Arc<Cell>>, Packed(ids): Packed<Vec<String>>) -> HttpResponse {
    let reasons: BTreeMap<String, String> =
        ids.into_iter().filter_map(|id| cell.scheduling.pending(&id).map(|r| (id, r))).collect();
    Packed(reasons).into_response()
}

/// The leader's read index for a follower's consistent read.
pub(super) async fn read_index(State(cell): State<Arc<Cell>>) -> HttpResponse {
    Packed(cell.read_index_here().await).into_response()
}
