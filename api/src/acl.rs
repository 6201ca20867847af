//! Who may do what: the roles, what each route needs (`rule`, one table for every route), and the wire types of
//! API tokens. A token is a secret the holder sends as `Authorization: Bearer <secret>`; the cell keeps only its
//! SHA-256 (`hash`), never the secret.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorCode};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Levers, quotas, drains, cluster and federation membership, and every read.
    Sre,
    /// Jobs of its own applications (submit, update, scale, enable, kill, their tasks' logs), and reads.
    Owner,
    /// Reads.
    Reader,
    /// The agent protocol, for one agent id only.
    Agent,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Admin, Role::Sre, Role::Owner, Role::Reader, Role::Agent];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Sre => "sre",
            Role::Owner => "owner",
            Role::Reader => "reader",
            Role::Agent => "agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token: probes, the OpenAPI document (and `/metrics` unless configured otherwise).
    Public,
    /// Any role but `agent`.
    Read,
    /// Reads of an application's task output: `owner` of the job's application, `sre`, `admin`.
    Logs,
    /// Writes to jobs and tasks: `owner` of the job's application, `admin`.
    JobWrite,
    /// Operating the cell and the federation: `sre`, `admin`.
    Operate,
    /// Tokens: `admin` only.
    Admin,
    /// The agent protocol: `agent` for its own id (the `{id}` in the path, or the id it registers), `admin`.
    Agent,
}

impl Access {
    /// Whether `role` may use a route that needs this (an owner's applications and an agent's id are checked
    /// apart, against the object).
    pub fn allows(self, role: Role) -> bool {
        match self {
            Access::Public => true,
            Access::Read => role != Role::Agent,
            Access::Logs => matches!(role, Role::Owner | Role::Sre | Role::Admin),
            Access::JobWrite => matches!(role, Role::Owner | Role::Admin),
            Access::Operate => matches!(role, Role::Sre | Role::Admin),
            Access::Admin => role == Role::Admin,
            Access::Agent => matches!(role, Role::Agent | Role::Admin),
        }
    }

