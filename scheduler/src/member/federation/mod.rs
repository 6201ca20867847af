//! The member's side of federation: the routes other cells call (a pushed batch, committed as one `Merge`; a
//! heartbeat, answered with this cell's own), the cells view behind `GET /v1/cells`, and the check that a job names
//! only locations the federation has.

use super::*;
use crate::command::MergeOutcome;
use crate::federation::wire::{Beat, Differs, DigestOf, Push, Pushed, BEAT_PATH, CONTENT_TYPE, DIGEST_PATH, PUSH_PATH};

pub(super) mod cells;
pub(super) mod worker;

use cells::state_of;

/// The routes other cells call, with a body limit fit for a batch.
pub(super) fn routes(cell: Arc<Cell>) -> Router {
    Router::new()
        .route(PUSH_PATH, post(push))
        .route(BEAT_PATH, post(heartbeat))
        .route(DIGEST_PATH, post(digest))
        .route(crate::federation::wire::TRIAL_PATH, post(trial))
        .layer(axum::extract::DefaultBodyLimit::max(crate::raft::MAX_INTERNAL_BODY))
        .with_state(cell)
}

fn packed<T: Serialize>(value: &T) -> HttpResponse {
    match rmp_serde::to_vec_named(value) {
        Ok(b) => ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], b).into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

impl Cell {
    /// A refusal of another cell's call, counted by reason.
    fn refuse(&self, reason: &str, error: ApiError) -> HttpResponse {
        self.federation.refused.with_label_values(&[reason]).inc();
        tracing::warn!(reason, error = %error, "refused a call from another cell");
        error.into_response()
    }

