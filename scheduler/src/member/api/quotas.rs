//! What anyone asks of quotas, and what SREs change: each group's limits and usage per location.

use super::*;
use crate::quota::{self, Demand};
use std::collections::BTreeSet;
use titan_api::quota::{LocationQuota, LocationQuotaView, QuotaList, QuotaRef, QuotaSpec, QuotaView};
use titan_api::router::QuotasApi;
use titan_api::view::HistoryEntry;

impl Cell {
    /// A group's record: its limits and desired usage in every location either names, and what runs here.
    fn quota_view(&self, group: &str, with_history: bool) -> Option<QuotaView> {
        let state = self.read();
        let record = state.quota(group);
        let used: BTreeMap<String, Demand> = state.usage_of(group).cloned().unwrap_or_default();
        if record.is_none() && used.is_empty() {
            return None;
        }
        let running = state.running(group).usage();
        let mut locations: BTreeSet<&String> = used.keys().collect();
        if let Some(r) = record {
            locations.extend(r.locations.keys());
        }
        let locations = locations
            .into_iter()
            .map(|l| LocationQuotaView {
                location: l.clone(),
                limit: record.and_then(|r| r.locations.get(l)).map(LocationQuota::from),
                used: used.get(l).copied().unwrap_or_default().usage(),
                running: (*l == self.config.cell).then_some(running),
            })
            .collect();
        Some(QuotaView {
            group: group.to_string(),
            version: record.map_or(0, |r| r.version),
            locations,
            history: match (with_history, record) {
                (true, Some(r)) => r.history.iter().map(HistoryEntry::from).collect(),
                _ => Vec::new(),
            },
        })
    }
}

impl QuotasApi for Cell {
    fn list_quotas(&self) -> ApiResult<'_, QuotaList> {
        Box::pin(async move {
            let groups: BTreeSet<String> = {
                let state = self.read();
                state.quotas().map(|q| q.group.clone()).chain(state.groups_with_usage().cloned()).collect()
            };
            Ok(QuotaList { quotas: groups.iter().filter_map(|g| self.quota_view(g, false)).collect() })
        })
    }

    fn get_quota(&self, group: String) -> ApiResult<'_, QuotaView> {
        Box::pin(async move { self.quota_view(&group, true).ok_or_else(|| ApiError::not_found("quota", &group)) })
    }

    fn put_quota(
        &self,
        group: String,
        spec: QuotaSpec,
        if_match: Option<u64>,
        actor: Actor,
    ) -> ApiResult<'_, QuotaRef> {
        Box::pin(async move {
            if let Err(e) = self.check_locations(spec.locations.keys()) {
                return Err(e.with_field("locations"));
            }
            let locations = quota::limits_of(&spec);
            let cmd = Command::PutQuota { group, locations, if_version: if_match, meta: self.meta(actor) };
            self.commit_as(cmd).await
        })
    }

    fn delete_quota(&self, group: String, if_match: Option<u64>, actor: Actor) -> ApiResult<'_, QuotaRef> {
        Box::pin(async move {
            self.commit_as(Command::DeleteQuota { group, if_version: if_match, meta: self.meta(actor) }).await
        })
    }
}
