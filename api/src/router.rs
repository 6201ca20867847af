//! The HTTP surface of a cell: an axum router over the `CellApi` trait that a cell implements.
//!
//! Handlers do HTTP only: content types, size limits, headers, parsing and validation through `job`, status
//! codes. What a request means is the cell's business. Every error leaves as an `ApiError` body.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::agent::{AgentRegistration, AgentView, Heartbeat, Lease};
use crate::error::{ApiError, ErrorCode};
use crate::event::{Event, EventQuery};
use crate::job::{BodyFormat, InstancesRequest, JobSpec};
use crate::task::{Assignments, AssignmentsQuery, StatusAck, StatusReport, TaskList, TaskQuery, TaskView, MAX_WAIT_MS};
use crate::view::{
    AddMember, ClusterView, HistoryEntry, JobList, JobRef, JobView, ListQuery, ReadQuery, MAX_PAGE_SIZE,
};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Header naming who makes a change (recorded in history); `anonymous` when absent.
pub const USER_HEADER: &str = "x-titan-user";
/// Header saying why (recorded in history).
pub const REASON_HEADER: &str = "x-titan-reason";
/// The longest a stream may be asked to last with `timeoutSeconds` (a day).
pub const MAX_STREAM_SECONDS: u64 = 86_400;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type ApiResult<'a, T> = BoxFuture<'a, Result<T, ApiError>>;

/// Who asks for a change, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub who: String,
    pub why: Option<String>,
}

/// What a cell answers to. Writes are answered after they are committed.
pub trait CellApi: Send + Sync + 'static {
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
    fn cluster(&self) -> ApiResult<'_, ClusterView>;
    fn add_member(&self, member: AddMember) -> ApiResult<'_, ClusterView>;
    fn remove_member(&self, id: u64) -> ApiResult<'_, ClusterView>;
    /// Ready to serve: a leader is known and this member has applied what it knows is committed.
    fn ready(&self) -> ApiResult<'_, ()>;
    /// Registers (or re-registers) an agent; every registration raises its lease epoch.
    fn register_agent(&self, registration: AgentRegistration) -> ApiResult<'_, AgentView>;
    /// Renews an agent's lease; a stale epoch is refused and the agent must register again.
    fn heartbeat(&self, id: String, heartbeat: Heartbeat) -> ApiResult<'_, Lease>;
    fn list_agents(&self) -> ApiResult<'_, Vec<AgentView>>;
    fn get_agent(&self, id: String) -> ApiResult<'_, AgentView>;
    /// Returns once this member has applied everything the leader had committed when it was called: reads after
    /// it are linearizable.
    fn read_barrier(&self) -> ApiResult<'_, ()>;
    /// Drains an agent (`drain`: its tasks move off within their jobs' disruption budgets and it takes no new
    /// work) or puts it back to work.
    fn set_agent_draining(&self, id: String, drain: bool, actor: Actor) -> ApiResult<'_, AgentView>;
    /// The retained events after `from` and a subscription to those committed from now on.
    fn events(&self, from: Option<u64>) -> ApiResult<'_, EventFeed>;
    /// The address (host:port) of the agent a task is placed on, which serves its logs.
    fn task_agent_addr(&self, id: String) -> ApiResult<'_, String>;
    fn list_tasks(&self, query: TaskQuery) -> ApiResult<'_, TaskList>;
    fn get_task(&self, id: String) -> ApiResult<'_, TaskView>;
    /// Asks for a task to be stopped; its job's reconciler may start a replacement.
    fn kill_task(&self, id: String, actor: Actor) -> ApiResult<'_, TaskView>;
    /// An agent's assignments, once their version passes `after` (or `wait_ms` elapses).
    fn assignments(&self, agent: String, query: AssignmentsQuery) -> ApiResult<'_, Assignments>;
    /// What an agent observed of its tasks; committed before it is acknowledged.
    fn report_status(&self, agent: String, report: StatusReport) -> ApiResult<'_, StatusAck>;
}

type Cell = Arc<dyn CellApi>;

/// Events for one subscriber: what was retained after its `from`, then what comes. The two may overlap; events
/// are told apart by their id.
pub struct EventFeed {
    pub backlog: Vec<Event>,
    pub live: tokio::sync::broadcast::Receiver<Event>,
}

/// Request counts and latencies by route and status, registered in the cell's registry.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
    registry: Registry,
}

impl HttpMetrics {
    pub fn new(registry: &Registry) -> Result<HttpMetrics, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new("titan_http_requests_total", "HTTP requests by route, method and status"),
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("titan_http_request_duration_seconds", "HTTP request latency by route and method")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["route", "method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(HttpMetrics { requests, latency, registry: registry.clone() })
    }
}

