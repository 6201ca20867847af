//! How members join and leave: a new one is a learner until it has answered and caught up, and no change may
//! leave the cell without a reachable quorum.

use super::*;

impl Cell {
    /// Makes learner `id` a voter once it has answered and holds the log up to `target` (bounded by
    /// `raft.member_catch_up_ms`), and only when a majority of the voters before and after answer.
    pub(crate) async fn promote(&self, id: NodeId, addr: &str, target: u64) -> Result<(), ApiError> {
        let wait = Duration::from_millis(self.config.raft.member_catch_up_ms);
        let caught_up = self
            .raft
            .wait(Some(wait))
            .metrics(
                |m| match &m.replication {
                    // This member no longer leads: the wait is over either way.
                    None => true,
                    Some(r) => membership::caught_up(r.get(&id).copied().flatten().map(|l| l.index), target),
                },
                "the new learner to catch up",
            )
            .await;
        let matched = match caught_up {
            Ok(m) => m.replication.as_ref().and_then(|r| r.get(&id).copied()).flatten().map(|l| l.index),
            Err(_) => {
                let m = self.raft.metrics().borrow().clone();
                m.replication.as_ref().and_then(|r| r.get(&id).copied()).flatten().map(|l| l.index)
            }
        };
        if self.raft.metrics().borrow().state != ServerState::Leader {
            return Err(ApiError::new(ErrorCode::NotLeader, "leadership moved while the member caught up; retry"));
        }
        let Some(m) = matched else {
            // Nothing ever answered there: a mistyped address, or a member not started. The caller's mistake, so a
            // 4xx, and undone, so that the refused request leaves nothing behind (not even a learner to retry).
            tracing::warn!(id, addr, "a new member never answered; it is removed again");
            self.metrics_membership_change("refused");
            self.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id]))).await?;
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                format!(
                    "no member answered at {addr} within {wait:?}, so member {id} was not added: check the address \
                     and that `titan server` runs there with an empty data directory"
                ),
            )
            .with_field("addr"));
        };
        if !membership::caught_up(matched, target) {
            self.metrics_membership_change("left_learner");
            tracing::warn!(id, addr, matched = m, target, "a new member did not catch up; it stays a learner");
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "member {id} answers but holds the log to {m} of {target} after {wait:?}: it stays a learner, \
                     without a vote, and goes on catching up; add it again to give it its vote once it has"
                ),
            ));
        }
        let (voters, _) = self.members();
        let mut after = voters.clone();
        after.insert(id);
        self.quorum_after(&voters, &after)?;
        tracing::info!(id, "the new member caught up; it becomes a voter");
        self.metrics_membership_change("promote");
        self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await
    }

    /// Commits a membership change within `raft.write_timeout_ms`: a voter lost during it would otherwise leave the
    /// request waiting for a commit that may never come.
    pub(crate) async fn change_membership(&self, change: ChangeMembers<NodeId, BasicNode>) -> Result<(), ApiError> {
        let wait = Duration::from_millis(self.config.raft.write_timeout_ms);
        match tokio::time::timeout(wait, self.raft.change_membership(change, false)).await {
            Ok(r) => r.map(|_| ()).map_err(membership_error),
            Err(_) => Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("the membership change was not committed within {wait:?}; it may still be applied"),
            )),
        }
    }

    /// Refuses a change from `before` to `after` voters that a majority of either could not commit: a voter answers
    /// when this member (the leader) heard from it within a few election timeouts.
    pub(crate) fn quorum_after(&self, before: &BTreeSet<NodeId>, after: &BTreeSet<NodeId>) -> Result<(), ApiError> {
        let recent = Duration::from_millis(3 * self.config.raft.election_max_ms);
        let mut answering = self.streams.answered_within(recent);
        answering.insert(self.config.node_id);
        membership::quorum_after_change(before, after, &answering).map_err(|e| {
            self.metrics_membership_change("refused");
            ApiError::new(ErrorCode::Conflict, e.to_string())
        })
    }

    pub(crate) fn metrics_membership_change(&self, outcome: &str) {
        self.metrics.membership_changes.with_label_values(&[outcome]).inc();
    }

    pub(crate) fn members(&self) -> (BTreeSet<NodeId>, BTreeMap<NodeId, String>) {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let voters = m.membership().voter_ids().collect();
        let nodes = m.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
        (voters, nodes)
    }
}

pub(super) fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            ApiError::new(ErrorCode::NotLeader, "leadership moved during the change; retry")
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ApiError::new(ErrorCode::Conflict, e.to_string())
        }
        RaftError::Fatal(e) => ApiError::new(ErrorCode::Unavailable, e.to_string()),
    }
}
