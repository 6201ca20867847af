//! The REST API over the member, one file per audience (`jobs`, `tasks`, `agents`, `admin`): reads from the applied
//! state, writes through `propose`.

use super::*;

mod admin;
mod agents;
mod jobs;
mod locations;
mod quotas;
mod tasks;
mod tokens;

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
            resources: (&r.resources).into(),
            attributes: r.attributes.clone(),
            state: a.state,
            lease_epoch: a.lease_epoch,
            registered_at_ms: a.registered_at_ms,
            last_heartbeat_ms: self.leases().get(&r.id).map(|h| h.at_ms),
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
        Rejection::QuotaExceeded(e) => ApiError::new(ErrorCode::QuotaExceeded, e.to_string()).with_field("location"),
        Rejection::QuotaNotFound { group } => ApiError::not_found("quota", &group),
        Rejection::QuotaVersionMismatch { group, expected, current } => ApiError::new(
            ErrorCode::VersionMismatch,
            format!("the quota of {group} is at version {current}, not {expected}"),
        )
        .with_field("If-Match"),
        Rejection::LeverIllegal(e) => ApiError::new(ErrorCode::LeverIllegal, e.to_string()).with_field("state"),
        Rejection::LocationFrozen { location, state } => ApiError::new(
            ErrorCode::LocationFrozen,
            format!("location {location} is {}: no count there may rise until it is active again", state.as_str()),
        )
        .with_field("location"),
        Rejection::TokenExists { name } => {
            ApiError::new(ErrorCode::Conflict, format!("a token named {name} exists (names are never reused)"))
                .with_field("name")
        }
        Rejection::TokenNotFound { name } => ApiError::not_found("token", &name),
        Rejection::LastAdminToken { name } => ApiError::new(
            ErrorCode::Conflict,
            format!("{name} is the last admin token that works: make another admin token before revoking it"),
        )
        .with_field("name"),
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

impl Reads for Cell {
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
}
