//! An in-process cell for agent tests: the real HTTP surface (`titan_api::router`) over a small cell that
//! implements what an agent calls (registration, heartbeats, the assignments long-poll, status reports) and lets
//! a test set the plan, skew the lease epoch it answers with, and read back what the agent said.

#![allow(dead_code)]

use std::future::IntoFuture;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use titan_api::agent::{AgentRegistration, AgentView, Heartbeat, Lease};
use titan_api::job::JobSpec;
use titan_api::router::{AdminApi, AgentsApi, ApiResult, JobsApi, QuotasApi, Reads, TasksApi};
use titan_api::task::{
    Assignment, Assignments, AssignmentsQuery, StatusAck, StatusReport, TaskList, TaskQuery, TaskStatus, TaskView,
};
use titan_api::view::{AddMember, ClusterView, HistoryEntry, JobList, JobRef, JobView, ListQuery};
use titan_api::{Actor, ApiError, ErrorCode, HttpMetrics};
use tokio::sync::watch;

#[derive(Default)]
pub struct State {
    pub epoch: u64,
    /// Added to the epoch in assignments answers: a plan from a stale member (< 0) or one that saw a newer
    /// registration (> 0).
    pub skew: i64,
    pub registrations: Vec<AgentRegistration>,
    pub tasks: Vec<Assignment>,
    /// Every status received, with when, in order.
    pub statuses: Vec<(Instant, TaskStatus)>,
    /// When the plan last changed.
    pub planned_at: Option<Instant>,
    /// Reports answered 503 before any is taken.
    pub fail_reports: u32,
}

pub struct FakeCell {
    state: Mutex<State>,
    version: watch::Sender<u64>,
    agents: titan_api::tls::PeerHttp,
}

fn unsupported<T>() -> Result<T, ApiError> {
    Err(ApiError::new(ErrorCode::NotFound, "not in the fake cell"))
}

impl FakeCell {
    /// Serves a fake cell on a loopback port; returns it and its address.
    pub async fn start() -> (Arc<FakeCell>, String) {
        let agents = titan_api::tls::PeerHttp::new(reqwest::Client::builder(), None).expect("a plain client");
        let cell = Arc::new(FakeCell { state: Mutex::new(State::default()), version: watch::Sender::new(1), agents });
        let registry = prometheus::Registry::new();
        let app = titan_api::router(cell.clone(), HttpMetrics::new(&registry).expect("metrics"), axum::Router::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(axum::serve(listener, app).into_future());
        (cell, addr)
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the plan; long-polls answer at once.
    pub fn plan(&self, tasks: Vec<Assignment>) {
        {
            let mut s = self.state();
            s.tasks = tasks;
            s.planned_at = Some(Instant::now());
        }
        self.version.send_modify(|v| *v += 1);
    }

    pub fn skew(&self, skew: i64) {
        self.state().skew = skew;
        self.version.send_modify(|v| *v += 1);
    }

    /// The statuses received for `task`, oldest first.
    pub fn statuses(&self, task: &str) -> Vec<TaskStatus> {
        self.state().statuses.iter().filter(|(_, s)| s.task_id == task).map(|(_, s)| s.clone()).collect()
    }

    /// Waits for a status of `task` that `pred` accepts; returns it and when it arrived.
    pub async fn wait_for(
        &self,
        task: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&TaskStatus) -> bool,
    ) -> (TaskStatus, Instant) {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.state().statuses.iter().find(|(_, s)| s.task_id == task && pred(s)).cloned();
            if let Some((at, s)) = found {
                return (s, at);
            }
            if Instant::now() > deadline {
                panic!("no status of {task} {what} within {timeout:?}; got {:?}", self.statuses(task));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl JobsApi for FakeCell {
    fn submit_job(&self, _: JobSpec, _: Option<String>, _: Actor) -> ApiResult<'_, JobRef> {
        Box::pin(async { unsupported() })
    }
    fn list_jobs(&self, _: ListQuery) -> ApiResult<'_, JobList> {
        Box::pin(async { unsupported() })
    }
    fn get_job(&self, _: String) -> ApiResult<'_, JobView> {
        Box::pin(async { unsupported() })
    }
    fn job_history(&self, _: String) -> ApiResult<'_, Vec<HistoryEntry>> {
        Box::pin(async { unsupported() })
    }
    fn update_job(&self, _: String, _: JobSpec, _: Option<u64>, _: Actor) -> ApiResult<'_, JobRef> {
        Box::pin(async { unsupported() })
    }
    fn set_instances(
        &self,
        _: String,
        _: std::collections::BTreeMap<String, u32>,
        _: Option<u64>,
        _: Actor,
    ) -> ApiResult<'_, JobRef> {
        Box::pin(async { unsupported() })
    }
    fn set_enabled(&self, _: String, _: bool, _: Actor) -> ApiResult<'_, JobRef> {
        Box::pin(async { unsupported() })
    }
    fn dry_run(&self, _: titan_api::quota::JobWrite) -> ApiResult<'_, titan_api::quota::DryRun> {
        Box::pin(async { unsupported() })
    }
    fn kill_job(&self, _: String, _: Actor) -> ApiResult<'_, JobRef> {
        Box::pin(async { unsupported() })
    }
    fn events(&self, _: Option<u64>) -> ApiResult<'_, titan_api::router::EventFeed> {
        Box::pin(async { unsupported() })
    }
}

