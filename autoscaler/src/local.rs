//! The local fleet: `titan agent` processes on this machine, one per instance, for `titan dev` and tests. Each is
//! started with the group's shape, its own data directory and ports, and the attributes `instanceGroup=<group>` and
//! `instanceId=<id>`, which is how the cell maps an agent to its instance. Removing one sends it SIGTERM (its
//! tasks, drained already, are gone), then kills it if it lingers.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::fleet::{Fleet, FleetError, FleetFuture, Instance, InstanceState};

/// Where and how the local fleet starts agents.
#[derive(Clone, Debug)]
pub struct LocalSettings {
    /// The `titan` binary.
    pub binary: PathBuf,
    /// The cell's members, as `--cell-addr` takes them.
    pub cell_addr: String,
    /// Each agent's data directory is `<dir>/<instance id>`.
    pub dir: PathBuf,
    pub group: String,
    pub cpus: u32,
    pub memory_mib: u64,
    /// `docker` or `process`.
    pub runtime: String,
    /// Instance n serves on `first_port + n` and gives tasks ports from its own block above `port_blocks_from`.
    pub first_port: u16,
    pub port_blocks_from: u16,
    /// A file holding the token the agents present (`TITAN_TOKEN_FILE`), when the cell checks tokens.
    pub token_file: Option<PathBuf>,
    /// The TLS files the agents use (`TITAN_TLS_CERT`, `_KEY`, `_CA`), when the cell runs with TLS.
    pub tls: Option<LocalTls>,
}

/// A local agent's TLS files: the starting member's own, so its certificate must name 127.0.0.1 (where the agents
/// serve their logs), as `scripts/tls`'s certificates do.
#[derive(Clone, Debug)]
pub struct LocalTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

struct Running {
    instance: Instance,
    child: Child,
}

pub struct Local {
    settings: LocalSettings,
    running: Mutex<Vec<Running>>,
    next: Mutex<u32>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Local {
    pub fn new(settings: LocalSettings) -> Local {
        Local { settings, running: Mutex::new(Vec::new()), next: Mutex::new(0) }
    }

    fn start(&self, n: u32) -> Result<Running, FleetError> {
        let s = &self.settings;
        let id = format!("local-{}-{n}", s.group);
        let port = s.first_port.checked_add(n as u16).ok_or_else(|| FleetError::Other("out of ports".into()))?;
        let block = s.port_blocks_from.saturating_add((n as u16).saturating_mul(200));
        let log = std::fs::create_dir_all(s.dir.join(&id))
            .and_then(|()| std::fs::File::create(s.dir.join(&id).join("agent.log")))
            .map_err(|e| FleetError::Other(format!("{}: {e}", s.dir.display())))?;
        let err = log.try_clone().map_err(|e| FleetError::Other(e.to_string()))?;
        let mut command = Command::new(&s.binary);
        if let Some(f) = &s.token_file {
            command.env("TITAN_TOKEN_FILE", f);
        }
        match &s.tls {
            Some(tls) => {
                command.env("TITAN_TLS_CERT", &tls.cert).env("TITAN_TLS_KEY", &tls.key).env("TITAN_TLS_CA", &tls.ca);
            }
            // A cell without TLS (`titan dev`) has agents without it, whatever the environment it was started in.
            None => {
                command.env_remove("TITAN_TLS_CERT").env_remove("TITAN_TLS_KEY").env_remove("TITAN_TLS_CA");
            }
        }
        // The agent dies with the cell that started it (a killed dev cell leaves no agent behind).
        // SAFETY: `prctl` is async-signal-safe and touches nothing of the parent's state.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .arg("agent")
            .args(["--cell-addr", &s.cell_addr])
            .arg("--data-dir")
            .arg(s.dir.join(&id))
            .args(["--runtime", &s.runtime])
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .args(["--cpus", &s.cpus.to_string()])
            .args(["--memory-mib", &s.memory_mib.to_string()])
            .args(["--ports", &format!("{}-{}", block, block.saturating_add(199))])
            .args(["--attr", &format!("instanceGroup={}", s.group)])
            .args(["--attr", &format!("instanceId={id}")])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| FleetError::Other(format!("starting {}: {e}", s.binary.display())))?;
        tracing::info!(instance = %id, port, "local fleet: agent started");
        Ok(Running { instance: Instance { id, state: InstanceState::Running, launched_ms: now_ms() }, child })
    }
}

impl Fleet for Local {
    fn describe(&self) -> FleetFuture<'_, Vec<Instance>> {
        Box::pin(async move {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            // A process that exited is gone from the fleet.
            running.retain_mut(|r| !matches!(r.child.try_wait(), Ok(Some(_))));
            Ok(running.iter().map(|r| r.instance.clone()).collect())
        })
    }

    fn grow(&self, size: u32) -> FleetFuture<'_, ()> {
        Box::pin(async move {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            while (running.len() as u32) < size {
                *next += 1;
                running.push(self.start(*next)?);
            }
            Ok(())
        })
    }

    fn remove(&self, ids: Vec<String>) -> FleetFuture<'_, ()> {
        Box::pin(async move {
            let gone: Vec<Running> = {
                let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
                let (gone, kept) =
                    std::mem::take(&mut *running).into_iter().partition(|r| ids.contains(&r.instance.id));
                *running = kept;
                gone
            };
            for mut r in gone {
                terminate(&mut r.child).await;
                tracing::info!(instance = %r.instance.id, "local fleet: agent stopped");
            }
            Ok(())
        })
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        for r in self.running.get_mut().unwrap_or_else(|p| p.into_inner()).iter_mut() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}

/// SIGTERM, then SIGKILL after 5 s.
async fn terminate(child: &mut Child) {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    for _ in 0..50 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}
