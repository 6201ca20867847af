//! Kept stream connections between members: the pool, the frames, calls with their metrics, and what each
//! peer's answers say about it (when it last answered, whether it told this member to stand down).
//!
//! A member opens a connection to a peer with an HTTP/1.1 upgrade (`GET /internal/raft/stream`, `Upgrade:
//! titan-raft`), the way WebSockets and etcd's Raft streams start, and then keeps it: each call is one frame out
//! and one frame back on it, so a call costs two small writes and no HTTP request parsing, URL handling or pool
//! checkout. Idle connections are kept per peer and reused by whichever replication stream, vote or call to the
//! leader needs one.
//!
//! ```text
//! request   length (u32 LE) | kind (u8) | body     kind: 1 append entries, 2 vote, 3 install snapshot,
//!                                                        4 writes a follower forwards to the leader,
//!                                                        5 any other call of a member to its leader
//! answer    length (u32 LE) | body                 length counts what follows it
//! ```
//!
//! With `[tls]` the connection is TLS first, this member presenting its certificate (mutual TLS), and the upgrade
//! travels inside it.
//!
//! Bodies are `codec` (MessagePack). A connection that fails, times out or is abandoned in the middle of a call is
//! dropped, never reused. Failures are counted per peer and warned about at most once per peer per
//! `membership::WARN_EVERY`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::error::{NetworkError, RPCError, Unreachable};
use openraft::BasicNode;
use prometheus::{HistogramVec, IntCounter, IntCounterVec, Registry};
use titan_api::tls::{ClientTls, PeerStream};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::{membership, NodeId, Raft};

/// The largest frame: a batch of log entries or one snapshot chunk.
pub const MAX_INTERNAL_BODY: usize = 64 * 1024 * 1024;
/// The route a member upgrades to a Raft stream.
pub const STREAM_PATH: &str = "/internal/raft/stream";
/// The header naming the member a Raft stream is for. A member refuses a stream meant for another id, which is
/// what a member added under a second id at an address that already serves one would get: taking it would have
/// the member answer Raft calls to itself (openraft panics on that) or vote twice.
pub(super) const NODE_HEADER: &str = "x-titan-raft-node";
/// The protocol named in the `Upgrade` header.
pub(super) const PROTOCOL: &str = "titan-raft";
/// Idle connections kept per peer: one per replication stream, plus a few for votes, leadership checks and
/// forwarded writes (two proposers and one direct proposal at most).
const IDLE_PER_PEER: usize = 4;

pub(super) const APPEND: u8 = 1;
pub(super) const VOTE: u8 = 2;
pub(super) const SNAPSHOT: u8 = 3;
/// Writes a follower forwards to the leader; the body and answer are the member's (`Leader::propose`).
pub const PROPOSE: u8 = 4;
/// Any other call a member makes of its leader; the body and answer are the member's (`Leader::call`).
pub const LEADER: u8 = 5;

pub(super) fn rpc_name(kind: u8) -> &'static str {
    match kind {
        APPEND => "append",
        VOTE => "vote",
        SNAPSHOT => "snapshot",
        PROPOSE => "propose",
        LEADER => "leader",
        _ => "unknown",
    }
}

/// Metrics of the Raft transport.
#[derive(Clone)]
pub struct NetworkMetrics {
    pub(super) rpc_seconds: HistogramVec,
    pub(super) answer_seconds: HistogramVec,
    pub(super) connects: IntCounterVec,
    pub(super) failures: IntCounterVec,
    pub(super) early: IntCounterVec,
    pub(super) early_answers_used: IntCounter,
}

impl NetworkMetrics {
    pub fn new(registry: &Registry, cell: &str, node: u64) -> Result<NetworkMetrics, prometheus::Error> {
        use crate::metrics::raft::*;
        let r = crate::metrics::registrar(registry, cell, node);
        Ok(NetworkMetrics {
            rpc_seconds: r.histogram_vec(&RPC_SECONDS)?,
            answer_seconds: r.histogram_vec(&ANSWER_SECONDS)?,
            connects: r.counter_vec(&PEER_CONNECTS)?,
            failures: r.counter_vec(&RPC_FAILURES)?,
            early: r.counter_vec(&EARLY_APPENDS)?,
            early_answers_used: r.counter(&EARLY_ANSWERS_USED)?,
        })
    }
}

