//! API tokens in the state: each token's record (one replicated register), the index from a secret's hash to its
//! token (derived), tokens created and revoked here, and records merged from other cells.

use super::*;
use crate::command::Meta;
use crate::token::{self, TokenRecord};
use titan_api::acl::Role;

impl CellState {
    /// The token a secret's hash names, revoked and expired ones too: O(1).
    pub fn token_by_hash(&self, hash: &[u8; 32]) -> Option<&TokenRecord> {
        self.token_hashes.get(hash).and_then(|name| self.tokens.get(name))
    }

    pub fn token(&self, name: &str) -> Option<&TokenRecord> {
        self.tokens.get(name)
    }

    /// Every token, revoked ones too, by name.
    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }

    /// Creates a token; a name already taken (revoked or not: names are never reused) is refused.
    pub(super) fn put_token(&mut self, record: &TokenRecord, meta: &Meta) -> Response {
        if self.tokens.contains_key(&record.name) {
            return Response::Rejected(Rejection::TokenExists { name: record.name.clone() });
        }
        let mut record = record.clone();
        record.hlc = self.stamp(meta);
        record.created_at_ms = meta.at_ms;
        record.created_by = meta.who.clone();
        let (name, what) = (record.name.clone(), format!("created ({})", record.role));
        self.token_changed(record);
        self.event(Topic::Acl, &what, &name, None, None, meta.why.as_deref(), meta.at_ms);
        Response::Token { name }
    }

    /// Revokes a token, once: a later revocation changes nothing.
    pub(super) fn revoke_token(&mut self, name: &str, meta: &Meta) -> Response {
        let Some(t) = self.tokens.get(name) else {
            return Response::Rejected(Rejection::TokenNotFound { name: name.to_string() });
        };
        if t.revoked_at_ms.is_some() {
            return Response::Token { name: name.to_string() };
        }
        let works = |o: &TokenRecord| o.revoked_at_ms.is_none() && o.expires_at_ms.is_none_or(|e| e > meta.at_ms);
        let other_admin = self.tokens.values().any(|o| o.name != name && o.role == Role::Admin && works(o));
        if t.role == Role::Admin && !other_admin {
            return Response::Rejected(Rejection::LastAdminToken { name: name.to_string() });
        }
        let mut record = t.clone();
        record.revoked_at_ms = Some(meta.at_ms);
        record.hlc = self.stamp(meta);
        self.token_changed(record);
        self.event(Topic::Acl, "revoked", name, None, None, meta.why.as_deref(), meta.at_ms);
        Response::Token { name: name.to_string() }
    }

    /// Merges tokens another cell sent, each one register: the newer write wins. Returns how many changed here and
    /// how many incoming writes lost to a newer one made in another cell.
    pub(super) fn merge_tokens(&mut self, from: &str, incoming: &[TokenRecord], meta: &Meta) -> (u32, u32) {
        let (mut changed, mut conflicts) = (0, 0);
        for t in incoming {
            let (take, lost) = token::takes(self.tokens.get(&t.name), t);
            conflicts += u32::from(lost);
            if !take {
                continue;
            }
            let what = if t.revoked_at_ms.is_some() { "revoked" } else { "created" };
            self.token_changed(t.clone());
            changed += 1;
            self.event(Topic::Acl, &format!("{what} (from {from})"), &t.name, None, None, None, meta.at_ms);
        }
        (changed, conflicts)
    }

    /// Keeps a token's record and its hash's index entry, and puts it in the outbox for the other cells.
    fn token_changed(&mut self, record: TokenRecord) {
        if let Some(old) = self.tokens.get(&record.name).and_then(|t| token::unhex(&t.hash)) {
            self.token_hashes.remove(&old);
        }
        if let Some(h) = token::unhex(&record.hash) {
            self.token_hashes.insert(h, record.name.clone());
        }
        self.note_outbox(&token::outbox_key(&record.name));
        self.tokens.insert(record.name.clone(), record);
    }

    /// Rebuilds the hash index (derived).
    pub(super) fn reindex_tokens(&mut self) {
        self.token_hashes =
            self.tokens.values().filter_map(|t| token::unhex(&t.hash).map(|h| (h, t.name.clone()))).collect();
    }
}
