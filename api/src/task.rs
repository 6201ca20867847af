//! Tasks on the wire: one running instance of a job, as the cell shows it to users, hands it to the agent that runs
//! it, and hears back about it.
//!
//! The task state machine (desired `run|stop` is tracked apart from what was observed):
//! `Accepted -> Assigned -> Starting -> Running -> Killing -> {Finished, Failed, Killed, Lost, Rejected}`, plus
//! `Unreachable` while its agent's lease has expired. Terminal states never change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorCode};
use crate::job::{HealthCheckSpec, VolumeSpec};

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Wanted, not yet placed (why is in the task's `pending`).
    Accepted,
    /// Placed on an agent; the agent has not started it yet.
    Assigned,
    /// The agent is preparing or starting it.
    Starting,
    Running,
    /// Asked to stop; the agent is stopping it.
    Killing,
    /// Its agent's lease expired; it may still be running.
    Unreachable,
    /// Exited with status 0.
    Finished,
    /// Exited with a non-zero status, or was OOM-killed.
    Failed,
    /// Stopped on request.
    Killed,
    /// Its agent was lost, or it was stuck too long in a transient state.
    Lost,
    /// The agent could not run it (resources, image, volume).
    Rejected,
}

impl TaskState {
    pub const ALL: [TaskState; 11] = [
        TaskState::Accepted,
        TaskState::Assigned,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Killing,
        TaskState::Unreachable,
        TaskState::Finished,
        TaskState::Failed,
        TaskState::Killed,
        TaskState::Lost,
        TaskState::Rejected,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished | TaskState::Failed | TaskState::Killed | TaskState::Lost | TaskState::Rejected
        )
    }

    /// Whether the task holds resources on an agent.
    pub fn on_agent(self) -> bool {
        matches!(
            self,
            TaskState::Assigned
                | TaskState::Starting
                | TaskState::Running
                | TaskState::Killing
                | TaskState::Unreachable
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Accepted => "accepted",
            TaskState::Assigned => "assigned",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Killing => "killing",
            TaskState::Unreachable => "unreachable",
            TaskState::Finished => "finished",
            TaskState::Failed => "failed",
            TaskState::Killed => "killed",
            TaskState::Lost => "lost",
            TaskState::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// What the cell wants of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    Run,
    Stop,
}

/// Why a task reached a terminal state (or why it is being stopped), as a stable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The process exited by itself.
    Exited,
    /// The kernel killed it for exceeding its memory limit.
    OomKilled,
    /// A user killed the task or its job.
    KilledByUser,
    /// The job was scaled down (or disabled).
    ScaledDown,
    /// Moved off a draining agent.
    Drained,
    /// Its agent's lease expired and did not come back within the grace period.
    AgentLost,
    /// Its agent restarted and did not find it.
    AgentRestarted,
    /// It stayed too long in Assigned, Starting or Killing.
    StuckTimeout,
    /// The agent could not start it (image, runtime, volume).
    LaunchError,
    /// The agent does not have what it needs (resources, ports, pool).
    InsufficientResources,
    /// It failed its health checks.
    Unhealthy,
    /// A second copy found after a partition healed; the older placement is kept.
    Duplicate,
    /// Its container or process disappeared from the runtime without the agent stopping it.
    Vanished,
    /// Replaced by a task of a newer version of its job's spec (a rolling update).
    Superseded,
    /// Stopped by its agent, which had not renewed its lease for the job's `disconnect.stopAfterSeconds`.
    Disconnected,
}