/// One upgraded connection to a peer, between calls.
struct Conn {
    io: BufReader<PeerStream>,
}

/// Idle connections by peer address.
#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<String, Vec<Conn>>>,
}

impl Conn {
    /// Whether the peer still holds its end: between calls nothing may be waiting to be read, so anything readable
    /// (end of stream, an error, stray bytes) means the connection is of no further use. A peer that restarted has
    /// closed every connection to its old process, and a call on one would fail after it was sent, when the caller
    /// can no longer tell whether it arrived. The probe is a read that must find nothing to return yet: over TLS,
    /// records that carry no data (session tickets) are consumed by it without making the connection unusable.
    fn is_live(&mut self) -> bool {
        if !self.io.buffer().is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut probe);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::pin::Pin::new(self.io.get_mut()).poll_read(&mut cx, &mut buf).is_pending()
    }
}

impl Pool {
    /// An idle connection to `addr` that is still open, dropping any the peer has closed.
    fn take(&self, addr: &str) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.get_mut(addr)?;
        while let Some(mut conn) = conns.pop() {
            if conn.is_live() {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, addr: &str, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.entry(addr.to_string()).or_default();
        if conns.len() < IDLE_PER_PEER {
            conns.push(conn);
        }
    }
}

/// Kept stream connections to peers, shared by Raft's replication streams, its votes and write forwarding.
#[derive(Clone)]
pub struct Streams {
    pool: Arc<Pool>,
    /// The latest early append to each peer address, and its answer once read.
    early: Arc<Mutex<HashMap<String, EarlyAppend>>>,
    /// What each peer (by id, as the metrics label it) last did: when it last answered, and its failed calls.
    peers: Arc<Mutex<HashMap<String, PeerHealth>>>,
    pub(super) stand_down: Arc<StandDown>,
    metrics: NetworkMetrics,
    /// This member's TLS as a client, when `[tls]` is set.
    tls: Option<ClientTls>,
}

/// One peer as this member's calls found it.
#[derive(Default)]
struct PeerHealth {
    answered: Option<Instant>,
    failures: membership::FailureLog,
}

/// This member's Raft, once it exists, and the membership (its log id) in which a peer told this member it is no
/// member of the cell: from then until a newer membership lists it as a voter again, it does not campaign.
#[derive(Default)]
pub(super) struct StandDown {
    raft: std::sync::OnceLock<Raft>,
    at: Mutex<Option<Option<openraft::LogId<NodeId>>>>,
}

impl StandDown {
    /// A peer whose membership as of `theirs` has no place for this member refused its vote request.
    pub(super) fn told_not_a_member(&self, by: NodeId, theirs: Option<openraft::LogId<NodeId>>) {
        let Some(raft) = self.raft.get() else { return };
        let ours = *raft.metrics().borrow().membership_config.log_id();
        if !membership::stands_down(ours, theirs) {
            return;
        }
        let mut at = self.at.lock().unwrap_or_else(|p| p.into_inner());
        if at.is_none() {
            tracing::warn!(peer = by, membership = ?theirs, "member {by} says this member is not in the cell's \
                membership; it stands down and no longer campaigns until it is added again");
        }
        *at = Some(ours);
        raft.runtime_config().elect(false);
    }

    /// After an append from a leader: campaigns again when a newer membership lists this member as a voter.
    pub(super) fn check_rejoined(&self) {
        let mut at = self.at.lock().unwrap_or_else(|p| p.into_inner());
        let (Some(stood_down), Some(raft)) = (*at, self.raft.get()) else { return };
        let (now, is_voter) = {
            let m = raft.metrics();
            let m = m.borrow();
            (*m.membership_config.log_id(), m.membership_config.membership().voter_ids().any(|v| v == m.id))
        };
        if membership::rejoins(stood_down, now, is_voter) {
            tracing::info!(membership = ?now, "this member is a voter again; it campaigns when the leader is lost");
            *at = None;
            raft.runtime_config().elect(true);
        }
    }
}

/// An append sent early (`EarlyReplication`): its bytes, and the answer the peer gives them.
struct EarlyAppend {
    body: Vec<u8>,
    answer: tokio::sync::oneshot::Receiver<Vec<u8>>,
}

impl Streams {
    /// Connections made with `tls` when given (mutual TLS), plain TCP otherwise.
    pub fn new(metrics: NetworkMetrics, tls: Option<ClientTls>) -> Streams {
        Streams {
            pool: Arc::default(),
            early: Arc::default(),
            peers: Arc::default(),
            stand_down: Arc::default(),
            metrics,
            tls,
        }
    }

