//! What a snapshot file holds, format by format, and the explicit migration from each older format to the one
//! this build writes. A snapshot is the replicated records named field by field, never the live `CellState` (whose
//! derived indexes and apply-time bookkeeping are not stored): `CellState::into_snapshot` and `from_snapshot` are
//! the only ways across.
//!
//! A format is never changed in place. A new one gets a number, a type, and a step from the one before it, so a
//! member upgraded in place reads whatever its previous build wrote. Format 1 wrapped the live state and grew by
//! defaulted fields; format 2 stores each job's resolved counts and each task's spec version; format 3 adds
//! federation: each job's register versions and origin, the clock, the outbox and the positions merged; format 4
//! adds the capacity groups' quotas; format 5 the locations' lever records; format 6 the autoscaled groups' demand
//! history; format 7 the API tokens.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::agent::AgentRecord;
use crate::command::Response;
use crate::job::{JobRecord, Remembered};
use crate::key::Key;
use crate::quota::QuotaRecord;
use crate::spec::Spec;
use crate::task::TaskRecord;

/// The format this build writes.
pub const FORMAT: u32 = 7;

/// Format 7: format 6 and the API tokens.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotV7 {
    pub jobs: BTreeMap<String, Arc<JobRecord>>,
    pub idempotency: BTreeMap<String, Remembered>,
    pub agents: BTreeMap<Key, AgentRecord>,
    pub applied: HashMap<String, (u64, Response)>,
    pub tasks: BTreeMap<Key, Arc<TaskRecord>>,
    pub seq: u64,
    pub events_made: u64,
    pub clock: crate::federation::Clock,
    pub outbox: BTreeMap<u64, String>,
    pub outbox_seq: u64,
    pub positions: BTreeMap<String, u64>,
    pub quotas: BTreeMap<String, QuotaRecord>,
    pub locations: BTreeMap<String, crate::location::LocationRecord>,
    pub fleet: BTreeMap<String, titan_autoscaler::policy::History>,
    /// Every API token (revoked ones too), by name.
    pub tokens: BTreeMap<String, crate::token::TokenRecord>,
}

/// Format 6: format 5 and each autoscaled instance group's demand history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotV6 {
    pub jobs: BTreeMap<String, Arc<JobRecord>>,
    pub idempotency: BTreeMap<String, Remembered>,
    pub agents: BTreeMap<Key, AgentRecord>,
    pub applied: HashMap<String, (u64, Response)>,
    pub tasks: BTreeMap<Key, Arc<TaskRecord>>,
    pub seq: u64,
    pub events_made: u64,
    pub clock: crate::federation::Clock,
    pub outbox: BTreeMap<u64, String>,
    pub outbox_seq: u64,
    pub positions: BTreeMap<String, u64>,
    pub quotas: BTreeMap<String, QuotaRecord>,
    pub locations: BTreeMap<String, crate::location::LocationRecord>,
    /// Each autoscaled group's demand history.
    pub fleet: BTreeMap<String, titan_autoscaler::policy::History>,
}

/// Format 5: format 4 and the locations' lever records.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotV5 {
    pub jobs: BTreeMap<String, Arc<JobRecord>>,
    pub idempotency: BTreeMap<String, Remembered>,
    pub agents: BTreeMap<Key, AgentRecord>,
    pub applied: HashMap<String, (u64, Response)>,
    pub tasks: BTreeMap<Key, Arc<TaskRecord>>,
    pub seq: u64,
    pub events_made: u64,
    pub clock: crate::federation::Clock,
    pub outbox: BTreeMap<u64, String>,
    pub outbox_seq: u64,
    pub positions: BTreeMap<String, u64>,
    pub quotas: BTreeMap<String, QuotaRecord>,
    /// Each location's lever record.
    pub locations: BTreeMap<String, crate::location::LocationRecord>,
}

