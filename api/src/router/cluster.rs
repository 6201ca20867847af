//! `/v1/cluster`: the cell's members, as operators see and change them; and the probes (`/healthz`, `/readyz`).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};

use super::request::*;
use super::{Actor, Api, ApiResult, Reads};
use crate::agent::AgentView;
use crate::error::{ApiError, ErrorCode};
use crate::view::{AddMember, CellView, ClusterView};

/// What a cell answers its operators: its members, its readiness, and its agents as a fleet.
pub trait AdminApi: Reads {
    fn cluster(&self) -> ApiResult<'_, ClusterView>;
    fn add_member(&self, member: AddMember) -> ApiResult<'_, ClusterView>;
    fn remove_member(&self, id: u64) -> ApiResult<'_, ClusterView>;
    /// Ready to serve: a leader is known and this member has applied what it knows is committed.
    fn ready(&self) -> ApiResult<'_, ()>;
    fn list_agents(&self) -> ApiResult<'_, Vec<AgentView>>;
    fn get_agent(&self, id: String) -> ApiResult<'_, AgentView>;
    /// Drains an agent (`drain`: its tasks move off within their jobs' disruption budgets and it takes no new
    /// work) or puts it back to work.
    fn set_agent_draining(&self, id: String, drain: bool, actor: Actor) -> ApiResult<'_, AgentView>;
    /// Every cell of the federation (this one first) as this member sees it.
    fn cells(&self) -> ApiResult<'_, Vec<CellView>>;
    /// The autoscaler's instance groups, as this member (if it leads) scales them.
    fn autoscaler(&self) -> ApiResult<'_, crate::fleet::AutoscalerView> {
        Box::pin(async { Ok(crate::fleet::AutoscalerView::default()) })
    }
}

pub(super) type Admin = std::sync::Arc<dyn AdminApi>;

/// The operators' cluster routes.
pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/members", post(add_member))
        .route("/v1/cluster/members/{id}", delete(remove_member))
        .route("/v1/cells", get(cells))
        .route("/v1/autoscaler", get(autoscaler))
}

#[utoipa::path(get, path = "/v1/autoscaler", tag = "cluster",
    responses((status = 200, body = crate::fleet::AutoscalerView), (status = 503, body = ApiError)))]
async fn autoscaler(State(cell): State<Admin>) -> Result<Json<crate::fleet::AutoscalerView>, ApiError> {
    Ok(Json(cell.autoscaler().await?))
}

/// The probes: for anyone, always.
pub(super) fn probes() -> Router<Api> {
    Router::new().route("/healthz", get(|| async { "ok" })).route("/readyz", get(ready))
}

#[utoipa::path(get, path = "/v1/cluster", tag = "cluster", responses((status = 200, body = ClusterView)))]
async fn cluster(State(cell): State<Admin>) -> Result<Json<ClusterView>, ApiError> {
    Ok(Json(cell.cluster().await?))
}

#[utoipa::path(post, path = "/v1/cluster/members", tag = "cluster",
    request_body(content = AddMember, content_type = "application/json"),
    responses((status = 200, body = ClusterView), (status = "4XX", body = ApiError), (status = 503, body = ApiError)))]
async fn add_member(State(cell): State<Admin>, headers: HeaderMap, body: Body) -> Result<Json<ClusterView>, ApiError> {
    let member: AddMember = json_body(&headers, body).await?;
    if member.addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(ApiError::field("addr", "must be host:port with an IP address"));
    }
    Ok(Json(cell.add_member(member).await?))
}

#[utoipa::path(delete, path = "/v1/cluster/members/{id}", tag = "cluster", params(("id" = u64, Path)),
    responses((status = 200, body = ClusterView), (status = "4XX", body = ApiError)))]
async fn remove_member(State(cell): State<Admin>, Path(id): Path<String>) -> Result<Json<ClusterView>, ApiError> {
    let id = id
        .parse::<u64>()
        .map_err(|_| ApiError::new(ErrorCode::InvalidParameter, "member id must be a number").with_field("id"))?;
    Ok(Json(cell.remove_member(id).await?))
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200), (status = 503, body = ApiError)))]
async fn ready(State(cell): State<Admin>) -> Response {
    match cell.ready().await {
        Ok(()) => "ready".into_response(),
        // "Not ready" is an answer, not a failure: probes ask until it changes, so it is not logged as one.
        Err(e) => {
            tracing::debug!(code = e.code.as_str(), message = %e.message, "not ready");
            (e.status(), Json(e)).into_response()
        }
    }
}

#[utoipa::path(get, path = "/v1/cells", tag = "cluster", responses((status = 200, body = [CellView])))]
async fn cells(State(cell): State<Admin>) -> Result<Json<Vec<CellView>>, ApiError> {
    Ok(Json(cell.cells().await?))
}
