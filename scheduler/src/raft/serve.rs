//! Raft between members, the serving side: the route a peer upgrades to a stream, and the answer to each frame
//! (Raft's calls, and what followers ask of this member as their leader, handed to the member: `Leader`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioIo;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};

use super::network::{AppendWire, VoteAnswer};
use super::streams::{
    read_frame, rpc_name, write_frame, Streams, APPEND, LEADER, NODE_HEADER, PROPOSE, PROTOCOL, SNAPSHOT, STREAM_PATH,
    VOTE,
};
use super::{codec, membership, EncodedEntries, NodeId, Raft, TypeConfig};

/// A request or answer body in `codec`, for the internal routes that are plain HTTP requests.
pub struct Packed<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequest<S> for Packed<T> {
    type Rejection = (StatusCode, String);

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes =
            Bytes::from_request(req, state).await.map_err(|e| (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()))?;
        codec::decode(&bytes).map(Packed).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))
    }
}

impl<T: Serialize> IntoResponse for Packed<T> {
    fn into_response(self) -> Response {
        match codec::encode(&self.0) {
            Ok(b) => ([(header::CONTENT_TYPE, codec::CONTENT_TYPE)], b).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }
}

/// Answers what members ask of this one as their leader: forwarded writes (`PROPOSE`) and other calls (`LEADER`).
/// The member decodes the body, answers and encodes the answer; the stream only carries the bytes.
pub trait Leader: Send + Sync + 'static {
    fn propose(&self, body: Vec<u8>) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<u8>>> + Send + '_>>;
    fn call(&self, body: Vec<u8>) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<u8>>> + Send + '_>>;
}

/// What the stream needs: Raft, the log's encodings to keep what followers receive, and the member for what
/// followers ask of it as their leader.
#[derive(Clone)]
struct Routes {
    raft: Raft,
    encoded: EncodedEntries,
    streams: Streams,
    leader: Arc<dyn Leader>,
}

fn packed<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    codec::encode(value).map_err(std::io::Error::other)
}

fn unpacked<T: DeserializeOwned>(body: &[u8]) -> std::io::Result<T> {
    codec::decode(body).map_err(std::io::Error::other)
}

impl Routes {
    async fn append(&self, body: &[u8]) -> std::io::Result<Vec<u8>> {
        let wire: AppendWire<serde_bytes::ByteBuf> = unpacked(body)?;
        let mut entries = Vec::with_capacity(wire.entries.len());
        let mut received = Vec::with_capacity(wire.entries.len());
        for bytes in wire.entries {
            let e: openraft::Entry<TypeConfig> = unpacked(&bytes)?;
            received.push((e.log_id, Bytes::from(bytes.into_vec())));
            entries.push(e);
        }
        self.encoded.remember(received);
        let req = AppendEntriesRequest {
            vote: wire.vote,
            prev_log_id: wire.prev_log_id,
            entries,
            leader_commit: wire.leader_commit,
        };
        let answer = self.raft.append_entries(req).await;
        self.streams.stand_down.check_rejoined();
        packed(&answer)
    }

    /// A vote request, unless the candidate is no voter in this member's membership (the newest it has, committed
    /// or not): a member removed while it was away never saw its removal and would campaign against the cell.
    async fn vote(&self, body: &[u8]) -> std::io::Result<Vec<u8>> {
        let req: VoteRequest<NodeId> = unpacked(body)?;
        let candidate = req.vote.leader_id.node_id;
        let refused = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let voter = m.membership_config.membership().voter_ids().any(|v| v == candidate);
            let ours = *m.membership_config.log_id();
            membership::refuses_vote(voter, req.last_log_id, ours).then_some(ours)
        };
        if let Some(membership) = refused {
            tracing::info!(candidate, ?membership, "refused a vote request from a member not in the cell");
            return packed(&VoteAnswer::NotAMember { membership });
        }
        packed(&self.raft.vote(req).await)
    }

    /// Answers one request frame; an error closes the connection.
    async fn answer(&self, frame: &[u8]) -> std::io::Result<Vec<u8>> {
        let Some((&kind, body)) = frame.split_first() else {
            return Err(std::io::Error::other("an empty frame"));
        };
        match kind {
            APPEND => self.append(body).await,
            VOTE => self.vote(body).await,
            SNAPSHOT => packed(&self.raft.install_snapshot(unpacked(body)?).await),
            PROPOSE => self.leader.propose(body.to_vec()).await,
            LEADER => self.leader.call(body.to_vec()).await,
            other => Err(std::io::Error::other(format!("unknown Raft call {other}"))),
        }
    }

    /// Serves one upgraded connection until the peer closes it or sends something unreadable.
    async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(self, io: IO) {
        let mut io = BufReader::new(io);
        loop {
            let frame = match read_frame(&mut io).await {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
                Err(e) => {
                    tracing::debug!(error = %e, "closing a Raft stream");
                    return;
                }
            };
            let start = Instant::now();
            let answer = match self.answer(&frame).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "closing a Raft stream that sent an unreadable call");
                    return;
                }
            };
            if let Err(e) = write_frame(io.get_mut(), None, &answer).await {
                tracing::debug!(error = %e, "closing a Raft stream");
                return;
            }
            let kind = frame.first().copied().unwrap_or(0);
            self.streams
                .metrics()
                .answer_seconds
                .with_label_values(&[rpc_name(kind)])
                .observe(start.elapsed().as_secs_f64());
        }
    }
}

/// `GET /internal/raft/stream` with `Upgrade: titan-raft`: switches the connection to Raft frames.
async fn stream(State(routes): State<Routes>, mut req: Request) -> Response {
    let asked = req.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok());
    if !asked.is_some_and(|p| p.eq_ignore_ascii_case(PROTOCOL)) {
        return (StatusCode::UPGRADE_REQUIRED, format!("this route speaks only `Upgrade: {PROTOCOL}`")).into_response();
    }
    let me = routes.raft.metrics().borrow().id;
    // A caller from before the header names no member and is taken as before.
    if let Some(asked) = req.headers().get(NODE_HEADER) {
        if asked.to_str().ok().and_then(|v| v.trim().parse::<NodeId>().ok()) != Some(me) {
            tracing::warn!(asked = ?asked, me, "refusing a Raft stream meant for another member");
            return (StatusCode::MISDIRECTED_REQUEST, format!("this is member {me}, not {asked:?}")).into_response();
        }
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => routes.serve(TokioIo::new(upgraded)).await,
            Err(e) => tracing::warn!(error = %e, "a Raft stream upgrade failed"),
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut().insert(header::UPGRADE, HeaderValue::from_static(PROTOCOL));
    resp
}

/// The internal route Raft peers call.
pub fn raft_routes(raft: Raft, encoded: EncodedEntries, streams: Streams, leader: Arc<dyn Leader>) -> Router {
    Router::new().route(STREAM_PATH, get(stream)).with_state(Routes { raft, encoded, streams, leader })
}
