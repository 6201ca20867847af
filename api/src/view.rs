//! Response bodies: jobs as the API shows them, their history, listings, and the cell's cluster status.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::job::JobSpec;

/// Whether a job runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Enabled,
    Disabled,
    /// Killed: its tasks are stopped and it takes no more changes. The record stays for its history.
    Killed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Enabled => "enabled",
            JobState::Disabled => "disabled",
            JobState::Killed => "killed",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        match s {
            "enabled" => Some(JobState::Enabled),
            "disabled" => Some(JobState::Disabled),
            "killed" => Some(JobState::Killed),
            _ => None,
        }
    }
}

/// The answer to a write: which job, at which version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRef {
    pub id: String,
    pub version: u64,
    /// Locations the job names that no cell this cell knows runs: a standalone cell takes any location and says
    /// here which it cannot see (a federation refuses them instead, `unknown_location`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unseen_locations: Vec<String>,
}

/// A job as stored by its cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub id: String,
    pub version: u64,
    pub state: JobState,
    pub spec: JobSpec,
    /// Per-location instance counts, whichever way the spec gave them.
    pub instances: BTreeMap<String, u32>,
    /// Milliseconds since the Unix epoch, as stamped by the cell leader.
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// For a scheduled job: when its current run was due (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_run_ms: Option<u64>,
    /// This cell's tasks of the job (on `GET /v1/jobs/{id}`; not in lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<TaskSummary>,
    /// The job in each location, as that location's cell last reported it (on `GET /v1/jobs/{id}`; not in lists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locations: Vec<LocationView>,
}

/// One location's part of a job, as its cell last reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocationView {
    pub location: String,
    /// The count the job asks of this location.
    pub desired: u32,
    pub running: u32,
    /// Tasks not placed yet.
    pub pending: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    /// The location's cell: `self` (the cell asked), `up`, `suspect`, `down`, or `unknown` (not heard yet).
    pub cell_state: String,
    /// How old the figures are; a down cell's are shown stale, never dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
}

/// A job's tasks in one cell: how many are in each state, and why those not placed yet are waiting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskSummary {
    /// Task state name to count.
    pub by_state: BTreeMap<String, u32>,
    /// Accepted tasks with the placement engine's reason (from the leader's latest round; empty elsewhere).
    pub pending: Vec<PendingTask>,
    /// Per location, the attempts that failed and the last failure: a job whose every attempt failed has no task
    /// running or pending, and this says why.
    #[serde(default)]
    pub failures: Vec<LocationFailures>,
}

/// The failed attempts of a job's tasks in one location (tasks that ended failed, lost or rejected).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocationFailures {
    pub location: String,
    /// How many attempts failed (among the tasks the cell still keeps).
    pub attempts: u32,
    /// The newest failure.
    pub last: Failure,
}

/// One failed attempt: which task, its reason code, the agent's or cell's message, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub task_id: String,
    /// The task's end state: failed, lost or rejected.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl LocationFailures {
    /// Counts one more failed attempt in `location`, keeping the newest as `last` (ties go to the later call).
    pub fn record(all: &mut Vec<LocationFailures>, location: &str, failure: Failure) {
        match all.iter_mut().find(|f| f.location == location) {
            Some(f) => {
                f.attempts += 1;
                if failure.at_ms >= f.last.at_ms {
                    f.last = failure;
                }
            }
            None => all.push(LocationFailures { location: location.to_string(), attempts: 1, last: failure }),
        }
    }

    /// For people: `3 attempts failed: <the last one's message>`.
    pub fn sentence(&self) -> String {
        let s = if self.attempts == 1 { "" } else { "s" };
        format!("{} attempt{s} failed: {}", self.attempts, self.last.why())
    }
}

