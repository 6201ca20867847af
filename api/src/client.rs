//! A typed client for a cell's REST API, used by the CLI, the agent and the tests.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use crate::agent::{AgentRegistration, AgentView, Heartbeat, Lease};
use crate::error::{ApiError, ErrorCode};
use crate::job::{BodyFormat, JobSpec};
use crate::router::{REASON_HEADER, USER_HEADER};
use crate::task::{Assignments, AssignmentsQuery, StatusAck, StatusReport, TaskList, TaskQuery, TaskView};
use crate::view::{AddMember, ClusterView, HistoryEntry, JobList, JobRef, JobView, ListQuery};

/// Default time a request may take, end to end.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed call: the cell's error body, or no usable answer at all.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{status}: {error}")]
    Api { status: u16, error: ApiError },
    #[error("cannot reach {addr}: {message}")]
    Transport { addr: String, message: String },
    #[error("unexpected answer from {addr} ({status}): {message}")]
    Decode { addr: String, status: u16, message: String },
}

impl ClientError {
    /// The API error code, when the cell answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.code),
            _ => None,
        }
    }
}

/// `req` sent to the member at `base` instead (same path and query).
fn at_base(mut req: reqwest::Request, base: &str) -> Option<reqwest::Request> {
    let url = req.url();
    let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
    *req.url_mut() = reqwest::Url::parse(&format!("{base}{}{query}", url.path())).ok()?;
    Some(req)
}

/// The base URL of the leader a cluster view names, when it names one and knows its address: `scheme://` and its
/// address (the scheme of the member that named it, since a cell's members all serve HTTP or all HTTPS).
pub fn leader_base(view: &ClusterView, scheme: &str) -> Option<String> {
    let leader = view.leader?;
    let member = view.members.iter().find(|m| m.id == leader)?;
    Some(base_url(&member.addr, scheme))
}

/// `host:port` or a URL as a base URL: with a scheme (`scheme` when it has none), without a trailing slash.
fn base_url(addr: &str, scheme: &str) -> String {
    let a = addr.trim().trim_end_matches('/');
    if a.starts_with("http://") || a.starts_with("https://") {
        a.to_string()
    } else {
        format!("{scheme}://{a}")
    }
}

/// A cell's members, one of them in use: a call that cannot reach it moves on to the next, so the caller's retry
/// goes elsewhere.
#[derive(Clone, Debug)]
pub struct Client {
    bases: std::sync::Arc<Vec<String>>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    base: String,
    http: reqwest::Client,
    user: Option<String>,
    reason: Option<String>,
    consistent: bool,
    /// `Authorization: Bearer <token>` on every call.
    token: Option<String>,
}

