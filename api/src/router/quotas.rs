//! `/v1/quotas`: each capacity group's limits per location and its usage, as SREs set and everyone reads them.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::request::*;
use super::{Actor, Api, ApiResult, Reads};
use crate::error::{ApiError, ErrorCode};
use crate::quota::{is_group_name, QuotaList, QuotaRef, QuotaSpec, QuotaView};
use crate::view::ReadQuery;

/// What a cell answers about quotas. Writes are answered after they are committed.
pub trait QuotasApi: Reads {
    fn list_quotas(&self) -> ApiResult<'_, QuotaList>;
    /// A group's quota and usage; a group with usage and no quota has version 0 and no limits.
    fn get_quota(&self, group: String) -> ApiResult<'_, QuotaView>;
    fn put_quota(
        &self,
        group: String,
        quota: QuotaSpec,
        if_match: Option<u64>,
        actor: Actor,
    ) -> ApiResult<'_, QuotaRef>;
    fn delete_quota(&self, group: String, if_match: Option<u64>, actor: Actor) -> ApiResult<'_, QuotaRef>;
}

pub(super) type Quotas = std::sync::Arc<dyn QuotasApi>;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/quotas", get(list_quotas))
        .route("/v1/quotas/{group}", get(get_quota).put(put_quota).delete(delete_quota))
}

fn check_group(group: &str) -> Result<(), ApiError> {
    if is_group_name(group) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::InvalidParameter,
        format!("{group:?} is not a group name: 1-64 letters, digits, '-', '_' or '.'"),
    )
    .with_field("group"))
}

#[utoipa::path(get, path = "/v1/quotas", tag = "quotas", params(ReadQuery),
    responses((status = 200, body = QuotaList)))]
async fn list_quotas(State(cell): State<Quotas>, query: ReadParams) -> Result<Json<QuotaList>, ApiError> {
    consistent(&*cell, query).await?;
    Ok(Json(cell.list_quotas().await?))
}

#[utoipa::path(get, path = "/v1/quotas/{group}", tag = "quotas", params(("group" = String, Path), ReadQuery),
    responses((status = 200, body = QuotaView), (status = 404, body = ApiError)))]
async fn get_quota(
    State(cell): State<Quotas>,
    Path(group): Path<String>,
    query: ReadParams,
) -> Result<Response, ApiError> {
    check_group(&group)?;
    consistent(&*cell, query).await?;
    let quota = cell.get_quota(group).await?;
    Ok((etag(quota.version), Json(quota)).into_response())
}

#[utoipa::path(put, path = "/v1/quotas/{group}", tag = "quotas", params(("group" = String, Path),
        ("If-Match" = Option<String>, Header, description = "the quota version this replaces; \"0\": none yet")),
    request_body(content = QuotaSpec, content_type = "application/json"),
    responses((status = 200, body = QuotaRef), (status = "4XX", body = ApiError), (status = 503, body = ApiError)))]
async fn put_quota(
    State(cell): State<Quotas>,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_group(&group)?;
    let version = if_match(&headers)?;
    let who = actor(&headers)?;
    if !matches!(format_of(&headers)?, crate::job::BodyFormat::Json) {
        return Err(ApiError::new(ErrorCode::UnsupportedMediaType, "send application/json").with_field("Content-Type"));
    }
    let quota = QuotaSpec::parse(&read_body(body).await?)?;
    let answer = cell.put_quota(group, quota, version, who).await?;
    Ok((etag(answer.version), Json(answer)).into_response())
}

#[utoipa::path(delete, path = "/v1/quotas/{group}", tag = "quotas", params(("group" = String, Path),
        ("If-Match" = Option<String>, Header, description = "the quota version this deletes")),
    responses((status = 200, body = QuotaRef), (status = 404, body = ApiError), (status = 412, body = ApiError)))]
async fn delete_quota(
    State(cell): State<Quotas>,
    Path(group): Path<String>,
    headers: HeaderMap,
) -> Result<Json<QuotaRef>, ApiError> {
    check_group(&group)?;
    let version = if_match(&headers)?;
    Ok(Json(cell.delete_quota(group, version, actor(&headers)?).await?))
}
