//! `/v1/agents`: what agents call (registration, heartbeats, the assignments long-poll, status reports), and what
//! operators do with the fleet (list, drain, put back to work). Two audiences, so two route groups.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::cluster::Admin;
use super::request::*;
use super::{Api, ApiResult};
use crate::agent::{AgentRegistration, AgentView, Heartbeat, Lease};
use crate::error::{ApiError, ErrorCode};
use crate::task::{Assignments, AssignmentsQuery, StatusAck, StatusReport, MAX_WAIT_MS};

/// What a cell answers its agents.
pub trait AgentsApi: Send + Sync + 'static {
    /// Registers (or re-registers) an agent; every registration raises its lease epoch.
    fn register_agent(&self, registration: AgentRegistration) -> ApiResult<'_, AgentView>;
    /// Renews an agent's lease; a stale epoch is refused and the agent must register again.
    fn heartbeat(&self, id: String, heartbeat: Heartbeat) -> ApiResult<'_, Lease>;
    /// An agent's assignments, once their version passes `after` (or `wait_ms` elapses).
    fn assignments(&self, agent: String, query: AssignmentsQuery) -> ApiResult<'_, Assignments>;
    /// What an agent observed of its tasks; committed before it is acknowledged.
    fn report_status(&self, agent: String, report: StatusReport) -> ApiResult<'_, StatusAck>;
}

pub(super) type Agents = std::sync::Arc<dyn AgentsApi>;

/// The routes agents call.
pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/agents", post(register_agent))
        .route("/v1/agents/{id}/heartbeat", post(heartbeat))
        .route("/v1/agents/{id}/assignments", get(assignments))
        .route("/v1/agents/{id}/status", post(report_status))
}

/// The operators' fleet routes.
pub(super) fn fleet_routes() -> Router<Api> {
    Router::new()
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{id}", get(get_agent))
        .route("/v1/agents/{id}/drain", post(drain_agent))
        .route("/v1/agents/{id}/enable", post(enable_agent))
}

#[utoipa::path(post, path = "/v1/agents", tag = "agents",
    request_body(content = AgentRegistration, content_type = "application/json"),
    responses((status = 200, body = AgentView), (status = "4XX", body = ApiError), (status = 503, body = ApiError)))]
async fn register_agent(
    State(cell): State<Agents>,
    caller: Option<axum::Extension<crate::acl::Caller>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<AgentView>, ApiError> {
    let registration: AgentRegistration = json_body(&headers, body).await?;
    registration.validate()?;
    if let Some(axum::Extension(c)) = &caller {
        c.check_agent(&registration.id)?;
    }
    Ok(Json(cell.register_agent(registration).await?))
}

#[utoipa::path(post, path = "/v1/agents/{id}/heartbeat", tag = "agents", params(("id" = String, Path)),
    request_body(content = Heartbeat, content_type = "application/json"),
    responses((status = 200, body = Lease), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn heartbeat(
    State(cell): State<Agents>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Lease>, ApiError> {
    let beat: Heartbeat = json_body(&headers, body).await?;
    Ok(Json(cell.heartbeat(id, beat).await?))
}

#[utoipa::path(get, path = "/v1/agents/{id}/assignments", tag = "agents", params(("id" = String, Path), AssignmentsQuery),
    responses((status = 200, body = Assignments), (status = 404, body = ApiError)))]
async fn assignments(
    State(cell): State<Agents>,
    Path(id): Path<String>,
    query: Result<Query<AssignmentsQuery>, QueryRejection>,
) -> Result<Json<Assignments>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::InvalidParameter, e.body_text()))?;
    if q.wait_ms.is_some_and(|w| w > MAX_WAIT_MS) {
        return Err(ApiError::new(ErrorCode::InvalidParameter, format!("waitMs must be at most {MAX_WAIT_MS}"))
            .with_field("waitMs"));
    }
    Ok(Json(cell.assignments(id, q).await?))
}

#[utoipa::path(post, path = "/v1/agents/{id}/status", tag = "agents", params(("id" = String, Path)),
    request_body(content = StatusReport, content_type = "application/json"),
    responses((status = 200, body = StatusAck), (status = "4XX", body = ApiError), (status = 503, body = ApiError)))]
async fn report_status(
    State(cell): State<Agents>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<StatusAck>, ApiError> {
    let report: StatusReport = json_body(&headers, body).await?;
    report.validate()?;
    Ok(Json(cell.report_status(id, report).await?))
}

#[utoipa::path(get, path = "/v1/agents", tag = "agents", responses((status = 200, body = [AgentView])))]
async fn list_agents(State(cell): State<Admin>, query: ReadParams) -> Result<Json<Vec<AgentView>>, ApiError> {
    consistent(&*cell, query).await?;
    Ok(Json(cell.list_agents().await?))
}

#[utoipa::path(get, path = "/v1/agents/{id}", tag = "agents", params(("id" = String, Path)),
    responses((status = 200, body = AgentView), (status = 404, body = ApiError)))]
async fn get_agent(
    State(cell): State<Admin>,
    Path(id): Path<String>,
    query: ReadParams,
) -> Result<Json<AgentView>, ApiError> {
    consistent(&*cell, query).await?;
    Ok(Json(cell.get_agent(id).await?))
}

#[utoipa::path(post, path = "/v1/agents/{id}/drain", tag = "agents", params(("id" = String, Path)),
    responses((status = 200, body = AgentView), (status = 404, body = ApiError)))]
async fn drain_agent(
    State(cell): State<Admin>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<AgentView>, ApiError> {
    Ok(Json(cell.set_agent_draining(id, true, actor(&headers)?).await?))
}

#[utoipa::path(post, path = "/v1/agents/{id}/enable", tag = "agents", params(("id" = String, Path)),
    responses((status = 200, body = AgentView), (status = 404, body = ApiError)))]
async fn enable_agent(
    State(cell): State<Admin>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<AgentView>, ApiError> {
    Ok(Json(cell.set_agent_draining(id, false, actor(&headers)?).await?))
}