async fn observe(State(m): State<HttpMetrics>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "-".into());
    let method = req.method().as_str().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    m.latency.with_label_values(&[&route, &method]).observe(start.elapsed().as_secs_f64());
    m.requests.with_label_values(&[&route, &method, resp.status().as_str()]).inc();
    resp
}

/// The public routes of a cell plus the cell's own `internal` routes (Raft, forwarding), with every request's
/// count and latency recorded into `metrics`' registry.
pub fn router(cell: Cell, metrics: HttpMetrics, internal: Router) -> Router {
    let api = Router::new()
        .route("/v1/jobs", post(submit_job).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job).put(update_job).delete(kill_job))
        .route("/v1/jobs/{id}/history", get(job_history))
        .route("/v1/jobs/{id}/instances", put(set_instances))
        .route("/v1/jobs/{id}/enable", post(enable_job))
        .route("/v1/jobs/{id}/disable", post(disable_job))
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/members", post(add_member))
        .route("/v1/cluster/members/{id}", delete(remove_member))
        .route("/v1/agents", post(register_agent).get(list_agents))
        .route("/v1/agents/{id}", get(get_agent))
        .route("/v1/agents/{id}/heartbeat", post(heartbeat))
        .route("/v1/agents/{id}/assignments", get(assignments))
        .route("/v1/agents/{id}/drain", post(drain_agent))
        .route("/v1/agents/{id}/enable", post(enable_agent))
        .route("/v1/agents/{id}/status", post(report_status))
        .route("/v1/events", get(events))
        .route("/v1/tasks", get(list_tasks))
        .route("/v1/tasks/{id}", get(get_task))
        .route("/v1/tasks/{id}/kill", post(kill_task))
        .route("/v1/tasks/{id}/logs", get(task_logs))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(cell);
    let meta = Router::new()
        .route("/openapi.json", get(|| async { Json(crate::openapi::document()) }))
        .route("/metrics", get(render_metrics))
        .with_state(metrics.clone());
    api.merge(meta)
        .merge(internal)
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            (StatusCode::METHOD_NOT_ALLOWED, Json(ApiError::new(ErrorCode::InvalidParameter, "method not allowed")))
        })
        .layer(middleware::from_fn_with_state(metrics, observe))
}

async fn render_metrics(State(m): State<HttpMetrics>) -> Response {
    let mut out = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&m.registry.gather(), &mut out) {
        Ok(()) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response(),
        Err(e) => ApiError::internal(format!("encoding metrics: {e}")).into_response(),
    }
}

fn format_of(headers: &HeaderMap) -> Result<BodyFormat, ApiError> {
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
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| {
        ApiError::new(ErrorCode::PayloadTooLarge, format!("the body is larger than {MAX_BODY_BYTES} bytes"))
    })
}

fn actor(headers: &HeaderMap) -> Result<Actor, ApiError> {
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
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
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

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
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

fn etag(version: u64) -> [(header::HeaderName, HeaderValue); 1] {
    let v = HeaderValue::from_str(&format!("\"{version}\"")).expect("digits and quotes are a valid header value");
    [(header::ETAG, v)]
}

#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body(content = JobSpec, content_type = "application/json", description = "JSON or YAML job spec: at \
        most 1 MiB (YAML 256 KiB), nested at most 32 deep, at most 16 YAML aliases (else 400 `body_too_complex`, field `body`)"),
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key get the first answer")),
    responses((status = 201, body = JobRef), (status = "4XX", body = ApiError), (status = 503, body = ApiError)))]
async fn submit_job(State(cell): State<Cell>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let format = format_of(&headers)?;
    let key = idempotency_key(&headers)?;
    let who = actor(&headers)?;
    let spec = JobSpec::parse(&read_body(body).await?, format)?;
    let job = cell.submit_job(spec, key, who).await?;
    let location = HeaderValue::from_str(&format!("/v1/jobs/{}", job.id))
        .map_err(|_| ApiError::internal("job id is not a valid header value"))?;
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], etag(job.version), Json(job)).into_response())
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 400, body = ApiError)))]
async fn list_jobs(
    State(cell): State<Cell>,
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
async fn get_job(State(cell): State<Cell>, Path(id): Path<String>, query: ReadParams) -> Result<Response, ApiError> {
    consistent(&cell, query).await?;
    let job = cell.get_job(id).await?;
    Ok((etag(job.version), Json(job)).into_response())
}

#[utoipa::path(get, path = "/v1/jobs/{id}/history", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = [HistoryEntry]), (status = 404, body = ApiError)))]
async fn job_history(
    State(cell): State<Cell>,
    Path(id): Path<String>,
    query: ReadParams,
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    consistent(&cell, query).await?;
    Ok(Json(cell.job_history(id).await?))
}

#[utoipa::path(put, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path),
        ("If-Match" = Option<String>, Header, description = "the version this update replaces")),
    request_body(content = JobSpec, content_type = "application/json"),
    responses((status = 200, body = JobRef), (status = 404, body = ApiError), (status = 412, body = ApiError)))]
