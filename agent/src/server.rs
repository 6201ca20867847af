//! The agent's own HTTP surface: liveness, its Prometheus metrics, and task logs read from disk
//! (`GET /v1/tasks/{id}/logs?tail=N&stream=stdout|stderr`: a JSON array of lines; with `follow=true`, plain text
//! that goes on streaming new lines until the client goes away).

use std::path::PathBuf;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::Registry;
use serde::Deserialize;
use titan_api::{ApiError, ErrorCode};

use crate::logs;

/// Most lines one logs request returns.
pub const MAX_TAIL: usize = 10_000;
/// Rotated log files kept per stream (see `logs`).
pub const LOG_KEEP: usize = logs::DEFAULT_KEEP;

#[derive(Clone)]
struct Agent {
    registry: Registry,
    logs_dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    tail: Option<usize>,
    stream: Option<String>,
    #[serde(default)]
    follow: bool,
}

/// How often a followed log is checked for new lines.
pub const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Routes of the agent; task logs live under `logs_dir/<task id>/<stream>.log`.
pub fn router(registry: Registry, logs_dir: PathBuf) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/tasks/{id}/logs", get(task_logs))
        .with_state(Agent { registry, logs_dir })
}

async fn metrics(State(agent): State<Agent>) -> Response {
    let mut out = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&agent.registry.gather(), &mut out) {
        Ok(()) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response(),
        Err(e) => ApiError::internal(format!("encoding metrics: {e}")).into_response(),
    }
}

async fn task_logs(
    State(agent): State<Agent>,
    Path(id): Path<String>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::InvalidParameter, e.body_text()))?;
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) || id.starts_with('.') {
        return Err(ApiError::new(ErrorCode::InvalidParameter, "not a task id").with_field("id"));
    }
    let stream = q.stream.as_deref().unwrap_or("stdout");
    if !["stdout", "stderr"].contains(&stream) {
        return Err(ApiError::new(ErrorCode::InvalidParameter, "stream is stdout or stderr").with_field("stream"));
    }
    let tail = q.tail.unwrap_or(100);
    if tail == 0 || tail > MAX_TAIL {
        return Err(ApiError::new(ErrorCode::InvalidParameter, format!("tail is 1..={MAX_TAIL}")).with_field("tail"));
    }
    let path = agent.logs_dir.join(&id).join(format!("{stream}.log"));
    if !path.exists() {
        return Err(ApiError::not_found("task log", &id));
    }
    let lines = logs::tail(&path, LOG_KEEP, tail).map_err(|e| ApiError::internal(e.to_string()))?;
    if !q.follow {
        return Ok((StatusCode::OK, Json(lines)).into_response());
    }
    let mut first = lines.join("\n").into_bytes();
    if !first.is_empty() {
        first.push(b'\n');
    }
    let follower = logs::Follower::from_end(&path);
    let rest = futures_util::stream::unfold(follower, |mut f| async move {
        loop {
            tokio::time::sleep(FOLLOW_POLL).await;
            match f.poll() {
                Ok(b) if b.is_empty() => continue,
                Ok(b) => return Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(b)), f)),
                Err(e) => return Some((Err(e), f)),
            }
        }
    });
    let body = futures_util::StreamExt::chain(
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(axum::body::Bytes::from(first)) }),
        rest,
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], axum::body::Body::from_stream(body)).into_response())
}

#[cfg(test)]
mod tests {
    use std::future::IntoFuture;
    use std::io::Write;

    use super::*;

    #[tokio::test]
    async fn serves_health_metrics_and_log_tails() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log =
            logs::RotatingLog::open(dir.path().join("t1").join("stdout.log"), 1 << 20, LOG_KEEP).expect("log");
        for i in 0..5 {
            writeln!(log, "line {i}").expect("write");
        }
        log.flush().expect("flush");
        let registry = Registry::new();
        let m = crate::daemon::LeaseMetrics::new(&registry).expect("metrics");
        m.lease_epoch.set(3);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(axum::serve(listener, router(registry, dir.path().to_path_buf())).into_future());
        let http = reqwest::Client::new();
        let get = |path: &str| http.get(format!("{base}{path}")).send();

        assert_eq!(get("/healthz").await.expect("answer").status(), 200);
        let text = get("/metrics").await.expect("answer").text().await.expect("body");
        assert!(text.contains("titan_agent_lease_epoch 3"), "{text}");
        let lines: Vec<String> = get("/v1/tasks/t1/logs?tail=2").await.expect("answer").json().await.expect("json");
        assert_eq!(lines, vec!["line 3".to_string(), "line 4".to_string()]);
        // Followed: the tail, then what is written after.
        let mut followed = get("/v1/tasks/t1/logs?tail=1&follow=true").await.expect("answer");
        let first = followed.chunk().await.expect("chunk").expect("some");
        assert_eq!(&first[..], b"line 4\n");
        writeln!(log, "line 5").expect("write");
        log.flush().expect("flush");
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), followed.chunk())
            .await
            .expect("in time")
            .expect("chunk")
            .expect("some");
        assert_eq!(&next[..], b"line 5\n");
        let missing = get("/v1/tasks/t2/logs").await.expect("answer");
        assert_eq!(missing.status(), 404);
        for bad in [
            "/v1/tasks/t1/logs?tail=0",
            "/v1/tasks/t1/logs?stream=stdin",
            "/v1/tasks/..%2Fetc/logs",
            "/v1/tasks/t1/logs?x=1",
        ] {
            assert_eq!(get(bad).await.expect("answer").status(), 400, "{bad}");
        }
        server.abort();
    }
}
