//! What users ask of tasks.

use super::*;

impl TasksApi for Cell {
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

    fn agent_http(&self) -> &titan_api::tls::PeerHttp {
        &self.agents_http
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
            let TaskKilled = self.commit_as(Command::KillTask { id: id.clone(), meta: self.meta(actor) }).await?;
            tracing::info!(task = %id, "task kill requested");
            // A follower may not have applied the kill yet; the leader's answer already confirmed it.
            let s = self.read();
            s.task(&id)
                .map(|t| self.task_view(t, &BTreeMap::new(), crate::reconcile::may_run_beside(&s, t)))
                .ok_or_else(|| ApiError::not_found("task", &id))
        })
    }
}