async fn update_job(
    State(cell): State<Cell>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let format = format_of(&headers)?;
    let version = if_match(&headers)?;
    let who = actor(&headers)?;
    let spec = JobSpec::parse(&read_body(body).await?, format)?;
    let job = cell.update_job(id, spec, version, who).await?;
    Ok((etag(job.version), Json(job)).into_response())
}

#[utoipa::path(put, path = "/v1/jobs/{id}/instances", tag = "jobs", params(("id" = String, Path),
        ("If-Match" = Option<String>, Header, description = "compare-and-set on the job version, \"N\"; a weak \
            tag (W/\"N\") never matches")),
    request_body(content = InstancesRequest, content_type = "application/json"),
    responses((status = 200, body = JobRef), (status = 404, body = ApiError), (status = 412, body = ApiError)))]
async fn set_instances(
    State(cell): State<Cell>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let format = format_of(&headers)?;
    let version = if_match(&headers)?;
    let who = actor(&headers)?;
    let counts = InstancesRequest::parse(&read_body(body).await?, format)?.counts()?;
    let job = cell.set_instances(id, counts, version, who).await?;
    Ok((etag(job.version), Json(job)).into_response())
}

#[utoipa::path(post, path = "/v1/jobs/{id}/enable", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = JobRef), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn enable_job(
    State(cell): State<Cell>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<JobRef>, ApiError> {
    Ok(Json(cell.set_enabled(id, true, actor(&headers)?).await?))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/disable", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = JobRef), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn disable_job(
    State(cell): State<Cell>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<JobRef>, ApiError> {
    Ok(Json(cell.set_enabled(id, false, actor(&headers)?).await?))
}

#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = JobRef), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn kill_job(
    State(cell): State<Cell>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<JobRef>, ApiError> {
    Ok(Json(cell.kill_job(id, actor(&headers)?).await?))
}

#[utoipa::path(get, path = "/v1/cluster", tag = "cluster", responses((status = 200, body = ClusterView)))]
async fn cluster(State(cell): State<Cell>) -> Result<Json<ClusterView>, ApiError> {
    Ok(Json(cell.cluster().await?))
}

#[utoipa::path(post, path = "/v1/cluster/members", tag = "cluster",
    request_body(content = AddMember, content_type = "application/json"),
    responses((status = 200, body = ClusterView), (status = "4XX", body = ApiError), (status = 503, body = ApiError)))]
async fn add_member(State(cell): State<Cell>, headers: HeaderMap, body: Body) -> Result<Json<ClusterView>, ApiError> {
    let member: AddMember = json_body(&headers, body).await?;
    if member.addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(ApiError::field("addr", "must be host:port with an IP address"));
    }
    Ok(Json(cell.add_member(member).await?))
}

#[utoipa::path(delete, path = "/v1/cluster/members/{id}", tag = "cluster", params(("id" = u64, Path)),
    responses((status = 200, body = ClusterView), (status = "4XX", body = ApiError)))]
async fn remove_member(State(cell): State<Cell>, Path(id): Path<String>) -> Result<Json<ClusterView>, ApiError> {
    let id = id
        .parse::<u64>()
        .map_err(|_| ApiError::new(ErrorCode::InvalidParameter, "member id must be a number").with_field("id"))?;
    Ok(Json(cell.remove_member(id).await?))
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200), (status = 503, body = ApiError)))]
async fn ready(State(cell): State<Cell>) -> Response {
    match cell.ready().await {
        Ok(()) => "ready".into_response(),
        // "Not ready" is an answer, not a failure: probes ask until it changes, so it is not logged as one.
        Err(e) => {
            tracing::debug!(code = e.code.as_str(), message = %e.message, "not ready");
            (e.status(), Json(e)).into_response()
        }
    }
}

type ReadParams = Result<Query<ReadQuery>, QueryRejection>;

