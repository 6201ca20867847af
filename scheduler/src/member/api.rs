//! The REST API (`CellApi`) over the member: reads from the applied state, writes through `propose`.

use super::*;

impl Cell {
    /// `beside`: the unreachable original this task may run beside (`reconcile::may_run_beside`), decided while
    /// the state was read.
    pub(crate) fn task_view(
        &self,
        t: &crate::task::TaskRecord,
        pending: &BTreeMap<String, String>,
        beside: Option<String>,
    ) -> TaskView {
        let mut view = t.view(&self.config.cell, pending.get(&t.id).cloned());
        view.may_run_beside = beside;
        view
    }

    /// What an agent must run, from this member's applied state.
    pub(crate) fn assignments_now(&self, agent: &str) -> Result<(u64, Assignments), ApiError> {
        let s = self.read();
        let a = s.agent(agent).ok_or_else(|| ApiError::not_found("agent", agent))?;
        let mut tasks = Vec::new();
        for t in s.tasks_on_agent(agent) {
            let Some(job) = s.job(&t.job_id) else { continue };
            // The spec the task was made from, not a later one: a task of version N-1 that has not started yet
            // still runs N-1's image.
            let spec = job.spec_for(t.spec_version);
            tasks.push(Assignment {
                task_id: t.id.clone(),
                job_id: t.job_id.clone(),
                desired: t.desired,
                image: spec.image.clone(),
                command: spec.command.clone(),
                env: spec.env.clone(),
                cpus: t.ask.cpus,
                memory_mib: t.ask.memory_mib,
                disk_mib: t.ask.disk_mib,
                ports: t.ports.clone(),
                volumes: spec.volumes.iter().map(Into::into).collect(),
                health_check: spec.health_check.as_ref().map(Into::into),
                kill_grace_ms: KILL_GRACE_MS,
                stop_after_ms: spec.disconnect.as_ref().map(|d| d.stop_after_ms()),
            });
        }
        Ok((a.version, Assignments { lease_epoch: a.lease_epoch, version: a.version, tasks }))
    }

    pub(crate) fn agent_view(&self, a: &crate::state::AgentRecord) -> AgentView {
        let r = &a.registration;
        AgentView {
            id: r.id.clone(),
            cell: self.config.cell.clone(),
            hostname: r.hostname.clone(),
            addr: r.addr.clone(),
            resources: r.resources.clone(),
            attributes: r.attributes.clone(),
            state: a.state,
            lease_epoch: a.lease_epoch,
            registered_at_ms: a.registered_at_ms,
            last_heartbeat_ms: self.leases().get(&r.id).copied(),
        }
    }
}

pub(super) fn rejection(r: Rejection) -> ApiError {
    match r {
        Rejection::NotFound { id } => ApiError::not_found("job", &id),
        Rejection::VersionMismatch { id, expected, current } => {
            ApiError::new(ErrorCode::VersionMismatch, format!("job {id} is at version {current}, not {expected}"))
                .with_field("If-Match")
        }
        Rejection::Killed { id } => ApiError::new(ErrorCode::Conflict, format!("job {id} was killed")),
        Rejection::IdempotencyKeyReused { key } => {
            ApiError::new(ErrorCode::Conflict, format!("Idempotency-Key {key:?} was used before for a different spec"))
                .with_field("Idempotency-Key")
        }
        Rejection::TaskNotFound { id } => ApiError::not_found("task", &id),
        Rejection::TaskTerminal { id, state } => {
            ApiError::new(ErrorCode::Conflict, format!("task {id} already ended: {}", state.as_str()))
        }
        Rejection::AgentNotFound { id } => ApiError::not_found("agent", &id),
        Rejection::StaleEpoch { agent, given, current } => ApiError::new(
            ErrorCode::Conflict,
            format!("lease epoch {given} of agent {agent} is stale (current {current}): register again"),
        )
        .with_field("leaseEpoch"),
    }
}

/// A task's failed attempt as the job view shows it, when the task ended failed, lost or rejected.
pub(super) fn failure_of(t: &crate::task::TaskRecord) -> Option<titan_api::view::Failure> {
    use titan_api::task::TaskState;
    matches!(t.state, TaskState::Failed | TaskState::Lost | TaskState::Rejected).then(|| titan_api::view::Failure {
        task_id: t.id.clone(),
        state: t.state.as_str().to_string(),
        reason: t.reason.map(|r| r.as_str().to_string()),
        message: t.message.clone(),
        exit_code: t.exit_code,
        at_ms: t.updated_at_ms,
    })
}

