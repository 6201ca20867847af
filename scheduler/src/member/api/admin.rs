//! What operators ask: the members, readiness, and the agents as a fleet.

use super::*;

impl AdminApi for Cell {
    fn cells(&self) -> ApiResult<'_, Vec<titan_api::view::CellView>> {
        Box::pin(async move { Ok(self.cell_views()) })
    }

    fn autoscaler(&self) -> ApiResult<'_, titan_api::fleet::AutoscalerView> {
        Box::pin(async move {
            let leading = crate::scheduling::Host::is_leader(&self.handle);
            if !leading && !self.config.autoscaler.groups.is_empty() {
                // Only the leader scales: the client follows this to it.
                return Err(ApiError::new(ErrorCode::NotLeader, "the autoscaler runs on the leader; ask it"));
            }
            let mut view = self.autoscaling.lock().unwrap_or_else(|p| p.into_inner()).clone();
            view.leading = leading;
            // A new leader that has not looked yet still lists its groups.
            for g in &self.config.autoscaler.groups {
                if !view.groups.iter().any(|v| v.name == g.name) {
                    view.groups.push(titan_api::fleet::GroupView {
                        name: g.name.clone(),
                        min: g.min,
                        max: g.max,
                        slots: g.slots,
                        policy: g.policy.build().name().to_string(),
                        ..Default::default()
                    });
                }
            }
            Ok(view)
        })
    }

    fn cluster(&self) -> ApiResult<'_, ClusterView> {
        Box::pin(async move {
            let m = self.raft.metrics().borrow().clone();
            let (voters, nodes) = self.members();
            let members = nodes
                .into_iter()
                .map(|(id, addr)| {
                    let role = if Some(id) == m.current_leader {
                        "leader"
                    } else if voters.contains(&id) {
                        "follower"
                    } else {
                        "learner"
                    };
                    MemberView { id, addr, role: role.into() }
                })
                .collect();
            let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
            Ok(ClusterView {
                cell: self.config.cell.clone(),
                node_id: self.config.node_id,
                leader: m.current_leader,
                term: m.current_term,
                members,
                last_log_index: m.last_log_index.unwrap_or(0),
                commit_index: self.committed.load(Ordering::Relaxed).max(applied),
                applied_index: applied,
                snapshot_index: m.snapshot.map(|l| l.index),
                workers: self.workers.views(),
            })
        })
    }

    fn add_member(&self, member: AddMember) -> ApiResult<'_, ClusterView> {
        Box::pin(async move {
            let timeout =
                Duration::from_millis(self.config.raft.member_catch_up_ms + 2 * self.config.raft.write_timeout_ms);
            if let Some(answer) = self.forward_to_leader(&ToLeader::AddMember(member.clone()), timeout).await? {
                return answer.cluster();
            }
            let (voters, nodes) = self.members();
            if let Some(addr) = nodes.get(&member.id) {
                if *addr != member.addr {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        format!(
                            "member {} is already at {addr}; remove it before adding it at another address",
                            member.id
                        ),
                    )
                    .with_field("addr"));
                }
                if voters.contains(&member.id) {
                    return self.cluster().await;
                }
            } else if let Some((other, _)) = nodes.iter().find(|(_, a)| **a == member.addr) {
                return Err(ApiError::new(ErrorCode::Conflict, format!("{} is member {other}'s address", member.addr))
                    .with_field("addr"));
            }
            tracing::info!(id = member.id, addr = %member.addr, "adding member as a learner");
            self.metrics_membership_change("add_learner");
            let node = BasicNode::new(member.addr.clone());
            // Not blocking: openraft's blocking add returns at once for a learner that never answered (a lag under
            // `replication_lag_threshold`, 5000 entries, counts as up to date even with nothing matched).
            let added = self.raft.add_learner(member.id, node, false).await.map_err(membership_error)?;
            self.promote(member.id, &member.addr, added.log_id.index).await?;
            self.cluster().await
        })
    }

    fn remove_member(&self, id: u64) -> ApiResult<'_, ClusterView> {
        Box::pin(async move {
            let timeout = Duration::from_millis(2 * self.config.raft.write_timeout_ms);
            if let Some(answer) = self.forward_to_leader(&ToLeader::RemoveMember(id), timeout).await? {
                return answer.cluster();
            }
            let (voters, nodes) = self.members();
            if !nodes.contains_key(&id) {
                return Err(ApiError::not_found("member", &id.to_string()));
            }
            if voters.contains(&id) && voters.len() == 1 {
                return Err(ApiError::new(ErrorCode::Conflict, "cannot remove the last member"));
            }
            if voters.contains(&id) {
                let after = voters.iter().copied().filter(|v| *v != id).collect();
                self.quorum_after(&voters, &after)?;
            }
            tracing::info!(id, "removing member");
            self.metrics_membership_change("remove");
            let change = if voters.contains(&id) {
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            };
            self.change_membership(change).await?;
            self.cluster().await
        })
    }

    fn ready(&self) -> ApiResult<'_, ()> {
        Box::pin(async move {
            let m = self.raft.metrics().borrow().clone();
            match m.current_leader {
                Some(_) if m.running_state.is_ok() => Ok(()),
                _ => Err(ApiError::new(ErrorCode::Unavailable, "no leader is known yet")),
            }
        })
    }

    fn list_agents(&self) -> ApiResult<'_, Vec<AgentView>> {
        Box::pin(async move {
            let s = self.read();
            Ok(s.agents().map(|a| self.agent_view(a)).collect())
        })
    }

    fn get_agent(&self, id: String) -> ApiResult<'_, AgentView> {
        Box::pin(async move {
            let s = self.read();
            s.agent(&id).map(|a| self.agent_view(a)).ok_or_else(|| ApiError::not_found("agent", &id))
        })
    }

    fn set_agent_draining(&self, id: String, drain: bool, actor: Actor) -> ApiResult<'_, AgentView> {
        Box::pin(async move {
            let state = if drain { AgentState::Draining } else { AgentState::Active };
            let cmd = Command::SetAgentState { id: id.clone(), state, meta: self.meta(actor) };
            let AgentStateSet = self.commit_as(cmd).await?;
            tracing::info!(agent = %id, state = state.as_str(), "agent state set");
            let s = self.read();
            s.agent(&id).map(|a| self.agent_view(a)).ok_or_else(|| ApiError::not_found("agent", &id))
        })
    }
}
