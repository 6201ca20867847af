//! Serving a router over TLS (`[tls]`, `--tls-*`): the accept loop of a member and of an agent.
//!
//! Each accepted connection gets a task of its own, whose TLS handshake is bounded by `HANDSHAKE_TIMEOUT`, so a slow
//! or silent client holds up no one else. A handshake whose client presents no certificate signed by the CA fails
//! (mutual TLS: `titan_api::tls::NodeTls`), before any request is read. A connection is then served by hyper with
//! HTTP/1.1 upgrades (Raft streams), the peer's address handed to axum as `ConnectInfo` (the authentication layer
//! counts bad tokens per address), and it ends gracefully, as `axum::serve`'s do, once the stop signal comes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The longest a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Refused handshakes are warned about at most this often, with a count of those not reported.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Serves `app` with TLS on `listener` until `stop` resolves, then waits for the connections in flight to finish
/// their requests (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    acceptor: tokio_rustls::TlsAcceptor,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stopping, stopped) = watch::channel(false);
    let refusals = Arc::new(Refusals::default());
    let http = auto::Builder::new(TokioExecutor::new());
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin; a connection that was
                    // reset before it was accepted is only that one's loss.
                    if !matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut stop => break,
        };
        connections.spawn(connection(
            tcp,
            peer,
            acceptor.clone(),
            app.clone(),
            http.clone(),
            stopped.clone(),
            refusals.clone(),
        ));
    }
    drop(listener);
    let _ = stopping.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// One connection: its handshake, then its requests until it closes or the server stops.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    http: auto::Builder<TokioExecutor>,
    mut stopped: watch::Receiver<bool>,
    refusals: Arc<Refusals>,
) {
    // Small request/response exchanges (Raft, forwarded writes) must not wait on Nagle's algorithm.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::warn!(error = %e, "TCP_NODELAY");
    }
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
    let tls = tokio::select! {
        done = handshake => match done {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return refusals.note(peer, &e),
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake not done within {HANDSHAKE_TIMEOUT:?}: connection closed");
                return;
            }
        },
        _ = stopped.wait_for(|s| *s) => return,
    };
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        tower::ServiceExt::oneshot(app.clone(), req)
    });
    let served = http.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(served);
    tokio::select! {
        _ = served.as_mut() => return,
        _ = stopped.wait_for(|s| *s) => {}
    }
    served.as_mut().graceful_shutdown();
    let _ = served.await;
}

/// Failed handshakes: a refused certificate is warned about (a member, cell or agent set up with the wrong CA keeps
/// trying), at most once per `WARN_EVERY`; anything else (a client that does not speak TLS, or closes) is debug.
#[derive(Default)]
struct Refusals {
    /// When the last warning was given, and the refusals since that were not reported.
    last: Mutex<(Option<Instant>, u64)>,
}

impl Refusals {
    fn note(&self, peer: SocketAddr, e: &std::io::Error) {
        if !titan_api::tls::refused_certificate(e) {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.0 {
            Some(at) if at.elapsed() < WARN_EVERY => last.1 += 1,
            _ => {
                tracing::warn!(%peer, error = %e, suppressed = last.1, "refused a connection: its client \
                    certificate is missing or not signed by this node's CA (tls.ca); further refusals are reported at \
                    most every {WARN_EVERY:?}");
                *last = (Some(Instant::now()), 0);
            }
        }
    }
}
