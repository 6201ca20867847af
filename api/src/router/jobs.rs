//! `/v1/jobs`: what users submit, read and change.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};

use super::request::*;
use super::{Actor, Api, ApiResult, EventFeed, Reads};
use crate::acl::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::job::{InstancesRequest, JobSpec};
use crate::quota::{DryRun, DryRunQuery, JobWrite};

use crate::view::{HistoryEntry, JobList, JobRef, JobView, ListQuery, ReadQuery, MAX_PAGE_SIZE};

/// What a cell answers its users about jobs. Writes are answered after they are committed.
pub trait JobsApi: Reads {
    fn submit_job(&self, spec: JobSpec, idempotency_key: Option<String>, actor: Actor) -> ApiResult<'_, JobRef>;
    fn list_jobs(&self, query: ListQuery) -> ApiResult<'_, JobList>;
    fn get_job(&self, id: String) -> ApiResult<'_, JobView>;
    fn job_history(&self, id: String) -> ApiResult<'_, Vec<HistoryEntry>>;
    fn update_job(&self, id: String, spec: JobSpec, if_match: Option<u64>, actor: Actor) -> ApiResult<'_, JobRef>;
    fn set_instances(
        &self,
        id: String,
        instances: BTreeMap<String, u32>,
        if_match: Option<u64>,
        actor: Actor,
    ) -> ApiResult<'_, JobRef>;
    fn set_enabled(&self, id: String, enabled: bool, actor: Actor) -> ApiResult<'_, JobRef>;
    fn kill_job(&self, id: String, actor: Actor) -> ApiResult<'_, JobRef>;
    /// Checks a job write against the quotas, as the write would be, and writes nothing.
    fn dry_run(&self, write: crate::quota::JobWrite) -> ApiResult<'_, crate::quota::DryRun>;
    /// The retained events after `from` and a subscription to those committed from now on.
    fn events(&self, from: Option<u64>) -> ApiResult<'_, EventFeed>;
}

pub(super) type Jobs = std::sync::Arc<dyn JobsApi>;

/// 403 unless the caller may write jobs of the spec's application (an owner's own; the authentication layer
/// checked the job a path names already).
fn owns(caller: &Option<Extension<Caller>>, spec: &JobSpec) -> Result<(), ApiError> {
    caller.as_ref().map_or(Ok(()), |Extension(c)| c.check_application(&spec.application_name))
}

/// The users' job routes.
pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/jobs", post(submit_job).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job).put(update_job).delete(kill_job))
        .route("/v1/jobs/{id}/history", get(job_history))
        .route("/v1/jobs/{id}/instances", put(set_instances))
        .route("/v1/jobs/{id}/enable", post(enable_job))
        .route("/v1/jobs/{id}/disable", post(disable_job))
}

#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body(content = JobSpec, content_type = "application/json", description = "JSON or YAML job spec: at \
        most 1 MiB (YAML 256 KiB), nested at most 32 deep, at most 16 YAML aliases (else 400 `body_too_complex`, field `body`)"),
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key get the first answer"), DryRunQuery),
    responses((status = 201, body = JobRef), (status = 200, body = DryRun, description = "a dry run: nothing written"),
        (status = "4XX", body = ApiError), (status = 503, body = ApiError)))]
async fn submit_job(
    State(cell): State<Jobs>,
    caller: Option<Extension<Caller>>,
    dry: DryRunParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let dry = dry_run(dry)?;
    let format = format_of(&headers)?;
    let key = idempotency_key(&headers)?;
    let who = actor(&headers)?;
    let spec = JobSpec::parse(&read_body(body).await?, format)?;
    owns(&caller, &spec)?;
    if dry {
        return Ok(Json(cell.dry_run(JobWrite::Submit(spec)).await?).into_response());
    }
    let job = cell.submit_job(spec, key, who).await?;
    let location = HeaderValue::from_str(&format!("/v1/jobs/{}", job.id))
        .map_err(|_| ApiError::internal("job id is not a valid header value"))?;
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], etag(job.version), Json(job)).into_response())
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 400, body = ApiError)))]
async fn list_jobs(
    State(cell): State<Jobs>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::InvalidParameter, e.body_text()))?;
    if q.consistent == Some(true) {
        cell.read_barrier().await?;
    }
    if let Some(s) = &q.state {
        if crate::view::JobState::parse(s).is_none() {
            return Err(ApiError::new(ErrorCode::InvalidParameter, "state must be enabled, disabled or killed")
                .with_field("state"));
        }
    }
    if q.limit.is_some_and(|l| l == 0 || l > MAX_PAGE_SIZE) {
        return Err(ApiError::new(ErrorCode::InvalidParameter, format!("limit must be 1..={MAX_PAGE_SIZE}"))
            .with_field("limit"));
    }
    Ok(Json(cell.list_jobs(q).await?))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path), ReadQuery),
    responses((status = 200, body = JobView), (status = 404, body = ApiError)))]
