//! Fleets: the async shell a group's decisions act through. A fleet describes its instances, grows to a size and
//! removes chosen instances (shrinking with them); nothing else. Which instances to remove, and when it is safe, is
//! decided in pure code (`plan`), never by a fleet. `Simulated` keeps its instances in memory, for the loop's tests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

pub type FleetFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, FleetError>> + Send + 'a>>;

/// Where an instance stands, as its fleet reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Launched, not running yet (booting).
    Pending,
    Running,
    /// Being removed.
    Terminating,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::Terminating => "terminating",
        }
    }
}

/// One instance of a fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The fleet's id (an EC2 instance id, a local process's name); agents carry it as their `instanceId` attribute.
    pub id: String,
    pub state: InstanceState,
    /// When it was launched (ms since the epoch).
    pub launched_ms: u64,
}

/// Why a fleet call failed, by kind (the `kind` label of `titan_fleet_errors_total`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    #[error("throttled: {0}")]
    Throttled(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("credentials refused: {0}")]
    Auth(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{0}")]
    Other(String),
}

impl FleetError {
    /// Every `kind`.
    pub const KINDS: [&'static str; 5] = ["throttled", "not_found", "auth", "timeout", "other"];

    pub fn kind(&self) -> &'static str {
        match self {
            FleetError::Throttled(_) => "throttled",
            FleetError::NotFound(_) => "not_found",
            FleetError::Auth(_) => "auth",
            FleetError::Timeout(_) => "timeout",
            FleetError::Other(_) => "other",
        }
    }

    /// Whether trying again later may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, FleetError::Throttled(_) | FleetError::Timeout(_) | FleetError::Other(_))
    }
}

/// What carries out a group's decisions.
pub trait Fleet: Send + Sync {
    /// Every instance of the group that is not gone.
    fn describe(&self) -> FleetFuture<'_, Vec<Instance>>;
    /// Launches instances until the group has `size` (never shrinks).
    fn grow(&self, size: u32) -> FleetFuture<'_, ()>;
    /// Removes these instances, the group's size falling with them.
    fn remove(&self, ids: Vec<String>) -> FleetFuture<'_, ()>;
    /// Protects `busy` instances from the fleet's own scale-in and lifts it from `idle` ones (a fleet that never
    /// scales in by itself has nothing to do).
    fn protect(&self, busy: Vec<String>, idle: Vec<String>) -> FleetFuture<'_, ()> {
        let _ = (busy, idle);
        Box::pin(async { Ok(()) })
    }
}

/// Instances in memory that boot after `boot_ms` of the caller's clock (`now`), for tests and the trace.
pub struct Simulated {
    boot_ms: u64,
    now: Box<dyn Fn() -> u64 + Send + Sync>,
    instances: Mutex<Vec<Instance>>,
    next: Mutex<u64>,
    /// Calls to fail next, for fault tests.
    pub fail_next: Mutex<Vec<FleetError>>,
}

impl Simulated {
    pub fn new(boot_ms: u64, now: impl Fn() -> u64 + Send + Sync + 'static) -> Simulated {
        Simulated {
            boot_ms,
            now: Box::new(now),
            instances: Mutex::new(Vec::new()),
            next: Mutex::new(0),
            fail_next: Mutex::new(Vec::new()),
        }
    }

    fn fault(&self) -> Result<(), FleetError> {
        match self.fail_next.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Fleet for Simulated {
    fn describe(&self) -> FleetFuture<'_, Vec<Instance>> {
        Box::pin(async move {
            self.fault()?;
            let now = (self.now)();
            let mut all = self.instances.lock().unwrap_or_else(|p| p.into_inner());
            for i in all.iter_mut() {
                if i.state == InstanceState::Pending && now >= i.launched_ms + self.boot_ms {
                    i.state = InstanceState::Running;
                }
            }
            Ok(all.clone())
        })
    }

    fn grow(&self, size: u32) -> FleetFuture<'_, ()> {
        Box::pin(async move {
            self.fault()?;
            let now = (self.now)();
            let mut all = self.instances.lock().unwrap_or_else(|p| p.into_inner());
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            while (all.len() as u32) < size {
                *next += 1;
                all.push(Instance { id: format!("sim-{:04}", *next), state: InstanceState::Pending, launched_ms: now });
            }
            Ok(())
        })
    }

    fn remove(&self, ids: Vec<String>) -> FleetFuture<'_, ()> {
        Box::pin(async move {
            self.fault()?;
            let mut all = self.instances.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(missing) = ids.iter().find(|id| !all.iter().any(|i| &i.id == *id)) {
                return Err(FleetError::NotFound(format!("instance {missing}")));
            }
            all.retain(|i| !ids.contains(&i.id));
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn kinds_lists_every_kind() {
        let all = [
            FleetError::Throttled(String::new()),
            FleetError::NotFound(String::new()),
            FleetError::Auth(String::new()),
            FleetError::Timeout(String::new()),
            FleetError::Other(String::new()),
        ];
        assert_eq!(all.map(|e| e.kind()), FleetError::KINDS);
    }

    #[tokio::test]
    async fn a_simulated_fleet_boots_grows_removes_and_fails_on_demand() {
        let clock = Arc::new(AtomicU64::new(1_000));
        let c = clock.clone();
        let fleet = Simulated::new(500, move || c.load(Ordering::SeqCst));
        fleet.grow(3).await.expect("grows");
        fleet.grow(2).await.expect("never shrinks");
        let all = fleet.describe().await.expect("describes");
        assert_eq!((all.len(), all[0].state), (3, InstanceState::Pending));
        clock.store(1_600, Ordering::SeqCst);
        assert!(fleet.describe().await.expect("describes").iter().all(|i| i.state == InstanceState::Running));
        fleet.remove(vec!["sim-0002".into()]).await.expect("removes");
        assert_eq!(fleet.describe().await.expect("describes").len(), 2);
        assert_eq!(fleet.remove(vec!["nope".into()]).await.unwrap_err().kind(), "not_found");
        fleet.fail_next.lock().unwrap().push(FleetError::Throttled("Rate exceeded".into()));
        let e = fleet.grow(9).await.unwrap_err();
        assert!(e.retryable() && e.kind() == "throttled");
    }
}
