//! TLS between a cell's members, its federated cells, its agents and its users: rustls configurations built from PEM
//! files, and the connections and HTTP clients that use them.
//!
//! A node (member, cell, agent) has a certificate chain, its key, and the CA that signs every node's certificate. As
//! a server it requires a client certificate signed by that CA on every connection (mutual TLS), so a peer without
//! one is refused at the handshake, before any request is read; as a client it trusts that CA alone and presents
//! its own certificate. A user's client (`ClientTls`) trusts the CA and presents a certificate when it has one.
//!
//! Every configuration names aws-lc-rs, the crypto provider the rest of the build (the AWS SDK) already uses, rather
//! than relying on a process-wide default.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// `[tls]` in a member's configuration, and an agent's `--tls-*` flags: PEM files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// This node's certificate, then any intermediates, presented as a server and as a client.
    pub cert: PathBuf,
    /// The certificate's private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// The CA that signs every member's, cell's and agent's certificate: the only one trusted, both ways.
    pub ca: PathBuf,
}

/// What the files are called where an error names them: the configuration's settings, or a client's variables.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub cert: &'static str,
    pub key: &'static str,
    pub ca: &'static str,
}

impl Settings {
    /// A member's `[tls]` (or its flags) and an agent's flags.
    pub const NODE: Settings =
        Settings { cert: "tls.cert (--tls-cert)", key: "tls.key (--tls-key)", ca: "tls.ca (--tls-ca)" };
    /// An agent's flags.
    pub const FLAGS: Settings = Settings { cert: "--tls-cert", key: "--tls-key", ca: "--tls-ca" };
    /// The CLI's flags and environment.
    pub const CLIENT: Settings = Settings {
        cert: "--client-cert (TITAN_CLIENT_CERT)",
        key: "--client-key (TITAN_CLIENT_KEY)",
        ca: "--cacert (TITAN_CACERT)",
    };
}

/// A TLS file that cannot be used, naming the setting that gave it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TlsError {
    #[error("{setting}: cannot read {path}: {message}")]
    Unreadable { setting: &'static str, path: PathBuf, message: String },
    #[error("{setting}: {path} holds no {what} in PEM")]
    Empty { setting: &'static str, path: PathBuf, what: &'static str },
    #[error("{setting}: {path} is not valid: {message}")]
    Invalid { setting: &'static str, path: PathBuf, message: String },
    #[error("{key} does not go with {cert}: {message}")]
    KeyMismatch { cert: &'static str, key: &'static str, message: String },
    #[error("{cert} is not signed by {ca}: {message}")]
    NotSignedByCa { cert: &'static str, ca: &'static str, message: String },
    #[error("{0} needs {1} too")]
    Incomplete(&'static str, &'static str),
}

/// The crypto provider of every configuration made here.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())).clone()
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Unreadable { setting, path: path.into(), message: e.to_string() })
}

/// Every certificate in a PEM file, in order.
fn certs(setting: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(setting, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::Invalid {
        setting,
        path: path.into(),
        message: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { setting, path: path.into(), what: "certificate" });
    }
    Ok(certs)
}

fn key(setting: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(setting, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            TlsError::Empty { setting, path: path.into(), what: "private key" }
        }
        e => TlsError::Invalid { setting, path: path.into(), message: e.to_string() },
    })
}

fn roots(setting: &'static str, path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(setting, path)? {
        roots.add(cert).map_err(|e| TlsError::Invalid { setting, path: path.into(), message: e.to_string() })?;
    }
    Ok(Arc::new(roots))
}

/// A client configuration trusting `roots` alone, presenting `identity` when given.
fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    settings: Settings,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| TlsError::KeyMismatch {
            cert: settings.cert,
            key: settings.key,
            message: e.to_string(),
        }),
    }
}

/// One node's TLS: the server side (mutual TLS) and the client side (its certificate, the CA alone trusted).
#[derive(Clone, Debug)]
pub struct NodeTls {
    server: Arc<ServerConfig>,
    client: ClientTls,
}

