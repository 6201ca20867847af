//! How a write is committed: queued and batched (up to `MAX_BATCH` commands an entry), proposed here when this
//! member leads and forwarded over the kept Raft stream when another does, and answered per command within its
//! deadline.

use super::*;

/// One answer per command of a proposal.
pub(super) type Answers = Vec<Result<Response, ApiError>>;

/// The answer of the internal propose route.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Proposed {
    Answered(Answers),
    /// This member is not the leader (any more); the leader it knows, if any.
    NotLeader(Option<String>),
}

/// How a forwarded write ended.
pub(super) enum Forwarded {
    Answered(Answers),
    /// Never delivered, or refused before proposing: safe to try again.
    Retry,
    /// Delivered but unanswered: it may or may not be committed.
    Unknown(String),
    /// Unanswered when the write's deadline came: it may still commit.
    TimedOut,
}

/// Most commands in one proposal.
pub const MAX_BATCH: usize = 512;
/// Proposals in flight at once from one member.
pub(super) const PROPOSERS: usize = 2;

/// Where one command's answer goes.
pub(super) type Reply = oneshot::Sender<Result<Response, ApiError>>;

/// A command queued for this member's proposers.
pub(super) struct Waiter {
    cmd: Command,
    answer: Reply,
    /// When whoever waits for the answer gives up (the write's deadline).
    deadline: tokio::time::Instant,
}

/// What commits writes: the queue to this member's proposers, and the way to the leader. Shared by the API, the
/// proposer workers and the scheduler worker (through `Handle`).
pub(crate) struct Proposer {
    queue: mpsc::Sender<Waiter>,
    /// Proposals this member has in flight, from its proposers or proposed directly (see `commit`).
    pub(super) proposing: Arc<AtomicUsize>,
    raft: Raft,
    /// Kept connections to the other members, shared with Raft: write forwarding goes over them too.
    streams: Streams,
    node_id: NodeId,
    write_timeout_ms: u64,
    metrics: CellMetrics,
}

impl Proposer {
    pub(super) fn new(
        raft: Raft,
        streams: Streams,
        proposing: Arc<AtomicUsize>,
        config: &CellConfig,
        metrics: CellMetrics,
    ) -> (Proposer, mpsc::Receiver<Waiter>) {
        let (queue, rx) = mpsc::channel(MAX_BATCH * PROPOSERS * 4);
        let proposer = Proposer {
            queue,
            proposing,
            raft,
            streams,
            node_id: config.node_id,
            write_timeout_ms: config.raft.write_timeout_ms,
            metrics,
        };
        (proposer, rx)
    }

    /// Commits the scheduler's own commands. A round that timed out may still commit, and the next round, decided
    /// on a state without it, would create the same tasks again under new ids: so after a timeout this waits until
    /// the member has applied every entry it holds or no longer leads (the entry is then committed or gone) before
    /// the scheduler may decide again.
    pub(crate) async fn commit_command(&self, cmd: Command) -> Result<Response, ApiError> {
        let answer = self.commit(cmd).await;
        if matches!(&answer, Err(e) if e.code == ErrorCode::Timeout) {
            self.settle().await;
        }
        answer
    }

