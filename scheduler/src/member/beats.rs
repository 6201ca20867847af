//! Heartbeats a follower forwards to the leader, gathered. Leases live on the leader, so a follower passes every
//! beat an agent sends it on; one call per beat had hundreds of calls in flight at once with 10,000 agents, each
//! wanting a stream connection of its own. Instead beats queue here and one worker sends them: while its call
//! is on the way the next beats gather, and go together in the following call (a group commit, as the proposers
//! do with writes). The leader renews a batch under one look at its state.
//!
//! A leader of the previous version does not know the batched call and drops the connection; the beats of a
//! batch that failed so are then sent one call each, as that version expects.

use futures_util::StreamExt;

use super::*;

/// Most beats in one call to the leader.
const MAX_BATCH: usize = 4_096;
/// Calls in flight at once when beats go one by one.
const ONE_BY_ONE: usize = 16;
/// Beats waiting for the forwarder; past this a beat is refused at once (the agent retries after its pause).
const QUEUE: usize = 65_536;

type Reply = oneshot::Sender<Result<Lease, ApiError>>;

struct Waiting {
    agent: String,
    beat: Heartbeat,
    reply: Reply,
    deadline: tokio::time::Instant,
}

/// Where the API queues a beat for the leader.
pub(super) struct Beats {
    tx: mpsc::Sender<Waiting>,
}

impl Beats {
    /// The queue and the worker that empties it.
    pub(super) fn new(streams: Streams, proposer: Arc<Proposer>) -> (Beats, BeatForwarder) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Beats { tx }, BeatForwarder { rx, streams, proposer, batch: Vec::new(), forwarded: 0, calls: 0 })
    }

    /// Forwards one agent's beat to the leader with the others waiting, and waits for its answer.
    pub(super) async fn forward(&self, agent: String, beat: Heartbeat, timeout: Duration) -> Result<Lease, ApiError> {
        let (reply, answer) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + timeout;
        self.tx.try_send(Waiting { agent, beat, reply, deadline }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                ApiError::new(ErrorCode::Unavailable, "too many heartbeats waiting for the leader; retry")
            }
            mpsc::error::TrySendError::Closed(_) => shutting_down(),
        })?;
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(shutting_down()),
            Err(_) => {
                Err(ApiError::new(ErrorCode::Unavailable, format!("the leader did not renew the lease in {timeout:?}")))
            }
        }
    }
}

/// The worker that sends the queued beats to the leader.
pub(super) struct BeatForwarder {
    rx: mpsc::Receiver<Waiting>,
    streams: Streams,
    proposer: Arc<Proposer>,
    /// The beats taken by `wait`, sent by `step`.
    batch: Vec<Waiting>,
    forwarded: u64,
    calls: u64,
}

impl Worker for BeatForwarder {
    fn name(&self) -> String {
        "heartbeats".into()
    }

    fn status(&self) -> String {
        format!("{} heartbeats forwarded to the leader in {} calls", self.forwarded, self.calls)
    }

    async fn wait(&mut self) -> Next {
        match self.rx.recv().await {
            Some(w) => self.batch.push(w),
            None => return Next::Done,
        }
        while self.batch.len() < MAX_BATCH {
            match self.rx.try_recv() {
                Ok(w) => self.batch.push(w),
                Err(_) => break,
            }
        }
        Next::Busy
    }

    async fn step(&mut self) -> Result<Next, String> {
        let now = tokio::time::Instant::now();
        // Beats whose agents stopped waiting are not sent: the agent beats again.
        let batch: Vec<Waiting> =
            std::mem::take(&mut self.batch).into_iter().filter(|w| w.deadline > now && !w.reply.is_closed()).collect();
        let Some(deadline) = batch.iter().map(|w| w.deadline).max() else { return Ok(Next::Idle) };
        let Some((leader, addr)) = self.proposer.leader_elsewhere() else {
            for w in batch {
                let _ = w.reply.send(Err(ApiError::new(ErrorCode::NotLeader, "leadership moved; beat again")));
            }
            return Ok(Next::Idle);
        };
        let timeout = deadline.saturating_duration_since(now);
        let (beats, replies): (Vec<(String, Heartbeat)>, Vec<Reply>) =
            batch.into_iter().map(|w| ((w.agent, w.beat), w.reply)).unzip();
        self.forwarded += beats.len() as u64;
        self.calls += 1;
        let call = ToLeader::Heartbeats(beats);
        match call_leader(&self.streams, &leader, &addr, &call, timeout).await.and_then(FromLeader::leases) {
            Ok(leases) if leases.len() == replies.len() => {
                for (reply, lease) in replies.into_iter().zip(leases) {
                    let _ = reply.send(lease);
                }
            }
            Ok(leases) => {
                let e = ApiError::internal(format!("{} leases for {} heartbeats", leases.len(), replies.len()));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                // Perhaps a leader of the previous version: if it renews the first beat alone, the others follow one
                // call each (a few at a time); if not, the leader is not there and they all fail.
                tracing::debug!(error = %e, "batched heartbeats failed; trying them one by one");
                let ToLeader::Heartbeats(beats) = call else { unreachable!("built above") };
                let one = |(agent, beat): (String, Heartbeat)| {
                    let (streams, leader, addr) = (&self.streams, &leader, &addr);
                    async move {
                        let call = ToLeader::Heartbeat { agent, beat };
                        call_leader(streams, leader, addr, &call, timeout).await.and_then(FromLeader::lease)
                    }
                };
                let mut beats = beats.into_iter();
                let mut replies = replies.into_iter();
                let (Some(first), Some(reply)) = (beats.next(), replies.next()) else { return Ok(Next::Idle) };
                let answer = one(first).await;
                self.calls += 1;
                let alone = answer.is_ok();
                let _ = reply.send(answer);
                if !alone {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                    return Ok(Next::Idle);
                }
                let answers: Vec<Result<Lease, ApiError>> =
                    futures_util::stream::iter(beats.map(one)).buffered(ONE_BY_ONE).collect().await;
                self.calls += answers.len() as u64;
                for (reply, answer) in replies.zip(answers) {
                    let _ = reply.send(answer);
                }
            }
        }
        Ok(Next::Idle)
    }
}
