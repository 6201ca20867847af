//! What users ask of jobs: reads from the applied state, writes through `propose`.

use super::*;

impl JobsApi for Cell {
    fn submit_job(&self, spec: JobSpec, idempotency_key: Option<String>, actor: Actor) -> ApiResult<'_, JobRef> {
        Box::pin(async move {
            let id = uuid::Uuid::new_v4().to_string();
            let spec = Spec::from(spec);
            self.check_locations(spec.counts().keys())?;
            self.check_failover(&spec)?;
            let unseen = self.unseen(spec.counts().keys());
            let mut job = self
                .write(Command::PutJob { id, spec: Arc::new(spec), idempotency_key, meta: self.meta(actor) })
                .await?;
            job.unseen_locations = unseen;
            Ok(job)
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
            let record = self.read().job(&id).cloned().ok_or_else(|| ApiError::not_found("job", &id))?;
            let locations = self.location_views(&record);
            let (mut view, mut summary, accepted) = {
                let s = self.read();
                let mut view = record.view();
                view.locations = locations;
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
            self.read()
                .job(&id)
                .map(|j| j.history.iter().map(HistoryEntry::from).collect())
                .ok_or_else(|| ApiError::not_found("job", &id))
        })
    }

    fn update_job(&self, id: String, spec: JobSpec, if_match: Option<u64>, actor: Actor) -> ApiResult<'_, JobRef> {
        Box::pin(async move {
            let spec = Spec::from(spec);
            self.check_locations(spec.counts().keys())?;
            self.check_failover(&spec)?;
            let unseen = self.unseen(spec.counts().keys());
            let mut job = self
                .write(Command::UpdateJob { id, spec: Arc::new(spec), if_version: if_match, meta: self.meta(actor) })
                .await?;
            job.unseen_locations = unseen;
            Ok(job)
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
            self.check_locations(instances.keys())?;
            let unseen = self.unseen(instances.keys());
            let mut job = self
                .write(Command::SetInstances { id, instances, if_version: if_match, meta: self.meta(actor) })
                .await?;
            job.unseen_locations = unseen;
            Ok(job)
        })
    }

    fn set_enabled(&self, id: String, enabled: bool, actor: Actor) -> ApiResult<'_, JobRef> {
        Box::pin(async move { self.write(Command::SetEnabled { id, enabled, meta: self.meta(actor) }).await })
    }

    fn dry_run(&self, write: titan_api::quota::JobWrite) -> ApiResult<'_, titan_api::quota::DryRun> {
        use titan_api::quota::{JobWrite, LocationQuota, LocationQuotaView};
        Box::pin(async move {
            let state = self.read();
            let (id, spec, counts, enabled) = match write {
                JobWrite::Submit(spec) => {
                    let spec = Spec::from(spec);
                    let counts = spec.counts();
                    (String::new(), spec, counts, true)
                }
                JobWrite::Update { id, spec } => {
                    let job = state.job(&id).ok_or_else(|| ApiError::not_found("job", &id))?;
                    let spec = Spec::from(spec);
                    let counts = job.counts_after_update(&spec);
                    (id, spec, counts, job.state == titan_api::view::JobState::Enabled)
                }
                JobWrite::Scale { id, counts } => {
                    let job = state.job(&id).ok_or_else(|| ApiError::not_found("job", &id))?;
                    let all = job.counts_after_scale(&counts);
                    (id, (*job.spec).clone(), all, job.state == titan_api::view::JobState::Enabled)
                }
            };
            self.check_locations(counts.keys())?;
            self.check_failover(&spec)?;
            let before = state.job(&id).map(|j| &j.counts);
            state.check_frozen(before, &counts).map_err(super::rejection)?;
            let after = state
                .check_admission(&id, &spec, &counts, enabled)
                .map_err(|e| super::rejection(crate::command::Rejection::QuotaExceeded(e)))?;
            let group = crate::quota::group_of(&spec).to_string();
            let quota = state.quota(&group);
            let locations = after
                .into_iter()
                .map(|(l, used)| LocationQuotaView {
                    limit: quota.and_then(|q| q.locations.get(&l)).map(LocationQuota::from),
                    location: l,
                    used: used.usage(),
                    running: None,
                })
                .collect();
            Ok(titan_api::quota::DryRun { dry_run: true, group, locations })
        })
    }

    fn kill_job(&self, id: String, actor: Actor) -> ApiResult<'_, JobRef> {
        Box::pin(async move { self.write(Command::KillJob { id, meta: self.meta(actor) }).await })
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
}