    /// Waits until this member has applied its whole log, or does not lead, or shuts down.
    pub(crate) async fn settle(&self) {
        let mut changes = self.raft.metrics();
        let held = changes.borrow().last_log_index;
        tracing::info!(last_log_index = ?held, "a scheduler write timed out; waiting for it to settle");
        loop {
            {
                let m = changes.borrow_and_update();
                let applied = m.last_applied.map(|l| l.index);
                if applied >= held || m.current_leader != Some(self.node_id) {
                    return;
                }
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// When a write that starts now must be answered.
    pub(crate) fn write_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(self.write_timeout_ms)
    }

    /// Counts the commands answered `timeout`, by kind.
    pub(crate) fn count_timeouts<'a>(
        &self,
        answered: impl IntoIterator<Item = (&'static str, &'a Result<Response, ApiError>)>,
    ) {
        for (kind, answer) in answered {
            if matches!(answer, Err(e) if e.code == ErrorCode::Timeout) {
                self.metrics.timed_out.with_label_values(&[kind]).inc();
                tracing::warn!(kind, timeout_ms = self.write_timeout_ms, "a write timed out");
            }
        }
    }

    /// Commits a command, batched with whatever else is waiting and through the leader wherever it is, and answers
    /// within `raft.write_timeout_ms` (`timeout` when it could not tell). With no proposal in flight nothing would
    /// join it in a batch, so it is proposed right here, sparing the hand-off to a proposer task and back (two task
    /// wake-ups, each a thread wake-up on an idle machine).
    pub(crate) async fn commit(&self, cmd: Command) -> Result<Response, ApiError> {
        let kind = command_kind(&cmd);
        let deadline = self.write_deadline();
        let answer = match Proposing::first(&self.proposing) {
            Some(_proposing) => {
                self.metrics.batch_size.observe(1.0);
                self.propose(vec![cmd], deadline)
                    .await
                    .and_then(|mut a| a.pop().unwrap_or_else(|| Err(shutting_down())))
            }
            None => self.enqueue(vec![cmd], deadline).await.pop().unwrap_or_else(|| Err(shutting_down())),
        };
        self.count_timeouts([(kind, &answer)]);
        answer
    }

    /// Commits `cmds` as one entry, here when this member leads and through the leader otherwise, and answers each
    /// by `deadline`: Raft here, or the leader, may wait for a quorum forever, and nobody waits for the answer after
    /// it.
    pub(crate) async fn propose(
        &self,
        cmds: Vec<Command>,
        deadline: tokio::time::Instant,
    ) -> Result<Answers, ApiError> {
        let n = cmds.len();
        // Made once and shared: a retry, or a forward to the leader, copies nothing.
        let proposal = Arc::new(match <[Command; 1]>::try_from(cmds) {
            Ok([one]) => one,
            Err(cmds) => Command::Batch(cmds),
        });
        let cmds = match proposal.as_ref() {
            Command::Batch(cmds) => cmds.as_slice(),
            one => std::slice::from_ref(one),
        };
        loop {
            let start = Instant::now();
            // A member that knows another leads sends the commands straight there: its own Raft would only answer
            // that it does not lead (a round trip to its Raft task for every forwarded batch).
            let leader = match self.leader_elsewhere() {
                Some(leader) => Some(leader),
                // Dropping the write on timeout only drops its answer: Raft here keeps the entry, which commits
                // once a quorum is back (or is replaced by a new leader's log).
                None => match tokio::time::timeout_at(deadline, self.raft.client_write(proposal.clone()))
                    .await
                    .map_err(|_| timed_out(self.write_timeout_ms))?
                {
                    Ok(r) => {
                        self.metrics.commit_latency.observe(start.elapsed().as_secs_f64());
                        return unbatch(r.data, n);
                    }
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => f
                        .leader_node
                        .filter(|_| f.leader_id != Some(self.node_id))
                        .map(|node| (f.leader_id.map(|l| l.to_string()).unwrap_or_default(), node.addr)),
                    Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                        return Err(ApiError::internal(e.to_string()))
                    }
                    Err(RaftError::Fatal(e)) => return Err(ApiError::new(ErrorCode::Unavailable, e.to_string())),
                },
            };
            if let Some((leader, addr)) = leader {
                self.metrics.forwarded.inc_by(n as u64);
                match self.forward(&leader, &addr, cmds, deadline).await {
                    Forwarded::Answered(a) if a.len() == n => return Ok(a),
                    Forwarded::Answered(a) => {
                        return Err(ApiError::internal(format!("{} answers for {n} commands", a.len())))
                    }
                    Forwarded::Retry => {}
                    Forwarded::TimedOut => return Err(timed_out(self.write_timeout_ms)),
                    Forwarded::Unknown(e) => {
                        return Err(ApiError::new(
                            ErrorCode::Unavailable,
                            format!("the leader did not answer, the change may or may not be applied: {e}"),
                        ))
                    }
                }
            }
            // Every attempt so far was refused before anything was proposed, so nothing can commit later: checked
            // after the pause too, so that the last try is not one made with no time left (which would answer
            // `timeout`, as if something might still commit).
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + Duration::from_millis(50))).await;
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::new(ErrorCode::NotLeader, "no leader could commit the change in time"));
            }
        }
    }

    /// The leader and its address, when Raft here knows that another member leads.
    pub(crate) fn leader_elsewhere(&self) -> Option<(String, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader.filter(|l| *l != self.node_id)?;
        let addr = m.membership_config.membership().get_node(&leader)?.addr.clone();
        Some((leader.to_string(), addr))
    }

    /// Sends `cmds` to the leader (member `leader` at `addr`) over a kept stream connection, waiting for its
    /// answer until `deadline`.
    pub(super) async fn forward(
        &self,
        leader: &str,
        addr: &str,
        cmds: &[Command],
        deadline: tokio::time::Instant,
    ) -> Forwarded {
        let body = match codec::encode(cmds) {
            Ok(b) => b,
            Err(e) => return Forwarded::Unknown(e.to_string()),
        };
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        let bytes = match self.streams.call(leader, addr, PROPOSE, &body, timeout).await {
            Ok(b) => b,
            Err(e) if e.never_sent() => return Forwarded::Retry,
            Err(_) if tokio::time::Instant::now() >= deadline => return Forwarded::TimedOut,
            Err(e) => return Forwarded::Unknown(e.to_string()),
        };
        match codec::decode::<Proposed>(&bytes) {
            Ok(Proposed::Answered(a)) => Forwarded::Answered(a),
            Ok(Proposed::NotLeader(_)) => Forwarded::Retry,
            Err(e) => Forwarded::Unknown(e.to_string()),
        }
    }

    /// Queues commands for this member's proposers and waits for each answer until `deadline`; those unanswered
    /// then are answered `timeout` (a proposer still holding one finds its answer unwanted and moves on).
    pub(crate) async fn enqueue(&self, cmds: Vec<Command>, deadline: tokio::time::Instant) -> Answers {
        let n = cmds.len();
        let mut answers = Vec::with_capacity(n);
        let waited = tokio::time::timeout_at(deadline, async {
            let mut waiting = Vec::with_capacity(n);
            for cmd in cmds {
                let (answer, rx) = oneshot::channel();
                // A full queue waits here, under the same deadline.
                let queued = self.queue.send(Waiter { cmd, answer, deadline }).await.is_ok();
                waiting.push(queued.then_some(rx));
            }
            for rx in waiting {
                let answer = match rx {
                    Some(rx) => rx.await.unwrap_or_else(|_| Err(shutting_down())),
                    None => Err(shutting_down()),
                };
                answers.push(answer);
            }
        })
        .await;
        if waited.is_err() {
            answers.resize_with(n, || Err(timed_out(self.write_timeout_ms)));
        }
        answers
    }
}

