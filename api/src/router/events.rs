//! `/v1/events`: the cell's events as server-sent events, resumable from any event id.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::jobs::Jobs;
use super::request::*;
use super::Api;
use crate::error::{ApiError, ErrorCode};
use crate::event::{Event, EventQuery};

/// The users' event stream.
pub(super) fn routes() -> Router<Api> {
    Router::new().route("/v1/events", get(events))
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this event id (as `from`)")),
    responses((status = 200, description = "text/event-stream of events, each with its own event id (`eventId`: \
        strictly increasing, the same on every member and after restarts) as id and its topic as event; resuming \
        from an id gives exactly the events after it",
        body = Event), (status = 400, body = ApiError), (status = 410, body = ApiError)))]
async fn events(
    State(cell): State<Jobs>,
    headers: HeaderMap,
    query: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    let Query(mut q) = query.map_err(|e| ApiError::new(ErrorCode::InvalidParameter, e.body_text()))?;
    let topics = q.topics()?;
    let limit = stream_limit(q.timeout_seconds)?;
    if q.from.is_none() {
        if let Some(v) = headers.get("last-event-id") {
            let id = v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
                ApiError::new(ErrorCode::InvalidParameter, "Last-Event-ID must be an event id")
                    .with_field("Last-Event-ID")
            })?;
            q.from = Some(id);
        }
    }
    let feed = cell.events(q.from).await?;
    let to_sse = |e: &Event| {
        let topic = serde_json::to_value(e.topic).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        SseEvent::default().id(e.event_id.to_string()).event(topic).json_data(e).ok()
    };
    let backlog: Vec<SseEvent> = feed.backlog.iter().filter(|e| q.matches(&topics, e)).filter_map(to_sse).collect();
    let last = feed.backlog.last().map(|e| e.event_id).or(q.from).unwrap_or(0);
    let live =
        futures_util::stream::unfold((feed.live, last, q, topics), move |(mut rx, last, q, topics)| async move {
            loop {
                match rx.recv().await {
                    // Events the backlog already had are skipped.
                    Ok(e) if e.event_id <= last => continue,
                    Ok(e) if !q.matches(&topics, &e) => continue,
                    Ok(e) => {
                        let sse = to_sse(&e)?;
                        return Some((Ok::<_, std::convert::Infallible>(sse), (rx, last, q, topics)));
                    }
                    // Too slow to keep up: the stream ends and the client resumes from the last id it saw.
                    Err(_) => return None,
                }
            }
        });
    let stream = futures_util::StreamExt::chain(
        futures_util::stream::iter(backlog.into_iter().map(Ok::<_, std::convert::Infallible>)),
        live,
    );
    Ok(Sse::new(ending_after(stream, limit)).keep_alive(KeepAlive::default()).into_response())
}
