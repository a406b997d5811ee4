//! The route table. Routes of capabilities that have not landed answer 501
//! with a JSON error naming the work they wait for.

use super::access;
use super::error::{code_for_status, json_error, ApiError};
use super::types::{AgentInfo, StatusReport};
use super::AppState;
use crate::clock::rfc3339;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/config", get(effective_config))
        .route("/metrics", get(metrics))
        .route("/v1/share", get(share_report))
        .route("/v1/share/remount", post(share_remount))
        .route("/v1/links", get(|| not_implemented("GET /v1/links", "links")))
        .route("/v1/links/sync", post(|| not_implemented("POST /v1/links/sync", "links")))
        .route("/v1/scripts", get(|| not_implemented("GET /v1/scripts", "setup scripts")))
        .route(
            "/v1/scripts/{name}/run",
            post(|Path(name): Path<String>| not_implemented(format!("POST /v1/scripts/{name}/run"), "setup scripts")),
        )
        .route(
            "/v1/scripts/{name}/log",
            get(|Path(name): Path<String>| not_implemented(format!("GET /v1/scripts/{name}/log"), "setup scripts")),
        )
        .route("/v1/idle", get(|| not_implemented("GET /v1/idle", "idle")))
        .route(
            "/v1/holds",
            get(|| not_implemented("GET /v1/holds", "idle")).post(|| not_implemented("POST /v1/holds", "idle")),
        )
        .route(
            "/v1/holds/{id}",
            delete(|Path(id): Path<String>| not_implemented(format!("DELETE /v1/holds/{id}"), "idle")),
        )
        .route("/v1/events", get(|| not_implemented("GET /v1/events", "Azure reporting")))
        .fallback(|request: Request| async move {
            ApiError::NotFound(format!("no route {} {}", request.method(), request.uri().path()))
        })
        .method_not_allowed_fallback(|request: Request| async move {
            ApiError::MethodNotAllowed(format!("{} is not allowed on {}", request.method(), request.uri().path()))
        })
        // Layers run bottom-up: errors become JSON last, browsers are refused first.
        .layer(middleware::from_fn_with_state(state.clone(), access::enforce_access))
        .layer(middleware::from_fn(access::bound_request_body))
        .layer(middleware::from_fn(access::refuse_browser_requests))
        .layer(middleware::from_fn(errors_as_json))
        .with_state(state)
}

async fn not_implemented(what: impl Into<String>, capability: &'static str) -> ApiError {
    ApiError::NotImplemented { what: what.into(), capability }
}

pub fn status_report(state: &AppState) -> StatusReport {
    StatusReport {
        agent: AgentInfo {
            version: crate::VERSION.to_string(),
            pid: std::process::id(),
            instance: state.instance.clone(),
            started_at: rfc3339(state.started_at),
            socket: state.paths.socket().display().to_string(),
            root: state.paths.is_sandbox().then(|| state.paths.root().display().to_string()),
        },
        config: state.board.config_status(),
        components: state.board.components(),
    }
}

async fn status(State(state): State<AppState>) -> Json<StatusReport> {
    Json(status_report(&state))
}

async fn share_report(State(state): State<AppState>) -> Json<crate::api::types::ShareReport> {
    Json(state.share.report())
}

/// Unmounts and mounts again now; answers with the share's state afterwards.
async fn share_remount(State(state): State<AppState>) -> Response {
    let mount_timeout = match &state.settings.borrow().share {
        Some(share) => share.mount_timeout,
        None => {
            return ApiError::Conflict("no share is configured ([share] is missing from the config)".to_string())
                .into_response()
        }
    };
    let wait = crate::share::ShareHandle::remount_deadline(mount_timeout);
    match state.share.request_remount(wait).await {
        Ok(report) if report.state == crate::api::types::ShareState::Mounted => Json(report).into_response(),
        Ok(report) => ApiError::Unavailable(format!(
            "remount failed, the share is {}: {}",
            report.state.as_str(),
            report.last_error.unwrap_or_default()
        ))
        .into_response(),
        Err(message) => ApiError::Unavailable(message).into_response(),
    }
}

