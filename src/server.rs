//! `titan server` and `titan dev`: settings from flags, `TITAN_*` environment variables and a TOML file (in that
//! order of precedence), then one cell member serving HTTP (HTTPS with `[tls]`, see `https.rs`) until SIGINT or
//! SIGTERM. `titan dev` serves plain HTTP.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::Args;
use serde::Deserialize;
use titan_api::tls::{NodeTls, TlsFiles};
use titan_api::HttpMetrics;
use titan_scheduler::config::{CellConfig, RaftTuning};
use titan_scheduler::{parse_peers, Cell, PeerAddr};

/// Default listen address of a member and of `titan dev`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// A TOML file with any of the settings below (flags and environment win over it).
    #[arg(long, env = "TITAN_CONFIG")]
    config: Option<PathBuf>,
    /// The cell (fault domain) this member belongs to.
    #[arg(long, env = "TITAN_CELL")]
    cell: Option<String>,
    /// This member's number in the cell.
    #[arg(long, env = "TITAN_NODE_ID")]
    node_id: Option<u64>,
    /// Address to serve the API and Raft on (what the socket binds, e.g. 0.0.0.0:7070).
    #[arg(long, env = "TITAN_LISTEN")]
    listen: Option<SocketAddr>,
    /// How the other members reach this one, HOST:PORT (a DNS name or an IP); defaults to --listen.
    #[arg(long, env = "TITAN_ADVERTISE")]
    advertise: Option<PeerAddr>,
    /// The cell's initial members: ID=HOST:PORT,... (this member included, at its advertised address; HOST a DNS
    /// name or an IP).
    #[arg(long, env = "TITAN_PEERS")]
    peers: Option<String>,
    /// Where the Raft log, vote and snapshots live.
    #[arg(long, env = "TITAN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The other cells of the federation: CELL=HOST:PORT[|HOST:PORT...],... (`[federation] cells` in TOML).
    #[arg(long, env = "TITAN_FEDERATION")]
    federation: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    log: LogArgs,
}

/// TLS files (`[tls]` in a member's TOML): with them a member or an agent serves HTTPS and requires a client
/// certificate signed by the CA on every connection, and presents its own certificate to the nodes it calls.
#[derive(Args, Debug)]
pub struct TlsArgs {
    /// This node's certificate, PEM (then any intermediates): serve HTTPS, and present it to other members, cells
    /// and agents (`[tls] cert`; with --tls-key and --tls-ca). Its names must include how others reach it.
    #[arg(long, env = "TITAN_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key, PEM (`[tls] key`).
    #[arg(long, env = "TITAN_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The CA that signs every member's, cell's and agent's certificate, the only one trusted; a connection without
    /// a client certificate it signed is refused (`[tls] ca`).
    #[arg(long, env = "TITAN_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS files: each flag over the file's `[tls]`; none when neither names any. The three go together.
    fn files(&self, file: Option<TlsFiles>) -> anyhow::Result<Option<TlsFiles>> {
        let (cert, key, ca) = match file {
            Some(f) => (Some(f.cert), Some(f.key), Some(f.ca)),
            None => (None, None, None),
        };
        let cert = self.tls_cert.clone().or(cert);
        let key = self.tls_key.clone().or(key);
        let ca = self.tls_ca.clone().or(ca);
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles { cert, key, ca })),
            (cert, key, _) => {
                let missing = if cert.is_none() {
                    "--tls-cert"
                } else if key.is_none() {
                    "--tls-key"
                } else {
                    "--tls-ca"
                };
                anyhow::bail!(
                    "--tls-cert, --tls-key and --tls-ca ([tls] cert, key and ca) go together: {missing} is missing"
                )
            }
        }
    }
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Address to serve on.
    #[arg(long, env = "TITAN_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Where the dev cell keeps its data (kept across runs).
    #[arg(long, env = "TITAN_DATA_DIR", default_value = crate::DEV_DATA_DIR)]
    data_dir: PathBuf,
    /// Run a federation of single-member cells with these names instead (e.g. `dc1,dc2,dc3`), on consecutive
    /// port pairs from `--listen` (a cell, then its local agent), each with its data under `--data-dir/<cell>`.
    #[arg(long, env = "TITAN_DEV_CELLS", value_delimiter = ',')]
    cells: Vec<String>,
    /// Serve without authentication (by default every route but the probes needs a token; the admin token is
    /// written to `--data-dir/admin.token`, where the CLI finds it).
    #[arg(long)]
    no_auth: bool,
    /// The most extra local agents the dev cell's autoscaler starts when tasks do not fit (0: none); with
    /// `--cells`, each cell's.
    #[arg(long, env = "TITAN_DEV_FLEET_MAX", default_value_t = 3)]
    fleet_max: u32,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Args, Debug)]