    /// The roles it allows, for error messages.
    pub fn roles(self) -> String {
        Role::ALL.iter().filter(|r| self.allows(**r)).map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// What the route `path` (its pattern, as the router matched it: `/v1/jobs/{id}`) takes with `method`; `None`
/// for a route this table does not know, which is refused (403) rather than let through.
pub fn rule(method: &str, path: &str) -> Option<Access> {
    use Access::*;
    let read = method == "GET" || method == "HEAD";
    Some(match path {
        "/healthz" | "/readyz" | "/openapi.json" | "/metrics" if read => Public,
        "/v1/jobs" => {
            if read {
                Read
            } else {
                JobWrite
            }
        }
        "/v1/jobs/{id}" | "/v1/jobs/{id}/instances" | "/v1/jobs/{id}/enable" | "/v1/jobs/{id}/disable" => {
            if read {
                Read
            } else {
                JobWrite
            }
        }
        "/v1/jobs/{id}/history" | "/v1/jobs/{id}/endpoints" if read => Read,
        "/v1/tasks" | "/v1/tasks/{id}" if read => Read,
        "/v1/tasks/{id}/kill" if method == "POST" => JobWrite,
        "/v1/tasks/{id}/logs" if read => Logs,
        "/v1/events" if read => Read,
        "/v1/cluster" | "/v1/cells" | "/v1/autoscaler" if read => Read,
        "/v1/cluster/members" | "/v1/cluster/members/{id}" => Operate,
        "/v1/quotas" | "/v1/quotas/{group}" if read => Read,
        "/v1/quotas/{group}" => Operate,
        "/v1/locations" | "/v1/locations/{name}" if read => Read,
        "/v1/locations/{name}/{lever}" | "/v1/locations/{name}/weight" => Operate,
        "/v1/agents" if read => Read,
        "/v1/agents/{id}" if read => Read,
        "/v1/agents" if method == "POST" => Agent,
        "/v1/agents/{id}/heartbeat" | "/v1/agents/{id}/assignments" | "/v1/agents/{id}/status" => Agent,
        "/v1/agents/{id}/drain" | "/v1/agents/{id}/enable" => Operate,
        "/v1/acl/tokens" | "/v1/acl/tokens/{name}" => Admin,
        _ => return None,
    })
}

/// The longest `Authorization` header read; a longer one is refused unread.
pub const MAX_AUTHORIZATION: usize = 512;
/// Every secret starts with this, so a leaked one is easy to find in logs and repositories.
pub const SECRET_PREFIX: &str = "titan_";

/// A token secret's SHA-256, as the cell keeps it.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The secret of an `Authorization: Bearer <secret>` header value, or why it is refused.
pub fn bearer(value: &[u8]) -> Result<&str, ApiError> {
    let bad = |why: &str| ApiError::new(ErrorCode::Unauthorized, why.to_string()).with_field("Authorization");
    if value.len() > MAX_AUTHORIZATION {
        return Err(bad("the Authorization header is longer than any token"));
    }
    let text = std::str::from_utf8(value).map_err(|_| bad("the Authorization header is not ASCII"))?;
    let (scheme, secret) =
        text.trim().split_once(' ').ok_or_else(|| bad("expected `Authorization: Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(bad("expected `Authorization: Bearer <token>`"));
    }
    let secret = secret.trim();
    if secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("the bearer token is empty or not printable ASCII"));
    }
    Ok(secret)
}

/// A token name: 1-64 of a-z, 0-9, '-', '_', '.', '@'.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

/// What an admin asks for when creating a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenSpec {
    /// Its name: the actor recorded in history for what it does (1-64 of a-z, 0-9, `-`, `_`, `.`, `@`).
    pub name: String,
    pub role: Role,
    /// For `owner`: the applications (`applicationName`) whose jobs it may change (at least one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applications: Vec<String>,
    /// For `agent`: the one agent id it may act as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Seconds until it expires; none: it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

impl TokenSpec {
    /// Checks the fields against each other, naming the first one wrong.
    pub fn validate(&self) -> Result<(), ApiError> {
        let bad = |field: &str, why: String| Err(ApiError::new(ErrorCode::InvalidSpec, why).with_field(field));
        if !valid_name(&self.name) {
            return bad("name", "a token name is 1-64 of a-z, 0-9, '-', '_', '.', '@'".into());
        }
        match (self.role, self.applications.is_empty(), &self.agent) {
            (Role::Owner, true, _) => {
                return bad("applications", "an owner token names at least one application".into())
            }
            (r, false, _) if r != Role::Owner => {
                return bad("applications", format!("only an owner token names applications, not {r}"));
            }
            (Role::Agent, _, None) => return bad("agent", "an agent token names the agent id it acts as".into()),
            (r, _, Some(_)) if r != Role::Agent => {
                return bad("agent", format!("only an agent token names an agent, not {r}"));
            }
            _ => {}
        }
        if self.applications.len() > 64 || self.applications.iter().any(|a| a.is_empty() || a.len() > 128) {
            return bad("applications", "at most 64 application names of 1-128 characters".into());
        }
        if self.agent.as_ref().is_some_and(|a| a.is_empty() || a.len() > 128) {
            return bad("agent", "an agent id is 1-128 characters".into());
        }
        if self.ttl_seconds.is_some_and(|t| t == 0 || t > 10 * 365 * 86_400) {
            return bad("ttlSeconds", "a token lives 1 second to 10 years".into());
        }
        Ok(())
    }
}

/// A token as the API shows it: never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applications: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub created_at_ms: u64,
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// When it was revoked; a revoked token is kept (so every cell learns of it) but opens nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<u64>,
    /// The cell it was created in.
    pub cell: String,
}

/// A new token: the only answer that carries its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenCreated {
    pub token: TokenView,
    /// Send as `Authorization: Bearer <secret>`. Shown once: the cell keeps only its hash.
    pub secret: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

/// Who a request's token says it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    pub applications: Vec<String>,
    pub agent: Option<String>,
}

impl Caller {
    /// The one caller when authentication is off: everything is allowed, and the actor comes from the
    /// `X-Titan-User` header as before.
    pub fn anyone() -> Caller {
        Caller { name: String::new(), role: Role::Admin, applications: Vec::new(), agent: None }
    }

    /// Whether it may change jobs of `application` (an owner only its own).
    pub fn owns(&self, application: &str) -> bool {
        self.role != Role::Owner || self.applications.iter().any(|a| a == application)
    }