    fn check_sender(&self, from: &str) -> Result<(), ApiError> {
        if self.config.federation.cells.contains_key(from) {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("cell {from:?} is not in cell {}'s federation ({})", self.config.cell, self.known_cells()),
        )
        .with_field("from"))
    }

    fn known_cells(&self) -> String {
        self.config.federation.locations(&self.config.cell).join(", ")
    }

    /// This cell's heartbeat, as this member sees it.
    pub(crate) fn beat(&self) -> Beat {
        let (leader, members) = self.leader_and_members();
        let state = self.read();
        let positions = self.config.federation.cells.keys().map(|c| (c.clone(), state.position(c))).collect();
        Beat {
            cell: self.config.cell.clone(),
            leader,
            members,
            outbox_seq: state.outbox_seq(),
            positions,
            summaries: Default::default(),
            sees: self.handle.sees(),
        }
    }

    pub(crate) fn leader_and_members(&self) -> (Option<String>, Vec<String>) {
        let (_, nodes) = self.members();
        let leader = self.raft.metrics().borrow().current_leader.and_then(|l| nodes.get(&l).cloned());
        (leader, nodes.into_values().collect())
    }

    /// The locations of `counts` no cell this one knows runs (for a standalone cell's answer).
    pub(crate) fn unseen<'a>(&self, locations: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        let f = &self.config.federation;
        locations.into_iter().filter(|l| **l != self.config.cell && !f.cells.contains_key(*l)).cloned().collect()
    }

    /// Refuses a job whose counts name a location the federation has not, in a federation; a standalone cell
    /// takes any location.
    pub(crate) fn check_locations<'a>(&self, locations: impl IntoIterator<Item = &'a String>) -> Result<(), ApiError> {
        let f = &self.config.federation;
        if !f.is_federated() {
            return Ok(());
        }
        for location in locations {
            if *location != self.config.cell && !f.cells.contains_key(location) {
                return Err(ApiError::new(
                    ErrorCode::UnknownLocation,
                    format!(
                        "no cell of this federation is location {location:?}; the locations are {}",
                        self.known_cells()
                    ),
                )
                .with_field("location"));
            }
        }
        Ok(())
    }

    /// Refuses a failover preference naming a location the federation has not (in a federation).
    pub(crate) fn check_failover(&self, spec: &crate::spec::Spec) -> Result<(), ApiError> {
        for (i, l) in spec.failover.iter().enumerate() {
            self.check_locations(std::iter::once(l)).map_err(|e| e.with_field(format!("failover[{i}]")))?;
        }
        Ok(())
    }

    /// The job in each location: this cell's figures now, the others' as their cells last reported them.
    pub(crate) fn location_views(&self, job: &crate::job::JobRecord) -> Vec<titan_api::view::LocationView> {
        let f = &self.config.federation;
        let (suspect, down) = (Duration::from_millis(f.suspect_ms), Duration::from_millis(f.down_ms));
        let heard = self.cells.last_heard();
        let mut locations: BTreeSet<&String> = job.counts.keys().collect();
        locations.extend(f.cells.keys());
        locations.insert(&self.config.cell);
        locations
            .into_iter()
            .map(|location| {
                let desired = job.counts.get(location).copied().unwrap_or(0);
                let mut view = titan_api::view::LocationView {
                    location: location.clone(),
                    desired,
                    running: 0,
                    pending: 0,
                    pending_reason: None,
                    cell_state: "unknown".into(),
                    age_ms: None,
                };
                if *location == self.config.cell {
                    let (running, pending, first) = {
                        let state = self.read();
                        let (running, pending, first) = state.figures(&job.id);
                        (running, pending, first.map(String::from))
                    };
                    view.running = running;
                    view.pending = pending;
                    view.pending_reason = first.and_then(|t| self.scheduling.pending(&t));
                    view.cell_state = "self".into();
                    view.age_ms = Some(0);
                } else if f.cells.contains_key(location) {
                    let silent = heard.get(location).copied().flatten().map(|t| t.elapsed());
                    view.cell_state = state_of(silent, suspect, down).into();
                    if let Some((s, age)) = self.cells.summary(location, &job.id) {
                        view.running = s.running;
                        view.pending = s.pending;
                        view.pending_reason = s.pending_reason;
                        // A heartbeat carries only the figures that changed, so each one since says these stand.
                        let age = silent.map_or(age, |since| since.min(age));
                        view.age_ms = Some(age.as_millis() as u64);
                    }
                }
                view
            })
            .collect()
    }

    /// Every cell of the federation as this member sees it.
    pub(crate) fn cell_views(&self) -> Vec<titan_api::view::CellView> {
        let f = &self.config.federation;
        let (suspect, down) = (Duration::from_millis(f.suspect_ms), Duration::from_millis(f.down_ms));
        let me = self.beat();
        let state = self.read();
        let mut views = vec![titan_api::view::CellView {
            name: me.cell.clone(),
            state: "self".into(),
            members: me.members.clone(),
            leader: me.leader.clone(),
            last_heard_ms_ago: None,
            changes_to_send: 0,
            changes_to_receive: 0,
            lag_in_ms: None,
        }];
        for (name, addrs) in &f.cells {
            let heard = self.cells.get(name).unwrap_or_default();
            let silent = heard.at.map(|t| t.elapsed());
            let merged_ours = heard.beat.positions.get(&me.cell).copied().unwrap_or(0);
            views.push(titan_api::view::CellView {
                name: name.clone(),
                state: state_of(silent, suspect, down).into(),
                members: if heard.beat.members.is_empty() {
                    addrs.iter().map(|a| a.to_string()).collect()
                } else {
                    heard.beat.members.clone()
                },
                leader: heard.beat.leader.clone(),
                last_heard_ms_ago: silent.map(|s| s.as_millis() as u64),
                changes_to_send: heard.beat.outbox_seq.saturating_sub(state.position(name)),
                changes_to_receive: state.outbox_waiting(merged_ours) as u64,
                lag_in_ms: heard.lag_in.map(|l| l.as_millis() as u64),
            });
        }
        views
    }
}