pub struct LogArgs {
    /// Log filter, e.g. `info` or `titan_scheduler=debug,info`.
    #[arg(long, env = "TITAN_LOG", default_value = "info,openraft=warn,sled=warn")]
    log: String,
    /// Log as JSON lines (for collectors) instead of text.
    #[arg(long, env = "TITAN_LOG_JSON")]
    log_json: bool,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// A member of the cell to register with, or several separated by commas (tried in turn when one is down).
    #[arg(long, env = "TITAN_CELL_ADDR", default_value = DEFAULT_LISTEN)]
    cell_addr: String,
    /// Where the agent keeps its id, task logs (`logs/`), process working directories (`work/`) and, without
    /// a ZFS pool, volumes (`volumes/`).
    #[arg(long, env = "TITAN_DATA_DIR")]
    data_dir: PathBuf,
    /// What runs tasks: `docker` (containers, re-adopted across agent restarts) or `process` (host processes).
    #[arg(long, env = "TITAN_RUNTIME", default_value = "docker", value_parser = ["docker", "process"])]
    runtime: String,
    /// A ZFS pool, or a dataset in one, to create task volumes under (with quotas); without it volumes are
    /// directories in the data directory.
    #[arg(long, visible_alias = "zfs-pool", env = "TITAN_ZFS_PARENT")]
    zfs_parent: Option<String>,
    /// The host address containers' ports are published on.
    #[arg(long, env = "TITAN_PUBLISH_IP", default_value = "0.0.0.0")]
    publish_ip: std::net::IpAddr,
    /// The address this agent serves on (logs), reported to the cell.
    #[arg(long, env = "TITAN_AGENT_ADDR", default_value = "127.0.0.1:7100")]
    addr: SocketAddr,
    /// An attribute, NAME=VALUE (zone, instance type, instance group, ...); repeatable.
    #[arg(long = "attr", value_parser = parse_attr)]
    attributes: Vec<(String, String)>,
    /// Cpus to offer instead of the detected count.
    #[arg(long)]
    cpus: Option<f64>,
    /// Memory to offer, MiB, instead of the detected total.
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Disk to offer, MiB, instead of the data directory's filesystem size.
    #[arg(long)]
    disk_mib: Option<u64>,
    /// Dynamic port range, FIRST-LAST.
    #[arg(long, value_parser = parse_range)]
    ports: Option<(u16, u16)>,
    /// The agent's id (kept in the data directory; a new one is made on the first start without it). An agent token
    /// (`titan acl token create --role agent --agent ID`) acts only for this id.
    #[arg(long)]
    id: Option<String>,
    /// A file holding the agent's API token; else `$TITAN_TOKEN`.
    #[arg(long, env = "TITAN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// With TLS (the cell's CA): the agent registers over HTTPS presenting its certificate, and serves its tasks'
    /// logs over HTTPS only to clients with a certificate of the CA (the cell's members). Its certificate's names
    /// must include the address it reports (--addr).
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    log: LogArgs,
}