impl Reason {
    pub const ALL: [Reason; 15] = [
        Reason::Exited,
        Reason::OomKilled,
        Reason::KilledByUser,
        Reason::ScaledDown,
        Reason::Drained,
        Reason::AgentLost,
        Reason::AgentRestarted,
        Reason::StuckTimeout,
        Reason::LaunchError,
        Reason::InsufficientResources,
        Reason::Unhealthy,
        Reason::Duplicate,
        Reason::Vanished,
        Reason::Superseded,
        Reason::Disconnected,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Exited => "exited",
            Reason::OomKilled => "oom_killed",
            Reason::KilledByUser => "killed_by_user",
            Reason::ScaledDown => "scaled_down",
            Reason::Drained => "drained",
            Reason::AgentLost => "agent_lost",
            Reason::AgentRestarted => "agent_restarted",
            Reason::StuckTimeout => "stuck_timeout",
            Reason::LaunchError => "launch_error",
            Reason::InsufficientResources => "insufficient_resources",
            Reason::Unhealthy => "unhealthy",
            Reason::Duplicate => "duplicate",
            Reason::Vanished => "vanished",
            Reason::Superseded => "superseded",
            Reason::Disconnected => "disconnected",
        }
    }

    /// Whether the failure is the system's, not the user's: those never spend the job's retries.
    pub fn is_system(self) -> bool {
        matches!(
            self,
            Reason::AgentLost
                | Reason::AgentRestarted
                | Reason::StuckTimeout
                | Reason::LaunchError
                | Reason::InsufficientResources
                | Reason::Drained
                | Reason::Duplicate
                | Reason::Vanished
                | Reason::Superseded
                | Reason::Disconnected
        )
    }
}

/// Whether a running task passes its health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskHealth {
    /// Within its grace period, or no check has answered yet.
    Unknown,
    Healthy,
    Unhealthy,
}

/// A task as the cell shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    pub id: String,
    pub job_id: String,
    /// The job version it was created from.
    pub job_version: u64,
    pub cell: String,
    pub state: TaskState,
    pub desired: Desired,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Host ports allocated to it, in order (`PORT_0`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// 0 for a first task; a replacement counts up.
    pub attempt: u32,
    /// The task this one replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
    /// Failures of the user's code spent on this chain of replacements (system failures do not count).
    pub retries_used: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    pub health: TaskHealth,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Why an Accepted task is not placed yet, from the leader's latest placement round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    /// The task this one replaces, when that one was lost with an agent that is still unreachable and its job
    /// does not stop tasks on a disconnect (`disconnect.stopAfterSeconds`): a replacement may run beside an
    /// unreachable original, until its agent is back and stops what the cell no longer lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub may_run_beside: Option<String>,
    /// Every state it went through, with when.
    pub transitions: Vec<Transition>,
}

/// One step of a task's life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub state: TaskState,
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

/// Query of `GET /v1/tasks`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskQuery {
    pub job: Option<String>,
    pub agent: Option<String>,
    /// A task state; `active` for every non-terminal one.
    pub state: Option<String>,
    pub limit: Option<u32>,
    pub page_token: Option<String>,
    /// Linearizable read.
    #[serde(default)]
    pub consistent: bool,
}

impl TaskQuery {
    pub fn validate(&self) -> Result<(), ApiError> {
        if let Some(s) = &self.state {
            if s != "active" && TaskState::parse(s).is_none() {
                return Err(ApiError::new(
                    ErrorCode::InvalidParameter,
                    format!("{s:?} is not a task state or `active`"),
                )
                .with_field("state"));
            }
        }
        Ok(())
    }
}

/// A page of tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskList {
    pub tasks: Vec<TaskView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// What an agent is told to run: everything it needs, so it never reads the job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub task_id: String,
    pub job_id: String,
    pub desired: Desired,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cpus: f64,
    pub memory_mib: u64,
    pub disk_mib: u64,
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    /// Between SIGTERM and SIGKILL.
    pub kill_grace_ms: u64,
    /// Stop the task once the agent has not renewed its lease for this long (the job's
    /// `disconnect.stopAfterSeconds`); absent, it keeps running through a disconnect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_after_ms: Option<u64>,
}

