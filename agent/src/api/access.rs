//! Who may call what. Each route declares its [`Access`] beside its handler;
//! the guard here runs before the handler, learns the caller from the
//! connection's `SO_PEERCRED` (never from the request) and hands the handler
//! a [`Caller`]. Browser requests are refused, bodies bounded, and every
//! handler answers within [`super::HANDLER_DEADLINE`].

use super::{AppState, MAX_BODY_BYTES};
use crate::core::http::{Access, ApiError, Caller, Peer};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// An NSS look-up (sssd, LDAP) that takes longer than this counts as "not an admin".
const ADMIN_LOOKUP_DEADLINE: Duration = Duration::from_secs(2);

/// Refuses browser-originated requests: a web page cannot reach a unix socket
/// directly, but a local proxy could forward one, and browsers always send these.
pub async fn refuse_browser_requests(request: Request, next: Next) -> Response {
    for name in [header::ORIGIN, header::REFERER] {
        if request.headers().contains_key(&name) {
            return ApiError::BrowserRequest(format!(
                "requests carrying an `{name}` header are refused: the local API is not for browsers"
            ))
            .into_response();
        }
    }
    next.run(request).await
}

/// Refuses bodies over the limit before any handler sees them: by the
/// declared length, or, for chunked bodies, by reading at most the limit.
pub async fn bound_request_body(request: Request, next: Next) -> Response {
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return ApiError::BodyTooLarge { limit: MAX_BODY_BYTES }.into_response();
    }
    if declared.is_some() || request.method() == Method::GET || request.method() == Method::HEAD {
        return next.run(request).await;
    }
    // No length given (chunked): buffer at most the limit, then hand it on.
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Err(_) => ApiError::BodyTooLarge { limit: MAX_BODY_BYTES }.into_response(),
    }
}

/// Every handler answers in time; one that does not gets a JSON `timeout`.
pub async fn answer_within_deadline(request: Request, next: Next) -> Response {
    let what = format!("{} {}", request.method(), request.uri().path());
    match tokio::time::timeout(super::HANDLER_DEADLINE, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(format!(
            "{what} did not answer within {}s; the agent is busy or a system call hangs, see `pool-agent status`",
            super::HANDLER_DEADLINE.as_secs()
        ))
        .into_response(),
    }
}

/// The per-route guard: decides who the caller is and whether they may call.
pub async fn guard(State((state, access)): State<(AppState, Access)>, mut request: Request, next: Next) -> Response {
    // No credentials means we cannot tell who is asking: reads only.
    let Some(peer) = request.extensions().get::<Peer>().copied() else {
        if access == Access::Read {
            return next.run(request).await;
        }
        return ApiError::Forbidden("caller credentials unavailable".to_string()).into_response();
    };
    let admin_group = state.settings.borrow().api.admin_group.clone();
    let admin = caller_is_admin(&state, peer, &admin_group).await;
    if access == Access::Admin && !admin {
        return ApiError::Forbidden(format!(
            "{} {} changes this VM: only root and members of group `{admin_group}` may do that (you are uid {})",
            request.method(),
            request.uri().path(),
            peer.uid
        ))
        .into_response();
    }
    request.extensions_mut().insert(Caller { peer, admin });
    next.run(request).await
}

/// Root, or a member of the admin group by any of the caller's groups. The
/// look-up may go to NSS, so it runs off the async workers, under a deadline.
pub async fn caller_is_admin(state: &AppState, peer: Peer, admin_group: &str) -> bool {
    if peer.uid == 0 {
        return true;
    }
    let accounts = state.accounts.clone();
    let group = admin_group.to_string();
    let lookup = tokio::task::spawn_blocking(move || accounts.is_admin(peer.uid, peer.gid, &group));
    match tokio::time::timeout(ADMIN_LOOKUP_DEADLINE, lookup).await {
        Ok(Ok(admin)) => {
            if admin {
                state.admins.confirm(peer.uid);
            }
            admin
        }
        _ => {
            tracing::warn!(uid = peer.uid, "admin look-up did not answer in time; treating the caller as a user");
            false
        }
    }
}