/// Waits for a linearizable read point when the query asks for one.
async fn consistent(cell: &Cell, query: ReadParams) -> Result<(), ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::InvalidParameter, e.body_text()))?;
    if q.consistent == Some(true) {
        cell.read_barrier().await?;
    }
    Ok(())
}

/// Decodes a JSON body of a small internal type: MalformedBody for bad syntax, InvalidSpec for a bad shape.
async fn json_body<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    if !matches!(format_of(headers)?, BodyFormat::Json) {
        return Err(ApiError::new(ErrorCode::UnsupportedMediaType, "send application/json").with_field("Content-Type"));
    }
    BodyFormat::Json.decode(&read_body(body).await?)
}

#[utoipa::path(post, path = "/v1/agents", tag = "agents",
    request_body(content = AgentRegistration, content_type = "application/json"),
    responses((status = 200, body = AgentView), (status = "4XX", body = ApiError), (status = 503, body = ApiError)))]
async fn register_agent(State(cell): State<Cell>, headers: HeaderMap, body: Body) -> Result<Json<AgentView>, ApiError> {
    let registration: AgentRegistration = json_body(&headers, body).await?;
    registration.validate()?;
    Ok(Json(cell.register_agent(registration).await?))
}

#[utoipa::path(post, path = "/v1/agents/{id}/heartbeat", tag = "agents", params(("id" = String, Path)),
    request_body(content = Heartbeat, content_type = "application/json"),
    responses((status = 200, body = Lease), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn heartbeat(
    State(cell): State<Cell>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Lease>, ApiError> {
    let beat: Heartbeat = json_body(&headers, body).await?;
    Ok(Json(cell.heartbeat(id, beat).await?))
}

#[utoipa::path(get, path = "/v1/agents", tag = "agents", responses((status = 200, body = [AgentView])))]
async fn list_agents(State(cell): State<Cell>, query: ReadParams) -> Result<Json<Vec<AgentView>>, ApiError> {
    consistent(&cell, query).await?;
    Ok(Json(cell.list_agents().await?))
}

#[utoipa::path(get, path = "/v1/agents/{id}", tag = "agents", params(("id" = String, Path)),
    responses((status = 200, body = AgentView), (status = 404, body = ApiError)))]
async fn get_agent(
    State(cell): State<Cell>,
    Path(id): Path<String>,
    query: ReadParams,
) -> Result<Json<AgentView>, ApiError> {
    consistent(&cell, query).await?;
    Ok(Json(cell.get_agent(id).await?))
}

#[utoipa::path(post, path = "/v1/agents/{id}/drain", tag = "agents", params(("id" = String, Path)),
    responses((status = 200, body = AgentView), (status = 404, body = ApiError)))]
async fn drain_agent(
    State(cell): State<Cell>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<AgentView>, ApiError> {
    Ok(Json(cell.set_agent_draining(id, true, actor(&headers)?).await?))
}

#[utoipa::path(post, path = "/v1/agents/{id}/enable", tag = "agents", params(("id" = String, Path)),
    responses((status = 200, body = AgentView), (status = 404, body = ApiError)))]
async fn enable_agent(
    State(cell): State<Cell>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<AgentView>, ApiError> {
    Ok(Json(cell.set_agent_draining(id, false, actor(&headers)?).await?))
}

#[utoipa::path(get, path = "/v1/agents/{id}/assignments", tag = "agents", params(("id" = String, Path), AssignmentsQuery),
    responses((status = 200, body = Assignments), (status = 404, body = ApiError)))]
async fn assignments(
    State(cell): State<Cell>,
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
    State(cell): State<Cell>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<StatusAck>, ApiError> {
    let report: StatusReport = json_body(&headers, body).await?;
    report.validate()?;
    Ok(Json(cell.report_status(id, report).await?))
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this event id (as `from`)")),
    responses((status = 200, description = "text/event-stream of events, each with its own event id (`eventId`: \
        strictly increasing, the same on every member and after restarts) as id and its topic as event; resuming \
        from an id gives exactly the events after it",
        body = Event), (status = 400, body = ApiError), (status = 410, body = ApiError)))]
async fn events(
    State(cell): State<Cell>,
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

/// How long a stream asked to end after `timeout_seconds` may last: `None` for as long as the client reads.
fn stream_limit(timeout_seconds: Option<u64>) -> Result<Option<std::time::Duration>, ApiError> {
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
fn ending_after<S>(stream: S, limit: Option<std::time::Duration>) -> futures_util::stream::BoxStream<'static, S::Item>
where
    S: futures_util::Stream + Send + 'static,
{
    use futures_util::StreamExt;
    match limit {
        Some(limit) => stream.take_until(tokio::time::sleep(limit)).boxed(),
        None => stream.boxed(),
    }
}

#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(TaskQuery),
    responses((status = 200, body = TaskList), (status = 400, body = ApiError)))]