    /// Gives the network this member's Raft, once it exists, so a member told it was removed can stand down.
    pub fn attach(&self, raft: Raft) {
        let _ = self.stand_down.raft.set(raft);
    }

    /// The peers (by id) that answered a call from this member within `within` and failed none since.
    pub fn answered_within(&self, within: std::time::Duration) -> std::collections::BTreeSet<NodeId> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .iter()
            .filter(|(_, h)| h.failures.streak() == 0 && h.answered.is_some_and(|at| at.elapsed() <= within))
            .filter_map(|(id, _)| id.parse().ok())
            .collect()
    }

    /// Notes how a call to `target` at `addr` ended: when it last answered, and a warning for failures, at most one
    /// per `membership::WARN_EVERY` with a count of those not reported.
    fn note(&self, target: &str, addr: &str, kind: u8, result: &Result<Vec<u8>, CallError>) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let health = peers.entry(target.to_string()).or_default();
        match result {
            Ok(_) => {
                health.answered = Some(Instant::now());
                let failed = health.failures.answered();
                if failed > 0 {
                    tracing::info!(peer = target, addr, failed, "peer answers again");
                }
            }
            Err(e) => {
                if let Some(suppressed) = health.failures.failed(Instant::now()) {
                    tracing::warn!(peer = target, addr, rpc = rpc_name(kind), error = %e, suppressed,
                        "peer did not answer (further failures are reported at most every {:?})",
                        membership::WARN_EVERY);
                }
            }
        }
    }

    pub fn metrics(&self) -> &NetworkMetrics {
        &self.metrics
    }

    /// One call of `kind` to the member at `addr`: a connection from the pool (or a new one), the request frame,
    /// the answer frame. The connection goes back to the pool only when the call completed, so one dropped in the
    /// middle (timeout, or the caller gave up) is closed instead of carrying a stale answer to the next call.
    async fn exchange(&self, target: &str, addr: &str, kind: u8, body: &[u8]) -> Result<Vec<u8>, CallError> {
        let mut conn = match self.pool.take(addr) {
            Some(c) => c,
            None => {
                let c = connect(target, addr, self.tls.as_ref()).await?;
                self.metrics.connects.with_label_values(&[target]).inc();
                c
            }
        };
        write_frame(conn.io.get_mut(), Some(kind), body).await.map_err(CallError::Io)?;
        let answer = read_frame(&mut conn.io).await.map_err(CallError::Io)?;
        self.pool.put(addr, conn);
        Ok(answer)
    }

    /// Sends an append at once on an idle connection already open, and reads its answer in a task of its own, kept
    /// for `answered_early`. Never connects or waits for a connection: false when none was idle or the frame could
    /// not be written.
    pub(crate) async fn post_append(&self, addr: &str, body: Vec<u8>, timeout: std::time::Duration) -> bool {
        let Some(mut conn) = self.pool.take(addr) else { return false };
        match tokio::time::timeout(timeout, write_frame(conn.io.get_mut(), Some(APPEND), &body)).await {
            Ok(Ok(())) => {}
            _ => return false,
        }
        let (tx, answer) = tokio::sync::oneshot::channel();
        self.early.lock().unwrap_or_else(|p| p.into_inner()).insert(addr.to_string(), EarlyAppend { body, answer });
        let (pool, addr) = (self.pool.clone(), addr.to_string());
        tokio::spawn(async move {
            if let Ok(Ok(answer)) = tokio::time::timeout(timeout, read_frame(&mut conn.io)).await {
                pool.put(&addr, conn);
                let _ = tx.send(answer);
            }
        });
        true
    }

    /// The answer to an early append of exactly `body` to `addr`, once the peer gives it; `None` when there was no
    /// such append or it got no answer. Identical bytes are an identical request (vote, entries, commit), so its
    /// answer is the answer to `body`: sending `body` again would only make the peer check entries it already has.
    pub(super) async fn answered_early(
        &self,
        addr: &str,
        body: &[u8],
        timeout: std::time::Duration,
    ) -> Option<Vec<u8>> {
        let early = {
            let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
            match early.get(addr) {
                Some(e) if e.body == body => early.remove(addr),
                _ => None,
            }
        }?;
        let answer = tokio::time::timeout(timeout, early.answer).await.ok()?.ok()?;
        self.metrics.early_answers_used.inc();
        Some(answer)
    }

    /// Calls `kind` on the member at `addr` within `timeout`, counting it in the metrics under `target`.
    pub(crate) async fn call(
        &self,
        target: &str,
        addr: &str,
        kind: u8,
        body: &[u8],
        timeout: std::time::Duration,
    ) -> Result<Vec<u8>, CallError> {
        let start = Instant::now();
        let result = match tokio::time::timeout(timeout, self.exchange(target, addr, kind, body)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer in {timeout:?}"),
            ))),
        };
        match &result {
            Ok(_) => {
                self.metrics.rpc_seconds.with_label_values(&[rpc_name(kind)]).observe(start.elapsed().as_secs_f64())
            }
            Err(_) => self.metrics.failures.with_label_values(&[target, rpc_name(kind)]).inc(),
        }
        self.note(target, addr, kind, &result);
        result
    }
}