/// `POST /internal/federation/push`: another cell's batch, merged as one command.
async fn push(State(cell): State<Arc<Cell>>, body: axum::body::Bytes) -> HttpResponse {
    let push: Push = match rmp_serde::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return cell.refuse("malformed", ApiError::new(ErrorCode::MalformedBody, format!("not a batch: {e}")))
        }
    };
    if let Err(e) = cell.check_sender(&push.from) {
        return cell.refuse("unknown_cell", e);
    }
    let newest = push.jobs.iter().flat_map(|j| [j.versions.spec.ms, j.versions.enabled.ms]).max();
    let Push { from, upto, mut jobs, mut quotas, mut locations, mut tokens } = push;
    let n = jobs.len();
    // What this member has applied already holds is left out of the command (merging it would change nothing, and
    // a merge only moves registers forward), so a batch of jobs another cell relays costs a small entry.
    let already = {
        let state = cell.read();
        jobs.retain(|j| !state.covers(j));
        quotas.retain(|q| state.quota_record(&q.group).is_none_or(|ours| q.hlc > ours.hlc));
        locations.retain(|l| state.location(&l.name).is_none_or(|ours| l.hlc > ours.hlc));
        tokens.retain(|t| state.token(&t.name).is_none_or(|ours| t.hlc > ours.hlc));
        state.position(&from)
    };
    if jobs.is_empty() && quotas.is_empty() && locations.is_empty() && tokens.is_empty() && already >= upto {
        return packed(&Pushed { position: already, refused: Vec::new() });
    }
    let meta = Meta {
        who: format!("cell:{from}"),
        why: None,
        at_ms: now_ms(),
        request: uuid::Uuid::new_v4().to_string(),
        cell: cell.config.cell.clone(),
    };
    let cmd = Command::Merge {
        from: from.clone(),
        upto,
        jobs,
        max_skew_ms: cell.config.federation.max_skew_ms,
        tombstone_ms: cell.config.scheduler.tombstone_retention_ms,
        meta,
        quotas,
        locations,
        tokens,
    };
    let outcome: MergeOutcome = match cell.commit_as(cmd).await {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let m = &cell.federation;
    m.merged.with_label_values(&[&from]).inc_by(u64::from(outcome.changed));
    m.conflicts.with_label_values(&[&from]).inc_by(u64::from(outcome.conflicts));
    if !outcome.refused.is_empty() {
        m.refused.with_label_values(&["skew"]).inc_by(outcome.refused.len() as u64);
    }
    if let Some(newest) = newest {
        let lag = Duration::from_millis(now_ms().saturating_sub(newest));
        m.lag.with_label_values(&[&from]).set(lag.as_secs_f64());
        cell.cells.merged(&from, lag);
    }
    tracing::debug!(from = %from, jobs = n, changed = outcome.changed, position = outcome.position, "merged a batch");
    packed(&Pushed { position: outcome.position, refused: outcome.refused })
}

/// `POST /internal/federation/heartbeat`: another cell's state, answered with this one's.
async fn heartbeat(State(cell): State<Arc<Cell>>, body: axum::body::Bytes) -> HttpResponse {
    let beat: Beat = match rmp_serde::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return cell.refuse("malformed", ApiError::new(ErrorCode::MalformedBody, format!("not a heartbeat: {e}")))
        }
    };
    if let Err(e) = cell.check_sender(&beat.cell) {
        return cell.refuse("unknown_cell", e);
    }
    cell.cells.heard(beat);
    packed(&cell.beat())
}

/// `POST /internal/federation/digest`: another cell's digest, answered with this cell's job hashes in every bucket
/// where the two differ.
async fn digest(State(cell): State<Arc<Cell>>, body: axum::body::Bytes) -> HttpResponse {
    let theirs: DigestOf = match rmp_serde::from_slice(&body) {
        Ok(d) => d,
        Err(e) => {
            return cell.refuse("malformed", ApiError::new(ErrorCode::MalformedBody, format!("not a digest: {e}")))
        }
    };
    if let Err(e) = cell.check_sender(&theirs.from) {
        return cell.refuse("unknown_cell", e);
    }
    let (now, tombstones) = (now_ms(), cell.config.scheduler.tombstone_retention_ms);
    let state = cell.read();
    let differing = state.digest(now, tombstones).differing(&theirs.digest);
    let buckets = if differing.is_empty() { Vec::new() } else { state.bucket_entries(&differing, now, tombstones) };
    drop(state);
    tracing::debug!(from = %theirs.from, buckets = buckets.len(), "answered a digest");
    packed(&Differs { buckets })
}

/// `POST /internal/federation/trial`: another cell's evacuation plan asks what of its moves this cell's current
/// capacity would place (trying only: nothing is written).
async fn trial(State(cell): State<Arc<Cell>>, body: axum::body::Bytes) -> HttpResponse {
    let trial: crate::federation::wire::Trial = match rmp_serde::from_slice(&body) {
        Ok(t) => t,
        Err(e) => {
            return cell.refuse("malformed", ApiError::new(ErrorCode::MalformedBody, format!("not a trial: {e}")))
        }
    };
    if let Err(e) = cell.check_sender(&trial.from) {
        return cell.refuse("unknown_cell", e);
    }
    let handle = cell.handle.clone();
    match tokio::task::spawn_blocking(move || handle.trial_here(&trial.tasks)).await {
        Ok(tried) => packed(&tried),
        Err(e) => ApiError::internal(format!("trial placement: {e}")).into_response(),
    }
}
