//! What a capability needs to offer routes on the local API without knowing
//! the API: routes with their access level declared beside them, the caller
//! as the kernel reported it, and the one error type with its JSON shape.

use axum::handler::Handler;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use axum::Json;
use serde::{Deserialize, Serialize};

/// Every error answer: a stable machine code and one human sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any local user.
    Read,
    /// Any local user, acting on their own objects (the handler checks
    /// ownership with [`Caller`]; admins act on everyone's).
    SelfService,
    /// Root or a member of the admin group.
    Admin,
}

/// The caller of a request, from `SO_PEERCRED`, never from the request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// The caller once the API has decided who they are; handlers extract it
/// with `Extension<Caller>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub peer: Peer,
    /// Root, or a member of `api.admin_group` (primary, supplementary or NSS group).
    pub admin: bool,
}

/// One route a capability offers: method, path, who may call it, and the handler.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub handler: MethodRouter,
}

impl Route {
    /// A route whose handler needs no state of its own.
    fn plain<H, T>(method: Method, filter: MethodFilter, path: &'static str, access: Access, handler: H) -> Self
    where
        H: Handler<T, ()>,
        T: 'static,
    {
        Self { method, path, access, handler: axum::routing::on(filter, handler) }
    }

    /// A route whose handler reads the capability's own state (`State<S>`).
    fn stateful<H, T, S>(
        method: Method,
        filter: MethodFilter,
        path: &'static str,
        access: Access,
        state: S,
        handler: H,
    ) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
        S: Clone + Send + Sync + 'static,
    {
        Self { method, path, access, handler: axum::routing::on(filter, handler).with_state(state) }
    }

    pub fn get<H: Handler<T, ()>, T: 'static>(path: &'static str, access: Access, handler: H) -> Self {
        Self::plain(Method::GET, MethodFilter::GET, path, access, handler)
    }

    pub fn post<H: Handler<T, ()>, T: 'static>(path: &'static str, access: Access, handler: H) -> Self {
        Self::plain(Method::POST, MethodFilter::POST, path, access, handler)
    }

    pub fn delete<H: Handler<T, ()>, T: 'static>(path: &'static str, access: Access, handler: H) -> Self {
        Self::plain(Method::DELETE, MethodFilter::DELETE, path, access, handler)
    }

    pub fn get_with<H, T, S>(path: &'static str, access: Access, state: S, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
        S: Clone + Send + Sync + 'static,
    {
        Self::stateful(Method::GET, MethodFilter::GET, path, access, state, handler)
    }

    pub fn post_with<H, T, S>(path: &'static str, access: Access, state: S, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
        S: Clone + Send + Sync + 'static,
    {
        Self::stateful(Method::POST, MethodFilter::POST, path, access, state, handler)
    }

    pub fn delete_with<H, T, S>(path: &'static str, access: Access, state: S, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
        S: Clone + Send + Sync + 'static,
    {
        Self::stateful(Method::DELETE, MethodFilter::DELETE, path, access, state, handler)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BrowserRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("{what} is not built in this version of pool-agent ({capability})")]
    NotImplemented { what: String, capability: &'static str },
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) | ApiError::BrowserRequest(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable codes: scripts match on these, so never rename one.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::BrowserRequest(_) => "browser_request_refused",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::NotImplemented { .. } => "not_implemented",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Timeout(_) => "timeout",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_error(self.status(), self.code(), self.to_string())
    }
}

pub fn json_error(status: StatusCode, code: &str, message: String) -> Response {
    let mut response = (status, Json(ErrorBody { error: code.to_string(), message })).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The code for an error response produced outside our handlers (axum's own
/// rejections), so those answers are JSON too.
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY | StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            "bad_request"
        }
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::NOT_IMPLEMENTED => "not_implemented",
        StatusCode::CONFLICT => "conflict",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "internal",
    }
}

/// The answer of a route whose capability is not built in this version.
pub async fn not_built(what: impl Into<String>, capability: &'static str) -> ApiError {
    ApiError::NotImplemented { what: what.into(), capability }
}
