//! The one error body of the API and the one place where conditions map to HTTP statuses.
//!
//! Every rejected request answers `{"code": "...", "message": "...", "field": "..."}`: a stable machine-readable
//! code, a human sentence, and the path of the offending field when there is one.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Stable error codes. Clients match on these; never rename one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid JSON or YAML at all.
    MalformedBody,
    /// The body parsed but a field is missing, unknown, of the wrong type or out of range.
    InvalidSpec,
    /// A query parameter or header is not acceptable.
    InvalidParameter,
    /// The Content-Type is not JSON or YAML.
    UnsupportedMediaType,
    /// The body is larger than the limit.
    PayloadTooLarge,
    /// The body nests deeper than 32 levels, or holds more than 64 YAML aliases (field `body`): refused before
    /// it is parsed, since parsing it would cost more than any job spec needs.
    BodyTooComplex,
    /// No such object.
    NotFound,
    /// `If-Match` named a version that is no longer current.
    VersionMismatch,
    /// The object is in a state that does not allow the change (a killed job, say).
    Conflict,
    /// A write would take a capacity group over a location's quota (403; the message names the location, group,
    /// resource, limit, used and asked).
    QuotaExceeded,
    /// A job names a location no cell of the federation has (field `location`; the message lists the known ones).
    UnknownLocation,
    /// A write would raise a count in a location whose lever is frozen, evacuating or evacuated (409; the message
    /// names the location and its state).
    LocationFrozen,
    /// A lever that may not be pulled from the location's current state (409; the message names the state).
    LeverIllegal,
    /// Another cell's request this cell does not take: a cell not in its federation.
    Forbidden,
    /// This member is not the leader and could not reach one.
    NotLeader,
    /// The cell cannot serve the request right now (no quorum, shutting down).
    Unavailable,
    /// A write was not confirmed within the cell's write deadline. It may still commit; retrying it with the same
    /// `Idempotency-Key` is safe.
    Timeout,
    /// What was asked for is older than what is kept (an event id before the retained ones).
    Expired,
    /// A bug or a storage failure on our side.
    Internal,
    /// No token, or one that is malformed, unknown, expired or revoked (401; field `Authorization`).
    Unauthorized,
    /// Too many requests with bad tokens from one address: slowed down (429, with `Retry-After`).
    RateLimited,
}

impl ErrorCode {
    /// The status each condition maps to: this match is the only place statuses are chosen for errors.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::MalformedBody
            | ErrorCode::BodyTooComplex
            | ErrorCode::InvalidSpec
            | ErrorCode::InvalidParameter
            | ErrorCode::UnknownLocation => StatusCode::BAD_REQUEST,
            ErrorCode::Forbidden | ErrorCode::QuotaExceeded => StatusCode::FORBIDDEN,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::VersionMismatch => StatusCode::PRECONDITION_FAILED,
            ErrorCode::Conflict | ErrorCode::LocationFrozen | ErrorCode::LeverIllegal => StatusCode::CONFLICT,
            ErrorCode::NotLeader | ErrorCode::Unavailable | ErrorCode::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Expired => StatusCode::GONE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedBody => "malformed_body",
            ErrorCode::InvalidSpec => "invalid_spec",
            ErrorCode::InvalidParameter => "invalid_parameter",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::BodyTooComplex => "body_too_complex",
            ErrorCode::NotFound => "not_found",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::Conflict => "conflict",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::UnknownLocation => "unknown_location",
            ErrorCode::LocationFrozen => "location_frozen",
            ErrorCode::LeverIllegal => "lever_illegal",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Expired => "expired",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RateLimited => "rate_limited",
        }
    }
}

/// The error body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema, thiserror::Error)]
#[error("{}: {message}{}", code.as_str(), field.as_ref().map(|f| format!(" (field {f})")).unwrap_or_default())]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into(), field: None }
    }

    /// An invalid field: `field` is its path in the body, dotted (`healthCheck.intervalSeconds`,
    /// `volumes[1].path`).
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError { code: ErrorCode::InvalidSpec, message: message.into(), field: Some(field.into()) }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn not_found(what: &str, id: &str) -> ApiError {
        ApiError::new(ErrorCode::NotFound, format!("no {what} {id}"))
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Internal, message)
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(code = self.code.as_str(), message = %self.message, "request failed");
        }
        (status, axum::Json(self)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_code_message_and_field() {
        let e = ApiError::field("memory", "must be a whole number of MiB");
        let v = serde_json::to_value(&e).expect("serializable");
        assert_eq!(
            v,
            serde_json::json!({"code": "invalid_spec", "message": "must be a whole number of MiB", "field": "memory"})
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let v = serde_json::to_value(ApiError::not_found("job", "j1")).expect("serializable");
        assert_eq!(v, serde_json::json!({"code": "not_found", "message": "no job j1"}));
    }

    #[test]
    fn an_error_prints_its_stable_code() {
        let e = ApiError::new(ErrorCode::Timeout, "not committed in time");
        assert_eq!(e.to_string(), "timeout: not committed in time");
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn the_openapi_document_lists_every_code() {
        let doc = serde_json::to_value(crate::openapi::document()).expect("serializable");
        let codes = &doc["components"]["schemas"]["ErrorCode"];
        assert!(codes.to_string().contains("\"timeout\""), "{codes}");
    }

    #[test]
    fn code_strings_match_their_serde_names() {
        for code in [
            ErrorCode::MalformedBody,
            ErrorCode::InvalidSpec,
            ErrorCode::InvalidParameter,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::PayloadTooLarge,
            ErrorCode::BodyTooComplex,
            ErrorCode::NotFound,
            ErrorCode::VersionMismatch,
            ErrorCode::Conflict,
            ErrorCode::QuotaExceeded,
            ErrorCode::UnknownLocation,
            ErrorCode::LocationFrozen,
            ErrorCode::LeverIllegal,
            ErrorCode::Forbidden,
            ErrorCode::NotLeader,
            ErrorCode::Unavailable,
            ErrorCode::Timeout,
            ErrorCode::Expired,
            ErrorCode::Internal,
        ] {
            assert_eq!(serde_json::to_value(code).expect("serializable"), code.as_str());
        }
    }
}