    /// 403 unless it may change jobs of `application`.
    pub fn check_application(&self, application: &str) -> Result<(), ApiError> {
        if self.owns(application) {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("token {:?} owns applications [{}], not {application:?}", self.name, self.applications.join(", ")),
        )
        .with_field("applicationName"))
    }

    /// 403 unless it may act as agent `id`.
    pub fn check_agent(&self, id: &str) -> Result<(), ApiError> {
        match (self.role, &self.agent) {
            (Role::Agent, Some(own)) if own != id => {
                Err(ApiError::new(ErrorCode::Forbidden, format!("token {:?} acts as agent {own}, not {id}", self.name))
                    .with_field("id"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_reach_what_the_issue_gives_them() {
        assert!(Access::Read.allows(Role::Reader) && !Access::Read.allows(Role::Agent));
        assert!(Access::JobWrite.allows(Role::Owner) && !Access::JobWrite.allows(Role::Sre));
        assert!(!Access::JobWrite.allows(Role::Reader));
        assert!(Access::Operate.allows(Role::Sre) && !Access::Operate.allows(Role::Owner));
        assert!(Access::Admin.allows(Role::Admin) && !Access::Admin.allows(Role::Sre));
        assert!(Access::Agent.allows(Role::Agent) && !Access::Agent.allows(Role::Sre));
        assert!(!Access::Logs.allows(Role::Reader) && Access::Logs.allows(Role::Owner));
        for r in Role::ALL {
            assert!(Access::Public.allows(r));
        }
        assert_eq!(Access::Operate.roles(), "admin, sre");
    }

    #[test]
    fn the_table_knows_reads_and_writes_apart_and_refuses_what_it_does_not_know() {
        assert_eq!(rule("GET", "/v1/jobs"), Some(Access::Read));
        assert_eq!(rule("POST", "/v1/jobs"), Some(Access::JobWrite));
        assert_eq!(rule("DELETE", "/v1/jobs/{id}"), Some(Access::JobWrite));
        assert_eq!(rule("GET", "/v1/quotas/{group}"), Some(Access::Read));
        assert_eq!(rule("PUT", "/v1/quotas/{group}"), Some(Access::Operate));
        assert_eq!(rule("POST", "/v1/agents"), Some(Access::Agent));
        assert_eq!(rule("GET", "/v1/agents/{id}/assignments"), Some(Access::Agent));
        assert_eq!(rule("POST", "/healthz"), None);
        assert_eq!(rule("GET", "/v1/nothing"), None);
    }

    #[test]
    fn bearer_headers_are_read_strictly() {
        assert_eq!(bearer(b"Bearer titan_abc").expect("ok"), "titan_abc");
        assert_eq!(bearer(b"bearer  titan_abc ").expect("ok"), "titan_abc");
        for bad in [&b"titan_abc"[..], b"Basic dXNlcjpwYXNz", b"Bearer ", b"Bearer a\x01b", b"Bearer \xff\xfe"] {
            let e = bearer(bad).expect_err("refused");
            assert_eq!((e.code, e.field.as_deref()), (ErrorCode::Unauthorized, Some("Authorization")));
        }
        let long = format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION));
        assert!(bearer(long.as_bytes()).is_err());
    }

    #[test]
    fn a_spec_names_its_first_wrong_field() {
        let spec = |role, apps: &[&str], agent: Option<&str>| TokenSpec {
            name: "ci".into(),
            role,
            applications: apps.iter().map(|a| a.to_string()).collect(),
            agent: agent.map(String::from),
            ttl_seconds: None,
        };
        assert!(spec(Role::Owner, &["web"], None).validate().is_ok());
        assert!(spec(Role::Agent, &[], Some("a1")).validate().is_ok());
        let field = |s: TokenSpec| s.validate().expect_err("refused").field;
        assert_eq!(field(spec(Role::Owner, &[], None)).as_deref(), Some("applications"));
        assert_eq!(field(spec(Role::Reader, &["web"], None)).as_deref(), Some("applications"));
        assert_eq!(field(spec(Role::Agent, &[], None)).as_deref(), Some("agent"));
        assert_eq!(field(spec(Role::Sre, &[], Some("a1"))).as_deref(), Some("agent"));
        assert_eq!(
            field(TokenSpec { name: "Bad Name".into(), ..spec(Role::Admin, &[], None) }).as_deref(),
            Some("name")
        );
        assert_eq!(
            field(TokenSpec { ttl_seconds: Some(0), ..spec(Role::Admin, &[], None) }).as_deref(),
            Some("ttlSeconds")
        );
    }

    #[test]
    fn callers_are_held_to_their_applications_and_agent() {
        let owner = Caller { name: "t".into(), role: Role::Owner, applications: vec!["web".into()], agent: None };
        assert!(owner.check_application("web").is_ok());
        assert_eq!(owner.check_application("batch").expect_err("not its own").code, ErrorCode::Forbidden);
        let agent = Caller { name: "a".into(), role: Role::Agent, applications: Vec::new(), agent: Some("a1".into()) };
        assert!(agent.check_agent("a1").is_ok() && agent.check_agent("a2").is_err());
        assert!(Caller::anyone().check_application("x").is_ok() && Caller::anyone().check_agent("x").is_ok());
    }
}
