//! `/v1/locations`: the SRE levers on each location (freeze, evacuate, restore, weight), every one with a required
//! reason and a dry run; and `/v1/jobs/{id}/endpoints`, what routers read of where a job's traffic may go.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post, put};
use axum::{Json, Router};

use super::request::*;
use super::{Actor, Api, ApiResult, Reads};
use crate::error::{ApiError, ErrorCode};
use crate::location::{
    check_reason, Endpoints, EndpointsQuery, LeverAnswer, LeverKind, LeverRequest, LocationList, LocationView,
    WeightRequest,
};
use crate::quota::DryRunQuery;
use crate::view::ReadQuery;

/// What a cell answers about locations. A lever is answered once committed (a dry run: at once, nothing written).
pub trait LocationsApi: Reads {
    fn list_locations(&self) -> ApiResult<'_, LocationList>;
    fn get_location(&self, name: String) -> ApiResult<'_, LocationView>;
    fn pull_lever(
        &self,
        name: String,
        lever: LeverKind,
        to: Vec<String>,
        dry_run: bool,
        actor: Actor,
    ) -> ApiResult<'_, LeverAnswer>;
    fn set_weight(&self, name: String, weight: u8, dry_run: bool, actor: Actor) -> ApiResult<'_, LeverAnswer>;
    /// A job's endpoints in every location (`local`: this cell's own only).
    fn endpoints(&self, job: String, local: bool) -> ApiResult<'_, Endpoints>;
}

pub(super) type Locations = std::sync::Arc<dyn LocationsApi>;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/locations", get(list_locations))
        .route("/v1/locations/{name}", get(get_location))
        .route("/v1/locations/{name}/weight", put(set_weight))
        .route("/v1/locations/{name}/{lever}", post(pull_lever))
        .route("/v1/jobs/{id}/endpoints", get(endpoints))
}

/// A lever's body: JSON, or none at all (then it has no reason, and says so).
async fn lever_body<T: serde::de::DeserializeOwned + Default>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    let bytes = read_body(body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    if !matches!(format_of(headers)?, crate::job::BodyFormat::Json) {
        return Err(ApiError::new(ErrorCode::UnsupportedMediaType, "send application/json").with_field("Content-Type"));
    }
    crate::job::BodyFormat::Json.decode(&bytes)
}

/// The actor of a lever: who from the headers, why from the body's required reason.
fn lever_actor(headers: &HeaderMap, reason: Option<&str>) -> Result<Actor, ApiError> {
    let mut who = actor(headers)?;
    who.why = Some(check_reason(reason)?);
    Ok(who)
}

#[utoipa::path(get, path = "/v1/locations", tag = "locations", params(ReadQuery),
    responses((status = 200, body = LocationList)))]
async fn list_locations(State(cell): State<Locations>, query: ReadParams) -> Result<Json<LocationList>, ApiError> {
    consistent(&*cell, query).await?;
    Ok(Json(cell.list_locations().await?))
}

#[utoipa::path(get, path = "/v1/locations/{name}", tag = "locations", params(("name" = String, Path), ReadQuery),
    responses((status = 200, body = LocationView), (status = 404, body = ApiError)))]
async fn get_location(
    State(cell): State<Locations>,
    Path(name): Path<String>,
    query: ReadParams,
) -> Result<Json<LocationView>, ApiError> {
    consistent(&*cell, query).await?;
    Ok(Json(cell.get_location(name).await?))
}

#[utoipa::path(post, path = "/v1/locations/{name}/{lever}", tag = "locations",
    params(("name" = String, Path), ("lever" = LeverKind, Path, description = "freeze, unfreeze, evacuate or restore"),
        DryRunQuery),
    request_body(content = LeverRequest, content_type = "application/json"),
    responses((status = 200, body = LeverAnswer), (status = "4XX", body = ApiError), (status = 503, body = ApiError)))]
async fn pull_lever(
    State(cell): State<Locations>,
    Path((name, lever)): Path<(String, String)>,
    dry: DryRunParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<LeverAnswer>, ApiError> {
    let Some(lever) = LeverKind::parse(&lever) else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no lever {lever:?}: freeze, unfreeze, evacuate or restore (PUT .../weight for the weight)"),
        )
        .with_field("lever"));
    };
    let dry = dry_run(dry)?;
    let req: LeverRequest = lever_body(&headers, body).await?;
    let who = lever_actor(&headers, req.reason.as_deref())?;
    let to = req.to.unwrap_or_default();
    if lever != LeverKind::Evacuate && !to.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("only evacuate takes targets, not {}", lever.as_str()),
        )
        .with_field("to"));
    }
    Ok(Json(cell.pull_lever(name, lever, to, dry, who).await?))
}

#[utoipa::path(put, path = "/v1/locations/{name}/weight", tag = "locations", params(("name" = String, Path), DryRunQuery),
    request_body(content = WeightRequest, content_type = "application/json"),
    responses((status = 200, body = LeverAnswer), (status = "4XX", body = ApiError), (status = 503, body = ApiError)))]
async fn set_weight(
    State(cell): State<Locations>,
    Path(name): Path<String>,
    dry: DryRunParams,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<LeverAnswer>, ApiError> {
    let dry = dry_run(dry)?;
    let req: WeightRequest = lever_body(&headers, body).await?;
    let who = lever_actor(&headers, req.reason.as_deref())?;
    let weight = req.weight()?;
    Ok(Json(cell.set_weight(name, weight, dry, who).await?))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/endpoints", tag = "jobs", params(("id" = String, Path), EndpointsQuery),
    responses((status = 200, body = Endpoints), (status = 404, body = ApiError)))]
async fn endpoints(
    State(cell): State<Locations>,
    Path(id): Path<String>,
    query: Result<Query<EndpointsQuery>, QueryRejection>,
) -> Result<Json<Endpoints>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::InvalidParameter, e.body_text()).with_field("local"))?;
    Ok(Json(cell.endpoints(id, q.local == Some(true)).await?))
}
