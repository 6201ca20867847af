//! Raft between members over HTTP: the client side (`HttpNetwork`, one `Peer` per target) and the internal
//! routes that receive its calls. Bodies are `codec` (MessagePack); a remote Raft error travels back inside a 200
//! response so the caller can tell "the peer said no" from "the peer could not be reached".

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{codec, EncodedEntries, NodeId, Raft, TypeConfig};

/// The largest internal request body: a batch of log entries or one snapshot chunk.
pub const MAX_INTERNAL_BODY: usize = 64 * 1024 * 1024;

/// An HTTP client shared by every connection to every peer (one connection pool per member).
#[derive(Clone)]
pub struct PeerClient {
    pub(crate) http: reqwest::Client,
}

impl PeerClient {
    pub fn new() -> PeerClient {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()
            .expect("a plain HTTP client always builds");
        PeerClient { http }
    }
}

impl Default for PeerClient {
    fn default() -> Self {
        PeerClient::new()
    }
}

/// Makes a `Peer` for each member Raft talks to.
pub struct HttpNetwork {
    pub(crate) client: PeerClient,
    encoded: EncodedEntries,
}

impl HttpNetwork {
    pub fn new(client: PeerClient, encoded: EncodedEntries) -> HttpNetwork {
        HttpNetwork { client, encoded }
    }
}

/// `AppendEntriesRequest` on the wire: entries travel as their `codec` bytes, which the leader already has from
/// writing them to its own log, so they are encoded once however many followers there are.
#[derive(Serialize, Deserialize)]
struct AppendWire {
    vote: openraft::Vote<NodeId>,
    prev_log_id: Option<openraft::LogId<NodeId>>,
    leader_commit: Option<openraft::LogId<NodeId>>,
    entries: Vec<serde_bytes::ByteBuf>,
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer { target, addr: node.addr.clone(), http: self.client.http.clone(), encoded: self.encoded.clone() }
    }
}

pub struct Peer {
    target: NodeId,
    addr: String,
    http: reqwest::Client,
    encoded: EncodedEntries,
}

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("http://{}/internal/raft/{path}", self.addr);
        let body = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let resp = self
            .http
            .post(url)
            .timeout(option.hard_ttl())
            .header(reqwest::header::CONTENT_TYPE, codec::CONTENT_TYPE)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        let bytes = resp.bytes().await.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer: Result<Resp, E> = codec::decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let entries = rpc
            .entries
            .iter()
            .map(|e| self.encoded.get(e).map(|b| serde_bytes::ByteBuf::from(b.to_vec())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let wire =
            AppendWire { vote: rpc.vote, prev_log_id: rpc.prev_log_id, leader_commit: rpc.leader_commit, entries };
        self.call("append", &wire, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}

/// A request or answer body in `codec`.
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

async fn append(State(routes): State<Routes>, Packed(wire): Packed<AppendWire>) -> Response {
    let mut entries = Vec::with_capacity(wire.entries.len());
    let mut received = Vec::with_capacity(wire.entries.len());
    for bytes in wire.entries {
        match codec::decode::<openraft::Entry<TypeConfig>>(&bytes) {
            Ok(e) => {
                received.push((e.log_id, Bytes::from(bytes.into_vec())));
                entries.push(e);
            }
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        }
    }
    routes.encoded.remember(received);
    let req = AppendEntriesRequest {
        vote: wire.vote,
        prev_log_id: wire.prev_log_id,
        entries,
        leader_commit: wire.leader_commit,
    };
    Packed(routes.raft.append_entries(req).await).into_response()
}

async fn vote(
    State(Routes { raft, .. }): State<Routes>,
    Packed(req): Packed<VoteRequest<NodeId>>,
) -> Packed<Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    Packed(raft.vote(req).await)
}

async fn snapshot(
    State(Routes { raft, .. }): State<Routes>,
    Packed(req): Packed<InstallSnapshotRequest<TypeConfig>>,
) -> Packed<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>> {
    Packed(raft.install_snapshot(req).await)
}

/// What the internal routes need: Raft, and the log's encodings to keep what followers receive.
#[derive(Clone)]
struct Routes {
    raft: Raft,
    encoded: EncodedEntries,
}

/// The internal routes Raft peers call.
pub fn raft_routes(raft: Raft, encoded: EncodedEntries) -> Router {
    Router::new()
        .route("/internal/raft/append", post(append))
        .route("/internal/raft/vote", post(vote))
        .route("/internal/raft/snapshot", post(snapshot))
        .layer(DefaultBodyLimit::max(MAX_INTERNAL_BODY))
        .with_state(Routes { raft, encoded })
}
