//! A TCP proxy the test controls, to partition a process from another: `cut` drops every connection through it
//! and refuses new ones (by closing them at once) until `heal`.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    /// Where to connect instead of the target.
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards a free loopback port to `target`, open.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", super::free_port())).await.expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let open = watch::Sender::new(true);
        let switch = open.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !*switch.borrow() {
                    // Cut: the connection closes at once, as a partition's would fail.
                    continue;
                }
                tokio::spawn(pipe(inbound, target, switch.subscribe()));
            }
        });
        Proxy { addr, open, accept }
    }

    /// Drops every connection through the proxy and closes new ones at once.
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Copies both ways until either side closes or the proxy is cut.
async fn pipe(mut inbound: TcpStream, target: SocketAddr, mut open: watch::Receiver<bool>) {
    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = open.wait_for(|open| !*open) => {}
    }
}