/// Format 4: format 3 and the quotas.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotV4 {
    pub jobs: BTreeMap<String, Arc<JobRecord>>,
    pub idempotency: BTreeMap<String, Remembered>,
    pub agents: BTreeMap<Key, AgentRecord>,
    pub applied: HashMap<String, (u64, Response)>,
    pub tasks: BTreeMap<Key, Arc<TaskRecord>>,
    pub seq: u64,
    pub events_made: u64,
    pub clock: crate::federation::Clock,
    pub outbox: BTreeMap<u64, String>,
    pub outbox_seq: u64,
    pub positions: BTreeMap<String, u64>,
    /// Each capacity group's quota.
    pub quotas: BTreeMap<String, QuotaRecord>,
}

/// Format 3: format 2's records (jobs now with their register versions and origin) and the federation state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotV3 {
    pub jobs: BTreeMap<String, Arc<JobRecord>>,
    pub idempotency: BTreeMap<String, Remembered>,
    pub agents: BTreeMap<Key, AgentRecord>,
    pub applied: HashMap<String, (u64, Response)>,
    pub tasks: BTreeMap<Key, Arc<TaskRecord>>,
    pub seq: u64,
    pub events_made: u64,
    pub clock: crate::federation::Clock,
    /// Jobs changed, by change number.
    pub outbox: BTreeMap<u64, String>,
    pub outbox_seq: u64,
    /// How far this cell merged each other cell's outbox.
    pub positions: BTreeMap<String, u64>,
}

/// Format 2: the replicated records.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotV2 {
    pub jobs: BTreeMap<String, Arc<JobRecord>>,
    pub idempotency: BTreeMap<String, Remembered>,
    pub agents: BTreeMap<Key, AgentRecord>,
    /// Answers of recently applied requests by id, with when they were applied.
    pub applied: HashMap<String, (u64, Response)>,
    pub tasks: BTreeMap<Key, Arc<TaskRecord>>,
    pub seq: u64,
    /// The id of the last event made (event ids are counted in the replicated state).
    pub events_made: u64,
}

/// Why a snapshot file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the snapshot is not a snapshot file: {0}")]
    Envelope(serde_json::Error),
    #[error("snapshot format {0} is newer than this build reads (up to {FORMAT}): upgrade this member")]
    Newer(u32),
    #[error("snapshot format {0} is not one Titan ever wrote")]
    Unknown(u32),
    #[error("snapshot format {format} does not decode: {error}")]
    Body { format: u32, error: serde_json::Error },
    #[error("migrating a format 1 snapshot: {0}")]
    Migrate(String),
}

/// The file as written: the format number, then the body in that format.
#[derive(Serialize)]
struct FileRef<'a> {
    format: u32,
    body: &'a SnapshotV7,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    format: u32,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// Writes `snapshot` in the current format.
pub fn write(w: impl std::io::Write, snapshot: &SnapshotV7) -> serde_json::Result<()> {
    serde_json::to_writer(w, &FileRef { format: FORMAT, body: snapshot })
}

/// Reads a snapshot file of any format this build knows, migrated to the current one.
pub fn read(data: &[u8]) -> Result<SnapshotV7, SnapshotError> {
    let envelope: Envelope = serde_json::from_slice(data).map_err(SnapshotError::Envelope)?;
    let body = envelope.body.get();
    match envelope.format {
        FORMAT => serde_json::from_str(body).map_err(|error| SnapshotError::Body { format: FORMAT, error }),
        6 => {
            let v6: SnapshotV6 =
                serde_json::from_str(body).map_err(|error| SnapshotError::Body { format: 6, error })?;
            Ok(v6_to_v7(v6))
        }
        5 => {
            let v5: SnapshotV5 =
                serde_json::from_str(body).map_err(|error| SnapshotError::Body { format: 5, error })?;
            Ok(v6_to_v7(v5_to_v6(v5)))
        }
        4 => {
            let v4: SnapshotV4 =
                serde_json::from_str(body).map_err(|error| SnapshotError::Body { format: 4, error })?;
            Ok(v6_to_v7(v5_to_v6(v4_to_v5(v4))))
        }
        3 => {
            let v3: SnapshotV3 =
                serde_json::from_str(body).map_err(|error| SnapshotError::Body { format: 3, error })?;
            Ok(v6_to_v7(v5_to_v6(v4_to_v5(v3_to_v4(v3)))))
        }
        2 => {
            let v2: SnapshotV2 =
                serde_json::from_str(body).map_err(|error| SnapshotError::Body { format: 2, error })?;
            Ok(v6_to_v7(v5_to_v6(v4_to_v5(v3_to_v4(v2_to_v3(v2))))))
        }
        1 => {
            let v1: Value = serde_json::from_str(body).map_err(|error| SnapshotError::Body { format: 1, error })?;
            let v2 = v1_to_v2(v1).map_err(SnapshotError::Migrate)?;
            let v2: SnapshotV2 =
                serde_json::from_value(v2).map_err(|error| SnapshotError::Body { format: 2, error })?;
            Ok(v6_to_v7(v5_to_v6(v4_to_v5(v3_to_v4(v2_to_v3(v2))))))
        }
        n if n > FORMAT => Err(SnapshotError::Newer(n)),
        n => Err(SnapshotError::Unknown(n)),
    }
}