impl CellApi for Cell {
    fn submit_job(&self, spec: JobSpec, idempotency_key: Option<String>, actor: Actor) -> ApiResult<'_, JobRef> {
        Box::pin(async move {
            let id = uuid::Uuid::new_v4().to_string();
            self.write(Command::PutJob {
                id,
                spec: Arc::new(Spec::from(spec)),
                idempotency_key,
                meta: Cell::meta(actor),
            })
            .await
        })
    }

    fn list_jobs(&self, query: ListQuery) -> ApiResult<'_, JobList> {
        Box::pin(async move {
            let s = self.read();
            let (page, next) = s.list(&query);
            Ok(JobList { jobs: page.into_iter().map(|j| j.view()).collect(), next_page_token: next })
        })
    }

    fn get_job(&self, id: String) -> ApiResult<'_, JobView> {
        Box::pin(async move {
            let (mut view, mut summary, accepted) = {
                let s = self.read();
                let view = s.job(&id).map(|j| j.view()).ok_or_else(|| ApiError::not_found("job", &id))?;
                let mut summary = titan_api::view::TaskSummary::default();
                let mut accepted = Vec::new();
                for t in s.tasks_of_job(&id) {
                    *summary.by_state.entry(t.state.as_str().to_string()).or_insert(0) += 1;
                    if t.state == titan_api::task::TaskState::Accepted {
                        accepted.push(t.id.clone());
                    }
                    if let Some(failure) = failure_of(t) {
                        titan_api::view::LocationFailures::record(&mut summary.failures, &self.config.cell, failure);
                    }
                }
                (view, summary, accepted)
            };
            for (task_id, reason) in self.pending_reasons(accepted).await {
                summary.pending.push(titan_api::view::PendingTask { task_id, reason });
            }
            view.tasks = Some(summary);
            Ok(view)
        })
    }

    fn job_history(&self, id: String) -> ApiResult<'_, Vec<HistoryEntry>> {
        Box::pin(async move {
            self.read().job(&id).map(|j| j.history.clone()).ok_or_else(|| ApiError::not_found("job", &id))
        })
    }

    fn update_job(&self, id: String, spec: JobSpec, if_match: Option<u64>, actor: Actor) -> ApiResult<'_, JobRef> {
        Box::pin(async move {
            self.write(Command::UpdateJob {
                id,
                spec: Arc::new(Spec::from(spec)),
                if_version: if_match,
                meta: Cell::meta(actor),
            })
            .await
        })
    }

    fn set_instances(
        &self,
        id: String,
        instances: BTreeMap<String, u32>,
        if_match: Option<u64>,
        actor: Actor,
    ) -> ApiResult<'_, JobRef> {
        Box::pin(async move {
            self.write(Command::SetInstances { id, instances, if_version: if_match, meta: Cell::meta(actor) }).await
        })
    }

    fn set_enabled(&self, id: String, enabled: bool, actor: Actor) -> ApiResult<'_, JobRef> {
        Box::pin(async move { self.write(Command::SetEnabled { id, enabled, meta: Cell::meta(actor) }).await })
    }

    fn kill_job(&self, id: String, actor: Actor) -> ApiResult<'_, JobRef> {
        Box::pin(async move { self.write(Command::KillJob { id, meta: Cell::meta(actor) }).await })
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

    fn register_agent(&self, registration: AgentRegistration) -> ApiResult<'_, AgentView> {
        Box::pin(async move {
            let id = registration.id.clone();
            let at_ms = now_ms();
            let meta = Meta { who: format!("agent:{id}"), why: None, at_ms, request: uuid::Uuid::new_v4().to_string() };
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
            let epoch =
                self.read().agent(&id).map(|a| a.lease_epoch).ok_or_else(|| ApiError::not_found("agent", &id))?;
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
            self.leases().insert(id, now_ms());
            Ok(Lease { lease_epoch: epoch, lease_ms: self.config.scheduler.lease_ms })
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

    fn read_barrier(&self) -> ApiResult<'_, ()> {
        Box::pin(async move {
            // The leader confirms it still leads and names the index a read must see; a follower asks the leader
            // for that index, then waits until it has applied that far itself (ReadIndex).
            let index = self.read_index().await?;
            let timeout = Duration::from_millis(self.config.raft.write_timeout_ms);
            self.raft
                .wait(Some(timeout))
                .applied_index_at_least(Some(index), "consistent read")
                .await
                .map(|_| ())
                .map_err(|e| ApiError::new(ErrorCode::Unavailable, format!("not caught up for a consistent read: {e}")))
        })
    }

    fn set_agent_draining(&self, id: String, drain: bool, actor: Actor) -> ApiResult<'_, AgentView> {
        Box::pin(async move {
            let state = if drain { AgentState::Draining } else { AgentState::Active };
            let cmd = Command::SetAgentState { id: id.clone(), state, meta: Cell::meta(actor) };
            let AgentStateSet = self.commit_as(cmd).await?;
            tracing::info!(agent = %id, state = state.as_str(), "agent state set");
            let s = self.read();
            s.agent(&id).map(|a| self.agent_view(a)).ok_or_else(|| ApiError::not_found("agent", &id))
        })
    }

    fn events(&self, from: Option<u64>) -> ApiResult<'_, titan_api::router::EventFeed> {
        Box::pin(async move {
            match self.events.subscribe(from) {
                Ok((backlog, live)) => Ok(titan_api::router::EventFeed { backlog, live }),
                Err(oldest) => Err(ApiError::new(
                    ErrorCode::Expired,
                    format!(
                        "events after {} are no longer kept here; resume from {oldest} or re-read the state",
                        from.unwrap_or(0)
                    ),
                )
                .with_field("from")),
            }
        })
    }

    fn task_agent_addr(&self, id: String) -> ApiResult<'_, String> {
        Box::pin(async move {
            let s = self.read();
            let task = s.task(&id).ok_or_else(|| ApiError::not_found("task", &id))?;
            let agent = task.agent.as_deref().ok_or_else(|| {
                ApiError::new(ErrorCode::NotFound, format!("task {id} was never placed on an agent: it has no logs"))
            })?;
            s.agent(agent).map(|a| a.registration.addr.clone()).ok_or_else(|| ApiError::not_found("agent", agent))
        })
    }

    fn list_tasks(&self, query: TaskQuery) -> ApiResult<'_, TaskList> {
        Box::pin(async move {
            type Page = Vec<(crate::task::TaskRecord, Option<String>)>;
            let (page, next): (Page, Option<String>) = {
                let s = self.read();
                let (page, next) = s.list_tasks(&query);
                (page.into_iter().map(|t| (t.clone(), crate::reconcile::may_run_beside(&s, t))).collect(), next)
            };
            let accepted = page
                .iter()
                .filter(|(t, _)| t.state == titan_api::task::TaskState::Accepted)
                .map(|(t, _)| t.id.clone())
                .collect();
            let pending = self.pending_reasons(accepted).await;
            let tasks = page.into_iter().map(|(t, beside)| self.task_view(&t, &pending, beside)).collect();
            Ok(TaskList { tasks, next_page_token: next })
        })
    }

    fn get_task(&self, id: String) -> ApiResult<'_, TaskView> {
        Box::pin(async move {
            let (task, beside) = {
                let s = self.read();
                let task = s.task(&id).cloned().ok_or_else(|| ApiError::not_found("task", &id))?;
                let beside = crate::reconcile::may_run_beside(&s, &task);
                (task, beside)
            };
            let ids = if task.state == titan_api::task::TaskState::Accepted { vec![id] } else { vec![] };
            let pending = self.pending_reasons(ids).await;
            Ok(self.task_view(&task, &pending, beside))
        })
    }

    fn kill_task(&self, id: String, actor: Actor) -> ApiResult<'_, TaskView> {
        Box::pin(async move {
            let TaskKilled = self.commit_as(Command::KillTask { id: id.clone(), meta: Cell::meta(actor) }).await?;
            tracing::info!(task = %id, "task kill requested");
            // A follower may not have applied the kill yet; the leader's answer already confirmed it.
            let s = self.read();
            s.task(&id)
                .map(|t| self.task_view(t, &BTreeMap::new(), crate::reconcile::may_run_beside(&s, t)))
                .ok_or_else(|| ApiError::not_found("task", &id))
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
            };
            let cmd = Command::TaskStatuses { agent, lease_epoch: report.lease_epoch, statuses: report.statuses, meta };
            self.commit_as::<StatusAck>(cmd).await
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
}
