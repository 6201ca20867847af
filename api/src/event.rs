//! The event stream: job, task and agent changes as the cell commits them, served as server-sent events by
//! `GET /v1/events`, resumable from an event's id and filterable by topic and job.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorCode};

/// What an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    Job,
    Task,
    Agent,
    Quota,
    Location,
    Fleet,
    /// API tokens created and revoked.
    Acl,
}

impl Topic {
    pub fn parse(s: &str) -> Option<Topic> {
        match s {
            "job" => Some(Topic::Job),
            "task" => Some(Topic::Task),
            "agent" => Some(Topic::Agent),
            "quota" => Some(Topic::Quota),
            "location" => Some(Topic::Location),
            "fleet" => Some(Topic::Fleet),
            "acl" => Some(Topic::Acl),
            _ => None,
        }
    }
}

/// One change, as committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// This event's own id: counted by the replicated state as it applies commands, so it is the same on every
    /// member and after a restart, and strictly increasing with no gaps within what a member keeps. It is the SSE
    /// `id` and what `from` and `Last-Event-ID` resume after.
    pub event_id: u64,
    /// The Raft log index of the change. One entry carries a batch of commands, so several events may share it.
    pub index: u64,
    pub topic: Topic,
    /// What happened: `created`, `instances dc1=5`, a task state such as `running`, `registered`, ...
    pub kind: String,
    /// The job, task or agent id.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at_ms: u64,
    /// The cell that made a job's change (federation: a change merged from another cell names that cell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<String>,
    /// Who made the change: the token's name with authentication on (else `X-Titan-User`), `scheduler` for the
    /// cell's own decisions, `cell:NAME` for a change merged from another cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
}

/// Query of `GET /v1/events`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventQuery {
    /// Only events after this event id (the SSE `id`, `eventId`, of the last event received); absent: only new
    /// events.
    pub from: Option<u64>,
    /// Comma-separated topics: job, task, agent, quota, location, fleet, acl. Absent: all.
    pub topic: Option<String>,
    /// Only events of this job (its own and its tasks').
    pub job: Option<String>,
    /// End the stream after this many seconds (1 to `MAX_STREAM_SECONDS`), as Kubernetes' watch `timeoutSeconds`
    /// does; absent: it stays open. A client that reads only for a while says so, and the server lets go then.
    pub timeout_seconds: Option<u64>,
}

impl EventQuery {
    /// The topics asked for, every one when none is named.
    pub fn topics(&self) -> Result<Vec<Topic>, ApiError> {
        let Some(t) = &self.topic else {
            return Ok(vec![
                Topic::Job,
                Topic::Task,
                Topic::Agent,
                Topic::Quota,
                Topic::Location,
                Topic::Fleet,
                Topic::Acl,
            ]);
        };
        t.split(',')
            .map(|name| {
                Topic::parse(name.trim()).ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidParameter,
                        format!("{name:?} is not a topic (job, task, agent, quota, location, fleet)"),
                    )
                    .with_field("topic")
                })
            })
            .collect()
    }

    pub fn matches(&self, topics: &[Topic], e: &Event) -> bool {
        topics.contains(&e.topic)
            && self.job.as_ref().is_none_or(|j| match e.topic {
                Topic::Job => &e.id == j,
                _ => e.job_id.as_ref() == Some(j),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_filter_and_a_bad_one_names_the_field() {
        let q = EventQuery { topic: Some("task,job".into()), job: Some("j1".into()), ..EventQuery::default() };
        let topics = q.topics().expect("valid");
        let e = |topic, id: &str, job: Option<&str>| Event {
            event_id: 1,
            index: 1,
            topic,
            kind: "running".into(),
            id: id.into(),
            job_id: job.map(String::from),
            agent_id: None,
            reason: None,
            at_ms: 0,
            cell: None,
            who: None,
        };
        assert!(q.matches(&topics, &e(Topic::Task, "t1", Some("j1"))));
        assert!(q.matches(&topics, &e(Topic::Job, "j1", None)));
        assert!(!q.matches(&topics, &e(Topic::Task, "t2", Some("j2"))));
        assert!(!q.matches(&topics, &e(Topic::Agent, "a1", None)));
        let bad = EventQuery { topic: Some("tasks".into()), ..EventQuery::default() };
        assert_eq!(bad.topics().map_err(|e| e.field), Err(Some("topic".to_string())));
    }
}