impl TasksApi for FakeCell {
    fn task_agent_addr(&self, _: String) -> ApiResult<'_, String> {
        Box::pin(async { unsupported() })
    }
    fn agent_http(&self) -> &titan_api::tls::PeerHttp {
        &self.agents
    }
    fn list_tasks(&self, _: TaskQuery) -> ApiResult<'_, TaskList> {
        Box::pin(async { unsupported() })
    }
    fn get_task(&self, _: String) -> ApiResult<'_, TaskView> {
        Box::pin(async { unsupported() })
    }
    fn kill_task(&self, _: String, _: Actor) -> ApiResult<'_, TaskView> {
        Box::pin(async { unsupported() })
    }
}

impl AgentsApi for FakeCell {
    fn register_agent(&self, registration: AgentRegistration) -> ApiResult<'_, AgentView> {
        Box::pin(async move {
            let mut s = self.state();
            s.epoch += 1;
            s.registrations.push(registration.clone());
            let view = AgentView {
                id: registration.id,
                cell: "fake".into(),
                hostname: registration.hostname,
                addr: registration.addr,
                resources: registration.resources,
                attributes: registration.attributes,
                state: titan_api::agent::AgentState::Active,
                lease_epoch: s.epoch,
                registered_at_ms: 0,
                last_heartbeat_ms: None,
            };
            drop(s);
            self.version.send_modify(|v| *v += 1);
            Ok(view)
        })
    }
    fn heartbeat(&self, _: String, beat: Heartbeat) -> ApiResult<'_, Lease> {
        Box::pin(async move {
            let epoch = self.state().epoch;
            if beat.lease_epoch != epoch {
                return Err(ApiError::new(ErrorCode::Conflict, "stale lease epoch").with_field("leaseEpoch"));
            }
            Ok(Lease { lease_epoch: epoch, lease_ms: 3_000 })
        })
    }
    fn assignments(&self, _: String, query: AssignmentsQuery) -> ApiResult<'_, Assignments> {
        Box::pin(async move {
            let mut rx = self.version.subscribe();
            if let Some(after) = query.after {
                let wait = Duration::from_millis(query.wait_ms.unwrap_or(0));
                let _ = tokio::time::timeout(wait, rx.wait_for(|v| *v > after)).await;
            }
            let version = *rx.borrow();
            let s = self.state();
            Ok(Assignments { lease_epoch: (s.epoch as i64 + s.skew).max(0) as u64, version, tasks: s.tasks.clone() })
        })
    }
    fn report_status(&self, _: String, report: StatusReport) -> ApiResult<'_, StatusAck> {
        Box::pin(async move {
            report.validate()?;
            let mut s = self.state();
            if s.fail_reports > 0 {
                s.fail_reports -= 1;
                return Err(ApiError::new(ErrorCode::Unavailable, "the fake cell is down for this report"));
            }
            if report.lease_epoch != s.epoch {
                return Err(ApiError::new(ErrorCode::Conflict, "stale lease epoch").with_field("leaseEpoch"));
            }
            let now = Instant::now();
            let n = report.statuses.len() as u32;
            s.statuses.extend(report.statuses.into_iter().map(|st| (now, st)));
            Ok(StatusAck { applied: n, ignored: 0 })
        })
    }
}

