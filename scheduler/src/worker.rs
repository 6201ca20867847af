//! One shape for every background loop of a member, after Garage's `Worker`: a name, a status line, a step that
//! does one unit of work, and a wait for the next. The runner owns the loop: it counts steps and errors, backs off
//! after an error, keeps what `/v1/cluster` shows of each worker, and stops every worker when the member stops.
//!
//! Workers hold what they use (a narrow handle: `member::Handle`, a queue), never the member itself, so a loop
//! cannot reach into state it does not own, and the decisions a step makes live in pure code beside it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, Registry};
use titan_api::view::WorkerView;
use tokio::sync::watch;

/// What a worker has to do after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// More work is waiting: step again at once.
    Busy,
    /// Nothing to do: wait for work (`Worker::wait`), then step.
    Idle,
    /// The worker has finished for good (its source closed).
    Done,
}

/// A background loop of a member.
pub trait Worker: Send + 'static {
    /// The worker's name, unique within a member (`scheduler`, `proposer-1`).
    fn name(&self) -> String;

    /// One line on what the worker is doing, for `/v1/cluster`.
    fn status(&self) -> String {
        String::new()
    }

    /// Does one unit of work. An error is counted and logged, and the worker steps again after a back-off.
    fn step(&mut self) -> impl Future<Output = Result<Next, String>> + Send;

    /// Waits until there may be work (or the worker's source closes: `Done`).
    fn wait(&mut self) -> impl Future<Output = Next> + Send;
}

/// The first pause after a failed step, doubled up to `MAX_BACKOFF` while steps keep failing.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A worker as the runner last saw it.
#[derive(Clone, Debug)]
struct Seen {
    state: &'static str,
    status: String,
    steps: u64,
    errors: u64,
    last_error: Option<String>,
    last_step: Option<Instant>,
}

/// Starts workers and keeps their status; dropping it (or `stop`) stops them at their next await.
pub struct Workers {
    seen: Arc<Mutex<BTreeMap<String, Seen>>>,
    stop: watch::Sender<bool>,
    steps: IntCounterVec,
    errors: IntCounterVec,
}

impl Workers {
    pub fn new(registry: &Registry, cell: &str, node: u64) -> Result<Workers, prometheus::Error> {
        let r = crate::metrics::registrar(registry, cell, node);
        let steps = r.counter_vec(&crate::metrics::workers::STEPS)?;
        let errors = r.counter_vec(&crate::metrics::workers::ERRORS)?;
        Ok(Workers { seen: Arc::default(), stop: watch::channel(false).0, steps, errors })
    }

    /// Runs `worker` until it is done or the workers stop.
    pub fn spawn<W: Worker>(&self, mut worker: W) {
        let name = worker.name();
        let seen = self.seen.clone();
        let mut stop = self.stop.subscribe();
        let (steps, errors) = (self.steps.with_label_values(&[&name]), self.errors.with_label_values(&[&name]));
        let note = move |seen: &Mutex<BTreeMap<String, Seen>>, f: &dyn Fn(&mut Seen)| {
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = seen.get_mut(&name) {
                f(s);
            }
        };
        seen.lock().unwrap_or_else(|p| p.into_inner()).insert(
            worker.name(),
            Seen { state: "idle", status: worker.status(), steps: 0, errors: 0, last_error: None, last_step: None },
        );
        tokio::spawn(async move {
            let mut next = Next::Idle;
            let mut backoff = FIRST_BACKOFF;
            loop {
                if next == Next::Idle {
                    note(&seen, &|s| s.state = "idle");
                    next = tokio::select! {
                        n = worker.wait() => n,
                        _ = stop.wait_for(|s| *s) => Next::Done,
                    };
                }
                if next == Next::Done || *stop.borrow() {
                    break;
                }
                note(&seen, &|s| s.state = "busy");
                let result = tokio::select! {
                    r = worker.step() => r,
                    _ = stop.wait_for(|s| *s) => break,
                };
                steps.inc();
                let status = worker.status();
                match result {
                    Ok(n) => {
                        backoff = FIRST_BACKOFF;
                        next = n;
                        note(&seen, &|s| {
                            s.steps += 1;
                            s.status.clone_from(&status);
                            s.last_step = Some(Instant::now());
                        });
                    }
                    Err(e) => {
                        errors.inc();
                        tracing::warn!(worker = %worker.name(), error = %e, retry_in = ?backoff, "a worker step failed");
                        note(&seen, &|s| {
                            s.steps += 1;
                            s.errors += 1;
                            s.last_error = Some(e.clone());
                            s.status.clone_from(&status);
                            s.last_step = Some(Instant::now());
                        });
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            _ = stop.wait_for(|s| *s) => break,
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        next = Next::Busy;
                    }
                }
            }
            note(&seen, &|s| s.state = "done");
            tracing::debug!(worker = %worker.name(), "worker stopped");
        });
    }

