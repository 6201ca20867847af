//! What the member's workers may use of it: its Raft, its applied state, its proposer, its configuration and the
//! agents' leases. Narrower than `Cell` on purpose: a worker reads the state and commits commands; it does not
//! serve the API or change the membership.

use super::*;

/// When the leader last heard from each agent and the lease it gave it. Leader-local: a new leader starts empty
/// and hears from every live agent within a lease.
#[derive(Default)]
pub(crate) struct Leases(std::sync::Mutex<HashMap<String, crate::lease::Heard>>);

impl Leases {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, crate::lease::Heard>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A member as its workers see it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Handle {
    raft: Raft,
    state: SharedState,
    pub(super) proposer: Arc<Proposer>,
    pub(super) config: Arc<CellConfig>,
    leases: Arc<Leases>,
    changes: Arc<crate::state::Changes>,
    scheduling: Arc<crate::scheduling::Local>,
    cells: Arc<super::federation::cells::Cells>,
    /// For calls to other cells (trial placements, endpoints); HTTPS with this member's certificate under `[tls]`.
    pub(crate) http: titan_api::tls::PeerHttp,
    /// This member's TLS as a client, when `[tls]` is set.
    pub(crate) tls: Option<titan_api::tls::ClientTls>,
}

impl Handle {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        raft: Raft,
        state: SharedState,
        proposer: Arc<Proposer>,
        config: Arc<CellConfig>,
        leases: Arc<Leases>,
        changes: Arc<crate::state::Changes>,
        scheduling: Arc<crate::scheduling::Local>,
        cells: Arc<super::federation::cells::Cells>,
        tls: Option<titan_api::tls::ClientTls>,
    ) -> Handle {
        let builder = reqwest::Client::builder().pool_max_idle_per_host(2).connect_timeout(Duration::from_millis(500));
        let http = titan_api::tls::PeerHttp::new(builder, tls.as_ref())
            .expect("a client with a loaded TLS configuration always builds");
        Handle { raft, state, proposer, config, leases, changes, scheduling, cells, http, tls }
    }

    /// How this member sees each other cell.
    pub(crate) fn sees(&self) -> BTreeMap<String, String> {
        self.cells.sees(&self.config.federation)
    }

    /// How long each other cell has been silent here, and how the cells heard see the others.
    pub(crate) fn heard(
        &self,
        since_start: Duration,
    ) -> (BTreeMap<String, Duration>, BTreeMap<String, BTreeMap<String, String>>) {
        self.cells.silences(&self.config.federation, since_start)
    }

    /// The other cells' figures as this member heard them.
    pub(crate) fn elsewhere(&self) -> super::federation::cells::Seen<'_> {
        super::federation::cells::Seen::new(&self.cells, &self.config.federation)
    }
}

impl super::federation::worker::Host for Handle {
    fn config(&self) -> &CellConfig {
        &self.config
    }

    fn is_leader(&self) -> bool {
        crate::scheduling::Host::is_leader(self)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, crate::state::CellState> {
        crate::scheduling::Host::read(self)
    }

    fn pending_reason(&self, task: &str) -> Option<String> {
        self.scheduling.pending(task)
    }

    fn tls(&self) -> Option<&titan_api::tls::ClientTls> {
        self.tls.as_ref()
    }

    fn leader_and_members(&self) -> (Option<String>, Vec<String>) {
        let m = self.raft.metrics().borrow().clone();
        let nodes: BTreeMap<NodeId, String> =
            m.membership_config.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
        let leader = m.current_leader.and_then(|l| nodes.get(&l).cloned());
        (leader, nodes.into_values().collect())
    }
}

impl crate::scheduling::Host for Handle {
    fn raft(&self) -> &Raft {
        &self.raft
    }

    fn config(&self) -> &CellConfig {
        &self.config
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.config.node_id)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, crate::state::CellState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn take_dirty_jobs(&self) -> BTreeSet<String> {
        self.changes.take_dirty_jobs()
    }

    fn capacity_seq(&self) -> u64 {
        self.changes.capacity_seq()
    }

    fn heartbeats(&self) -> HashMap<String, crate::lease::Heard> {
        self.leases.lock().clone()
    }

    fn changed(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.changes.changed()
    }

    fn with_elsewhere<T>(&self, f: impl FnOnce(&dyn crate::location::Elsewhere) -> T) -> T {
        f(&self.elsewhere())
    }

    async fn commit_round(&self, cmd: Command) -> Result<crate::command::RoundOutcome, ApiError> {
        typed(self.proposer.commit_command(cmd).await?)
    }
}