/// Why a call got no answer.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The peer could not be reached at all.
    Connect(std::io::Error),
    /// The connection broke, timed out or carried something unreadable.
    Io(std::io::Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Connect(e) => write!(f, "cannot connect: {e}"),
            CallError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl CallError {
    /// Whether the call certainly never reached the peer.
    pub(crate) fn never_sent(&self) -> bool {
        matches!(self, CallError::Connect(_))
    }

    pub(super) fn into_rpc<E: std::error::Error>(self) -> RPCError<NodeId, BasicNode, E> {
        match self {
            CallError::Connect(e) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Io(e) => RPCError::Network(NetworkError::new(&e)),
        }
    }
}

/// Opens a connection to member `target` at `addr` (TLS with `tls`) and upgrades it to a Raft stream. Every failure
/// here comes before any call was sent, so it is `Connect`: the peer is unreachable, whether nothing listens there,
/// something that does not speak this protocol (an agent, answering 404) does, or its TLS handshake fails (a member
/// whose certificate is not signed by the CA, or one this member's certificate does not satisfy).
async fn connect(target: &str, addr: &str, tls: Option<&ClientTls>) -> Result<Conn, CallError> {
    let stream = PeerStream::connect(addr, tls).await.map_err(CallError::Connect)?;
    let mut io = BufReader::new(stream);
    let hello =
        format!("GET {STREAM_PATH} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: {PROTOCOL}\r\n{NODE_HEADER}: {target}\r\n\r\n");
    io.get_mut().write_all(hello.as_bytes()).await.map_err(CallError::Connect)?;
    let mut status = String::new();
    io.read_line(&mut status).await.map_err(CallError::Connect)?;
    if !status.starts_with("HTTP/1.1 101") {
        return Err(CallError::Connect(std::io::Error::other(format!(
            "{addr} refused the Raft stream: {}",
            status.trim_end()
        ))));
    }
    // The rest of the answer's head, up to its blank line; frames follow only once this side sends one.
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await.map_err(CallError::Connect)? == 0 {
            return Err(CallError::Connect(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if line == "\r\n" {
            return Ok(Conn { io });
        }
    }
}

pub(super) async fn read_frame<R: AsyncRead + Unpin>(io: &mut R) -> std::io::Result<Vec<u8>> {
    let len = io.read_u32_le().await? as usize;
    if len > MAX_INTERNAL_BODY {
        return Err(std::io::Error::other(format!("a frame of {len} bytes is over the {MAX_INTERNAL_BODY} allowed")));
    }
    let mut body = vec![0; len];
    io.read_exact(&mut body).await?;
    Ok(body)
}

/// Writes `[len][prefix][body]` with one write.
pub(super) async fn write_frame<W: AsyncWrite + Unpin>(
    io: &mut W,
    prefix: Option<u8>,
    body: &[u8],
) -> std::io::Result<()> {
    let len = body.len() + usize::from(prefix.is_some());
    let len = u32::try_from(len).map_err(|_| std::io::Error::other(format!("a frame of {len} bytes is too big")))?;
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend(prefix);
    frame.extend_from_slice(body);
    io.write_all(&frame).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use axum::Router;
    use tokio::net::TcpStream;

    use super::*;

    #[tokio::test]
    async fn failed_calls_are_counted_and_answers_noted_per_peer() {
        let streams = Streams::new(NetworkMetrics::new(&Registry::new(), "dc1", 1).expect("metrics"), None);
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let gone = closed.local_addr().expect("addr").to_string();
        drop(closed);
        let wait = std::time::Duration::from_secs(5);
        for _ in 0..3 {
            let err = streams.call("7", &gone, VOTE, b"", wait).await.expect_err("nothing listens");
            assert!(err.never_sent(), "{err}");
        }
        assert_eq!(streams.metrics.failures.with_label_values(&["7", "vote"]).get(), 3);
        assert!(streams.answered_within(wait).is_empty(), "peer 7 never answered");
        // A peer that answers is noted as answering.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let client = TcpStream::connect(&addr).await.expect("connect");
        let (mut peer, _) = listener.accept().await.expect("accept");
        streams.pool.put(&addr, Conn { io: BufReader::new(PeerStream::Plain(client)) });
        let answering = tokio::spawn(async move {
            read_frame(&mut peer).await.expect("the call");
            write_frame(&mut peer, None, b"ok").await.expect("answer");
            peer
        });
        assert_eq!(streams.call("8", &addr, VOTE, b"", wait).await.expect("answered"), b"ok");
        let _peer = answering.await.expect("peer task");
        assert_eq!(streams.answered_within(wait), std::collections::BTreeSet::from([8]));
    }

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, Some(APPEND), b"body").await.expect("write");
        assert_eq!(read_frame(&mut b).await.expect("read"), [&[APPEND][..], b"body"].concat());
        write_frame(&mut a, None, b"").await.expect("write");
        assert_eq!(read_frame(&mut b).await.expect("read"), Vec::<u8>::new());
        a.write_all(&(MAX_INTERNAL_BODY as u32 + 1).to_le_bytes()).await.expect("write");
        let err = read_frame(&mut b).await.expect_err("too big");
        assert!(err.to_string().contains("is over the"), "{err}");
    }

    #[tokio::test]
    async fn an_early_answer_stands_only_for_the_same_bytes_and_only_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let streams = Streams::new(NetworkMetrics::new(&Registry::new(), "dc1", 1).expect("metrics"), None);
        assert!(!streams.post_append(&addr, b"entries".to_vec(), std::time::Duration::from_secs(5)).await, "no conn");
        let client = TcpStream::connect(&addr).await.expect("connect");
        let (mut peer, _) = listener.accept().await.expect("accept");
        streams.pool.put(&addr, Conn { io: BufReader::new(PeerStream::Plain(client)) });
        assert!(streams.post_append(&addr, b"entries".to_vec(), std::time::Duration::from_secs(5)).await);
        // The peer reads the append as sent and answers it.
        let frame = read_frame(&mut peer).await.expect("the append");
        assert_eq!(frame, [&[APPEND][..], b"entries"].concat());
        write_frame(&mut peer, None, b"answer").await.expect("answer");
        let wait = std::time::Duration::from_secs(5);
        assert_eq!(streams.answered_early(&addr, b"other entries", wait).await, None, "other bytes: no answer");
        assert_eq!(streams.answered_early(&addr, b"entries", wait).await, Some(b"answer".to_vec()));
        assert_eq!(streams.answered_early(&addr, b"entries", wait).await, None, "an answer stands once");
        // The connection went back to the pool once the answer was read.
        assert!(streams.pool.take(&addr).is_some());
        // An early append that gets no answer (the peer closes) stands for nothing.
        let client = TcpStream::connect(&addr).await.expect("connect");
        let (peer, _) = listener.accept().await.expect("accept");
        streams.pool.put(&addr, Conn { io: BufReader::new(PeerStream::Plain(client)) });
        assert!(streams.post_append(&addr, b"more".to_vec(), wait).await);
        drop(peer);
        assert_eq!(streams.answered_early(&addr, b"more", wait).await, None);
    }

    #[tokio::test]
    async fn connections_the_peer_closed_are_not_taken_from_the_pool() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let pool = Pool::default();
        let mut server_ends = Vec::new();
        for _ in 0..2 {
            let client = TcpStream::connect(&addr).await.expect("connect");
            server_ends.push(listener.accept().await.expect("accept").0);
            pool.put(&addr, Conn { io: BufReader::new(PeerStream::Plain(client)) });
        }
        // The peer closes one of them (the last put, so the first taken).
        drop(server_ends.pop());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut conn = pool.take(&addr).expect("the open connection is still there");
        assert!(conn.is_live());
        assert!(pool.take(&addr).is_none(), "the closed one was dropped, not handed out");
        // Bytes the peer sent between calls make a connection unusable too.
        server_ends[0].write_all(b"x").await.expect("write");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        pool.put(&addr, conn);
        assert!(pool.take(&addr).is_none());
    }

    #[tokio::test]
    async fn a_server_that_does_not_upgrade_is_reported() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let app = Router::new().route(STREAM_PATH, get(|| async { "no upgrade here" }));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let err = match connect("2", &addr, None).await {
            // Nothing was sent: what listens there is no member, so to Raft the peer is unreachable (and backed off).
            Err(CallError::Connect(e)) => e.to_string(),
            Err(CallError::Io(e)) => panic!("no call was sent, so this is no broken call: {e}"),
            Ok(_) => panic!("a plain answer is not an upgrade"),
        };
        assert!(err.contains("refused the Raft stream: HTTP/1.1 200"), "{err}");
        server.abort();
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let gone = closed.local_addr().expect("addr").to_string();
        drop(closed);
        assert!(matches!(connect("2", &gone, None).await, Err(CallError::Connect(_))), "nothing listens there");
    }

    #[tokio::test]
    async fn a_tls_connection_stays_pooled_past_its_session_tickets_and_not_past_its_close() {
        use tokio::io::AsyncWriteExt;
        let tmp = tempfile::tempdir().expect("tmp");
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tls");
        let made = std::process::Command::new(script).arg(tmp.path()).args(["m1", "m2"]).status().expect("scripts/tls");
        assert!(made.success());
        let node = |name: &str| {
            let files = titan_api::tls::TlsFiles {
                cert: tmp.path().join(format!("{name}.pem")),
                key: tmp.path().join(format!("{name}.key")),
                ca: tmp.path().join("ca.pem"),
            };
            titan_api::tls::NodeTls::load(&files, titan_api::tls::Settings::NODE).expect("certificates load")
        };
        let (m1, m2) = (node("m1"), node("m2"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let acceptor = m1.acceptor();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await.expect("m2's certificate is accepted");
            let frame = read_frame(&mut tls).await.expect("a call");
            write_frame(&mut tls, None, &frame).await.expect("answer");
            tls
        });
        let pool = Pool::default();
        let stream = PeerStream::connect(&addr, Some(m2.client())).await.expect("handshake");
        pool.put(&addr, Conn { io: BufReader::new(stream) });
        // The server's session tickets arrive after the handshake: they are no data, and no reason to drop it.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut conn = pool.take(&addr).expect("still live after the session tickets");
        write_frame(conn.io.get_mut(), Some(VOTE), b"over tls").await.expect("call");
        assert_eq!(read_frame(&mut conn.io).await.expect("answer"), [&[VOTE][..], b"over tls"].concat());
        pool.put(&addr, conn);
        let mut tls = server.await.expect("server");
        tls.shutdown().await.expect("close");
        drop(tls);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(pool.take(&addr).is_none(), "a connection the peer closed is not handed out");
    }
}
