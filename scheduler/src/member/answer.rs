//! Typed answers: what each kind of command answers, taken out of the state machine's `Response` in one place, so
//! that a caller gets its own type and no caller matches on the answers of other commands.

use super::*;
use crate::command::RoundOutcome;

/// The answer one kind of command gets.
pub(crate) trait Answer: Sized {
    /// The commands it answers, for the error when another answer came.
    const TO: &'static str;

    /// This answer, or the response back when it is another.
    fn take(r: Response) -> Result<Self, Response>;
}

/// The lease epoch an agent's registration took effect at.
pub(crate) struct Registered {
    pub(crate) lease_epoch: u64,
}

/// An agent's state was set.
pub(crate) struct AgentStateSet;

/// A task was asked to stop.
pub(crate) struct TaskKilled;

impl Answer for JobRef {
    const TO: &'static str = "a job command";
    fn take(r: Response) -> Result<Self, Response> {
        match r {
            Response::Job(job) => Ok(job),
            other => Err(other),
        }
    }
}

impl Answer for titan_api::quota::QuotaRef {
    const TO: &'static str = "a quota command";
    fn take(r: Response) -> Result<Self, Response> {
        match r {
            Response::Quota { group, version } => Ok(titan_api::quota::QuotaRef { group, version }),
            other => Err(other),
        }
    }
}

impl Answer for Registered {
    const TO: &'static str = "a registration";
    fn take(r: Response) -> Result<Self, Response> {
        match r {
            Response::Agent { lease_epoch, .. } => Ok(Registered { lease_epoch }),
            other => Err(other),
        }
    }
}

impl Answer for AgentStateSet {
    const TO: &'static str = "an agent state change";
    fn take(r: Response) -> Result<Self, Response> {
        match r {
            Response::Agent { .. } => Ok(AgentStateSet),
            other => Err(other),
        }
    }
}

impl Answer for TaskKilled {
    const TO: &'static str = "a task kill";
    fn take(r: Response) -> Result<Self, Response> {
        match r {
            Response::Task { .. } => Ok(TaskKilled),
            other => Err(other),
        }
    }
}

impl Answer for StatusAck {
    const TO: &'static str = "a status report";
    fn take(r: Response) -> Result<Self, Response> {
        match r {
            Response::Statuses { applied, ignored } => Ok(StatusAck { applied, ignored }),
            other => Err(other),
        }
    }
}

impl Answer for crate::command::MergeOutcome {
    const TO: &'static str = "a merge";
    fn take(r: Response) -> Result<Self, Response> {
        match r {
            Response::Merged(outcome) => Ok(outcome),
            other => Err(other),
        }
    }
}

impl Answer for RoundOutcome {
    const TO: &'static str = "a round";
    fn take(r: Response) -> Result<Self, Response> {
        match r {
            Response::Round(outcome) => Ok(outcome),
            other => Err(other),
        }
    }
}

/// A token write took effect.
pub(crate) struct TokenWritten {
    pub(crate) name: String,
}

impl Answer for TokenWritten {
    const TO: &'static str = "a token command";
    fn take(r: Response) -> Result<Self, Response> {
        match r {
            Response::Token { name } => Ok(TokenWritten { name }),
            other => Err(other),
        }
    }
}

/// The answer as `A`: a refusal becomes its API error, another command's answer an internal error.
pub(crate) fn typed<A: Answer>(r: Response) -> Result<A, ApiError> {
    match r {
        Response::Rejected(r) => Err(rejection(r)),
        r => A::take(r).map_err(|other| ApiError::internal(format!("{} got the answer {other:?}", A::TO))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_its_own_type_a_refusal_its_api_error_and_another_answer_an_internal_error() {
        let ack: StatusAck = typed(Response::Statuses { applied: 2, ignored: 1 }).unwrap();
        assert_eq!((ack.applied, ack.ignored), (2, 1));
        let refused = typed::<TaskKilled>(Response::Rejected(Rejection::TaskNotFound { id: "t".into() }));
        assert_eq!(refused.err().map(|e| e.code), Some(ErrorCode::NotFound));
        let wrong = typed::<Registered>(Response::Task { id: "t".into() });
        let e = wrong.err().expect("another command's answer");
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(e.message.starts_with("a registration got the answer Task"), "{}", e.message);
    }
}