/// Format 6 to format 7: no token was made yet.
fn v6_to_v7(v6: SnapshotV6) -> SnapshotV7 {
    let SnapshotV6 {
        jobs,
        idempotency,
        agents,
        applied,
        tasks,
        seq,
        events_made,
        clock,
        outbox,
        outbox_seq,
        positions,
        quotas,
        locations,
        fleet,
    } = v6;
    SnapshotV7 {
        jobs,
        idempotency,
        agents,
        applied,
        tasks,
        seq,
        events_made,
        clock,
        outbox,
        outbox_seq,
        positions,
        quotas,
        locations,
        fleet,
        tokens: BTreeMap::new(),
    }
}

/// Format 5 to format 6: no group's demand was recorded yet.
fn v5_to_v6(v5: SnapshotV5) -> SnapshotV6 {
    let SnapshotV5 {
        jobs,
        idempotency,
        agents,
        applied,
        tasks,
        seq,
        events_made,
        clock,
        outbox,
        outbox_seq,
        positions,
        quotas,
        locations,
    } = v5;
    SnapshotV6 {
        jobs,
        idempotency,
        agents,
        applied,
        tasks,
        seq,
        events_made,
        clock,
        outbox,
        outbox_seq,
        positions,
        quotas,
        locations,
        fleet: BTreeMap::new(),
    }
}

/// Format 4 to format 5: no lever was pulled on any location yet.
fn v4_to_v5(v4: SnapshotV4) -> SnapshotV5 {
    let SnapshotV4 {
        jobs,
        idempotency,
        agents,
        applied,
        tasks,
        seq,
        events_made,
        clock,
        outbox,
        outbox_seq,
        positions,
        quotas,
    } = v4;
    SnapshotV5 {
        jobs,
        idempotency,
        agents,
        applied,
        tasks,
        seq,
        events_made,
        clock,
        outbox,
        outbox_seq,
        positions,
        quotas,
        locations: BTreeMap::new(),
    }
}

/// Format 3 to format 4: no group has a quota yet.
fn v3_to_v4(v3: SnapshotV3) -> SnapshotV4 {
    let SnapshotV3 {
        jobs,
        idempotency,
        agents,
        applied,
        tasks,
        seq,
        events_made,
        clock,
        outbox,
        outbox_seq,
        positions,
    } = v3;
    SnapshotV4 {
        jobs,
        idempotency,
        agents,
        applied,
        tasks,
        seq,
        events_made,
        clock,
        outbox,
        outbox_seq,
        positions,
        quotas: BTreeMap::new(),
    }
}