async fn effective_config(State(state): State<AppState>) -> Response {
    let settings = state.settings.borrow().clone();
    match serde_json::to_value(settings.as_ref()) {
        Ok(value) => Json(value).into_response(),
        Err(err) => ApiError::Internal(format!("cannot render config: {err}")).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let body = crate::metrics::render(&status_report(&state), &state.share.report());
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

/// Any error answer that is not JSON yet (an extractor's rejection, say) is
/// rewritten into the one error shape, keeping its text as the message.
async fn errors_as_json(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = match axum::body::to_bytes(response.into_body(), 4096).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).trim().to_string(),
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    json_error(status, code_for_status(status), text)
}

/// Test helper: the body of a response as JSON.
#[cfg(test)]
pub async fn body_json(response: Response) -> serde_json::Value {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Peer;
    use crate::config;
    use crate::paths::SystemPaths;
    use crate::status::StatusBoard;
    use axum::body::Body;
    use axum::http::{Method, StatusCode};
    use std::sync::Arc;
    use tower::ServiceExt;

    struct Fixture {
        _dir: tempfile::TempDir,
        app: Router,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/bash\nalice:x:1001:1001::/home/alice:/bin/bash\nbob:x:1002:1002::/home/bob:/bin/bash\n").unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\npool-agent-admin:x:990:alice\n").unwrap();
        let settings = Arc::new(config::load_str(std::path::Path::new("c.toml"), "").unwrap());
        let (_tx, rx) = tokio::sync::watch::channel(settings);
        let clock = crate::clock::system();
        let state = AppState {
            share: crate::share::ShareHandle::system(clock.clone()),
            board: Arc::new(StatusBoard::new(clock.clone(), &[])),
            settings: rx,
            paths: Arc::new(SystemPaths::under(dir.path())),
            clock: clock.clone(),
            started_at: clock.now(),
            instance: "vm-test".into(),
        };
        Fixture { _dir: dir, app: router(state) }
    }

    fn request(method: Method, path: &str, uid: u32) -> Request {
        let mut request = Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
        request.extensions_mut().insert(Peer { uid, gid: uid, pid: None });
        request
    }

    #[tokio::test]
    async fn anyone_reads_status() {
        let f = fixture();
        let response = f.app.oneshot(request(Method::GET, "/v1/status", 1002)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = body_json(response).await;
        assert_eq!(body["agent"]["instance"], "vm-test");
        let names: Vec<_> =
            body["components"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
        assert_eq!(names, crate::status::COMPONENTS);
    }

    #[tokio::test]
    async fn writes_need_an_admin_and_refusals_are_json() {
        let f = fixture();
        let refused = f.app.clone().oneshot(request(Method::POST, "/v1/links/sync", 1002)).await.unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let body = body_json(refused).await;
        assert_eq!(body["error"], "forbidden");
        assert!(body["message"].as_str().unwrap().contains("pool-agent-admin"));

        // alice is in the admin group, root is root: both get past the check
        // to the route itself, which has not landed yet.
        for uid in [1001, 0] {
            let allowed = f.app.clone().oneshot(request(Method::POST, "/v1/links/sync", uid)).await.unwrap();
            assert_eq!(allowed.status(), StatusCode::NOT_IMPLEMENTED);
            assert_eq!(body_json(allowed).await["error"], "not_implemented");
        }
    }

    #[tokio::test]
    async fn a_write_without_credentials_is_refused() {
        let f = fixture();
        let request = Request::builder().method(Method::POST).uri("/v1/share/remount").body(Body::empty()).unwrap();
        let response = f.app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn browser_requests_are_refused_even_for_root() {
        let f = fixture();
        for header_name in ["origin", "referer"] {
            let mut req = request(Method::GET, "/v1/status", 0);
            req.headers_mut().insert(header_name, HeaderValue::from_static("http://evil.example"));
            let response = f.app.clone().oneshot(req).await.unwrap();
            assert_eq!(response.status(), StatusCode::FORBIDDEN);
            assert_eq!(body_json(response).await["error"], "browser_request_refused");
        }
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused() {
        let f = fixture();
        let mut req = request(Method::POST, "/v1/holds", 1002);
        req.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(1_000_000));
        let response = f.app.oneshot(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body_json(response).await["error"], "body_too_large");
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_answer_json() {
        let f = fixture();
        let missing = f.app.clone().oneshot(request(Method::GET, "/v1/nope", 0)).await.unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(body_json(missing).await["error"], "not_found");
        let wrong = f.app.oneshot(request(Method::PUT, "/v1/status", 0)).await.unwrap();
        assert_eq!(wrong.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body_json(wrong).await["error"], "method_not_allowed");
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let f = fixture();
        let response = f.app.oneshot(request(Method::GET, "/metrics", 1002)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.contains("pool_agent_component_healthy{component=\"share\"}"), "{text}");
    }
}
