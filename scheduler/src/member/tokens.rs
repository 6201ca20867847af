//! The bootstrap admin token: a cell started for the first time with authentication on and no token at all makes
//! one admin token on its leader, writing the secret once to a 0600 file (its path is logged, never the secret).
//! A file that exists already is read instead, so cells started together can share one admin token.

use std::io::Write;
use std::path::Path;

use super::*;
use crate::token::{self, TokenRecord};

/// The name of a cell's bootstrap token.
pub(crate) fn bootstrap_name(cell: &str) -> String {
    format!("bootstrap-{cell}")
}

/// Whether this member should make the bootstrap token now: authentication on, it leads, and the cell holds no
/// token at all (made here or merged from another cell).
pub(crate) fn needs_bootstrap(enabled: bool, leads: bool, tokens: usize) -> bool {
    enabled && leads && tokens == 0
}

/// The secret in `path`, or a new one written there (0600, created only if absent).
pub(crate) fn bootstrap_secret(path: &Path) -> Result<String, String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let secret = text.trim().to_string();
        if secret.starts_with(titan_api::acl::SECRET_PREFIX) {
            return Ok(secret);
        }
        return Err(format!("{} holds no token", path.display()));
    }
    let secret = token::new_secret()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(format!("{secret}\n").as_bytes()).and_then(|()| f.sync_all()).map_err(|e| e.to_string())?;
    Ok(secret)
}

/// Makes the bootstrap token once, on the leader, then stops.
pub(super) struct Bootstrap {
    pub(super) handle: Handle,
    pub(super) tick: tokio::time::Interval,
}

impl crate::worker::Worker for Bootstrap {
    fn name(&self) -> String {
        "bootstrap-token".into()
    }

    async fn wait(&mut self) -> Next {
        self.tick.tick().await;
        Next::Busy
    }

    async fn step(&mut self) -> Result<Next, String> {
        let config = &self.handle.config;
        let tokens = crate::scheduling::Host::read(&self.handle).tokens().count();
        if !config.auth.enabled || tokens > 0 {
            return Ok(Next::Done);
        }
        let leads = crate::scheduling::Host::is_leader(&self.handle);
        if !needs_bootstrap(config.auth.enabled, leads, tokens) {
            return Ok(Next::Idle);
        }
        let path = config.bootstrap_token_file();
        let secret = bootstrap_secret(&path)?;
        let meta = Meta {
            who: "titan:bootstrap".into(),
            why: Some("the cell's first start with authentication on".into()),
            at_ms: now_ms(),
            request: uuid::Uuid::new_v4().to_string(),
            cell: config.cell.clone(),
        };
        let record = TokenRecord {
            name: bootstrap_name(&config.cell),
            hash: token::hash_hex(&secret),
            role: titan_api::acl::Role::Admin,
            applications: Vec::new(),
            agent: None,
            created_at_ms: meta.at_ms,
            created_by: meta.who.clone(),
            expires_at_ms: None,
            revoked_at_ms: None,
            hlc: Default::default(),
        };
        let answer =
            self.handle.proposer.commit_command(Command::PutToken { record, meta }).await.map_err(|e| e.to_string())?;
        match super::answer::typed::<super::answer::TokenWritten>(answer) {
            Ok(w) => tracing::warn!(
                token = %w.name,
                file = %path.display(),
                "bootstrap admin token made; its secret is in the file (keep it safe, make other tokens with it)"
            ),
            // Another cell's token arrived first, or a name clash: nothing more to do.
            Err(e) => tracing::info!(error = %e, "no bootstrap token made"),
        }
        Ok(Next::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_leader_of_a_cell_with_no_token_bootstraps() {
        assert!(needs_bootstrap(true, true, 0));
        assert!(!needs_bootstrap(false, true, 0));
        assert!(!needs_bootstrap(true, false, 0));
        assert!(!needs_bootstrap(true, true, 1));
    }

    #[test]
    fn the_secret_file_is_made_once_private_and_read_after() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sub/admin.token");
        let first = bootstrap_secret(&path).expect("made");
        assert_eq!(bootstrap_secret(&path).expect("read"), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("file").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        std::fs::write(&path, "nonsense").expect("overwrite");
        assert!(bootstrap_secret(&path).is_err());
    }
}
