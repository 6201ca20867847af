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
            let call = ToLeader::Heartbeat { agent: id.clone(), beat: beat.clone() };
            let timeout = Duration::from_millis(self.config.raft.write_timeout_ms);
            if let Some(answer) = self.forward_to_leader(&call, timeout).await? {
                return answer.lease();
            }
            let (epoch, fleet) = {
                let state = self.read();
                let epoch = state.agent(&id).map(|a| a.lease_epoch).ok_or_else(|| ApiError::not_found("agent", &id))?;
                (epoch, state.agent_count())
            };
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
            let lease_ms = crate::lease::lease_ms(&self.config.scheduler, fleet);
            self.leases().insert(id, crate::lease::Heard { at_ms: now_ms(), lease_ms });
            Ok(Lease { lease_epoch: epoch, lease_ms })
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
