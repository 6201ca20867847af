//! A task as the cell stores it, and the rules of its state machine.
//!
//! Every change of state goes through `TaskRecord::move_to`, which refuses to leave a terminal state, so no path
//! through the code can revive a finished task. What a transition means for capacity (releasing an agent's
//! resources) is the state machine's business, not this file's.

use serde::{Deserialize, Serialize};
use titan_api::task::{Desired, Reason, TaskHealth, TaskState, TaskView, Transition};

/// Transitions kept per task; the oldest are dropped first (a flapping health check must not grow it unbounded).
pub const MAX_TRANSITIONS: usize = 32;

/// The resources a task asked for when it was created (a later version of its job does not change them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ask {
    pub cpus: f64,
    pub memory_mib: u64,
    pub disk_mib: u64,
    pub ports: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub job_id: String,
    pub job_version: u64,
    /// The job's spec version when the task was made: the spec it runs as (`JobRecord::spec_for`).
    pub spec_version: u64,
    pub ask: Ask,
    pub state: TaskState,
    pub desired: Desired,
    pub reason: Option<Reason>,
    pub message: Option<String>,
    pub agent: Option<String>,
    /// The agent's lease epoch when the task was placed on it.
    pub lease_epoch: u64,
    pub ports: Vec<u16>,
    pub attempt: u32,
    pub replaces: Option<String>,
    pub replaced_by: Option<String>,
    pub retries_used: u32,
    pub exit_code: Option<i64>,
    pub health: TaskHealth,
    /// The state before the agent became unreachable, restored when it comes back.
    pub before_unreachable: Option<TaskState>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub transitions: Vec<Transition>,
    /// For a scheduled job: the tick (ms) of the run this task belongs to.
    #[serde(default)]
    pub run: Option<u64>,
}

impl TaskRecord {
    #[allow(clippy::too_many_arguments)]
    pub fn accepted(
        id: String,
        job_id: String,
        job_version: u64,
        ask: Ask,
        attempt: u32,
        replaces: Option<String>,
        retries_used: u32,
        at_ms: u64,
    ) -> TaskRecord {
        TaskRecord {
            id,
            job_id,
            job_version,
            spec_version: 0,
            ask,
            state: TaskState::Accepted,
            desired: Desired::Run,
            reason: None,
            message: None,
            agent: None,
            lease_epoch: 0,
            ports: Vec::new(),
            attempt,
            replaces,
            replaced_by: None,
            retries_used,
            exit_code: None,
            health: TaskHealth::Unknown,
            before_unreachable: None,
            created_at_ms: at_ms,
            updated_at_ms: at_ms,
            transitions: vec![Transition { state: TaskState::Accepted, at_ms, reason: None }],
            run: None,
        }
    }

    /// Moves to `to`, recording when and why; returns false (and changes nothing) from a terminal state or when
    /// already there.
    pub fn move_to(&mut self, to: TaskState, reason: Option<Reason>, at_ms: u64) -> bool {
        if self.state.is_terminal() || self.state == to {
            return false;
        }
        self.state = to;
        if reason.is_some() {
            self.reason = reason;
        }
        self.updated_at_ms = at_ms;
        self.transitions.push(Transition { state: to, at_ms, reason });
        if self.transitions.len() > MAX_TRANSITIONS {
            // Keep the first (creation) and the latest ones.
            self.transitions.remove(1);
        }
        true
    }

    pub fn is_terminal(&self) -> bool {
        self.state.is_terminal()
    }

    pub fn view(&self, cell: &str, pending: Option<String>) -> TaskView {
        TaskView {
            id: self.id.clone(),
            job_id: self.job_id.clone(),
            job_version: self.job_version,
            cell: cell.to_string(),
            state: self.state,
            desired: self.desired,
            reason: self.reason,
            message: self.message.clone(),
            agent_id: self.agent.clone(),
            ports: self.ports.clone(),
            attempt: self.attempt,
            replaces: self.replaces.clone(),
            replaced_by: self.replaced_by.clone(),
            retries_used: self.retries_used,
            exit_code: self.exit_code,
            health: self.health,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            pending: pending.filter(|_| self.state == TaskState::Accepted),
            may_run_beside: None,
            transitions: self.transitions.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> TaskRecord {
        let ask = Ask { cpus: 1.0, memory_mib: 64, disk_mib: 0, ports: 0 };
        TaskRecord::accepted("t1".into(), "j1".into(), 1, ask, 0, None, 0, 10)
    }

    #[test]
    fn terminal_states_never_change() {
        let mut t = task();
        assert!(t.move_to(TaskState::Assigned, None, 11));
        assert!(!t.move_to(TaskState::Assigned, None, 12), "no move to the same state");
        assert!(t.move_to(TaskState::Failed, Some(Reason::Exited), 13));
        for s in TaskState::ALL {
            assert!(!t.move_to(s, None, 14), "{s:?}");
        }
        assert_eq!((t.state, t.reason, t.updated_at_ms), (TaskState::Failed, Some(Reason::Exited), 13));
        assert_eq!(t.transitions.len(), 3);
    }

    #[test]
    fn transitions_are_bounded_and_keep_the_creation() {
        let mut t = task();
        for i in 0..100 {
            let to = if i % 2 == 0 { TaskState::Running } else { TaskState::Unreachable };
            t.move_to(to, None, 20 + i);
        }
        assert_eq!(t.transitions.len(), MAX_TRANSITIONS);
        assert_eq!(t.transitions[0].state, TaskState::Accepted);
        assert_eq!(t.transitions.last().map(|x| x.at_ms), Some(119));
    }
}
