//! Tokens: who may use the API (`titan_api::router::AuthApi`): a request's token looked up by its hash in the
//! applied state, and tokens created and revoked through Raft.

use titan_api::acl::{Caller, TokenCreated, TokenList, TokenSpec, TokenView};
use titan_api::router::{AuthApi, AuthSettings, Refused};

use super::*;
use crate::member::answer::TokenWritten;
use crate::token::{self, TokenRecord};

impl AuthApi for Cell {
    fn auth_settings(&self) -> AuthSettings {
        AuthSettings { enabled: self.config.auth.enabled, metrics_need_token: self.config.auth.metrics_need_token }
    }

    fn authenticate(&self, hash: &[u8; 32]) -> Result<Caller, Refused> {
        let state = self.read();
        state.token_by_hash(hash).ok_or(Refused::Unknown)?.caller(now_ms())
    }

    fn job_application(&self, id: &str) -> Option<String> {
        self.read().job(id).map(|j| j.spec.application_name.clone())
    }

    fn task_application(&self, id: &str) -> Option<String> {
        let state = self.read();
        let task = state.task(id)?;
        state.job(&task.job_id).map(|j| j.spec.application_name.clone())
    }

    fn create_token(&self, spec: TokenSpec, actor: Actor) -> ApiResult<'_, TokenCreated> {
        Box::pin(async move {
            let secret = token::new_secret().map_err(ApiError::internal)?;
            let meta = self.meta(actor);
            let record = TokenRecord {
                name: spec.name.clone(),
                hash: token::hash_hex(&secret),
                role: spec.role,
                applications: spec.applications,
                agent: spec.agent,
                created_at_ms: meta.at_ms,
                created_by: meta.who.clone(),
                expires_at_ms: spec.ttl_seconds.map(|t| meta.at_ms.saturating_add(t.saturating_mul(1000))),
                revoked_at_ms: None,
                hlc: Default::default(),
            };
            let written: TokenWritten = self.commit_as(Command::PutToken { record, meta }).await?;
            tracing::info!(token = %written.name, role = %spec.role, "token created");
            let token = self.token_view(&written.name)?;
            Ok(TokenCreated { token, secret })
        })
    }

    fn list_tokens(&self) -> ApiResult<'_, TokenList> {
        Box::pin(async move { Ok(TokenList { tokens: self.read().tokens().map(TokenRecord::view).collect() }) })
    }

    fn revoke_token(&self, name: String, actor: Actor) -> ApiResult<'_, TokenView> {
        Box::pin(async move {
            let written: TokenWritten = self.commit_as(Command::RevokeToken { name, meta: self.meta(actor) }).await?;
            tracing::info!(token = %written.name, "token revoked");
            self.token_view(&written.name)
        })
    }
}

impl Cell {
    fn token_view(&self, name: &str) -> Result<TokenView, ApiError> {
        self.read().token(name).map(TokenRecord::view).ok_or_else(|| ApiError::not_found("token", name))
    }
}
