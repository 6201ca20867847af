//! `/v1/acl/tokens`: API tokens, as admins create, list and revoke them; and what the authentication layer asks
//! the cell (`AuthApi`).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::request::*;
use super::{Actor, Api, ApiResult};
use crate::acl::{Caller, TokenCreated, TokenList, TokenSpec, TokenView};
use crate::error::{ApiError, ErrorCode};

/// Whether a cell checks tokens, and how.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthSettings {
    /// Every route but the probes and `/openapi.json` needs a token.
    pub enabled: bool,
    /// `/metrics` needs one too (any role).
    pub metrics_need_token: bool,
}

/// Why a token opens nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Unknown,
    Expired,
    Revoked,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Unknown => "unknown token",
            Refused::Expired => "token expired",
            Refused::Revoked => "token revoked",
        }
    }
}

/// What the authentication layer asks a cell, and the token routes. The defaults are a cell without
/// authentication (every request is allowed, as `Caller::anyone`).
pub trait AuthApi: Send + Sync + 'static {
    fn auth_settings(&self) -> AuthSettings {
        AuthSettings::default()
    }

    /// The caller whose secret hashes to `hash`, or why it is refused. Called on every request: O(1), no I/O.
    fn authenticate(&self, _hash: &[u8; 32]) -> Result<Caller, Refused> {
        Err(Refused::Unknown)
    }

    /// The application of a job (`None`: no such job), for an owner's checks.
    fn job_application(&self, _id: &str) -> Option<String> {
        None
    }

    /// The application of a task's job (`None`: no such task).
    fn task_application(&self, _id: &str) -> Option<String> {
        None
    }

    fn create_token(&self, _spec: TokenSpec, _actor: Actor) -> ApiResult<'_, TokenCreated> {
        Box::pin(async { Err(ApiError::new(ErrorCode::Unavailable, "this cell keeps no tokens")) })
    }

    fn list_tokens(&self) -> ApiResult<'_, TokenList> {
        Box::pin(async { Ok(TokenList::default()) })
    }

    fn revoke_token(&self, name: String, _actor: Actor) -> ApiResult<'_, TokenView> {
        Box::pin(async move { Err(ApiError::not_found("token", &name)) })
    }
}

pub(super) type Auth = std::sync::Arc<dyn AuthApi>;

/// The admins' token routes.
pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/acl/tokens", get(list_tokens).post(create_token))
        .route("/v1/acl/tokens/{name}", get(get_token).delete(revoke_token))
}

#[utoipa::path(post, path = "/v1/acl/tokens", tag = "acl", request_body = TokenSpec,
    responses((status = 201, body = TokenCreated, description = "the new token; its secret is shown only here"),
        (status = 400, body = ApiError), (status = 409, body = ApiError, description = "a token of that name exists")))]
async fn create_token(State(cell): State<Auth>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let actor = actor(&headers)?;
    let spec: TokenSpec = json_body(&headers, body).await?;
    spec.validate()?;
    let created = cell.create_token(spec, actor).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[utoipa::path(get, path = "/v1/acl/tokens", tag = "acl", responses((status = 200, body = TokenList)))]
async fn list_tokens(State(cell): State<Auth>) -> Result<Json<TokenList>, ApiError> {
    Ok(Json(cell.list_tokens().await?))
}

#[utoipa::path(get, path = "/v1/acl/tokens/{name}", tag = "acl", params(("name" = String, Path)),
    responses((status = 200, body = TokenView), (status = 404, body = ApiError)))]
async fn get_token(State(cell): State<Auth>, Path(name): Path<String>) -> Result<Json<TokenView>, ApiError> {
    let list = cell.list_tokens().await?;
    list.tokens.into_iter().find(|t| t.name == name).map(Json).ok_or_else(|| ApiError::not_found("token", &name))
}

#[utoipa::path(delete, path = "/v1/acl/tokens/{name}", tag = "acl", params(("name" = String, Path)),
    responses((status = 200, body = TokenView, description = "revoked, everywhere within a second"),
        (status = 404, body = ApiError)))]
async fn revoke_token(
    State(cell): State<Auth>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<TokenView>, ApiError> {
    Ok(Json(cell.revoke_token(name, actor(&headers)?).await?))
}