/// Format 2 to format 3: every register of every job gets the zero version (older than any write made since), its
/// origin is unknown (empty), and every job enters the outbox once, so a cell that joins a federation sends what
/// it has.
fn v2_to_v3(v2: SnapshotV2) -> SnapshotV3 {
    let SnapshotV2 { jobs, idempotency, agents, applied, tasks, seq, events_made } = v2;
    let outbox: BTreeMap<u64, String> = jobs.keys().cloned().zip(1u64..).map(|(id, n)| (n, id)).collect();
    let outbox_seq = outbox.len() as u64;
    SnapshotV3 {
        jobs,
        idempotency,
        agents,
        applied,
        tasks,
        seq,
        events_made,
        clock: Default::default(),
        outbox,
        outbox_seq,
        positions: BTreeMap::new(),
    }
}

/// Format 1 (`{"state": <the live state>}`) to format 2: the state's records moved up a level (with the defaults
/// format 1 left out for fields added along the way), each job's counts resolved from its spec, and each task given
/// the spec version its job had (format 1 ran every task as its job's current spec, which is what this keeps).
fn v1_to_v2(body: Value) -> Result<Value, String> {
    let Value::Object(mut body) = body else { return Err("the body is not an object".into()) };
    let Some(Value::Object(mut state)) = body.remove("state") else { return Err("the body has no state".into()) };
    let mut jobs = take_map(&mut state, "jobs")?;
    let mut spec_versions = HashMap::new();
    for (id, job) in jobs.iter_mut() {
        let Value::Object(job) = job else { return Err(format!("job {id} is not an object")) };
        let spec = job.get("spec").cloned().ok_or_else(|| format!("job {id} has no spec"))?;
        let spec: Spec = serde_json::from_value(spec).map_err(|e| format!("job {id}'s spec: {e}"))?;
        let counts = serde_json::to_value(spec.counts()).map_err(|e| e.to_string())?;
        job.insert("counts".into(), counts);
        job.insert("older_specs".into(), Value::Object(Map::new()));
        let spec_version = job.entry("spec_version").or_insert(Value::from(0u64)).clone();
        job.entry("last_tick_ms").or_insert(Value::Null);
        job.entry("current_run").or_insert(Value::Null);
        spec_versions.insert(id.clone(), spec_version);
    }
    let mut tasks = take_map(&mut state, "tasks")?;
    for (id, task) in tasks.iter_mut() {
        let Value::Object(task) = task else { return Err(format!("task {id} is not an object")) };
        let job = task.get("job_id").and_then(Value::as_str).unwrap_or_default();
        let version = spec_versions.get(job).cloned().unwrap_or(Value::from(0u64));
        task.insert("spec_version".into(), version);
        task.entry("run").or_insert(Value::Null);
    }
    let mut agents = take_map(&mut state, "agents")?;
    for agent in agents.values_mut() {
        if let Value::Object(agent) = agent {
            agent.entry("reachable").or_insert(Value::Bool(true));
            agent.entry("version").or_insert(Value::from(0u64));
        }
    }
    let mut v2 = Map::new();
    v2.insert("jobs".into(), Value::Object(jobs));
    v2.insert("idempotency".into(), Value::Object(take_map(&mut state, "idempotency")?));
    v2.insert("agents".into(), Value::Object(agents));
    v2.insert("applied".into(), Value::Object(take_map(&mut state, "applied")?));
    v2.insert("tasks".into(), Value::Object(tasks));
    v2.insert("seq".into(), state.remove("seq").unwrap_or(Value::from(0u64)));
    v2.insert("events_made".into(), state.remove("events_made").unwrap_or(Value::from(0u64)));
    Ok(Value::Object(v2))
}