async fn get_job(State(cell): State<Jobs>, Path(id): Path<String>, query: ReadParams) -> Result<Response, ApiError> {
    consistent(&*cell, query).await?;
    let job = cell.get_job(id).await?;
    Ok((etag(job.version), Json(job)).into_response())
}

#[utoipa::path(get, path = "/v1/jobs/{id}/history", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = [HistoryEntry]), (status = 404, body = ApiError)))]
async fn job_history(
    State(cell): State<Jobs>,
    Path(id): Path<String>,
    query: ReadParams,
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    consistent(&*cell, query).await?;
    Ok(Json(cell.job_history(id).await?))
}

#[utoipa::path(put, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path),
        ("If-Match" = Option<String>, Header, description = "the version this update replaces"), DryRunQuery),
    request_body(content = JobSpec, content_type = "application/json"),
    responses((status = 200, body = JobRef, description = "with dryRun=true: a DryRun, nothing written"),
        (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 412, body = ApiError)))]
async fn update_job(
    State(cell): State<Jobs>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    dry: DryRunParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let dry = dry_run(dry)?;
    let format = format_of(&headers)?;
    let version = if_match(&headers)?;
    let who = actor(&headers)?;
    let spec = JobSpec::parse(&read_body(body).await?, format)?;
    owns(&caller, &spec)?;
    if dry {
        return Ok(Json(cell.dry_run(JobWrite::Update { id, spec }).await?).into_response());
    }
    let job = cell.update_job(id, spec, version, who).await?;
    Ok((etag(job.version), Json(job)).into_response())
}

#[utoipa::path(put, path = "/v1/jobs/{id}/instances", tag = "jobs", params(("id" = String, Path),
        ("If-Match" = Option<String>, Header, description = "compare-and-set on the job version, \"N\"; a weak \
            tag (W/\"N\") never matches"), DryRunQuery),
    request_body(content = InstancesRequest, content_type = "application/json"),
    responses((status = 200, body = JobRef, description = "with dryRun=true: a DryRun, nothing written"),
        (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 412, body = ApiError)))]
async fn set_instances(
    State(cell): State<Jobs>,
    Path(id): Path<String>,
    dry: DryRunParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let dry = dry_run(dry)?;
    let format = format_of(&headers)?;
    let version = if_match(&headers)?;
    let who = actor(&headers)?;
    let counts = InstancesRequest::parse(&read_body(body).await?, format)?.counts()?;
    if dry {
        return Ok(Json(cell.dry_run(JobWrite::Scale { id, counts }).await?).into_response());
    }
    let job = cell.set_instances(id, counts, version, who).await?;
    Ok((etag(job.version), Json(job)).into_response())
}

#[utoipa::path(post, path = "/v1/jobs/{id}/enable", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = JobRef), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn enable_job(
    State(cell): State<Jobs>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<JobRef>, ApiError> {
    Ok(Json(cell.set_enabled(id, true, actor(&headers)?).await?))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/disable", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = JobRef), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn disable_job(
    State(cell): State<Jobs>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<JobRef>, ApiError> {
    Ok(Json(cell.set_enabled(id, false, actor(&headers)?).await?))
}

#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = JobRef), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn kill_job(
    State(cell): State<Jobs>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<JobRef>, ApiError> {
    Ok(Json(cell.kill_job(id, actor(&headers)?).await?))
}