impl Client {
    /// `addr` is `host:port` or a full `http://` URL, or several of them separated by commas (members of one
    /// cell, tried in turn when one cannot be reached).
    pub fn new(addr: &str) -> Client {
        let http = reqwest::Client::builder()
            .timeout(DEFAULT_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            .expect("a plain HTTP client always builds");
        Client::with_http(addr, http)
    }

    /// A client of a cell that serves HTTPS (`[tls]`): it trusts `tls`'s CA alone and presents `tls`'s certificate,
    /// if it has one (a cell with TLS on requires one). `host:port` addresses are `https://`.
    pub fn with_tls(addr: &str, tls: &crate::tls::ClientTls) -> Client {
        let http = tls
            .http(reqwest::Client::builder().timeout(DEFAULT_TIMEOUT).tcp_nodelay(true))
            .build()
            .expect("a client with a loaded TLS configuration always builds");
        Client::with_http_scheme(addr, http, "https")
    }

    /// Shares a connection pool with other clients; `host:port` addresses are `http://` (give `https://` URLs to a
    /// client made with TLS).
    pub fn with_http(addr: &str, http: reqwest::Client) -> Client {
        Client::with_http_scheme(addr, http, "http")
    }

    fn with_http_scheme(addr: &str, http: reqwest::Client, scheme: &str) -> Client {
        let bases: Vec<String> = addr
            .split(',')
            .map(|a| a.trim().trim_end_matches('/'))
            .filter(|a| !a.is_empty())
            .map(|a| base_url(a, scheme))
            .collect();
        let base = bases.first().cloned().unwrap_or_else(|| "http://127.0.0.1".into());
        Client {
            bases: std::sync::Arc::new(bases),
            current: Default::default(),
            base,
            http,
            user: None,
            reason: None,
            consistent: false,
            token: None,
        }
    }

    /// The member calls go to now.
    fn current(&self) -> &str {
        let n = self.bases.len();
        if n <= 1 {
            return &self.base;
        }
        &self.bases[self.current.load(std::sync::atomic::Ordering::Relaxed) % n]
    }

    /// After a failure to reach `base`, the next call goes to the next member.
    fn unreachable(&self, base: &str) {
        let n = self.bases.len();
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        if n > 1 && self.bases[i % n] == base {
            let _ = self.current.compare_exchange(
                i,
                (i + 1) % n,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    /// Names who makes changes (recorded in job history).
    pub fn user(mut self, who: impl Into<String>) -> Client {
        self.user = Some(who.into());
        self
    }

    /// Sends an API token's secret with every call (`Authorization: Bearer`).
    pub fn token(mut self, secret: impl Into<String>) -> Client {
        self.token = Some(secret.into());
        self
    }

    /// Says why changes are made (recorded in job history).
    pub fn reason(mut self, why: impl Into<String>) -> Client {
        self.reason = Some(why.into());
        self
    }

    /// Reads through this client are linearizable (`consistent=true`): they see every write committed before them.
    pub fn consistent(mut self) -> Client {
        self.consistent = true;
        self
    }

    pub fn base(&self) -> &str {
        self.current()
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut r = self.http.request(method.clone(), format!("{}{path}", self.current()));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        if let Some(u) = &self.user {
            r = r.header(USER_HEADER, u);
        }
        if let Some(w) = &self.reason {
            r = r.header(REASON_HEADER, w);
        }
        if self.consistent && method == Method::GET {
            r = r.query(&[("consistent", "true")]);
        }
        r
    }

    /// Sends a request and decodes its answer, going on to another member when one cannot serve it: to the next
    /// address when a member cannot be reached (or, for a read, does not answer in time), and to the leader a
    /// member names when it answers `not_leader` (else to the next address). Each address is tried at most once
    /// and each leader hop taken once, so a call ends after a bounded number of attempts.
    async fn send<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, ClientError> {
        let first = self.current().to_string();
        let req = req.build().map_err(|e| ClientError::Transport { addr: first.clone(), message: e.to_string() })?;
        let rereadable = req.method() == Method::GET;
        let mut tried: Vec<String> = Vec::new();
        let mut next = Some(first);
        let mut last = None;
        while let Some(base) = next.take() {
            tried.push(base.clone());
            let Some(attempt) = req.try_clone().and_then(|r| at_base(r, &base)) else {
                // A streamed body cannot be sent twice; only the first attempt is possible.
                return self.send_once(req, &base).await.map_err(|(e, _)| e);
            };
            let (err, never_sent) = match self.send_once(attempt, &base).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let move_on = match &err {
                ClientError::Transport { .. } => {
                    self.unreachable(&base);
                    // A connection refused was never sent; a timed-out write may have been, so only reads go on.
                    never_sent || rereadable
                }
                ClientError::Api { error, .. } if error.code == ErrorCode::NotLeader => {
                    // `not_leader` means the change was not made: any member may be asked again.
                    if let Some(leader) = self.leader_named_by(&base).await.filter(|l| !tried.contains(l)) {
                        tracing::debug!(member = %base, leader = %leader, "following not_leader to the leader");
                        next = Some(leader);
                        last = Some(err);
                        continue;
                    }
                    self.unreachable(&base);
                    true
                }
                _ => false,
            };
            if !move_on {
                return Err(err);
            }
            next = self.current_untried(&tried);
            last = Some(err);
        }
        Err(last.unwrap_or_else(|| ClientError::Transport { addr: self.current().into(), message: "no member".into() }))
    }

    /// The member calls go to now, unless it was tried already; then the next one in the list not tried.
    fn current_untried(&self, tried: &[String]) -> Option<String> {
        let n = self.bases.len();
        let start = self.current.load(std::sync::atomic::Ordering::Relaxed);
        (0..n).map(|i| &self.bases[(start + i) % n]).find(|b| !tried.contains(b)).cloned()
    }

    /// The leader's base URL as the member at `base` knows it, when it knows one other than itself.
    async fn leader_named_by(&self, base: &str) -> Option<String> {
        let mut r = self.http.get(format!("{base}/v1/cluster"));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.ok()?;
        let view: ClusterView = resp.json().await.ok()?;
        let scheme = if base.starts_with("https://") { "https" } else { "http" };
        leader_base(&view, scheme).filter(|l| l != base)
    }

    /// One attempt at one member; a failure says whether the request certainly never reached it.
    async fn send_once<T: DeserializeOwned>(
        &self,
        req: reqwest::Request,
        base: &str,
    ) -> Result<T, (ClientError, bool)> {
        let resp =
            self.http.execute(req).await.map_err(|e| {
                (ClientError::Transport { addr: base.to_string(), message: e.to_string() }, e.is_connect())
            })?;
        self.answer(resp, base).await.map_err(|e| (e, false))
    }

    async fn answer<T: DeserializeOwned>(&self, resp: reqwest::Response, base: &str) -> Result<T, ClientError> {
        let base = base.to_string();
        let status = resp.status();
        let bytes =
            resp.bytes().await.map_err(|e| ClientError::Transport { addr: base.clone(), message: e.to_string() })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                addr: base.clone(),
                status: status.as_u16(),
                message: e.to_string(),
            });
        }
        match serde_json::from_slice::<ApiError>(&bytes) {
            Ok(error) => Err(ClientError::Api { status: status.as_u16(), error }),
            Err(_) => Err(ClientError::Decode {
                addr: base.clone(),
                status: status.as_u16(),
                message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            }),
        }
    }

    /// Submits a spec as the bytes of a file, JSON or YAML.
    pub async fn submit_raw(
        &self,
        body: Vec<u8>,
        format: BodyFormat,
        idempotency_key: Option<&str>,
    ) -> Result<JobRef, ClientError> {
        let ct = match format {
            BodyFormat::Json => "application/json",
            BodyFormat::Yaml => "application/yaml",
        };
        let mut r = self.request(Method::POST, "/v1/jobs").header("content-type", ct).body(body);
        if let Some(k) = idempotency_key {
            r = r.header("idempotency-key", k);
        }
        self.send(r).await
    }

    pub async fn submit_job(&self, spec: &JobSpec, idempotency_key: Option<&str>) -> Result<JobRef, ClientError> {
        let body = serde_json::to_vec(spec).expect("a JobSpec always serializes");
        self.submit_raw(body, BodyFormat::Json, idempotency_key).await
    }

    pub async fn list_jobs(&self, q: &ListQuery) -> Result<JobList, ClientError> {
        self.send(self.request(Method::GET, "/v1/jobs").query(q)).await
    }

    pub async fn get_job(&self, id: &str) -> Result<JobView, ClientError> {
        self.send(self.request(Method::GET, &format!("/v1/jobs/{id}"))).await
    }

    pub async fn job_history(&self, id: &str) -> Result<Vec<HistoryEntry>, ClientError> {
        self.send(self.request(Method::GET, &format!("/v1/jobs/{id}/history"))).await
    }

    pub async fn update_job(&self, id: &str, spec: &JobSpec, if_match: Option<u64>) -> Result<JobRef, ClientError> {
        let mut r = self.request(Method::PUT, &format!("/v1/jobs/{id}")).json(spec);
        if let Some(v) = if_match {
            r = r.header("if-match", format!("\"{v}\""));
        }
        self.send(r).await
    }

    pub async fn set_instances(
        &self,
        id: &str,
        instances: &BTreeMap<String, u32>,
        if_match: Option<u64>,
    ) -> Result<JobRef, ClientError> {
        let body = serde_json::json!({ "locations": instances });
        let mut r = self.request(Method::PUT, &format!("/v1/jobs/{id}/instances")).json(&body);
        if let Some(v) = if_match {
            r = r.header("if-match", format!("\"{v}\""));
        }
        self.send(r).await
    }

    pub async fn set_enabled(&self, id: &str, enabled: bool) -> Result<JobRef, ClientError> {
        let verb = if enabled { "enable" } else { "disable" };
        self.send(self.request(Method::POST, &format!("/v1/jobs/{id}/{verb}"))).await
    }

    pub async fn kill_job(&self, id: &str) -> Result<JobRef, ClientError> {
        self.send(self.request(Method::DELETE, &format!("/v1/jobs/{id}"))).await
    }

    pub async fn cluster(&self) -> Result<ClusterView, ClientError> {
        self.send(self.request(Method::GET, "/v1/cluster")).await
    }

    pub async fn list_quotas(&self) -> Result<crate::quota::QuotaList, ClientError> {
        self.send(self.request(Method::GET, "/v1/quotas")).await
    }

    pub async fn get_quota(&self, group: &str) -> Result<crate::quota::QuotaView, ClientError> {
        self.send(self.request(Method::GET, &format!("/v1/quotas/{group}"))).await
    }

    pub async fn create_token(&self, spec: &crate::acl::TokenSpec) -> Result<crate::acl::TokenCreated, ClientError> {
        self.send(self.request(Method::POST, "/v1/acl/tokens").json(spec)).await
    }

    pub async fn list_tokens(&self) -> Result<crate::acl::TokenList, ClientError> {
        self.send(self.request(Method::GET, "/v1/acl/tokens")).await
    }

    pub async fn revoke_token(&self, name: &str) -> Result<crate::acl::TokenView, ClientError> {
        self.send(self.request(Method::DELETE, &format!("/v1/acl/tokens/{name}"))).await
    }

    pub async fn put_quota(
        &self,
        group: &str,
        quota: &crate::quota::QuotaSpec,
        if_match: Option<u64>,
    ) -> Result<crate::quota::QuotaRef, ClientError> {
        let mut r = self.request(Method::PUT, &format!("/v1/quotas/{group}")).json(quota);
        if let Some(v) = if_match {
            r = r.header("if-match", format!("\"{v}\""));
        }
        self.send(r).await
    }

    pub async fn delete_quota(&self, group: &str) -> Result<crate::quota::QuotaRef, ClientError> {
        self.send(self.request(Method::DELETE, &format!("/v1/quotas/{group}"))).await
    }

    pub async fn list_locations(&self) -> Result<crate::location::LocationList, ClientError> {
        self.send(self.request(Method::GET, "/v1/locations")).await
    }

    pub async fn get_location(&self, name: &str) -> Result<crate::location::LocationView, ClientError> {
        self.send(self.request(Method::GET, &format!("/v1/locations/{name}"))).await
    }

    /// Pulls `lever` on `name` with `reason` (evacuate: to `to`, or each job's own locations when empty).
    pub async fn pull_lever(
        &self,
        name: &str,
        lever: crate::location::LeverKind,
        reason: &str,
        to: &[String],
        dry_run: bool,
    ) -> Result<crate::location::LeverAnswer, ClientError> {
        let body = crate::location::LeverRequest {
            reason: Some(reason.to_string()),
            to: (!to.is_empty()).then(|| to.to_vec()),
        };
        let dry = if dry_run { "?dryRun=true" } else { "" };
        let path = format!("/v1/locations/{name}/{}{dry}", lever.as_str());
        self.send(self.request(Method::POST, &path).json(&body)).await
    }

    pub async fn set_weight(
        &self,
        name: &str,
        weight: u8,
        reason: &str,
        dry_run: bool,
    ) -> Result<crate::location::LeverAnswer, ClientError> {
        let body = crate::location::WeightRequest { reason: Some(reason.to_string()), weight: Some(i64::from(weight)) };
        let dry = if dry_run { "?dryRun=true" } else { "" };
        self.send(self.request(Method::PUT, &format!("/v1/locations/{name}/weight{dry}")).json(&body)).await
    }

    pub async fn endpoints(&self, job: &str) -> Result<crate::location::Endpoints, ClientError> {
        self.send(self.request(Method::GET, &format!("/v1/jobs/{job}/endpoints"))).await
    }

    pub async fn autoscaler(&self) -> Result<crate::fleet::AutoscalerView, ClientError> {
        self.send(self.request(Method::GET, "/v1/autoscaler")).await
    }

    pub async fn cells(&self) -> Result<Vec<crate::view::CellView>, ClientError> {
        self.send(self.request(Method::GET, "/v1/cells")).await
    }

    pub async fn add_member(&self, member: &AddMember) -> Result<ClusterView, ClientError> {
        self.send(self.request(Method::POST, "/v1/cluster/members").json(member)).await
    }

    pub async fn remove_member(&self, id: u64) -> Result<ClusterView, ClientError> {
        self.send(self.request(Method::DELETE, &format!("/v1/cluster/members/{id}"))).await
    }

    pub async fn register_agent(&self, registration: &AgentRegistration) -> Result<AgentView, ClientError> {
        self.send(self.request(Method::POST, "/v1/agents").json(registration)).await
    }

    pub async fn heartbeat(&self, id: &str, lease_epoch: u64) -> Result<Lease, ClientError> {
        let body = Heartbeat { lease_epoch };
        self.send(self.request(Method::POST, &format!("/v1/agents/{id}/heartbeat")).json(&body)).await
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentView>, ClientError> {
        self.send(self.request(Method::GET, "/v1/agents")).await
    }

    pub async fn get_agent(&self, id: &str) -> Result<AgentView, ClientError> {
        self.send(self.request(Method::GET, &format!("/v1/agents/{id}"))).await
    }

    /// Drains an agent (`true`) or puts it back to work.
    pub async fn set_agent_draining(&self, id: &str, drain: bool) -> Result<AgentView, ClientError> {
        let verb = if drain { "drain" } else { "enable" };
        self.send(self.request(Method::POST, &format!("/v1/agents/{id}/{verb}"))).await
    }

    pub async fn list_tasks(&self, q: &TaskQuery) -> Result<TaskList, ClientError> {
        self.send(self.request(Method::GET, "/v1/tasks").query(q)).await
    }

    pub async fn get_task(&self, id: &str) -> Result<TaskView, ClientError> {
        self.send(self.request(Method::GET, &format!("/v1/tasks/{id}"))).await
    }

    /// A task's logs through the cell: the raw response (a JSON array of lines, or with `follow` a text stream
    /// to read chunk by chunk).
    pub async fn task_logs(
        &self,
        id: &str,
        tail: u32,
        stream: &str,
        follow: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let base = self.current().to_string();
        let mut r = self.request(Method::GET, &format!("/v1/tasks/{id}/logs")).query(&[
            ("tail", tail.to_string()),
            ("stream", stream.to_string()),
            ("follow", follow.to_string()),
        ]);
        if follow {
            // A followed log has no end; only connecting is bounded.
            r = r.timeout(Duration::from_secs(365 * 24 * 3600));
        }
        let resp = r.send().await.map_err(|e| ClientError::Transport { addr: base.clone(), message: e.to_string() })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<ApiError>(&bytes) {
            Ok(error) => Err(ClientError::Api { status, error }),
            Err(_) => Err(ClientError::Decode {
                addr: base,
                status,
                message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            }),
        }
    }

    pub async fn kill_task(&self, id: &str) -> Result<TaskView, ClientError> {
        self.send(self.request(Method::POST, &format!("/v1/tasks/{id}/kill"))).await
    }

    /// An agent's assignments; with `after`, waits up to `wait` for a version past it.
    pub async fn assignments(
        &self,
        agent: &str,
        after: Option<u64>,
        wait: std::time::Duration,
    ) -> Result<Assignments, ClientError> {
        let q = AssignmentsQuery { after, wait_ms: after.map(|_| wait.as_millis() as u64) };
        let r = self
            .request(Method::GET, &format!("/v1/agents/{agent}/assignments"))
            .query(&q)
            .timeout(wait + std::time::Duration::from_secs(10));
        self.send(r).await
    }

    pub async fn report_status(&self, agent: &str, report: &StatusReport) -> Result<StatusAck, ClientError> {
        self.send(self.request(Method::POST, &format!("/v1/agents/{agent}/status")).json(report)).await
    }

    /// Whether `/readyz` answers 200.
    pub async fn ready(&self) -> bool {
        matches!(self.request(Method::GET, "/readyz").send().await, Ok(r) if r.status() == StatusCode::OK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::MemberView;

    fn view(leader: Option<u64>) -> ClusterView {
        let member = |id: u64, role: &str| MemberView { id, addr: format!("127.0.0.1:700{id}"), role: role.into() };
        ClusterView {
            cell: "dc1".into(),
            node_id: 2,
            leader,
            term: 3,
            members: vec![member(1, "leader"), member(2, "follower")],
            last_log_index: 9,
            commit_index: 9,
            applied_index: 9,
            snapshot_index: None,
            workers: vec![],
        }
    }

    #[test]
    fn the_leader_is_found_in_a_cluster_view() {
        assert_eq!(leader_base(&view(Some(1)), "http").as_deref(), Some("http://127.0.0.1:7001"));
        assert_eq!(leader_base(&view(Some(1)), "https").as_deref(), Some("https://127.0.0.1:7001"));
        assert_eq!(leader_base(&view(None), "http"), None, "no leader elected");
        assert_eq!(leader_base(&view(Some(5)), "http"), None, "a leader whose address is unknown");
    }

    #[test]
    fn a_request_moves_to_another_member_with_its_path_and_query() {
        let client = Client::new("127.0.0.1:7001, http://127.0.0.1:7002/");
        assert_eq!(*client.bases, ["http://127.0.0.1:7001", "http://127.0.0.1:7002"]);
        let req = client.request(Method::GET, "/v1/jobs").query(&[("state", "killed")]).build().expect("a request");
        let moved = at_base(req, "http://127.0.0.1:7002").expect("a valid base");
        assert_eq!(moved.url().as_str(), "http://127.0.0.1:7002/v1/jobs?state=killed");
        assert_eq!(client.current_untried(&["http://127.0.0.1:7001".into()]).as_deref(), Some("http://127.0.0.1:7002"));
        assert_eq!(client.current_untried(&client.bases.to_vec()), None, "every member tried: the call ends");
    }
}