fn parse_attr(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or_else(|| format!("{s:?} is not FIRST-LAST"))?;
    let a: u16 = a.parse().map_err(|_| format!("{a:?} is not a port"))?;
    let b: u16 = b.parse().map_err(|_| format!("{b:?} is not a port"))?;
    if a == 0 || a > b {
        return Err(format!("{s:?}: need 0 < FIRST <= LAST"));
    }
    Ok((a, b))
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    init_logging(&args.log);
    if let Some(id) = &args.id {
        set_agent_id(&args.data_dir, id)?;
    }
    let id = titan_agent::node::agent_id(&args.data_dir)
        .with_context(|| format!("keeping the agent id in {}", args.data_dir.display()))?;
    let declared = titan_agent::node::Declared {
        cpus: args.cpus,
        memory_mib: args.memory_mib,
        disk_mib: args.disk_mib,
        ports: args.ports,
    };
    let registration = titan_agent::node::describe(
        id,
        args.addr.to_string(),
        &args.data_dir,
        &declared,
        args.attributes.into_iter().collect(),
    );
    registration.validate().map_err(|e| anyhow::anyhow!("this machine's description is not valid: {e}"))?;
    let registry = prometheus::Registry::new();
    let metrics = titan_agent::daemon::LeaseMetrics::new(&registry)?;
    let logs_dir = args.data_dir.join("logs");
    let runtime = runtime(&args.runtime, &args.data_dir, args.publish_ip)?;
    let supervisor = supervisor(&registration, runtime, &args.data_dir, args.zfs_parent.clone(), &registry)?;
    let tls = match args.tls.files(None)? {
        Some(files) => Some(NodeTls::load(&files, titan_api::tls::Settings::FLAGS)?),
        None => None,
    };
    let listener =
        tokio::net::TcpListener::bind(args.addr).await.with_context(|| format!("cannot listen on {}", args.addr))?;
    let app = titan_agent::server::router(registry, logs_dir);
    let server = match &tls {
        Some(tls) => tokio::spawn(crate::https::serve(listener, app, tls.acceptor(), stopped())),
        None => tokio::spawn(axum::serve(listener, app).with_graceful_shutdown(stopped()).into_future()),
    };
    tracing::info!(agent = %registration.id, cell = %args.cell_addr, addr = %args.addr, runtime = %args.runtime,
        zfs = ?args.zfs_parent, resources = ?registration.resources, tls = tls.is_some(), "agent starting");
    let mut client = match &tls {
        Some(tls) => titan_api::Client::with_tls(&args.cell_addr, tls.client()),
        None => titan_api::Client::new(&args.cell_addr),
    };
    if let Some(t) = agent_token(args.token_file.as_deref())? {
        client = client.token(t);
    }
    titan_agent::daemon::run_supervised(client, registration, metrics, supervisor, stopped()).await;
    server.abort();
    Ok(())
}

/// The first cell of a dev federation (the one that prints the token hint): the one no other cell sorts before.
fn first_cell(config: &CellConfig) -> String {
    config.federation.cells.keys().chain(std::iter::once(&config.cell)).min().cloned().unwrap_or_default()
}

/// Keeps `id` as the agent's id in `dir`, refusing one that differs from the id kept there.
fn set_agent_id(dir: &Path, id: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()),
        "--id {id:?}: 1-128 visible characters"
    );
    let file = dir.join("agent-id");
    match std::fs::read_to_string(&file) {
        Ok(kept) if kept.trim() == id || kept.trim().is_empty() => {}
        Ok(kept) => anyhow::bail!("--id {id}: {} holds id {}; an agent keeps its id", file.display(), kept.trim()),
        Err(_) => {}
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(&file, id).with_context(|| format!("writing {}", file.display()))
}

/// The agent's token: from its file, else `$TITAN_TOKEN`; none when neither is given.
fn agent_token(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(f) = file {
        let t = std::fs::read_to_string(f).with_context(|| format!("reading the token file {}", f.display()))?;
        return Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty()));
    }
    Ok(std::env::var("TITAN_TOKEN").ok().filter(|t| !t.is_empty()))
}

/// The task runtime an agent uses: `docker` (containers through the Docker engine) or `process`.
fn runtime(kind: &str, data_dir: &Path, publish_ip: std::net::IpAddr) -> anyhow::Result<titan_agent::runtime::Runtime> {
    let logs_dir = data_dir.join("logs");
    Ok(match kind {
        "process" => titan_agent::runtime::Runtime::Process(titan_agent::runtime::ProcessRuntime::new(
            data_dir.join("work"),
            logs_dir,
            Some("titan".into()),
        )),
        _ => {
            let docker = titan_agent::runtime::DockerRuntime::connect(publish_ip.to_string())
                .context("connecting to the Docker engine")?;
            // Probes reach published ports where they are bound; an unspecified address is reachable on loopback.
            let probe_host = if publish_ip.is_unspecified() { "127.0.0.1".to_string() } else { publish_ip.to_string() };
            titan_agent::runtime::Runtime::docker(docker, logs_dir, probe_host)
        }
    })
}