/// A map field of a format 1 state; absent (a field added after the snapshot was written) is empty.
fn take_map(state: &mut Map<String, Value>, field: &str) -> Result<Map<String, Value>, String> {
    match state.remove(field) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(format!("the state's {field} is not a map")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A format 1 snapshot as builds before format 2 wrote it (trimmed from one taken of a live cell): a job given
    /// in the shorthand, one in a map, one from before scheduled jobs and rolling updates, and a task.
    const V1: &str = r#"{"format":1,"body":{"state":{
        "jobs":{
          "j1":{"id":"j1","spec":{"name":"web","applicationName":"shop","location":"dc1:2,dc2:3","cpus":0.5,
            "memory":64,"disk":0,"ports":1,"restartOnFailure":true,"numRetries":3,"restartOnSuccess":false,
            "image":"busybox"},"version":3,"state":"enabled","created_at_ms":1,"updated_at_ms":3,"history":[],
            "last_tick_ms":null,"current_run":null,"spec_version":2},
          "j2":{"id":"j2","spec":{"name":"api","applicationName":"shop","locations":{"dc1":1},"cpus":0.25,
            "memory":32,"disk":0,"ports":0,"restartOnFailure":true,"numRetries":3,"restartOnSuccess":false,
            "image":"busybox"},"version":1,"state":"disabled","created_at_ms":1,"updated_at_ms":1,"history":[]}},
        "idempotency":{},
        "tasks":{"t1":{"id":"t1","job_id":"j1","job_version":3,"ask":{"cpus":0.5,"memory_mib":64,"disk_mib":0,
          "ports":1},"state":"accepted","desired":"run","reason":null,"message":null,"agent":null,"lease_epoch":0,
          "ports":[],"attempt":0,"replaces":null,"replaced_by":null,"retries_used":0,"exit_code":null,
          "health":"unknown","before_unreachable":null,"created_at_ms":3,"updated_at_ms":3,
          "transitions":[{"state":"accepted","atMs":3}]}},
        "seq":7}}}"#;

    #[test]
    fn a_format_1_snapshot_is_migrated_with_counts_and_spec_versions() {
        let s = read(V1.as_bytes()).expect("a format 1 snapshot reads");
        let web = &s.jobs["j1"];
        assert_eq!(web.counts, BTreeMap::from([("dc1".into(), 2), ("dc2".into(), 3)]));
        assert_eq!(web.spec.location.as_deref(), Some("dc1:2,dc2:3"), "the user's form is kept");
        assert_eq!((web.spec_version, web.older_specs.len()), (2, 0));
        let api = &s.jobs["j2"];
        assert_eq!(api.counts, BTreeMap::from([("dc1".into(), 1)]));
        assert_eq!((api.spec_version, api.last_tick_ms), (0, None));
        assert_eq!(s.tasks["t1"].spec_version, 2, "a task runs as its job's spec did when it was written");
        assert_eq!((s.seq, s.agents.len(), s.events_made), (7, 0, 0), "events were not counted before format 2");
    }

    #[test]
    fn the_current_format_round_trips_and_unknown_ones_are_refused() {
        let s = read(V1.as_bytes()).expect("reads");
        let mut bytes = Vec::new();
        write(&mut bytes, &s).expect("writes");
        assert_eq!(read(&bytes).expect("reads back"), s);
        let text = String::from_utf8(bytes).expect("utf-8");
        let v6 = text.replacen("\"format\":7", "\"format\":6", 1);
        assert_eq!(read(v6.as_bytes()).expect("format 6 reads").tokens, BTreeMap::new(), "no token before 7");
        let v5 = text.replacen("\"format\":7", "\"format\":5", 1);
        assert_eq!(read(v5.as_bytes()).expect("format 5 reads").fleet, BTreeMap::new(), "no history before 6");
        let v4 = text.replacen("\"format\":7", "\"format\":4", 1);
        assert_eq!(read(v4.as_bytes()).expect("format 4 reads").locations, BTreeMap::new(), "no lever before 5");
        let v3 = text.replacen("\"format\":7", "\"format\":3", 1);
        assert_eq!(read(v3.as_bytes()).expect("format 3 reads").quotas, BTreeMap::new(), "no quota before format 4");
        let newer = text.replacen("\"format\":7", "\"format\":9", 1);
        assert!(matches!(read(newer.as_bytes()), Err(SnapshotError::Newer(9))));
        assert!(matches!(read(br#"{"format":0,"body":{}}"#), Err(SnapshotError::Unknown(0))));
        assert!(matches!(read(b"[]"), Err(SnapshotError::Envelope(_))));
    }
}
