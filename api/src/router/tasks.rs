//! `/v1/tasks`: what users read of tasks, their logs (relayed from the task's agent), and kills.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::request::*;
use super::{Actor, Api, ApiResult, Reads};
use crate::error::{ApiError, ErrorCode};
use crate::task::{TaskList, TaskQuery, TaskView};
use crate::view::{ReadQuery, MAX_PAGE_SIZE};

/// What a cell answers its users about tasks.
pub trait TasksApi: Reads {
    /// The address (host:port) of the agent a task is placed on, which serves its logs.
    fn task_agent_addr(&self, id: String) -> ApiResult<'_, String>;
    /// How the cell calls its agents: HTTPS with its own certificate when it runs with TLS, plain HTTP otherwise.
    fn agent_http(&self) -> &crate::tls::PeerHttp;
    fn list_tasks(&self, query: TaskQuery) -> ApiResult<'_, TaskList>;
    fn get_task(&self, id: String) -> ApiResult<'_, TaskView>;
    /// Asks for a task to be stopped; its job's reconciler may start a replacement.
    fn kill_task(&self, id: String, actor: Actor) -> ApiResult<'_, TaskView>;
}

pub(super) type Tasks = std::sync::Arc<dyn TasksApi>;

/// The users' task routes.
pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/tasks", get(list_tasks))
        .route("/v1/tasks/{id}", get(get_task))
        .route("/v1/tasks/{id}/kill", post(kill_task))
        .route("/v1/tasks/{id}/logs", get(task_logs))
}

#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(TaskQuery),
    responses((status = 200, body = TaskList), (status = 400, body = ApiError)))]
async fn list_tasks(
    State(cell): State<Tasks>,
    query: Result<Query<TaskQuery>, QueryRejection>,
) -> Result<Json<TaskList>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::InvalidParameter, e.body_text()))?;
    q.validate()?;
    if q.limit.is_some_and(|l| l == 0 || l > MAX_PAGE_SIZE) {
        return Err(ApiError::new(ErrorCode::InvalidParameter, format!("limit must be 1..={MAX_PAGE_SIZE}"))
            .with_field("limit"));
    }
    if q.consistent {
        cell.read_barrier().await?;
    }
    Ok(Json(cell.list_tasks(q).await?))
}

#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path), ReadQuery),
    responses((status = 200, body = TaskView), (status = 404, body = ApiError)))]
async fn get_task(
    State(cell): State<Tasks>,
    Path(id): Path<String>,
    query: ReadParams,
) -> Result<Json<TaskView>, ApiError> {
    consistent(&*cell, query).await?;
    Ok(Json(cell.get_task(id).await?))
}

/// Query of `GET /v1/tasks/{id}/logs`.
#[derive(Clone, Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogQuery {
    /// Lines from the end (1 to 10000; default 100).
    pub tail: Option<u32>,
    /// stdout (default) or stderr.
    pub stream: Option<String>,
    /// Keep streaming new lines as plain text.
    #[serde(default)]
    pub follow: bool,
    /// End the stream after this many seconds (1 to `MAX_STREAM_SECONDS`); absent: it follows for as long as the
    /// client reads.
    pub timeout_seconds: Option<u64>,
}

#[utoipa::path(get, path = "/v1/tasks/{id}/logs", tag = "tasks", params(("id" = String, Path), LogQuery),
    responses((status = 200, description = "a JSON array of lines, or with follow=true a text stream", body = [String]),
        (status = 404, body = ApiError), (status = 503, body = ApiError)))]
async fn task_logs(
    State(cell): State<Tasks>,
    Path(id): Path<String>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::InvalidParameter, e.body_text()))?;
    if q.tail.is_some_and(|t| t == 0 || t > 10_000) {
        return Err(ApiError::new(ErrorCode::InvalidParameter, "tail is 1..=10000").with_field("tail"));
    }
    let stream = q.stream.unwrap_or_else(|| "stdout".into());
    if stream != "stdout" && stream != "stderr" {
        return Err(ApiError::new(ErrorCode::InvalidParameter, "stream is stdout or stderr").with_field("stream"));
    }
    let limit = stream_limit(q.timeout_seconds)?;
    let addr = cell.task_agent_addr(id.clone()).await?;
    // The agent serves its tasks' logs from disk; the cell relays them (streaming when following).
    let path = format!("/v1/tasks/{id}/logs?tail={}&stream={stream}&follow={}", q.tail.unwrap_or(100), q.follow);
    let resp = cell.agent_http().get(&addr, &path).send().await.map_err(|e| {
        ApiError::new(ErrorCode::Unavailable, format!("the task's agent at {addr} cannot be reached: {e}"))
    })?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
        .unwrap_or_else(|| HeaderValue::from_static("application/json"));
    let body = Body::from_stream(ending_after(resp.bytes_stream(), limit));
    Ok((status, [(header::CONTENT_TYPE, content_type)], body).into_response())
}

#[utoipa::path(post, path = "/v1/tasks/{id}/kill", tag = "tasks", params(("id" = String, Path)),
    responses((status = 200, body = TaskView), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn kill_task(
    State(cell): State<Tasks>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<TaskView>, ApiError> {
    Ok(Json(cell.kill_task(id, actor(&headers)?).await?))
}