async fn list_tasks(
    State(cell): State<Cell>,
    query: Result<Query<TaskQuery>, QueryRejection>,
) -> Result<Json<TaskList>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::InvalidParameter, e.body_text()))?;
    q.validate()?;
    if q.limit.is_some_and(|l| l == 0 || l > MAX_PAGE_SIZE) {
        return Err(ApiError::new(ErrorCode::InvalidParameter, format!("limit must be 1..={MAX_PAGE_SIZE}"))
            .with_field("limit"));
    }
    if q.consistent {
        cell.read_barrier().await?;
    }
    Ok(Json(cell.list_tasks(q).await?))
}

#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path), ReadQuery),
    responses((status = 200, body = TaskView), (status = 404, body = ApiError)))]
async fn get_task(
    State(cell): State<Cell>,
    Path(id): Path<String>,
    query: ReadParams,
) -> Result<Json<TaskView>, ApiError> {
    consistent(&cell, query).await?;
    Ok(Json(cell.get_task(id).await?))
}

/// Query of `GET /v1/tasks/{id}/logs`.
#[derive(Clone, Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogQuery {
    /// Lines from the end (1 to 10000; default 100).
    pub tail: Option<u32>,
    /// stdout (default) or stderr.
    pub stream: Option<String>,
    /// Keep streaming new lines as plain text.
    #[serde(default)]
    pub follow: bool,
    /// End the stream after this many seconds (1 to `MAX_STREAM_SECONDS`); absent: it follows for as long as the
    /// client reads.
    pub timeout_seconds: Option<u64>,
}

#[utoipa::path(get, path = "/v1/tasks/{id}/logs", tag = "tasks", params(("id" = String, Path), LogQuery),
    responses((status = 200, description = "a JSON array of lines, or with follow=true a text stream", body = [String]),
        (status = 404, body = ApiError), (status = 503, body = ApiError)))]
async fn task_logs(
    State(cell): State<Cell>,
    Path(id): Path<String>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::InvalidParameter, e.body_text()))?;
    if q.tail.is_some_and(|t| t == 0 || t > 10_000) {
        return Err(ApiError::new(ErrorCode::InvalidParameter, "tail is 1..=10000").with_field("tail"));
    }
    let stream = q.stream.unwrap_or_else(|| "stdout".into());
    if stream != "stdout" && stream != "stderr" {
        return Err(ApiError::new(ErrorCode::InvalidParameter, "stream is stdout or stderr").with_field("stream"));
    }
    let limit = stream_limit(q.timeout_seconds)?;
    let addr = cell.task_agent_addr(id.clone()).await?;
    // The agent serves its tasks' logs from disk; the cell relays them (streaming when following).
    let url =
        format!("http://{addr}/v1/tasks/{id}/logs?tail={}&stream={stream}&follow={}", q.tail.unwrap_or(100), q.follow);
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = http.get(url).send().await.map_err(|e| {
        ApiError::new(ErrorCode::Unavailable, format!("the task's agent at {addr} cannot be reached: {e}"))
    })?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
        .unwrap_or_else(|| HeaderValue::from_static("application/json"));
    let body = Body::from_stream(ending_after(resp.bytes_stream(), limit));
    Ok((status, [(header::CONTENT_TYPE, content_type)], body).into_response())
}

#[utoipa::path(post, path = "/v1/tasks/{id}/kill", tag = "tasks", params(("id" = String, Path)),
    responses((status = 200, body = TaskView), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn kill_task(
    State(cell): State<Cell>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<TaskView>, ApiError> {
    Ok(Json(cell.kill_task(id, actor(&headers)?).await?))
}

/// The handlers' OpenAPI path items, for `openapi`.
pub(crate) mod paths {
    pub use super::{
        __path_add_member, __path_assignments, __path_cluster, __path_disable_job, __path_drain_agent,
        __path_enable_agent, __path_enable_job, __path_events, __path_get_agent, __path_get_job, __path_get_task,
        __path_heartbeat, __path_job_history, __path_kill_job, __path_kill_task, __path_list_agents, __path_list_jobs,
        __path_list_tasks, __path_ready, __path_register_agent, __path_remove_member, __path_report_status,
        __path_set_instances, __path_submit_job, __path_task_logs, __path_update_job,
    };
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