impl Failure {
    /// The message when there is one, else the reason code and exit code, else the end state.
    pub fn why(&self) -> String {
        let exit = self.exit_code.map(|c| format!(" (exit code {c})")).unwrap_or_default();
        match (&self.message, &self.reason) {
            (Some(m), _) if !m.is_empty() => format!("{m}{exit}"),
            (_, Some(r)) => format!("{r}{exit}"),
            _ => format!("{}{exit}", self.state),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingTask {
    pub task_id: String,
    pub reason: String,
}

/// One change to a job: who made it, why, when, and what it was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub version: u64,
    pub at_ms: u64,
    pub who: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    pub what: String,
    /// The cell that took the change (absent on changes from before federation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<String>,
}

/// A page of jobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Pass as `pageToken` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// Filters and paging for `GET /v1/jobs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub application: Option<String>,
    pub owner: Option<String>,
    pub capacity_group: Option<String>,
    /// enabled, disabled or killed; by default killed jobs are left out.
    pub state: Option<String>,
    /// Page size, 1..=1000 (default 100).
    pub limit: Option<u32>,
    pub page_token: Option<String>,
    /// Read what the leader has committed as of this request (a linearizable read); by default a member answers
    /// from its own applied state, which a follower may have a moment behind.
    pub consistent: Option<bool>,
}

/// Query of the single-object reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// As for listings: read what the leader has committed as of this request.
    pub consistent: Option<bool>,
}

/// Default and largest page sizes for listings.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1_000;

/// A member of the cell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    pub id: u64,
    pub addr: String,
    /// leader, follower or learner.
    pub role: String,
}

/// The cell's Raft status as one member sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    pub cell: String,
    pub node_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
    pub term: u64,
    pub members: Vec<MemberView>,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_index: Option<u64>,
    /// This member's background loops.
    #[serde(default)]
    pub workers: Vec<WorkerView>,
}

/// One background loop of a member (the scheduler, a proposer), as `/v1/cluster` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerView {
    pub name: String,
    /// busy, idle or done.
    pub state: String,
    /// What the worker is doing, in its own words.
    pub status: String,
    pub steps: u64,
    pub errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_step_ms_ago: Option<u64>,
}

/// One cell of the federation, as the cell asked sees it (`GET /v1/cells`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CellView {
    pub name: String,
    /// `self` for the cell asked; otherwise `up`, `suspect` (silent past `suspect_ms`) or `down` (past `down_ms`).
    pub state: String,
    /// Its members' addresses.
    pub members: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Since its last heartbeat reached this member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heard_ms_ago: Option<u64>,
    /// Job changes of the cell asked that this cell has not merged yet.
    pub changes_to_send: u64,
    /// Job changes of this cell that the cell asked has not merged yet.
    pub changes_to_receive: u64,
    /// From a write in this cell to its merge in the cell asked, for the latest batch merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_in_ms: Option<u64>,
}

/// Body of `POST /v1/cluster/members`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddMember {
    pub id: u64,
    /// host:port of the member's listener.
    pub addr: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(task: &str, at_ms: u64, message: Option<&str>) -> Failure {
        Failure {
            task_id: task.into(),
            state: "rejected".into(),
            reason: Some("launch_error".into()),
            message: message.map(String::from),
            exit_code: None,
            at_ms,
        }
    }

    #[test]
    fn failures_are_counted_per_location_with_the_newest_kept() {
        let mut all = Vec::new();
        LocationFailures::record(&mut all, "dc1", failure("t2", 20, Some("image x is not present")));
        LocationFailures::record(&mut all, "dc1", failure("t1", 10, Some("older")));
        LocationFailures::record(&mut all, "dc2", failure("t3", 5, None));
        LocationFailures::record(
            &mut all,
            "dc1",
            failure("t4", 30, Some("image x is not present and could not be pulled")),
        );
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].attempts, all[0].last.task_id.as_str()), (3, "t4"));
        assert_eq!(all[0].sentence(), "3 attempts failed: image x is not present and could not be pulled");
        assert_eq!(all[1].sentence(), "1 attempt failed: launch_error");
        let exited = Failure {
            state: "failed".into(),
            reason: Some("exited".into()),
            exit_code: Some(3),
            ..failure("t", 1, None)
        };
        assert_eq!(exited.why(), "exited (exit code 3)");
    }
}
