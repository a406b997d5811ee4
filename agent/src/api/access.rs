//! Who may call what, decided before any route logic runs.
//!
//! Reads (GET/HEAD) are open to every local user. Writes need root or a member
//! of `api.admin_group`, except the few self-service routes (holds) whose
//! handlers check ownership themselves. Unknown write routes default to admin,
//! so a route added later is protected without touching this file.

use super::error::ApiError;
use super::{AppState, Peer};
use crate::accounts;
use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any local user.
    Read,
    /// Any local user, acting on their own objects (the handler checks).
    SelfService,
    /// Root or a member of the admin group.
    Admin,
}

pub fn required_access(method: &Method, path: &str) -> Access {
    if method == Method::GET || method == Method::HEAD {
        return Access::Read;
    }
    let self_service = (method == Method::POST && path == "/v1/holds")
        || (method == Method::DELETE
            && path.strip_prefix("/v1/holds/").is_some_and(|id| !id.is_empty() && !id.contains('/')));
    if self_service {
        Access::SelfService
    } else {
        Access::Admin
    }
}

/// Refuses browser-originated requests: a web page cannot reach a unix socket
/// directly, but a local proxy could forward one, and browsers always send these.
pub async fn refuse_browser_requests(request: Request, next: Next) -> Response {
    for name in [header::ORIGIN, header::REFERER] {
        if request.headers().contains_key(&name) {
            return ApiError::BrowserRequest(format!(
                "requests carrying a {name} header are refused: the local API is not for browsers"
            ))
            .into_response();
        }
    }
    next.run(request).await
}

/// Refuses bodies over the limit before any handler reads them.
pub async fn bound_request_body(request: Request, next: Next) -> Response {
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > super::MAX_BODY_BYTES as u64) {
        return ApiError::BodyTooLarge { limit: super::MAX_BODY_BYTES }.into_response();
    }
    next.run(request).await
}

pub async fn enforce_access(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let access = required_access(request.method(), request.uri().path());
    if access == Access::Read || access == Access::SelfService {
        return next.run(request).await;
    }
    // No credentials means we cannot tell who is asking: refuse.
    let Some(peer) = request.extensions().get::<Peer>().copied() else {
        return ApiError::Forbidden("caller credentials unavailable".to_string()).into_response();
    };
    let admin_group = state.settings.borrow().api.admin_group.clone();
    if caller_is_admin(&state, peer, &admin_group) {
        return next.run(request).await;
    }
    ApiError::Forbidden(format!(
        "{} {} changes this VM: only root and members of group `{admin_group}` may do that (you are uid {})",
        request.method(),
        request.uri().path(),
        peer.uid
    ))
    .into_response()
}

pub fn caller_is_admin(state: &AppState, peer: Peer, admin_group: &str) -> bool {
    if peer.uid == 0 {
        return true;
    }
    // Unreadable account files mean no one but root is an admin.
    let users = accounts::read_passwd(&state.paths.passwd()).unwrap_or_default();
    let groups = accounts::read_group(&state.paths.group()).unwrap_or_default();
    accounts::is_admin(peer.uid, peer.gid, admin_group, &users, &groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_open_and_writes_default_to_admin() {
        assert_eq!(required_access(&Method::GET, "/v1/links"), Access::Read);
        assert_eq!(required_access(&Method::POST, "/v1/links/sync"), Access::Admin);
        assert_eq!(required_access(&Method::POST, "/v1/share/remount"), Access::Admin);
        assert_eq!(required_access(&Method::POST, "/v1/some/future/route"), Access::Admin);
        assert_eq!(required_access(&Method::PUT, "/v1/holds"), Access::Admin);
        assert_eq!(required_access(&Method::POST, "/v1/holds"), Access::SelfService);
        assert_eq!(required_access(&Method::DELETE, "/v1/holds/h-12"), Access::SelfService);
        assert_eq!(required_access(&Method::DELETE, "/v1/holds/"), Access::Admin);
        assert_eq!(required_access(&Method::DELETE, "/v1/holds/a/b"), Access::Admin);
    }
}
