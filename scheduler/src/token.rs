//! API tokens, the pure part: the replicated record (a name, a role, the hash of its secret, never the secret),
//! making a secret, and whether a record opens anything at a given time. A token is one register replicated to
//! every cell like a quota (outbox key `token/<name>`): created in one cell, it works in all; a revocation is a
//! newer write of the same register, so it reaches every cell the way any change does, and wins over the
//! creation wherever they meet.

use serde::{Deserialize, Serialize};
use titan_api::acl::{Caller, Role, TokenView};
use titan_api::router::Refused;

use crate::hlc::Hlc;

/// A token as every cell keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applications: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub created_at_ms: u64,
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<u64>,
    /// The register's version: the newer write wins.
    pub hlc: Hlc,
}

impl TokenRecord {
    /// Whether it opens anything at `now_ms`, and who it says the caller is.
    pub fn caller(&self, now_ms: u64) -> Result<Caller, Refused> {
        if self.revoked_at_ms.is_some() {
            return Err(Refused::Revoked);
        }
        if self.expires_at_ms.is_some_and(|e| now_ms >= e) {
            return Err(Refused::Expired);
        }
        Ok(Caller {
            name: self.name.clone(),
            role: self.role,
            applications: self.applications.clone(),
            agent: self.agent.clone(),
        })
    }

    pub fn view(&self) -> TokenView {
        TokenView {
            name: self.name.clone(),
            role: self.role,
            applications: self.applications.clone(),
            agent: self.agent.clone(),
            created_at_ms: self.created_at_ms,
            created_by: self.created_by.clone(),
            expires_at_ms: self.expires_at_ms,
            revoked_at_ms: self.revoked_at_ms,
            cell: self.hlc.cell.clone(),
        }
    }
}

/// A new secret: `titan_` and 64 hex digits of the operating system's randomness (256 bits).
pub fn new_secret() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness for a token: {e}"))?;
    Ok(format!("{}{}", titan_api::acl::SECRET_PREFIX, hex(&bytes)))
}

/// A secret's hash as a record keeps it.
pub fn hash_hex(secret: &str) -> String {
    hex(&titan_api::acl::hash(secret))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash a hex string holds, if it is one.
pub fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn outbox_key(name: &str) -> String {
    format!("token/{name}")
}

/// The token an outbox key names, if it is a token's.
pub fn name_of_key(key: &str) -> Option<&str> {
    key.strip_prefix("token/")
}

/// Whether to take an incoming record over the one held (the newer write wins), and whether ours won over another
/// cell's write (a conflict).
pub fn takes(ours: Option<&TokenRecord>, incoming: &TokenRecord) -> (bool, bool) {
    match ours {
        None => (true, false),
        Some(t) if incoming.hlc > t.hlc => (true, false),
        Some(t) => (false, incoming.hlc < t.hlc && incoming.hlc.cell != t.hlc.cell),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(role: Role) -> TokenRecord {
        TokenRecord {
            name: "ci".into(),
            hash: hash_hex("titan_x"),
            role,
            applications: Vec::new(),
            agent: None,
            created_at_ms: 1,
            created_by: "admin".into(),
            expires_at_ms: Some(100),
            revoked_at_ms: None,
            hlc: Hlc::new(1, 0, "dc1"),
        }
    }

    #[test]
    fn a_record_opens_until_it_expires_or_is_revoked() {
        let r = record(Role::Reader);
        assert_eq!(r.caller(99).expect("valid").role, Role::Reader);
        assert_eq!(r.caller(100), Err(Refused::Expired));
        let revoked = TokenRecord { revoked_at_ms: Some(50), ..r };
        assert_eq!(revoked.caller(10), Err(Refused::Revoked));
    }

    #[test]
    fn secrets_are_random_prefixed_and_hash_to_what_the_api_checks() {
        let (a, b) = (new_secret().expect("secret"), new_secret().expect("secret"));
        assert_ne!(a, b);
        assert!(a.starts_with("titan_") && a.len() == 6 + 64);
        assert_eq!(unhex(&hash_hex(&a)), Some(titan_api::acl::hash(&a)));
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn a_revocation_is_a_newer_write_and_wins() {
        let created = record(Role::Admin);
        let revoked = TokenRecord { revoked_at_ms: Some(5), hlc: Hlc::new(5, 0, "dc2"), ..created.clone() };
        assert_eq!(takes(Some(&created), &revoked), (true, false));
        assert_eq!(takes(Some(&revoked), &created), (false, true), "the older creation loses, a conflict");
        assert_eq!(outbox_key("ci"), "token/ci");
        assert_eq!(name_of_key("token/ci"), Some("ci"));
    }
}
