//! The HTTP surface of a cell: an axum router over the traits a cell implements, one per audience: `JobsApi` and
//! `TasksApi` for users, `AgentsApi` for agents, `AdminApi` for operators. Each file is one resource and holds its
//! routes and handlers; each audience's routes are one group, so a layer (auth) can wrap each group apart.
//!
//! Handlers do HTTP only: content types, size limits, headers, parsing and validation through `job`, status
//! codes. What a request means is the cell's business. Every error leaves as an `ApiError` body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRef, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{HistogramVec, IntCounterVec, Registry};

use crate::error::{ApiError, ErrorCode};
use crate::event::Event;

mod acl;
mod agents;
mod auth;
mod cluster;
mod events;
mod jobs;
mod locations;
mod quotas;
mod request;
mod tasks;

pub use acl::{AuthApi, AuthSettings, Refused};
pub use agents::AgentsApi;
pub use cluster::AdminApi;
pub use jobs::JobsApi;
pub use locations::LocationsApi;
pub use quotas::QuotasApi;
pub use tasks::TasksApi;

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

/// Consistent reads, which users' and operators' reads may ask for.
pub trait Reads: Send + Sync + 'static {
    /// Returns once this member has applied everything the leader had committed when it was called: reads after
    /// it are linearizable.
    fn read_barrier(&self) -> ApiResult<'_, ()>;
}

/// Everything a cell answers: every audience's trait, and who may ask (`AuthApi`).
pub trait CellApi: JobsApi + TasksApi + AgentsApi + AdminApi + QuotasApi + LocationsApi + AuthApi {}

impl<T: JobsApi + TasksApi + AgentsApi + AdminApi + QuotasApi + LocationsApi + AuthApi> CellApi for T {}

/// The routers' state: the cell, once per audience, so a handler reaches only its audience's trait.
#[derive(Clone)]
pub(crate) struct Api {
    jobs: jobs::Jobs,
    tasks: tasks::Tasks,
    agents: agents::Agents,
    admin: cluster::Admin,
    quotas: quotas::Quotas,
    locations: locations::Locations,
    auth: acl::Auth,
}

impl FromRef<Api> for acl::Auth {
    fn from_ref(api: &Api) -> Self {
        api.auth.clone()
    }
}

impl FromRef<Api> for locations::Locations {
    fn from_ref(api: &Api) -> Self {
        api.locations.clone()
    }
}

impl FromRef<Api> for quotas::Quotas {
    fn from_ref(api: &Api) -> Self {
        api.quotas.clone()
    }
}

impl FromRef<Api> for jobs::Jobs {
    fn from_ref(api: &Api) -> Self {
        api.jobs.clone()
    }
}

impl FromRef<Api> for tasks::Tasks {
    fn from_ref(api: &Api) -> Self {
        api.tasks.clone()
    }
}

impl FromRef<Api> for agents::Agents {
    fn from_ref(api: &Api) -> Self {
        api.agents.clone()
    }
}

impl FromRef<Api> for cluster::Admin {
    fn from_ref(api: &Api) -> Self {
        api.admin.clone()
    }
}

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
        HttpMetrics::labelled(registry, &[])
    }

    /// With constant labels on every series (a member's `cell` and `node`, as its other metrics carry).
    pub fn labelled(registry: &Registry, labels: &[(&str, &str)]) -> Result<HttpMetrics, prometheus::Error> {
        let r = crate::metrics::Registrar::new(registry, labels);
        let requests = r.counter_vec(&crate::metrics::http::REQUESTS)?;
        let latency = r.histogram_vec(&crate::metrics::http::SECONDS)?;
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

/// The public routes of a cell, grouped by audience, plus the cell's own `internal` routes (Raft, forwarding),
/// with every request's count and latency recorded into `metrics`' registry.
pub fn router<C: CellApi>(cell: Arc<C>, metrics: HttpMetrics, internal: Router) -> Router {
    let api = Api {
        jobs: cell.clone(),
        tasks: cell.clone(),
        agents: cell.clone(),
        quotas: cell.clone(),
        locations: cell.clone(),
        auth: cell.clone(),
        admin: cell.clone(),
    };
    let auth = auth::AuthLayer { cell, limiter: Default::default() };
    let users = jobs::routes().merge(tasks::routes()).merge(events::routes());
    let agents = agents::routes();
    let operators = cluster::routes()
        .merge(agents::fleet_routes())
        .merge(quotas::routes())
        .merge(locations::routes())
        .merge(acl::routes());
    let routes = users.merge(agents).merge(operators).merge(cluster::probes()).with_state(api);
    let meta = Router::new()
        .route("/openapi.json", get(|| async { Json(crate::openapi::document()) }))
        .route("/metrics", get(render_metrics))
        .with_state(metrics.clone());
    routes
        .merge(meta)
        .merge(internal)
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            (StatusCode::METHOD_NOT_ALLOWED, Json(ApiError::new(ErrorCode::InvalidParameter, "method not allowed")))
        })
        .layer(middleware::from_fn_with_state(auth, auth::authenticate))
        .layer(middleware::from_fn_with_state(metrics, observe))
}

async fn render_metrics(State(m): State<HttpMetrics>) -> Response {
    let mut out = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&m.registry.gather(), &mut out) {
        Ok(()) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response(),
        Err(e) => ApiError::internal(format!("encoding metrics: {e}")).into_response(),
    }
}

/// The handlers' OpenAPI path items, for `openapi`.
pub(crate) mod paths {
    pub use super::acl::{__path_create_token, __path_get_token, __path_list_tokens, __path_revoke_token};
    pub use super::agents::{
        __path_assignments, __path_drain_agent, __path_enable_agent, __path_get_agent, __path_heartbeat,
        __path_list_agents, __path_register_agent, __path_report_status,
    };
    pub use super::cluster::{
        __path_add_member, __path_autoscaler, __path_cells, __path_cluster, __path_ready, __path_remove_member,
    };
    pub use super::events::__path_events;
    pub use super::jobs::{
        __path_disable_job, __path_enable_job, __path_get_job, __path_job_history, __path_kill_job, __path_list_jobs,
        __path_set_instances, __path_submit_job, __path_update_job,
    };
    pub use super::locations::{
        __path_endpoints, __path_get_location, __path_list_locations, __path_pull_lever, __path_set_weight,
    };
    pub use super::quotas::{__path_delete_quota, __path_get_quota, __path_list_quotas, __path_put_quota};
    pub use super::tasks::{__path_get_task, __path_kill_task, __path_list_tasks, __path_task_logs};
}