impl NodeTls {
    /// Reads and checks the files: each must exist and parse, the key must go with the certificate, and the
    /// certificate must be signed by the CA (a node whose peers would refuse it is refused here, at its start).
    pub fn load(files: &TlsFiles, settings: Settings) -> Result<NodeTls, TlsError> {
        let chain = certs(settings.cert, &files.cert)?;
        let key = key(settings.key, &files.key)?;
        let roots = roots(settings.ca, &files.ca)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Invalid { setting: settings.ca, path: files.ca.clone(), message: e.to_string() })?;
        verifier.verify_client_cert(&chain[0], &chain[1..], UnixTime::now()).map_err(|e| TlsError::NotSignedByCa {
            cert: settings.cert,
            ca: settings.ca,
            message: e.to_string(),
        })?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| TlsError::KeyMismatch { cert: settings.cert, key: settings.key, message: e.to_string() })?;
        // HTTP/1.1 only: Raft streams are HTTP/1.1 upgrades, and every client here speaks it.
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = client_config(roots, Some((chain, key)), settings)?;
        Ok(NodeTls { server: Arc::new(server), client: ClientTls { config: Arc::new(client) } })
    }

    /// Accepts connections as this node: a handshake that presents no certificate signed by the CA fails.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }

    /// Connects to other nodes as this node.
    pub fn client(&self) -> &ClientTls {
        &self.client
    }
}

/// A client's TLS: the CA it trusts (and nothing else), and the certificate it presents, if any.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("presents_certificate", &self.config.client_auth_cert_resolver.has_certs())
            .finish()
    }
}

impl ClientTls {
    /// Trusts the CA in `ca`; presents the certificate in `cert` with the key in `key` when both are given.
    pub fn load(ca: &Path, cert: Option<&Path>, key: Option<&Path>, settings: Settings) -> Result<ClientTls, TlsError> {
        let roots = roots(settings.ca, ca)?;
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((certs(settings.cert, c)?, self::key(settings.key, k)?)),
            (Some(_), None) => return Err(TlsError::Incomplete(settings.cert, settings.key)),
            (None, Some(_)) => return Err(TlsError::Incomplete(settings.key, settings.cert)),
        };
        Ok(ClientTls { config: Arc::new(client_config(roots, identity, settings)?) })
    }

    /// `builder` speaking TLS with this configuration (for `https://` URLs).
    pub fn http(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        builder.use_preconfigured_tls(ClientConfig::clone(&self.config))
    }

    /// Opens a TLS connection over `tcp` to the node at `addr` (`HOST:PORT`), checking its certificate names
    /// `HOST`.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        addr: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = server_name(addr)?;
        tokio_rustls::TlsConnector::from(self.config.clone()).connect(name, tcp).await
    }
}

/// The name a node at `addr` (`HOST:PORT`, `[V6]:PORT`) must have in its certificate: `HOST`.
pub fn server_name(addr: &str) -> std::io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    ServerName::try_from(host.to_string()).map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {host:?} is no DNS name or IP: {e}"))
    })
}

/// Whether a failed handshake was the peer's certificate refused (or not presented), rather than a connection
/// that broke or never spoke TLS.
pub fn refused_certificate(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
    )
}

/// A connection to another node: plain TCP, or TLS over it.
pub enum PeerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl PeerStream {
    /// Connects to the node at `addr`, with TLS when `tls` is given; small writes are not delayed (Nagle).
    pub async fn connect(addr: &str, tls: Option<&ClientTls>) -> std::io::Result<PeerStream> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(match tls {
            None => PeerStream::Plain(tcp),
            Some(tls) => PeerStream::Tls(Box::new(tls.handshake(tcp, addr).await?)),
        })
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            PeerStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            PeerStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            PeerStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            PeerStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How a node calls other nodes over HTTP (cells, agents): a client, and the scheme its URLs take, `https` with this
/// node's certificate when TLS is on.
#[derive(Clone, Debug)]
pub struct PeerHttp {
    client: reqwest::Client,
    scheme: &'static str,
}

impl PeerHttp {
    pub fn new(builder: reqwest::ClientBuilder, tls: Option<&ClientTls>) -> reqwest::Result<PeerHttp> {
        Ok(match tls {
            None => PeerHttp { client: builder.build()?, scheme: "http" },
            Some(tls) => PeerHttp { client: tls.http(builder).build()?, scheme: "https" },
        })
    }

