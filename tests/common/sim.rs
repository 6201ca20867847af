//! Simulated agents: the real agent protocol (register, heartbeat, long-poll assignments, status reports) with a
//! runtime that does nothing, so one process can stand in for thousands of machines. Every launch is recorded,
//! so a test can check that no task ever ran twice.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use titan_api::agent::{AgentRegistration, AgentResources};
use titan_api::task::{Desired, StatusReport, TaskHealth, TaskState, TaskStatus};
use titan_api::Client;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What every simulated agent did, shared.
#[derive(Default)]
pub struct Record {
    /// (agent, task) in the order they were started.
    pub launches: Mutex<Vec<(String, String)>>,
    /// Plans refused because their lease epoch was not the agent's.
    pub refused: Mutex<u64>,
    /// When each task was first reported running.
    pub running_at: Mutex<HashMap<String, Instant>>,
    /// Each launched task's job.
    pub job_of: Mutex<HashMap<String, String>>,
}

/// One simulated agent. Dropping the handle (or `stop`) ends its loops, as a machine that dies would.
pub struct SimAgent {
    pub id: String,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SimAgent {
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for SimAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn registration(id: &str, cpus: f64, memory_mib: u64, zone: &str) -> AgentRegistration {
    AgentRegistration {
        id: id.to_string(),
        hostname: id.to_string(),
        addr: "127.0.0.1:9".into(),
        resources: AgentResources { cpus, memory_mib, disk_mib: 1_000_000, port_ranges: vec![(20000, 29999)] },
        attributes: BTreeMap::from([("zone".to_string(), zone.to_string())]),
        running: Vec::new(),
    }
}

/// Starts an agent that talks to the cell members in `addrs` (trying the next one when one does not answer).
pub fn start(addrs: Vec<String>, registration: AgentRegistration, record: Arc<Record>) -> SimAgent {
    let clients: Vec<Client> = addrs.iter().map(|a| Client::new(a)).collect();
    start_with(clients, registration, record)
}

/// As `start`, with clients made by the caller (many agents can share one connection pool).
pub fn start_with(clients: Vec<Client>, registration: AgentRegistration, record: Arc<Record>) -> SimAgent {
    let stop = Arc::new(AtomicBool::new(false));
    let id = registration.id.clone();
    let epoch = Arc::new(Mutex::new(0u64));
    let beat = {
        let (clients, stop, epoch, reg) = (clients.clone(), stop.clone(), epoch.clone(), registration.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            // As the agent does, failed calls back off with jitter: a fleet that failed together does not retry
            // together.
            let mut failures = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let c = &clients[i % clients.len()];
                let current = *epoch.lock().expect("epoch");
                let mut pause = Duration::from_millis(100);
                let ok = if current == 0 {
                    match c.register_agent(&reg).await {
                        Ok(v) => {
                            *epoch.lock().expect("epoch") = v.lease_epoch;
                            true
                        }
                        Err(_) => false,
                    }
                } else {
                    match c.heartbeat(&reg.id, current).await {
                        Ok(lease) => {
                            pause = Duration::from_millis(lease.lease_ms / 3);
                            true
                        }
                        Err(e) if e.code() == Some(titan_api::ErrorCode::Conflict) => {
                            *epoch.lock().expect("epoch") = 0;
                            true
                        }
                        Err(_) => false,
                    }
                };
                if ok {
                    failures = 0;
                } else {
                    i += 1;
                    failures += 1;
                    let backoff = pause.saturating_mul(1 << failures.min(7)).min(Duration::from_secs(10));
                    use std::hash::{BuildHasher, RandomState};
                    let r = RandomState::new().hash_one(Instant::now()) % 1_024;
                    pause = backoff / 2 + (backoff / 2).mul_f64(r as f64 / 1_024.0);
                }
                tokio::time::sleep(pause).await;
            }
        })
    };
    let work = {
        let (clients, stop, epoch, id) = (clients, stop.clone(), epoch, id.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            let mut after: Option<u64> = None;
            let mut known: HashMap<String, TaskState> = HashMap::new();
            let mut unsent: Vec<TaskStatus> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let held = *epoch.lock().expect("epoch");
                if held == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let c = &clients[i % clients.len()];
                // As long as a real agent waits.
                let a = match c.assignments(&id, after, titan_agent::daemon::ASSIGNMENTS_WAIT).await {
                    Ok(a) => a,
                    Err(_) => {
                        i += 1;
                        after = None;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if a.lease_epoch != held {
                    *record.refused.lock().expect("refused") += 1;
                    after = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                after = Some(a.version);
                let listed: std::collections::HashSet<&str> = a.tasks.iter().map(|t| t.task_id.as_str()).collect();
                known.retain(|t, _| listed.contains(t.as_str()));
                for t in &a.tasks {
                    let status = |state| TaskStatus {
                        task_id: t.task_id.clone(),
                        state,
                        reason: None,
                        message: None,
                        exit_code: None,
                        health: TaskHealth::Unknown,
                        at_ms: now_ms(),
                    };
                    match (t.desired, known.get(&t.task_id)) {
                        (Desired::Run, None) => {
                            record.launches.lock().expect("launches").push((id.clone(), t.task_id.clone()));
                            record.job_of.lock().expect("job_of").insert(t.task_id.clone(), t.job_id.clone());
                            known.insert(t.task_id.clone(), TaskState::Running);
                            unsent.push(status(TaskState::Running));
                        }
                        (Desired::Stop, Some(TaskState::Running)) | (Desired::Stop, None) => {
                            known.insert(t.task_id.clone(), TaskState::Killed);
                            unsent.push(status(TaskState::Killed));
                        }
                        _ => {}
                    }
                }
                if unsent.is_empty() {
                    continue;
                }
                let report = StatusReport { lease_epoch: held, statuses: unsent.clone() };
                match c.report_status(&id, &report).await {
                    Ok(_) => {
                        let now = Instant::now();
                        let mut at = record.running_at.lock().expect("running_at");
                        for s in unsent.drain(..).filter(|s| s.state == TaskState::Running) {
                            at.entry(s.task_id).or_insert(now);
                        }
                    }
                    Err(e) if e.code() == Some(titan_api::ErrorCode::Conflict) => {
                        // A new registration follows; the cell decides then what of ours it still wants.
                        *epoch.lock().expect("epoch") = 0;
                        unsent.clear();
                    }
                    Err(_) => i += 1,
                }
            }
        })
    };
    SimAgent { id, stop, tasks: vec![beat, work] }
}