/// The task supervisor of an agent: its runtime, its volumes (ZFS under `zfs_parent`, else directories in the
/// data directory) and its metrics.
fn supervisor(
    registration: &titan_api::agent::AgentRegistration,
    runtime: titan_agent::runtime::Runtime,
    data_dir: &Path,
    zfs_parent: Option<String>,
    registry: &prometheus::Registry,
) -> anyhow::Result<titan_agent::supervisor::Supervisor> {
    let volumes: std::sync::Arc<dyn titan_agent::volume::VolumeDriver> = match zfs_parent {
        Some(parent) => std::sync::Arc::new(titan_agent::volume::ZfsDriver::new(parent)),
        None => std::sync::Arc::new(
            titan_agent::volume::DirDriver::new(data_dir.join("volumes"))
                .map_err(|e| anyhow::anyhow!("volumes in {}: {e}", data_dir.display()))?,
        ),
    };
    let mut settings = titan_agent::supervisor::Settings::new(registration.id.clone(), registration.resources.clone());
    settings.lease_file = Some(data_dir.join(titan_agent::daemon::LEASE_FILE));
    Ok(titan_agent::supervisor::Supervisor::new(
        settings,
        runtime,
        Some(volumes),
        titan_agent::supervisor::TaskMetrics::new(registry)?,
    ))
}

/// The TOML file's shape: every field optional, unknown fields refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    cell: Option<String>,
    node_id: Option<u64>,
    listen: Option<SocketAddr>,
    advertise: Option<PeerAddr>,
    peers: Option<String>,
    data_dir: Option<PathBuf>,
    raft: Option<RaftTuning>,
    scheduler: Option<titan_scheduler::config::SchedulerConfig>,
    federation: Option<titan_scheduler::federation::FederationConfig>,
    autoscaler: Option<titan_autoscaler::config::AutoscalerConfig>,
    auth: Option<titan_scheduler::config::AuthConfig>,
    tls: Option<TlsFiles>,
}

fn init_logging(log: &LogArgs) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(&log.log).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only help a person at a terminal; in a file or a collector's pipe they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if log.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    init_logging(&args.log);
    let file = match &args.config {
        Some(p) => load_file(p)?,
        None => FileConfig::default(),
    };
    let listen = args.listen.or(file.listen).context("--listen is required")?;
    let peers = match args.peers.as_deref().or(file.peers.as_deref()) {
        Some(p) => parse_peers(p).map_err(|e| anyhow::anyhow!("--peers: {e}"))?,
        None => Default::default(),
    };
    let mut federation = file.federation.unwrap_or_default();
    if let Some(cells) = &args.federation {
        federation.cells =
            titan_scheduler::federation::parse_cells(cells).map_err(|e| anyhow::anyhow!("--federation: {e}"))?;
    }
    let config = CellConfig {
        cell: args.cell.or(file.cell).context("--cell is required")?,
        node_id: args.node_id.or(file.node_id).context("--node-id is required")?,
        listen,
        advertise: args.advertise.or(file.advertise),
        peers,
        data_dir: args.data_dir.or(file.data_dir).context("--data-dir is required")?,
        raft: file.raft.unwrap_or_default(),
        scheduler: file.scheduler.unwrap_or_default(),
        federation,
        autoscaler: file.autoscaler.unwrap_or_default(),
        auth: file.auth.unwrap_or_default(),
        tls: args.tls.files(file.tls)?,
    };
    serve(config, false).await
}

