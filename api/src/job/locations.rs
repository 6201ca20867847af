//! Instance counts per location: the `location` shorthand and the `locations` map, the one parser of the
//! shorthand, and `PUT /v1/jobs/{id}/instances`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::*;
use crate::error::ApiError;

/// Body of `PUT /v1/jobs/{id}/instances`: the new instance counts, as exactly one of `location` (Titan's
/// shorthand) or `locations` (a map).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstancesRequest {
    /// `"dc1:20,dc2:40"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `{"dc1": 20, "dc2": 40}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locations: Option<BTreeMap<String, u32>>,
}

impl InstancesRequest {
    /// Parses and validates a body, with the same error rules as [`JobSpec::parse`].
    pub fn parse(body: &[u8], format: BodyFormat) -> Result<InstancesRequest, ApiError> {
        let request: InstancesRequest = format.decode(body)?;
        request.counts()?;
        Ok(request)
    }

    /// The validated instance counts per location.
    pub fn counts(&self) -> Result<BTreeMap<String, u32>, ApiError> {
        resolve_locations(self.location.as_deref(), self.locations.as_ref())
    }
}

/// The one rule for `location` / `locations`, shared by job specs and instance updates.
pub(super) fn resolve_locations(
    location: Option<&str>,
    locations: Option<&BTreeMap<String, u32>>,
) -> Result<BTreeMap<String, u32>, ApiError> {
    let map = match (location, locations) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field("locations", "give either location or locations, not both"));
        }
        (None, None) => {
            return Err(ApiError::field(
                "location",
                "give the instances per location, as location \"dc1:3\" or locations {\"dc1\": 3}",
            ));
        }
        (Some(shorthand), None) => return parse_location(shorthand).map_err(|m| ApiError::field("location", m)),
        (None, Some(map)) => map,
    };
    if map.is_empty() {
        return Err(ApiError::field("locations", "a job needs at least one location"));
    }
    if map.len() > MAX_LOCATIONS {
        return Err(ApiError::field("locations", format!("at most {MAX_LOCATIONS} locations")));
    }
    for (name, &count) in map {
        check_location_name(name).map_err(|m| ApiError::field(join("locations", name), m))?;
        check_count(name, count).map_err(|m| ApiError::field(join("locations", name), m))?;
    }
    Ok(map.clone())
}

/// Parses Titan's shorthand `"dc1:20,dc2:40,dc5:60"` (or the CLI's `"dc1=20,dc2=40"`) into counts per location.
///
/// A count of 0 is allowed: it keeps a location on the job with no instances in it.
pub fn parse_location(s: &str) -> Result<BTreeMap<String, u32>, String> {
    if s.trim().is_empty() {
        return Err("the location is empty: give name:count pairs like dc1:20,dc2:40".to_owned());
    }
    let mut counts = BTreeMap::new();
    for (i, item) in s.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("item {} of `{s}` is empty", i + 1));
        }
        let Some((name, count)) = item.split_once([':', '=']) else {
            return Err(format!("`{item}` has no count: write it as name:count"));
        };
        let (name, count) = (name.trim(), count.trim());
        check_location_name(name).map_err(|m| format!("`{item}`: {m}"))?;
        // Digits only: `u32::from_str` would also take `+5`, which is no count anyone means to write.
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("`{item}`: the count must be a non-negative integer"));
        }
        let count = count.parse::<u32>().unwrap_or(u32::MAX);
        check_count(name, count).map_err(|m| format!("`{item}`: {m}"))?;
        if counts.insert(name.to_owned(), count).is_some() {
            return Err(format!("{name} appears twice"));
        }
    }
    if counts.len() > MAX_LOCATIONS {
        return Err(format!("at most {MAX_LOCATIONS} locations"));
    }
    Ok(counts)
}

/// Writes counts in the shorthand `parse_location` reads (`"dc1:20,dc2:40"`), locations in name order.
pub fn format_location(counts: &BTreeMap<String, u32>) -> String {
    counts.iter().map(|(name, n)| format!("{name}:{n}")).collect::<Vec<_>>().join(",")
}

pub(super) fn check_count(location: &str, count: u32) -> Result<(), String> {
    if count > MAX_INSTANCES_PER_LOCATION {
        return Err(format!("{location} asks for more than {MAX_INSTANCES_PER_LOCATION} instances"));
    }
    Ok(())
}

/// `[a-z0-9][a-z0-9-]*`, at most 32 characters.
pub(super) fn check_location_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !well_formed || name.len() > MAX_LOCATION_NAME_LEN {
        return Err(format!(
            "`{name}` is not a location name: 1 to {MAX_LOCATION_NAME_LEN} lowercase letters, digits or hyphens, \
             starting with a letter or digit"
        ));
    }
    Ok(())
}