/// A proposal in flight, counted while it lives (a dropped request future included).
pub(super) struct Proposing(pub(super) Arc<AtomicUsize>);

impl Proposing {
    pub(super) fn new(count: &Arc<AtomicUsize>) -> Proposing {
        count.fetch_add(1, Ordering::AcqRel);
        Proposing(count.clone())
    }

    /// Counts a proposal only when it is the only one.
    pub(super) fn first(count: &Arc<AtomicUsize>) -> Option<Proposing> {
        count.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).ok().map(|_| Proposing(count.clone()))
    }
}

impl Drop for Proposing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One proposer: takes every command waiting (up to `MAX_BATCH`), commits them as one entry, answers each.
pub(super) struct ProposerWorker {
    pub(super) n: usize,
    pub(super) proposer: Arc<Proposer>,
    pub(super) rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Waiter>>>,
    /// The waiters taken by `wait`, proposed by `step`.
    pub(super) batch: Vec<Waiter>,
    pub(super) proposed: u64,
}

impl Worker for ProposerWorker {
    fn name(&self) -> String {
        format!("proposer-{}", self.n)
    }

    fn status(&self) -> String {
        format!("{} commands proposed", self.proposed)
    }

    async fn wait(&mut self) -> Next {
        let mut rx = self.rx.lock().await;
        match rx.recv().await {
            Some(w) => self.batch.push(w),
            None => return Next::Done,
        }
        while self.batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => self.batch.push(w),
                Err(_) => break,
            }
        }
        Next::Busy
    }

    async fn step(&mut self) -> Result<Next, String> {
        let Some(Live { cmds, answers, deadline, abandoned }) = live(std::mem::take(&mut self.batch)) else {
            tracing::debug!("every queued write of a batch timed out before it was proposed");
            return Ok(Next::Idle);
        };
        if abandoned > 0 {
            tracing::debug!(abandoned, "queued writes timed out before they were proposed");
        }
        let proposer = &self.proposer;
        let _proposing = Proposing::new(&proposer.proposing);
        proposer.metrics.batch_size.observe(cmds.len() as f64);
        self.proposed += cmds.len() as u64;
        // An answer nobody waits for any more (its request timed out or went away) is dropped, never an error.
        match proposer.propose(cmds, deadline).await {
            Ok(results) => {
                for (tx, a) in answers.into_iter().zip(results) {
                    let _ = tx.send(a);
                }
            }
            Err(e) => {
                for tx in answers {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
        Ok(Next::Idle)
    }
}

/// What a proposer commits of the waiters it took.
pub(super) struct Live {
    cmds: Vec<Command>,
    answers: Vec<Reply>,
    /// The latest of their deadlines: past it nobody waits for the proposal.
    deadline: tokio::time::Instant,
    /// Waiters left out because they had given up.
    abandoned: usize,
}

/// The waiters of a batch still waiting; `None` when none is. One that gave up was answered `timeout` (or its
/// request went away), so proposing it would only commit a change late that its caller may already be retrying.
pub(super) fn live(batch: Vec<Waiter>) -> Option<Live> {
    let taken = batch.len();
    let waiting: Vec<Waiter> = batch.into_iter().filter(|w| !w.answer.is_closed()).collect();
    let deadline = waiting.iter().map(|w| w.deadline).max()?;
    let abandoned = taken - waiting.len();
    let (cmds, answers) = waiting.into_iter().map(|w| (w.cmd, w.answer)).unzip();
    Some(Live { cmds, answers, deadline, abandoned })
}

/// The answer to a write not confirmed by its deadline.
pub(super) fn timed_out(timeout_ms: u64) -> ApiError {
    ApiError::new(
        ErrorCode::Timeout,
        format!(
            "the write was not committed within {timeout_ms} ms (no quorum?); it may still commit, so retry it with \
             the same Idempotency-Key, which is safe: it cannot make a second job"
        ),
    )
}

/// A command's kind, for metrics and logs.
pub(super) fn command_kind(cmd: &Command) -> &'static str {
    match cmd {
        Command::PutJob { .. } => "put_job",
        Command::UpdateJob { .. } => "update_job",
        Command::SetInstances { .. } => "set_instances",
        Command::SetEnabled { .. } => "set_enabled",
        Command::KillJob { .. } => "kill_job",
        Command::Batch(_) => "batch",
        Command::RegisterAgent { .. } => "register_agent",
        Command::Round { .. } => "round",
        Command::TaskStatuses { .. } => "task_statuses",
        Command::KillTask { .. } => "kill_task",
        Command::SetAgentState { .. } => "set_agent_state",
        Command::Merge { .. } => "merge",
        Command::PutQuota { .. } => "put_quota",
        Command::DeleteQuota { .. } => "delete_quota",
        Command::Lever { .. } => "lever",
        Command::Fleet { .. } => "fleet",
        Command::PutToken { .. } => "put_token",
        Command::RevokeToken { .. } => "revoke_token",
    }
}

pub(super) fn shutting_down() -> ApiError {
    ApiError::new(ErrorCode::Unavailable, "the member is shutting down")
}

/// Splits the state machine's answer to a proposal of `n` commands into one answer per command.
pub(super) fn unbatch(r: Response, n: usize) -> Result<Answers, ApiError> {
    match r {
        Response::Batch(answers) if answers.len() == n => Ok(answers.into_iter().map(Ok).collect()),
        one if n == 1 => Ok(vec![Ok(one)]),
        other => Err(ApiError::internal(format!("a batch of {n} got the answer {other:?}"))),
    }
}

/// Takes the commands followers forward over the Raft stream.
pub(super) struct ProposeHere(pub(super) Arc<Proposer>);

impl ProposeHere {
    /// When this member leads, forwarded commands join its own queue, so they are committed in the same entries as
    /// its local writes rather than one entry per forwarded batch.
    pub(super) async fn propose(&self, body: Vec<u8>) -> std::io::Result<Vec<u8>> {
        let proposer = &self.0;
        let cmds: Vec<Command> = codec::decode(&body).map_err(std::io::Error::other)?;
        let leads = proposer.raft.metrics().borrow().current_leader == Some(proposer.node_id);
        let answer = if leads {
            // The follower gives up at its own deadline, which came first; this one frees the stream (it answers
            // nothing else until then) and the queue's waiters.
            let kinds: Vec<&'static str> = cmds.iter().map(command_kind).collect();
            let answers = proposer.enqueue(cmds, proposer.write_deadline()).await;
            proposer.count_timeouts(kinds.into_iter().zip(&answers));
            Proposed::Answered(answers)
        } else {
            Proposed::NotLeader(proposer.leader_elsewhere().map(|(_, addr)| addr))
        };
        codec::encode(&answer).map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_proposed_directly_only_when_nothing_else_is_in_flight() {
        let count = Arc::new(AtomicUsize::new(0));
        let direct = Proposing::first(&count).expect("nothing in flight");
        assert!(Proposing::first(&count).is_none(), "a second one joins the queue");
        drop(direct);
        let batch = Proposing::new(&count);
        assert!(Proposing::first(&count).is_none(), "a proposer's batch is in flight");
        let another = Proposing::new(&count);
        assert_eq!(count.load(Ordering::Acquire), 2);
        drop((batch, another));
        assert!(Proposing::first(&count).is_some(), "a dropped proposal no longer counts");
    }

    /// A waiter for task kill `id` whose caller gives up `after_ms` from `now`, and the end its caller holds.
    fn waiter(
        id: &str,
        now: tokio::time::Instant,
        after_ms: u64,
    ) -> (Waiter, oneshot::Receiver<Result<Response, ApiError>>) {
        let meta = Meta { who: "test".into(), why: None, at_ms: 0, request: id.into(), cell: String::new() };
        let (answer, rx) = oneshot::channel();
        (
            Waiter {
                cmd: Command::KillTask { id: id.into(), meta },
                answer,
                deadline: now + Duration::from_millis(after_ms),
            },
            rx,
        )
    }

    fn ids(cmds: &[Command]) -> Vec<&str> {
        cmds.iter()
            .map(|c| match c {
                Command::KillTask { id, .. } => id.as_str(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_batch_leaves_out_waiters_that_gave_up_and_waits_as_long_as_the_latest_one() {
        let now = tokio::time::Instant::now();
        let (a, _a) = waiter("a", now, 100);
        let (b, b_rx) = waiter("b", now, 900);
        let (c, _c) = waiter("c", now, 300);
        drop(b_rx);
        let batch = live(vec![a, b, c]).expect("two still wait");
        assert_eq!(ids(&batch.cmds), ["a", "c"]);
        assert_eq!(batch.answers.len(), 2);
        assert_eq!(batch.deadline, now + Duration::from_millis(300), "b's later deadline no longer counts");
        assert_eq!(batch.abandoned, 1);

        let (d, d_rx) = waiter("d", now, 100);
        drop(d_rx);
        assert!(live(vec![d]).is_none(), "nothing to propose when every waiter gave up");
        assert!(live(vec![]).is_none());
    }

    #[test]
    fn a_timed_out_write_is_a_503_that_says_it_may_still_commit_and_how_to_retry() {
        let e = timed_out(1_500);
        assert_eq!((e.code, e.status().as_u16()), (ErrorCode::Timeout, 503));
        assert!(e.message.contains("within 1500 ms"), "{}", e.message);
        assert!(e.message.contains("may still commit"), "{}", e.message);
        assert!(e.message.contains("same Idempotency-Key"), "{}", e.message);
    }
}