/// Answer to `GET /v1/agents/{id}/assignments`: every task the cell places on the agent that is not terminal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Assignments {
    /// The agent's lease epoch as the answering member knows it: an agent acts only on its own epoch, so a plan
    /// from a member that has not seen its latest registration is refused.
    pub lease_epoch: u64,
    /// Raised whenever this agent's assignments change; pass it back as `after` to wait for the next change.
    pub version: u64,
    pub tasks: Vec<Assignment>,
}

/// Query of `GET /v1/agents/{id}/assignments`: long-poll until `version` passes `after`, at most `waitMs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AssignmentsQuery {
    pub after: Option<u64>,
    pub wait_ms: Option<u64>,
}

/// Longest an assignments long-poll waits.
pub const MAX_WAIT_MS: u64 = 30_000;

/// What the agent observed of one task. An agent may send Running without Starting before it (one report covers
/// both), and Killed for a task it does not have (the cell counts that as ignored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskStatus {
    pub task_id: String,
    /// One of starting, running, finished, failed, killed, rejected.
    pub state: TaskState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default = "unknown_health")]
    pub health: TaskHealth,
    /// When the agent saw it (its clock).
    pub at_ms: u64,
}

fn unknown_health() -> TaskHealth {
    TaskHealth::Unknown
}

/// Most statuses in one report.
pub const MAX_STATUSES: usize = 10_000;

/// Body of `POST /v1/agents/{id}/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusReport {
    pub lease_epoch: u64,
    pub statuses: Vec<TaskStatus>,
}

impl StatusReport {
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.statuses.len() > MAX_STATUSES {
            return Err(ApiError::field("statuses", format!("at most {MAX_STATUSES} per report")));
        }
        for (i, s) in self.statuses.iter().enumerate() {
            let reportable = matches!(
                s.state,
                TaskState::Starting
                    | TaskState::Running
                    | TaskState::Finished
                    | TaskState::Failed
                    | TaskState::Killed
                    | TaskState::Rejected
            );
            if !reportable {
                return Err(ApiError::field(
                    format!("statuses[{i}].state"),
                    "an agent reports starting, running, finished, failed, killed or rejected",
                ));
            }
            if s.task_id.is_empty() || s.task_id.len() > 128 {
                return Err(ApiError::field(format!("statuses[{i}].taskId"), "must be 1-128 characters"));
            }
            if s.message.as_ref().is_some_and(|m| m.len() > 4096) {
                return Err(ApiError::field(format!("statuses[{i}].message"), "at most 4096 bytes"));
            }
        }
        Ok(())
    }
}

/// How many of the report's statuses the cell took; the others were stale (a task already terminal, or not on
/// this agent) and are dropped, which the agent treats as delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusAck {
    pub applied: u32,
    pub ignored: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_their_names_and_terminal_ones_hold_nothing() {
        for s in TaskState::ALL {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
            assert!(!(s.is_terminal() && s.on_agent()), "{s:?}");
        }
        assert_eq!(TaskState::ALL.iter().filter(|s| s.is_terminal()).count(), 5);
    }

    #[test]
    fn reason_names_match_their_serde_names() {
        for r in Reason::ALL {
            assert_eq!(serde_json::to_value(r).expect("serializes"), r.as_str());
        }
    }

    #[test]
    fn a_report_names_the_bad_status() {
        let ok = TaskStatus {
            task_id: "t1".into(),
            state: TaskState::Running,
            reason: None,
            message: None,
            exit_code: None,
            health: TaskHealth::Unknown,
            at_ms: 1,
        };
        let mut report = StatusReport { lease_epoch: 1, statuses: vec![ok.clone()] };
        assert_eq!(report.validate(), Ok(()));
        report.statuses.push(TaskStatus { state: TaskState::Lost, ..ok });
        assert_eq!(report.validate().map_err(|e| e.field), Err(Some("statuses[1].state".to_string())));
        let q = TaskQuery { state: Some("sleeping".into()), ..TaskQuery::default() };
        assert_eq!(q.validate().map_err(|e| e.field), Err(Some("state".to_string())));
    }
}
