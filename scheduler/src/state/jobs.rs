//! Jobs in the state: the job commands' rules (`If-Match`, killed jobs), idempotency keys, and job listings.

use super::*;

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// How long applied request ids are remembered: longer than any proposer retries a command.
pub const REQUEST_TTL_MS: u64 = 60 * 1000;
pub(super) fn fingerprint(spec: &Spec) -> u64 {
    fenzo::fnv1a(&serde_json::to_vec(spec).expect("a Spec always serializes"))
}

pub(super) fn describe(instances: &BTreeMap<String, u32>) -> String {
    instances.iter().map(|(l, n)| format!("{l}={n}")).collect::<Vec<_>>().join(",")
}

impl CellState {
    pub(super) fn modify(
        &mut self,
        id: &str,
        if_version: Option<u64>,
        f: impl FnOnce(&mut JobRecord) -> JobRef,
    ) -> Response {
        let Some(job) = self.jobs.get_mut(id).map(Arc::make_mut) else {
            return Response::Rejected(Rejection::NotFound { id: id.to_string() });
        };
        if job.state == JobState::Killed {
            return Response::Rejected(Rejection::Killed { id: id.to_string() });
        }
        if let Some(expected) = if_version {
            if expected != job.version {
                return Response::Rejected(Rejection::VersionMismatch {
                    id: id.to_string(),
                    expected,
                    current: job.version,
                });
            }
        }
        Response::Job(f(job))
    }

    pub(super) fn forget_expired(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(IDEMPOTENCY_TTL_MS);
        while let Some(((at, key), ())) = self.idempotency_by_time.first_key_value() {
            if *at >= horizon {
                break;
            }
            let key = key.clone();
            self.idempotency_by_time.pop_first();
            self.idempotency.remove(&key);
        }
    }

    pub fn job(&self, id: &str) -> Option<&JobRecord> {
        self.jobs.get(id).map(Arc::as_ref)
    }

    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    pub fn jobs(&self) -> impl Iterator<Item = &JobRecord> {
        self.jobs.values().map(Arc::as_ref)
    }

    /// Jobs matching the query's filters, in id order, one page at a time.
    pub fn list(&self, q: &ListQuery) -> (Vec<&JobRecord>, Option<String>) {
        let limit = q.limit.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE) as usize;
        let state = q.state.as_deref().and_then(JobState::parse);
        let matches = |j: &JobRecord| {
            q.application.as_ref().is_none_or(|a| &j.spec.application_name == a)
                && q.owner.as_ref().is_none_or(|o| j.spec.owner.as_ref() == Some(o))
                && q.capacity_group.as_ref().is_none_or(|c| j.spec.capacity_group.as_ref() == Some(c))
                && match state {
                    Some(s) => j.state == s,
                    None => j.state != JobState::Killed,
                }
        };
        let from = match &q.page_token {
            Some(t) => std::ops::Bound::Excluded(t.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let mut page: Vec<&JobRecord> = Vec::new();
        let mut more = false;
        for (_, j) in self.jobs.range::<String, _>((from, std::ops::Bound::Unbounded)) {
            if !matches(j) {
                continue;
            }
            if page.len() == limit {
                more = true;
                break;
            }
            page.push(j);
        }
        let next = if more { page.last().map(|j| j.id.clone()) } else { None };
        (page, next)
    }
}
