//! Who may call what. Each route declares its [`Access`] beside its handler;
//! the guard here runs before the handler, learns the caller from the
//! connection's `SO_PEERCRED` (never from the request) and hands the handler
//! a [`Caller`]. Browser requests are refused, bodies bounded, and every
//! handler answers within [`super::HANDLER_DEADLINE`].

use super::admin::AdminLookups;
use super::{AppState, MAX_BODY_BYTES};
use crate::core::http::{Access, ApiError, Caller, Peer};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// A read anyone may do waits no longer than this for the admin answer (it
/// only decides whether private details are shown), so reads stay quick
/// while a directory service hangs.
pub const READ_WAITS_FOR_ADMIN: Duration = Duration::from_millis(300);

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
pub async fn guard(
    State((state, access, lookups)): State<(AppState, Access, AdminLookups)>,
    mut request: Request,
    next: Next,
) -> Response {
    // No credentials means we cannot tell who is asking: reads only.
    let Some(peer) = request.extensions().get::<Peer>().copied() else {
        if access == Access::Read {
            return next.run(request).await;
        }
        return ApiError::Forbidden("caller credentials unavailable".to_string()).into_response();
    };
    let admin_group = state.settings.borrow().api.admin_group.clone();
    let admin = match caller_is_admin(&state, &lookups, peer, &admin_group, access).await {
        Ok(admin) => admin,
        Err(refusal) => return refusal.into_response(),
    };
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

/// Root, or a member of the admin group by any of the caller's groups.
///
/// How long it waits depends on what the route needs: a read anyone may do
/// never waits on NSS longer than [`READ_WAITS_FOR_ADMIN`] and is answered
/// as for a user without an answer; a self-service route falls back the same
/// way (a user may still act on their own things); only an admin route
/// needs the answer, and without one it is refused as `unavailable`.
async fn caller_is_admin(
    state: &AppState,
    lookups: &AdminLookups,
    peer: Peer,
    admin_group: &str,
    access: Access,
) -> Result<bool, ApiError> {
    let asked = lookups.is_admin(peer.uid, peer.gid, admin_group);
    let answer = match access {
        Access::Read => match tokio::time::timeout(READ_WAITS_FOR_ADMIN, asked).await {
            Ok(answer) => answer,
            // The look-up goes on and is remembered for the next request.
            Err(_) => return Ok(false),
        },
        Access::SelfService | Access::Admin => asked.await,
    };
    match answer {
        Ok(admin) => {
            if admin {
                state.admins.confirm(peer.uid);
            }
            Ok(admin)
        }
        Err(why) => {
            tracing::warn!(uid = peer.uid, "cannot tell whether the caller is an admin: {why}");
            if access != Access::Admin {
                return Ok(false);
            }
            Err(ApiError::Unavailable(format!(
                "cannot tell whether uid {} is in group `{admin_group}`: {why} (the directory service, e.g. sssd or LDAP, is not answering); retry shortly, or run the command as root",
                peer.uid
            )))
        }
    }
}