impl AdminApi for FakeCell {
    fn cells(&self) -> ApiResult<'_, Vec<titan_api::view::CellView>> {
        Box::pin(async { unsupported() })
    }

    fn cluster(&self) -> ApiResult<'_, ClusterView> {
        Box::pin(async { unsupported() })
    }
    fn add_member(&self, _: AddMember) -> ApiResult<'_, ClusterView> {
        Box::pin(async { unsupported() })
    }
    fn remove_member(&self, _: u64) -> ApiResult<'_, ClusterView> {
        Box::pin(async { unsupported() })
    }
    fn ready(&self) -> ApiResult<'_, ()> {
        Box::pin(async { Ok(()) })
    }
    fn list_agents(&self) -> ApiResult<'_, Vec<AgentView>> {
        Box::pin(async { unsupported() })
    }
    fn get_agent(&self, _: String) -> ApiResult<'_, AgentView> {
        Box::pin(async { unsupported() })
    }
    fn set_agent_draining(&self, _: String, _: bool, _: Actor) -> ApiResult<'_, AgentView> {
        Box::pin(async { unsupported() })
    }
}

/// The agent never asks for quotas, nor for dry runs.
impl QuotasApi for FakeCell {
    fn list_quotas(&self) -> ApiResult<'_, titan_api::quota::QuotaList> {
        Box::pin(async { unsupported() })
    }
    fn get_quota(&self, _: String) -> ApiResult<'_, titan_api::quota::QuotaView> {
        Box::pin(async { unsupported() })
    }
    fn put_quota(
        &self,
        _: String,
        _: titan_api::quota::QuotaSpec,
        _: Option<u64>,
        _: Actor,
    ) -> ApiResult<'_, titan_api::quota::QuotaRef> {
        Box::pin(async { unsupported() })
    }
    fn delete_quota(&self, _: String, _: Option<u64>, _: Actor) -> ApiResult<'_, titan_api::quota::QuotaRef> {
        Box::pin(async { unsupported() })
    }
}

impl titan_api::router::LocationsApi for FakeCell {
    fn list_locations(&self) -> ApiResult<'_, titan_api::location::LocationList> {
        Box::pin(async { unsupported() })
    }
    fn get_location(&self, _: String) -> ApiResult<'_, titan_api::location::LocationView> {
        Box::pin(async { unsupported() })
    }
    fn pull_lever(
        &self,
        _: String,
        _: titan_api::location::LeverKind,
        _: Vec<String>,
        _: bool,
        _: Actor,
    ) -> ApiResult<'_, titan_api::location::LeverAnswer> {
        Box::pin(async { unsupported() })
    }
    fn set_weight(&self, _: String, _: u8, _: bool, _: Actor) -> ApiResult<'_, titan_api::location::LeverAnswer> {
        Box::pin(async { unsupported() })
    }
    fn endpoints(&self, _: String, _: bool) -> ApiResult<'_, titan_api::location::Endpoints> {
        Box::pin(async { unsupported() })
    }
}

impl Reads for FakeCell {
    fn read_barrier(&self) -> ApiResult<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// No authentication: the agent's tests run it against a cell that takes every request.
impl titan_api::router::AuthApi for FakeCell {}
