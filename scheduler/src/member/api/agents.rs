//! What agents ask: registration, heartbeats (on the leader, where leases live), assignments, status reports.

use super::*;

impl AgentsApi for Cell {
    fn register_agent(&self, registration: AgentRegistration) -> ApiResult<'_, AgentView> {
        Box::pin(async move {
            let id = registration.id.clone();
            let at_ms = now_ms();
            let meta = Meta {
                who: format!("agent:{id}"),
                why: None,
                at_ms,
                request: uuid::Uuid::new_v4().to_string(),
                cell: self.config.cell.clone(),
            };
            let registration = crate::agent::Registration::from(registration);
            let cmd = Command::RegisterAgent { registration: Box::new(registration.clone()), meta };
            let Registered { lease_epoch } = self.commit_as(cmd).await?;
            tracing::info!(agent = %id, lease_epoch, "agent registered");
            // The agent's next calls (its assignments long-poll) come to this member: answer only once it has
            // applied the registration, or a lagging follower would call the agent unknown.
            let mut changes = self.raft.metrics();
            let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.raft.write_timeout_ms);
            while self.read().agent(&id).is_none_or(|a| a.lease_epoch < lease_epoch) {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return Err(shutting_down()) },
                    () = tokio::time::sleep_until(deadline) => {
                        return Err(ApiError::new(ErrorCode::Unavailable, "the registration is committed but not applied here yet; retry"));
                    }
                }
            }
            // Built from the committed answer, not this member's state, which may not have applied it yet.
            let record = crate::state::AgentRecord {
                state: self.read().agent(&id).map(|a| a.state).unwrap_or(AgentState::Active),
                registration,
                lease_epoch,
                registered_at_ms: at_ms,
                reachable: true,
                version: 0,
            };
            Ok(self.agent_view(&record))
        })
    }

    fn heartbeat(&self, id: String, beat: Heartbeat) -> ApiResult<'_, Lease> {
        Box::pin(async move {
            // On a follower the beat joins the others on their way to the leader (`beats`).
            if self.proposer.leader_elsewhere().is_some() {
                let timeout = Duration::from_millis(self.config.raft.write_timeout_ms);
                return self.beats.forward(id, beat, timeout).await;
            }
            if !self.is_leader() {
                return Err(ApiError::new(ErrorCode::NotLeader, "no leader is elected"));
            }
            self.heartbeats_here(vec![(id, beat)]).pop().unwrap_or_else(|| Err(ApiError::internal("no answer")))
        })
    }

    fn assignments(&self, agent: String, query: AssignmentsQuery) -> ApiResult<'_, Assignments> {
        Box::pin(async move {
            // Subscribed before reading, so a change between the read and the wait still wakes it.
            let mut changes = self.watchers.subscribe(&agent);
            let wait = Duration::from_millis(query.wait_ms.unwrap_or(0));
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let (version, answer) = self.assignments_now(&agent)?;
                if query.after.is_none_or(|after| version > after) {
                    return Ok(answer);
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return Err(shutting_down()) },
                    () = tokio::time::sleep_until(deadline) => return Ok(answer),
                }
            }
        })
    }

    fn report_status(&self, agent: String, report: StatusReport) -> ApiResult<'_, StatusAck> {
        Box::pin(async move {
            let meta = Meta {
                who: format!("agent:{agent}"),
                why: None,
                at_ms: now_ms(),
                request: uuid::Uuid::new_v4().to_string(),
                cell: self.config.cell.clone(),
            };
            let cmd = Command::TaskStatuses {
                agent,
                lease_epoch: report.lease_epoch,
                statuses: report.statuses.into_iter().map(Into::into).collect(),
                meta,
            };
            self.commit_as::<StatusAck>(cmd).await
        })
    }
}

impl Cell {
    /// On the leader: renews the lease of each agent whose epoch is current, giving it the lease the fleet gets
    /// now; one answer per beat, in order.
    pub(crate) fn heartbeats_here(&self, beats: Vec<(String, Heartbeat)>) -> Vec<Result<Lease, ApiError>> {
        let state = self.read();
        let lease_ms = crate::lease::lease_ms(&self.config.scheduler, state.agent_count());
        let now = now_ms();
        let mut leases = self.leases();
        beats
            .into_iter()
            .map(|(id, beat)| {
                let epoch = state.agent(&id).map(|a| a.lease_epoch).ok_or_else(|| ApiError::not_found("agent", &id))?;
                if epoch != beat.lease_epoch {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        format!(
                            "lease epoch {} of agent {id} is stale (current {epoch}): register again",
                            beat.lease_epoch
                        ),
                    )
                    .with_field("leaseEpoch"));
                }
                leases.insert(id, crate::lease::Heard { at_ms: now, lease_ms });
                Ok(Lease { lease_epoch: epoch, lease_ms })
            })
            .collect()
    }
}
