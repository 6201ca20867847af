//! Placement constraints as users write them, and the rules each operator's fields follow.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::*;
use crate::error::ApiError;

/// How a constraint compares an agent attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum ConstraintOperator {
    /// The attribute equals `value`.
    Equals,
    /// The attribute does not equal `value`.
    NotEquals,
    /// The attribute is one of `values`.
    In,
    /// At most one task of the job per value of the attribute (`host`: one per agent).
    Unique,
    /// The job's tasks have their agents to themselves.
    Exclusive,
    /// Tasks are spread evenly over `expected` values of the attribute.
    Balanced,
    /// At most `max` tasks of the job per value of the attribute.
    MaxPer,
}

impl ConstraintOperator {
    /// The wire name, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ConstraintOperator::Equals => "equals",
            ConstraintOperator::NotEquals => "notEquals",
            ConstraintOperator::In => "in",
            ConstraintOperator::Unique => "unique",
            ConstraintOperator::Exclusive => "exclusive",
            ConstraintOperator::Balanced => "balanced",
            ConstraintOperator::MaxPer => "maxPer",
        }
    }
}

/// A placement constraint. Hard unless `soft`; a soft one only steers placement, with an optional `weight`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConstraintSpec {
    /// The agent attribute compared (`zone`, `instanceType`, `host` for the agent itself); none for `exclusive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    pub operator: ConstraintOperator,
    /// For `equals` and `notEquals`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// For `in`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
    /// For `maxPer`: tasks allowed per attribute value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// For `balanced`: how many attribute values the tasks spread over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<u32>,
    /// A soft constraint is a preference, not a filter.
    #[serde(default)]
    pub soft: bool,
    /// How much a soft constraint counts against other preferences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
}

impl ConstraintSpec {
    pub(super) fn validate(&self, at: &str) -> Result<(), ApiError> {
        use ConstraintOperator as Op;
        let op = self.operator;
        let field = |name: &str| join(at, name);
        match (&self.attribute, op) {
            (Some(_), Op::Exclusive) => {
                return Err(ApiError::field(
                    field("attribute"),
                    "exclusive takes no attribute: it reserves whole agents",
                ));
            }
            (None, Op::Exclusive) => {}
            (None, _) => {
                return Err(ApiError::field(field("attribute"), format!("{} needs an attribute", op.as_str())));
            }
            (Some(attribute), _) => check_attribute(attribute).map_err(|m| ApiError::field(field("attribute"), m))?,
        }
        // Each operator reads some of the optional fields; one it ignores is a misunderstanding worth reporting
        // (`value` given to `in`, say) rather than a constraint silently different from the one meant.
        let unused = |name: &str| ApiError::field(field(name), format!("{} does not use {name}", op.as_str()));
        match (op, &self.value) {
            (Op::Equals | Op::NotEquals, None) => {
                return Err(ApiError::field(field("value"), format!("{} needs a value", op.as_str())));
            }
            (Op::Equals | Op::NotEquals, Some(_)) | (_, None) => {}
            (_, Some(_)) => return Err(unused("value")),
        }
        match (op, &self.values) {
            (Op::In, Some(values)) if !values.is_empty() => {}
            (Op::In, _) => return Err(ApiError::field(field("values"), "in needs a non-empty list of values")),
            (_, None) => {}
            (_, Some(_)) => return Err(unused("values")),
        }
        match (op, self.max) {
            (Op::MaxPer, Some(max)) if max >= 1 => {}
            (Op::MaxPer, _) => return Err(ApiError::field(field("max"), "maxPer needs max of at least 1")),
            (_, None) => {}
            (_, Some(_)) => return Err(unused("max")),
        }
        match (op, self.expected) {
            (Op::Balanced, Some(expected)) if expected >= 1 => {}
            (Op::Balanced, _) => {
                return Err(ApiError::field(field("expected"), "balanced needs expected of at least 1"));
            }
            (_, None) => {}
            (_, Some(_)) => return Err(unused("expected")),
        }
        if let Some(weight) = self.weight {
            if !self.soft {
                return Err(ApiError::field(field("weight"), "only a soft constraint has a weight"));
            }
            if !weight.is_finite() || weight <= 0.0 {
                return Err(ApiError::field(field("weight"), "must be a finite number above 0"));
            }
        }
        Ok(())
    }
}