    /// `path` (with its query) at the node at `addr` (`HOST:PORT`).
    pub fn url(&self, addr: &str, path: &str) -> String {
        format!("{}://{addr}{path}", self.scheme)
    }

    pub fn get(&self, addr: &str, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(addr, path))
    }

    pub fn post(&self, addr: &str, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(addr, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scripts/tls DIR NAME...`: the helper users run, so its certificates are the ones tested.
    fn make_certs(dir: &Path, names: &[&str]) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tls");
        let out = std::process::Command::new(script).arg(dir).args(names).output().expect("scripts/tls runs");
        assert!(out.status.success(), "scripts/tls: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn files(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")), ca: dir.join("ca.pem") }
    }

    #[test]
    fn each_bad_file_names_its_setting() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (good, other) = (tmp.path().join("good"), tmp.path().join("other"));
        make_certs(&good, &["m1", "m2"]);
        make_certs(&other, &["m9"]);
        let check = |f: &dyn Fn(&mut TlsFiles), want: &str| {
            let mut files = files(&good, "m1");
            f(&mut files);
            let err = NodeTls::load(&files, Settings::NODE).expect_err(want).to_string();
            assert!(err.contains(want), "{err} should say {want}");
        };
        NodeTls::load(&files(&good, "m1"), Settings::NODE).expect("scripts/tls makes usable certificates");
        check(&|f| f.cert = good.join("missing.pem"), "tls.cert (--tls-cert): cannot read");
        check(&|f| f.ca = good.join("missing.pem"), "tls.ca (--tls-ca): cannot read");
        check(&|f| f.key = good.join("missing.key"), "tls.key (--tls-key): cannot read");
        check(&|f| f.cert = good.join("m1.key"), "tls.cert (--tls-cert): ");
        check(&|f| f.ca = good.join("m1.key"), "holds no certificate in PEM");
        check(&|f| f.key = good.join("m1.pem"), "tls.key (--tls-key): ");
        check(&|f| f.key = good.join("m2.key"), "tls.key (--tls-key) does not go with tls.cert (--tls-cert)");
        check(&|f| f.ca = other.join("ca.pem"), "tls.cert (--tls-cert) is not signed by tls.ca (--tls-ca)");
        let garbled = tmp.path().join("garbled.pem");
        std::fs::write(&garbled, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
            .expect("write");
        check(&|f| f.cert = garbled.clone(), "tls.cert (--tls-cert): ");
        // A client's certificate without its key (or the other way round) names both.
        let err = ClientTls::load(&good.join("ca.pem"), Some(&good.join("m1.pem")), None, Settings::CLIENT)
            .expect_err("a certificate needs its key");
        assert_eq!(err.to_string(), "--client-cert (TITAN_CLIENT_CERT) needs --client-key (TITAN_CLIENT_KEY) too");
    }

    #[test]
    fn server_names_come_from_the_host() {
        assert_eq!(server_name("127.0.0.1:7001").expect("ip"), ServerName::try_from("127.0.0.1").expect("ip"));
        assert_eq!(server_name("[::1]:7001").expect("v6"), ServerName::try_from("::1").expect("v6"));
        assert_eq!(
            server_name("titan-0.titan-peers:7001").expect("dns"),
            ServerName::try_from("titan-0.titan-peers").expect("dns")
        );
        assert!(server_name("bad_name!:7001").is_err());
    }

    /// A server with `NodeTls` and a client: the handshake and one exchanged line, or the handshake's error.
    async fn exchange(server: &NodeTls, client: &ClientTls) -> Result<String, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let acceptor = server.acceptor();
        let served = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await?;
            let mut line = [0u8; 5];
            tls.read_exact(&mut line).await?;
            tls.write_all(b"world").await?;
            tls.shutdown().await?;
            Ok::<_, std::io::Error>(())
        });
        let talk = async {
            let mut s = PeerStream::connect(&addr, Some(client)).await.map_err(|e| e.to_string())?;
            s.write_all(b"hello").await.map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| e.to_string())?;
            let mut answer = String::new();
            s.read_to_string(&mut answer).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(answer)
        };
        let talked = tokio::time::timeout(std::time::Duration::from_secs(10), talk).await.expect("bounded");
        let served = served.await.expect("server task");
        match (talked, served) {
            (Ok(answer), Ok(())) => Ok(answer),
            (_, Err(e)) => Err(format!("server: {e} (refused certificate: {})", refused_certificate(&e))),
            (Err(e), Ok(())) => Err(format!("client: {e}")),
        }
    }

    #[tokio::test]
    async fn servers_require_a_certificate_from_their_ca() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (good, other) = (tmp.path().join("good"), tmp.path().join("other"));
        make_certs(&good, &["m1", "m2"]);
        make_certs(&other, &["m9"]);
        let m1 = NodeTls::load(&files(&good, "m1"), Settings::NODE).expect("m1");
        let m2 = NodeTls::load(&files(&good, "m2"), Settings::NODE).expect("m2");
        let m9 = NodeTls::load(&files(&other, "m9"), Settings::NODE).expect("m9");
        assert_eq!(exchange(&m1, m2.client()).await, Ok("world".into()), "one CA: both ends accept");
        // A node of another CA neither trusts the server nor is trusted by it.
        exchange(&m1, m9.client()).await.expect_err("another CA's node");
        // A client that trusts the CA but presents another CA's certificate is refused for it by the server.
        let foreign = ClientTls::load(
            &good.join("ca.pem"),
            Some(&other.join("m9.pem")),
            Some(&other.join("m9.key")),
            Settings::CLIENT,
        )
        .expect("foreign certificate");
        let err = exchange(&m1, &foreign).await.expect_err("another CA's certificate");
        assert!(err.contains("server: ") && err.contains("refused certificate: true"), "{err}");
        // A client that trusts the CA but presents no certificate is refused by the server.
        let anonymous = ClientTls::load(&good.join("ca.pem"), None, None, Settings::CLIENT).expect("CA only");
        let err = exchange(&m1, &anonymous).await.expect_err("no certificate");
        assert!(err.contains("server: ") && err.contains("refused certificate: true"), "{err}");
        // A user's client with a certificate from the CA is served.
        let user = ClientTls::load(
            &good.join("ca.pem"),
            Some(&good.join("m2.pem")),
            Some(&good.join("m2.key")),
            Settings::CLIENT,
        )
        .expect("user");
        assert_eq!(exchange(&m1, &user).await, Ok("world".into()));
    }

    #[test]
    fn peer_urls_take_the_scheme_of_the_transport() {
        let tmp = tempfile::tempdir().expect("tmp");
        make_certs(tmp.path(), &["m1"]);
        let node = NodeTls::load(&files(tmp.path(), "m1"), Settings::NODE).expect("m1");
        let plain = PeerHttp::new(reqwest::Client::builder(), None).expect("client");
        let tls = PeerHttp::new(reqwest::Client::builder(), Some(node.client())).expect("client");
        assert_eq!(plain.url("127.0.0.1:7001", "/v1/jobs"), "http://127.0.0.1:7001/v1/jobs");
        assert_eq!(tls.url("127.0.0.1:7001", "/v1/jobs"), "https://127.0.0.1:7001/v1/jobs");
        // The API client too: bare addresses are https with TLS, a URL keeps its scheme.
        assert_eq!(crate::Client::with_tls("127.0.0.1:7001", node.client()).base(), "https://127.0.0.1:7001");
        assert_eq!(crate::Client::with_tls("http://127.0.0.1:7001", node.client()).base(), "http://127.0.0.1:7001");
        assert_eq!(crate::Client::new("127.0.0.1:7001").base(), "http://127.0.0.1:7001");
    }
}
