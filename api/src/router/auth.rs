//! The authentication layer: every request's token checked against the cell's tokens and the route's rule
//! (`acl::rule`), before any handler runs. It answers 401 without a valid token, 403 for a role or an object
//! (another application's job, another agent) the token may not use, and 429 to an address that sent too many
//! bad tokens (a good token from it still passes). A request it lets through carries its `Caller` (an extension) and the token's name as the
//! `X-Titan-User` header, replacing whatever the client sent, so history and events name the token.
//!
//! The cell's own routes (`/internal/...`: Raft, forwarding, federation) are not checked here: members and cells
//! authenticate each other with TLS client certificates.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::acl::{AuthApi, Refused};
use crate::acl::{self, Access, Caller};
use crate::error::{ApiError, ErrorCode};

/// Bad tokens one address may send within `WINDOW` before it is answered 429 until the window ends.
const FAILURES_ALLOWED: u32 = 20;
const WINDOW: Duration = Duration::from_secs(10);
/// Addresses tracked at most; past it the oldest windows are dropped.
const TRACKED: usize = 10_000;

/// Failed attempts per client address.
#[derive(Default)]
pub(super) struct Limiter {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Limiter {
    /// Seconds until `ip` may try again, if it is over its allowance.
    fn blocked(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let (n, since) = map.get(&ip)?;
        let left = WINDOW.checked_sub(now.duration_since(*since)).filter(|l| !l.is_zero())?;
        (*n >= FAILURES_ALLOWED).then(|| left.as_secs().max(1))
    }

    fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= TRACKED && !map.contains_key(&ip) {
            map.retain(|_, (_, since)| now.duration_since(*since) < WINDOW);
            if map.len() >= TRACKED {
                map.clear();
            }
        }
        let entry = map.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

#[derive(Clone)]
pub(super) struct AuthLayer {
    pub(super) cell: Arc<dyn AuthApi>,
    pub(super) limiter: Arc<Limiter>,
}

/// The `{id}` of a path like `/v1/jobs/{id}/...`: its fourth segment.
fn object_id(path: &str) -> Option<&str> {
    path.split('/').nth(3).filter(|s| !s.is_empty())
}

fn unauthorized(why: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, why.to_string()).with_field("Authorization")
}

/// Why `caller` may not use a route needing `access` at `path` (the object it names checked too), if it may not.
fn refuse(layer: &AuthLayer, caller: &Caller, access: Access, route: &str, path: &str) -> Option<ApiError> {
    if !access.allows(caller.role) {
        return Some(ApiError::new(
            ErrorCode::Forbidden,
            format!("token {:?} has role {}; this route needs one of: {}", caller.name, caller.role, access.roles()),
        ));
    }
    let id = object_id(path);
    match (access, id) {
        (Access::Agent, Some(id)) if route.starts_with("/v1/agents/{id}") => caller.check_agent(id).err(),
        (Access::JobWrite | Access::Logs, Some(id)) if caller.role == acl::Role::Owner => {
            let app = if route.starts_with("/v1/jobs/{id}") {
                layer.cell.job_application(id)
            } else if route.starts_with("/v1/tasks/{id}") {
                layer.cell.task_application(id)
            } else {
                None
            };
            // No such object: the handler answers 404.
            app.and_then(|a| caller.check_application(&a).err())
        }
        _ => None,
    }
}

pub(super) async fn authenticate(State(layer): State<AuthLayer>, mut req: Request, next: Next) -> Response {
    let settings = layer.cell.auth_settings();
    if !settings.enabled {
        req.extensions_mut().insert(Caller::anyone());
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    if path.starts_with("/internal/") {
        return next.run(req).await;
    }
    let Some(route) = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()) else {
        // No route: the fallback answers 404 (or 405).
        return next.run(req).await;
    };
    let method = req.method().as_str().to_string();
    let access = match acl::rule(&method, &route) {
        Some(Access::Public) if route == "/metrics" && settings.metrics_need_token => Access::Read,
        Some(Access::Public) => return next.run(req).await,
        Some(a) => a,
        None => {
            return ApiError::new(ErrorCode::Forbidden, format!("{method} {route} has no access rule")).into_response();
        }
    };
    let ip = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let now = Instant::now();
    let presented = req.headers().contains_key(header::AUTHORIZATION);
    let caller = match req.headers().get(header::AUTHORIZATION) {
        None => Err(unauthorized("this route needs `Authorization: Bearer <token>`")),
        Some(v) => acl::bearer(v.as_bytes()).and_then(|secret| {
            layer.cell.authenticate(&acl::hash(secret)).map_err(|r: Refused| unauthorized(r.as_str()))
        }),
    };
    let caller = match caller {
        Ok(c) => c,
        Err(e) if !presented => return e.into_response(),
        Err(e) => {
            // An address past its allowance of bad tokens is answered 429 until its window ends (a good token still
            // passes: the secrets are too long to guess, the limit is against floods).
            if let Some(wait) = layer.limiter.blocked(ip, now) {
                let mut r = ApiError::new(
                    ErrorCode::RateLimited,
                    format!("too many bad tokens from {ip}: try again in {wait} s"),
                )
                .with_field("Authorization")
                .into_response();
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
                return r;
            }
            layer.limiter.failed(ip, now);
            tracing::info!(%ip, route = %route, why = %e.message, "request refused: no valid token");
            return e.into_response();
        }
    };
    if let Some(e) = refuse(&layer, &caller, access, &route, &path) {
        tracing::info!(token = %caller.name, route = %route, why = %e.message, "request refused: not allowed");
        return e.into_response();
    }
    match HeaderValue::from_str(&caller.name) {
        Ok(v) => {
            req.headers_mut().insert(super::USER_HEADER, v);
        }
        Err(_) => return ApiError::internal("a token name is not a header value").into_response(),
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_slowed_after_its_allowance_until_its_window_ends() {
        let l = Limiter::default();
        let ip = IpAddr::from([127, 0, 0, 9]);
        let t0 = Instant::now();
        for _ in 0..FAILURES_ALLOWED {
            assert_eq!(l.blocked(ip, t0), None);
            l.failed(ip, t0);
        }
        assert!(l.blocked(ip, t0).is_some_and(|s| s >= 1 && s <= WINDOW.as_secs()));
        assert_eq!(l.blocked(IpAddr::from([127, 0, 0, 10]), t0), None, "other addresses are not slowed");
        assert_eq!(l.blocked(ip, t0 + WINDOW), None, "the window ended");
        l.failed(ip, t0 + WINDOW);
        assert_eq!(l.blocked(ip, t0 + WINDOW), None, "a new window starts at one failure");
    }

    #[test]
    fn the_object_is_the_fourth_segment() {
        assert_eq!(object_id("/v1/jobs/j1/instances"), Some("j1"));
        assert_eq!(object_id("/v1/agents/a1"), Some("a1"));
        assert_eq!(object_id("/v1/jobs"), None);
    }
}
