//! What every handler reads from a request the same way: the body and its format, who asks and why, `If-Match`,
//! `Idempotency-Key`, consistent reads, and how long a stream may last.

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::{header, HeaderMap, HeaderValue};

use super::{Actor, Reads, MAX_BODY_BYTES, MAX_IDEMPOTENCY_KEY, MAX_STREAM_SECONDS, REASON_HEADER, USER_HEADER};
use crate::error::{ApiError, ErrorCode};
use crate::job::BodyFormat;
use crate::view::ReadQuery;

pub(super) fn format_of(headers: &HeaderMap) -> Result<BodyFormat, ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok(BodyFormat::Json),
        m if m.starts_with("application/") && m.ends_with("+json") => Ok(BodyFormat::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => Ok(BodyFormat::Yaml),
        _ => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "Content-Type {:?} is not accepted: send application/json or application/yaml",
                if ct.is_empty() { "(none)" } else { ct }
            ),
        )
        .with_field("Content-Type")),
    }
}

/// Reads the whole body, refusing more than `MAX_BODY_BYTES`.
pub(super) async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| {
        ApiError::new(ErrorCode::PayloadTooLarge, format!("the body is larger than {MAX_BODY_BYTES} bytes"))
    })
}

pub(super) fn actor(headers: &HeaderMap) -> Result<Actor, ApiError> {
    let text = |name: &str| -> Result<Option<String>, ApiError> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => v.to_str().map(|s| Some(s.trim().to_string()).filter(|s| !s.is_empty())).map_err(|_| {
                ApiError::new(ErrorCode::InvalidParameter, "header is not visible ASCII").with_field(name)
            }),
        }
    };
    Ok(Actor { who: text(USER_HEADER)?.unwrap_or_else(|| "anonymous".into()), why: text(REASON_HEADER)? })
}

/// The job version `If-Match` names. If-Match compares strongly (RFC 9110 §13.1.1): a weak tag never matches,
/// so it fails the precondition rather than being read as the version it wraps. `*` matches any current version.
pub(super) fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or("").trim();
    if s == "*" {
        return Ok(None);
    }
    if s.starts_with("W/") {
        return Err(ApiError::new(
            ErrorCode::VersionMismatch,
            format!("If-Match {s} is a weak tag, and If-Match compares strongly: a weak tag never matches"),
        )
        .with_field("If-Match"));
    }
    s.trim_matches('"').parse::<u64>().map(Some).map_err(|_| {
        ApiError::new(ErrorCode::InvalidParameter, "If-Match must be a job version number").with_field("If-Match")
    })
}

pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            ErrorCode::InvalidParameter,
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        )
        .with_field("Idempotency-Key")
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    if s.is_empty() || s.len() > MAX_IDEMPOTENCY_KEY {
        return Err(bad());
    }
    Ok(Some(s.to_string()))
}

pub(super) fn etag(version: u64) -> [(header::HeaderName, HeaderValue); 1] {
    let v = HeaderValue::from_str(&format!("\"{version}\"")).expect("digits and quotes are a valid header value");
    [(header::ETAG, v)]
}

pub(super) type ReadParams = Result<Query<ReadQuery>, QueryRejection>;

/// Waits for a linearizable read point when the query asks for one.
pub(super) async fn consistent(cell: &(impl Reads + ?Sized), query: ReadParams) -> Result<(), ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::InvalidParameter, e.body_text()))?;
    if q.consistent == Some(true) {
        cell.read_barrier().await?;
    }
    Ok(())
}

pub(super) type DryRunParams = Result<Query<crate::quota::DryRunQuery>, QueryRejection>;

/// Whether a write is asked as a dry run (`?dryRun=true`).
pub(super) fn dry_run(query: DryRunParams) -> Result<bool, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::InvalidParameter, e.body_text()).with_field("dryRun"))?;
    Ok(q.dry_run == Some(true))
}

/// Decodes a JSON body of a small internal type: MalformedBody for bad syntax, InvalidSpec for a bad shape.
pub(super) async fn json_body<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    if !matches!(format_of(headers)?, BodyFormat::Json) {
        return Err(ApiError::new(ErrorCode::UnsupportedMediaType, "send application/json").with_field("Content-Type"));
    }
    BodyFormat::Json.decode(&read_body(body).await?)
}

/// How long a stream asked to end after `timeout_seconds` may last: `None` for as long as the client reads.
pub(super) fn stream_limit(timeout_seconds: Option<u64>) -> Result<Option<std::time::Duration>, ApiError> {
    match timeout_seconds {
        None => Ok(None),
        Some(s) if (1..=MAX_STREAM_SECONDS).contains(&s) => Ok(Some(std::time::Duration::from_secs(s))),
        Some(_) => {
            Err(ApiError::new(ErrorCode::InvalidParameter, format!("timeoutSeconds must be 1..={MAX_STREAM_SECONDS}"))
                .with_field("timeoutSeconds"))
        }
    }
}

/// `stream`, ended once `limit` has passed when there is one: the response then completes like any other.
pub(super) fn ending_after<S>(
    stream: S,
    limit: Option<std::time::Duration>,
) -> futures_util::stream::BoxStream<'static, S::Item>
where
    S: futures_util::Stream + Send + 'static,
{
    use futures_util::StreamExt;
    match limit {
        Some(limit) => stream.take_until(tokio::time::sleep(limit)).boxed(),
        None => stream.boxed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `If-Match: value` read as a version, or the error's code.
    fn check_if_match(value: &str, expected: Result<Option<u64>, ErrorCode>) {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_MATCH, HeaderValue::from_str(value).expect("a header value"));
        let got = if_match(&headers);
        if let Err(e) = &got {
            assert_eq!(e.field.as_deref(), Some("If-Match"), "{value}");
        }
        assert_eq!(got.map_err(|e| e.code), expected, "{value}");
    }

    #[test]
    fn if_match_compares_strongly() {
        check_if_match("\"1\"", Ok(Some(1)));
        check_if_match("7", Ok(Some(7)));
        check_if_match("*", Ok(None));
        check_if_match("W/\"1\"", Err(ErrorCode::VersionMismatch));
        check_if_match("W/1", Err(ErrorCode::VersionMismatch));
        check_if_match("\"one\"", Err(ErrorCode::InvalidParameter));
    }
}