pub async fn dev(args: DevArgs) -> anyhow::Result<()> {
    init_logging(&args.log);
    let admin_token = args.data_dir.join(titan_scheduler::config::BOOTSTRAP_TOKEN_FILE);
    let one = |cell: &str, listen: SocketAddr, data_dir: PathBuf| CellConfig {
        cell: cell.into(),
        node_id: 1,
        listen,
        advertise: None,
        peers: [(1, listen.into())].into_iter().collect(),
        data_dir,
        raft: RaftTuning::default(),
        scheduler: Default::default(),
        federation: Default::default(),
        autoscaler: Default::default(),
        auth: titan_scheduler::config::AuthConfig {
            enabled: !args.no_auth,
            metrics_need_token: false,
            // One admin token for every dev cell, where the CLI looks.
            bootstrap_token_file: Some(admin_token.clone()),
        },
        // A dev cell serves plain HTTP on loopback.
        tls: None,
    };
    if args.cells.is_empty() {
        let mut config = one("dev", args.listen, args.data_dir);
        if args.fleet_max > 0 {
            config.autoscaler = dev_fleet(args.fleet_max, docker_runs().await);
        }
        return serve(config, true).await;
    }
    // A federation on this machine: cell i listens at port + 2i, its local agent at the port after it.
    let listen_of = |i: usize| -> anyhow::Result<SocketAddr> {
        let port = u16::try_from(usize::from(args.listen.port()) + 2 * i).context("--listen: no ports left")?;
        Ok(SocketAddr::new(args.listen.ip(), port))
    };
    let docker = args.fleet_max > 0 && docker_runs().await;
    let mut configs = Vec::new();
    for (i, cell) in args.cells.iter().enumerate() {
        let mut config = one(cell, listen_of(i)?, args.data_dir.join(cell));
        if args.fleet_max > 0 {
            config.autoscaler = dev_fleet(args.fleet_max, docker);
        }
        for (j, other) in args.cells.iter().enumerate().filter(|(j, _)| *j != i) {
            config.federation.cells.insert(other.clone(), vec![listen_of(j)?.into()]);
        }
        configs.push(config);
    }
    let cells = configs.into_iter().map(|c| serve(c, true));
    futures_util::future::try_join_all(cells).await?;
    Ok(())
}

async fn serve(config: CellConfig, dev: bool) -> anyhow::Result<()> {
    config.validate().context("invalid configuration")?;
    let registry = prometheus::Registry::new();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let cell = Cell::start(config.clone(), &registry).await?;
    let node = config.node_id.to_string();
    let app = cell.router(HttpMetrics::labelled(&registry, &[("cell", &config.cell), ("node", &node)])?);
    tracing::info!(cell = %config.cell, node = config.node_id, listen = %config.listen,
        advertise = %config.advertised(), tls = config.tls.is_some(), "member serving");
    let stop = Stop::on_signal();
    let mut server = match cell.tls() {
        Some(tls) => tokio::spawn(crate::https::serve(listener, app, tls.acceptor(), stop.wait())),
        None => {
            // Small request/response exchanges (Raft, forwarded writes) must not wait on Nagle's algorithm.
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::warn!(error = %e, "TCP_NODELAY");
                }
            });
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            tokio::spawn(axum::serve(listener, app).with_graceful_shutdown(stop.wait()).into_future())
        }
    };
    if dev {
        let url = format!("http://{}", config.listen);
        let client = titan_api::Client::new(&url);
        while !client.ready().await && !server.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // With authentication on, the bootstrap admin token (the leader writes it at once): the local agent uses it.
        let token_file = config.bootstrap_token_file();
        let mut token = None;
        while config.auth.enabled && token.is_none() && !server.is_finished() {
            token = std::fs::read_to_string(&token_file).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // The local agent: this machine registers with the dev cell, as `titan agent` would.
        let agent_dir = config.data_dir.join("agent");
        let agent_addr = SocketAddr::new(config.listen.ip(), config.listen.port().wrapping_add(1));
        match local_agent(&url, &agent_dir, agent_addr, token).await {
            Ok(kind) => {
                println!("Local agent on {agent_addr} runs tasks with the {kind} runtime; see `titan node list`.")
            }
            Err(e) => eprintln!("titan dev: no local agent: {e:#}"),
        }
        if config.federation.is_federated() {
            println!("cell {} ready at {url} (data in {})", config.cell, config.data_dir.display());
            if config.auth.enabled && config.cell == first_cell(&config) {
                println!("Tokens are on: the CLI sends the admin token in {}", token_file.display());
            }
        } else {
            println!("Titan dev cell is ready at {url} (data in {})", config.data_dir.display());
            if config.auth.enabled {
                println!("Tokens are on: the CLI sends the admin token in {}", token_file.display());
            }
            println!("Try:  titan job run examples/hello.yaml && titan job list");
            let auth = if config.auth.enabled {
                format!(" -H \"Authorization: Bearer $(cat {})\"", token_file.display())
            } else {
                String::new()
            };
            println!(
                "  or: curl -s {url}/v1/jobs{auth} -H 'content-type: application/yaml' --data-binary @examples/hello.yaml"
            );
        }
    }
    tokio::select! {
        served = &mut server => served.context("server task")??,
        () = stop.wait() => {
            // Graceful shutdown waits for requests in flight, and some never end by themselves: an agent's
            // assignments long-poll lasts up to 10 s, a followed log or event stream has no end. Those are
            // cut after a short drain; their clients retry elsewhere or later, as after any lost connection.
            tracing::info!("stopping: draining requests in flight");
            match tokio::time::timeout(DRAIN, &mut server).await {
                Ok(served) => served.context("server task")??,
                Err(_) => {
                    tracing::info!(drain_ms = DRAIN.as_millis() as u64, "requests still in flight are cut");
                    server.abort();
                }
            }
        }
    }
    tracing::info!("shutting down");
    cell.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// How long requests in flight may take to finish once a member is told to stop.
const DRAIN: std::time::Duration = std::time::Duration::from_millis(300);

/// The stop signal (SIGINT or SIGTERM), heard once and handed to everything that must end with the process.
#[derive(Clone)]
struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    fn on_signal() -> Stop {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            stopped().await;
            let _ = tx.send(true);
        });
        Stop(rx)
    }

    /// Resolves once the signal came.
    fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            // An error means the sender is gone, which only happens once the runtime is ending.
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }
}