    /// Stops every worker at its next await.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Every worker as last seen, by name.
    pub fn views(&self) -> Vec<WorkerView> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter()
            .map(|(name, s)| WorkerView {
                name: name.clone(),
                state: s.state.into(),
                status: s.status.clone(),
                steps: s.steps,
                errors: s.errors,
                last_error: s.last_error.clone(),
                last_step_ms_ago: s.last_step.map(|t| t.elapsed().as_millis() as u64),
            })
            .collect()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts down from `left`, failing once at `fail_at`, and is idle between items it is sent.
    struct Countdown {
        left: u32,
        fail_at: Option<u32>,
        more: tokio::sync::mpsc::Receiver<u32>,
    }

    impl Worker for Countdown {
        fn name(&self) -> String {
            "countdown".into()
        }
        fn status(&self) -> String {
            format!("{} left", self.left)
        }
        async fn step(&mut self) -> Result<Next, String> {
            if self.fail_at == Some(self.left) {
                self.fail_at = None;
                return Err(format!("failed at {}", self.left));
            }
            self.left = self.left.saturating_sub(1);
            Ok(if self.left == 0 { Next::Idle } else { Next::Busy })
        }
        async fn wait(&mut self) -> Next {
            match self.more.recv().await {
                Some(n) => {
                    self.left += n;
                    Next::Busy
                }
                None => Next::Done,
            }
        }
    }

    async fn until(workers: &Workers, f: impl Fn(&WorkerView) -> bool) -> WorkerView {
        for _ in 0..500 {
            if let Some(v) = workers.views().into_iter().find(|v| f(v)) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never reached: {:?}", workers.views());
    }

    #[tokio::test]
    async fn a_worker_steps_while_busy_waits_when_idle_and_is_retried_after_an_error() {
        let workers = Workers::new(&Registry::new(), "c", 1).unwrap();
        let (tx, more) = tokio::sync::mpsc::channel(4);
        workers.spawn(Countdown { left: 0, fail_at: Some(2), more });
        let idle = until(&workers, |v| v.state == "idle").await;
        assert_eq!((idle.steps, idle.errors), (0, 0), "nothing to do yet");

        tx.send(3).await.unwrap();
        let v = until(&workers, |v| v.steps == 4 && v.state == "idle").await;
        assert_eq!(v.errors, 1, "the failed step is counted and stepped again");
        assert_eq!(v.last_error.as_deref(), Some("failed at 2"));
        assert_eq!(v.status, "0 left");

        drop(tx);
        until(&workers, |v| v.state == "done").await;
    }

    #[tokio::test]
    async fn stopping_the_workers_ends_a_waiting_worker() {
        let workers = Workers::new(&Registry::new(), "c", 1).unwrap();
        let (_tx, more) = tokio::sync::mpsc::channel(4);
        workers.spawn(Countdown { left: 0, fail_at: None, more });
        until(&workers, |v| v.state == "idle").await;
        workers.stop();
        until(&workers, |v| v.state == "done").await;
    }
}
