//! The queue of status updates waiting for the cell: the latest per task, batched into reports, put back when a
//! report fails. Only the latest status of a task matters to the cell, but a terminal one is never replaced by
//! anything that is not terminal, so it cannot be lost.

use std::collections::BTreeMap;

use titan_api::task::{TaskStatus, MAX_STATUSES};

/// Pending statuses, at most one per task.
#[derive(Debug, Default)]
pub struct StatusQueue {
    pending: BTreeMap<String, TaskStatus>,
}

/// Whether `new` may take the place of `old` in the queue.
fn supersedes(new: &TaskStatus, old: &TaskStatus) -> bool {
    new.state.is_terminal() || !old.state.is_terminal()
}

impl StatusQueue {
    pub fn push(&mut self, status: TaskStatus) {
        match self.pending.get(&status.task_id) {
            Some(old) if !supersedes(&status, old) => {}
            _ => {
                self.pending.insert(status.task_id.clone(), status);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Up to one report's worth of statuses, taken out of the queue.
    pub fn take(&mut self) -> Vec<TaskStatus> {
        let ids: Vec<String> = self.pending.keys().take(MAX_STATUSES).cloned().collect();
        ids.into_iter().filter_map(|id| self.pending.remove(&id)).collect()
    }

    /// Puts back a batch the cell did not acknowledge; a status queued since then for the same task is newer
    /// and wins, unless the one put back is terminal and the newer one is not.
    pub fn restore(&mut self, batch: Vec<TaskStatus>) {
        for status in batch {
            match self.pending.get(&status.task_id) {
                Some(newer) if supersedes(newer, &status) => {}
                _ => {
                    self.pending.insert(status.task_id.clone(), status);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use titan_api::task::{TaskHealth, TaskState};

    use super::*;

    fn status(task: &str, state: TaskState, at_ms: u64) -> TaskStatus {
        TaskStatus {
            task_id: task.into(),
            state,
            reason: None,
            message: None,
            exit_code: None,
            health: TaskHealth::Unknown,
            at_ms,
        }
    }

    fn check(q: &mut StatusQueue, expected: &[(&str, TaskState, u64)]) {
        let got: Vec<(String, TaskState, u64)> = q.take().into_iter().map(|s| (s.task_id, s.state, s.at_ms)).collect();
        let expected: Vec<(String, TaskState, u64)> =
            expected.iter().map(|(t, s, at)| (t.to_string(), *s, *at)).collect();
        assert_eq!(got, expected);
        assert!(q.is_empty());
    }

    #[test]
    fn the_latest_status_per_task_is_sent_and_terminal_ones_are_never_dropped() {
        let mut q = StatusQueue::default();
        q.push(status("t1", TaskState::Starting, 1));
        q.push(status("t1", TaskState::Running, 2));
        q.push(status("t2", TaskState::Failed, 3));
        q.push(status("t2", TaskState::Running, 4));
        assert_eq!(q.len(), 2);
        check(&mut q, &[("t1", TaskState::Running, 2), ("t2", TaskState::Failed, 3)]);
    }

    #[test]
    fn a_failed_report_is_put_back_under_newer_statuses() {
        let mut q = StatusQueue::default();
        q.push(status("t1", TaskState::Running, 1));
        q.push(status("t2", TaskState::Killed, 2));
        q.push(status("t3", TaskState::Running, 3));
        let batch = q.take();
        q.push(status("t1", TaskState::Finished, 4));
        q.push(status("t2", TaskState::Running, 5));
        q.restore(batch);
        check(&mut q, &[("t1", TaskState::Finished, 4), ("t2", TaskState::Killed, 2), ("t3", TaskState::Running, 3)]);
    }
}