/// Starts the dev cell's agent in this process: its HTTP server and its task supervisor, both ending with the
/// process. It runs containers when a Docker engine answers, host processes otherwise; returns which.
async fn local_agent(
    cell_url: &str,
    data_dir: &Path,
    addr: SocketAddr,
    token: Option<String>,
) -> anyhow::Result<&'static str> {
    let id = titan_agent::node::agent_id(data_dir)?;
    let attributes = [("zone".to_string(), "dev".to_string())].into_iter().collect();
    let registration = titan_agent::node::describe(
        id,
        addr.to_string(),
        data_dir,
        &titan_agent::node::Declared::default(),
        attributes,
    );
    registration.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let registry = prometheus::Registry::new();
    let metrics = titan_agent::daemon::LeaseMetrics::new(&registry)?;
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let kind = if docker_runs().await { "docker" } else { "process" };
    let supervisor = supervisor(&registration, runtime(kind, data_dir, loopback)?, data_dir, None, &registry)?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let app = titan_agent::server::router(registry, data_dir.join("logs"));
    tokio::spawn(axum::serve(listener, app).into_future());
    let mut client = titan_api::Client::new(cell_url);
    if let Some(t) = token {
        client = client.token(t);
    }
    // It is never told to stop: it ends with the process, leaving its tasks running (the supervisor's shutdown
    // would stop host processes), to be re-adopted at the next start.
    tokio::spawn(titan_agent::daemon::run_supervised(
        client,
        registration,
        metrics,
        supervisor,
        std::future::pending::<()>(),
    ));
    Ok(kind)
}

/// Whether a Docker engine answers on this machine.
async fn docker_runs() -> bool {
    match titan_agent::runtime::DockerRuntime::connect("127.0.0.1".to_string()) {
        Ok(d) => d.ping().await.is_ok(),
        Err(_) => false,
    }
}

/// `titan dev`'s autoscaled local fleet: up to `max` extra agents of 2 cpus and 2 GiB, started when tasks do not
/// fit and drained and stopped a minute after they are no longer needed.
fn dev_fleet(max: u32, docker: bool) -> titan_autoscaler::config::AutoscalerConfig {
    use titan_autoscaler::config::{AutoscalerConfig, FleetKind, GroupConfig};
    use titan_autoscaler::policy::{PolicyConfig, ReactiveConfig};
    AutoscalerConfig {
        interval_ms: 2_000,
        groups: vec![GroupConfig {
            name: "local".into(),
            fleet: FleetKind::Local,
            asg: None,
            min: 0,
            max,
            slots: 2,
            memory_mib: 2048,
            boot_delay_ms: 5_000,
            boot_grace_ms: 120_000,
            max_drain_share: 1.0,
            local_runtime: if docker { "docker" } else { "process" }.into(),
            policy: PolicyConfig::Reactive(ReactiveConfig {
                headroom: 0,
                scale_in_cooldown_s: 60,
                ..Default::default()
            }),
        }],
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn stopped() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
