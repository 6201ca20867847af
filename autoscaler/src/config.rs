//! `[autoscaler]` and its `[[autoscaler.groups]]`: each instance group's fleet, bounds, instance shape, boot delay
//! and policy. Invalid settings refuse to start, naming the setting.

use serde::{Deserialize, Serialize};

use crate::policy::PolicyConfig;

/// Which fleet carries out a group's decisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FleetKind {
    /// `titan agent` processes on this machine (`titan dev`, tests).
    #[default]
    Local,
    /// In memory (tests).
    Simulated,
    /// An EC2 Auto Scaling group.
    Ec2,
}

/// One instance group (agents carry its name as their `instanceGroup` attribute).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    #[serde(default)]
    pub fleet: FleetKind,
    /// The Auto Scaling group's name (`ec2`).
    #[serde(default)]
    pub asg: Option<String>,
    #[serde(default)]
    pub min: u32,
    pub max: u32,
    /// Task slots (cpus) per instance.
    pub slots: u32,
    /// Memory per instance, MiB (the local fleet's agents offer this much).
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// From launch until an instance's agent may take tasks.
    #[serde(default = "default_boot")]
    pub boot_delay_ms: u64,
    /// An instance whose agent has not registered this long after launch is taken for broken and replaced.
    #[serde(default = "default_grace")]
    pub boot_grace_ms: u64,
    /// The most of the group draining at once.
    #[serde(default = "default_share")]
    pub max_drain_share: f64,
    /// The local fleet's agents run tasks with this runtime (`process` or `docker`).
    #[serde(default = "default_runtime")]
    pub local_runtime: String,
    #[serde(default)]
    pub policy: PolicyConfig,
}

fn default_memory() -> u64 {
    4096
}
fn default_boot() -> u64 {
    60_000
}
fn default_grace() -> u64 {
    600_000
}
fn default_share() -> f64 {
    0.25
}
fn default_runtime() -> String {
    "process".into()
}

/// `[autoscaler]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscalerConfig {
    /// How often the leader looks at each group.
    pub interval_ms: u64,
    pub groups: Vec<GroupConfig>,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        AutoscalerConfig { interval_ms: 5_000, groups: Vec::new() }
    }
}

impl AutoscalerConfig {
    /// The first broken rule, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval_ms == 0 {
            return Err("autoscaler.interval_ms must be above 0".into());
        }
        for (i, g) in self.groups.iter().enumerate() {
            let at = format!("autoscaler.groups[{i}]");
            let ok_name = !g.name.is_empty()
                && g.name.len() <= 64
                && g.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok_name {
                return Err(format!("{at}.name {:?} must be 1-64 letters, digits, '-', '_' or '.'", g.name));
            }
            if self.groups[..i].iter().any(|o| o.name == g.name) {
                return Err(format!("{at}.name {} appears twice", g.name));
            }
            if g.max == 0 || g.min > g.max {
                return Err(format!("{at}: need 0 <= min <= max and max above 0, got min {} max {}", g.min, g.max));
            }
            if g.slots == 0 {
                return Err(format!("{at}.slots must be above 0"));
            }
            if !(g.max_drain_share > 0.0 && g.max_drain_share <= 1.0) {
                return Err(format!("{at}.max_drain_share must be above 0 and at most 1, got {}", g.max_drain_share));
            }
            if g.fleet == FleetKind::Ec2 && g.asg.as_deref().is_none_or(str::is_empty) {
                return Err(format!("{at}.asg: an ec2 group names its Auto Scaling group"));
            }
            g.policy.validate().map_err(|e| format!("{at}.{e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_parse_and_each_broken_rule_names_its_setting() {
        let ok: AutoscalerConfig = serde_json::from_str(
            r#"{"groups":[{"name":"small","max":4,"slots":2,"policy":{"kind":"reactive","headroom":0}}]}"#,
        )
        .expect("parses");
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.groups[0].fleet, FleetKind::Local);
        let bad = |json: &str| {
            let c: AutoscalerConfig = serde_json::from_str(json).expect("parses");
            c.validate().unwrap_err()
        };
        assert!(bad(r#"{"groups":[{"name":"a b","max":1,"slots":1}]}"#).starts_with("autoscaler.groups[0].name"));
        assert!(bad(r#"{"groups":[{"name":"a","min":3,"max":2,"slots":1}]}"#).contains("min <= max"));
        assert!(bad(r#"{"groups":[{"name":"a","max":1,"slots":1,"fleet":"ec2"}]}"#).contains("groups[0].asg"));
        assert!(bad(r#"{"groups":[{"name":"a","max":1,"slots":1},{"name":"a","max":1,"slots":1}]}"#).contains("twice"));
        assert!(bad(r#"{"groups":[{"name":"a","max":1,"slots":1,"policy":{"kind":"predictive","quantile":3}}]}"#)
            .starts_with("autoscaler.groups[0].policy.quantile"));
        assert!(
            serde_json::from_str::<AutoscalerConfig>(r#"{"groups":[{"name":"a","max":1,"slots":1,"x":1}]}"#).is_err()
        );
    }
}
