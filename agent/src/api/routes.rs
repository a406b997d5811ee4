//! The route table: the API's own routes (status, config, metrics) and every
//! route the capabilities hand in, each behind the access guard it declares.

use super::access;
use super::admin::AdminLookups;
use super::types::{AgentInfo, StatusReport, StuckReport};
use super::AppState;
use crate::core::capability::redact;
use crate::core::clock::rfc3339;
use crate::core::http::{code_for_status, json_error, Access, ApiError, Caller, Route};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use std::sync::Arc;

/// The API's own routes.
fn own_routes(state: &AppState) -> Vec<Route> {
    vec![
        Route::get_with("/v1/status", Access::Read, state.clone(), status),
        Route::get_with("/v1/config", Access::Read, state.clone(), effective_config),
        Route::get_with("/metrics", Access::Read, state.clone(), metrics),
    ]
}

/// Builds the router from the API's own routes and the capabilities' routes.
pub fn router(state: AppState, capability_routes: Vec<Route>) -> Router {
    let accounts = state.accounts.clone();
    let lookups = AdminLookups::new(Arc::new(move |uid, gid, group: &str| accounts.is_admin(uid, gid, group)));
    router_with(state, capability_routes, lookups)
}

/// The router with the admin look-up given (tests hand in one that hangs).
fn router_with(state: AppState, capability_routes: Vec<Route>, lookups: AdminLookups) -> Router {
    let mut router = Router::new();
    for route in own_routes(&state).into_iter().chain(capability_routes) {
        let guard = middleware::from_fn_with_state((state.clone(), route.access, lookups.clone()), access::guard);
        router = router.route(route.path, route.handler.route_layer(guard));
    }
    router
        .fallback(|request: Request| async move {
            ApiError::NotFound(format!("no route {} {}", request.method(), request.uri().path()))
        })
        .method_not_allowed_fallback(|request: Request| async move {
            ApiError::MethodNotAllowed(format!("{} is not allowed on {}", request.method(), request.uri().path()))
        })
        // Layers run bottom-up: errors become JSON last, browsers are refused first.
        .layer(middleware::from_fn(access::answer_within_deadline))
        .layer(middleware::from_fn(access::bound_request_body))
        .layer(middleware::from_fn(access::refuse_browser_requests))
        .layer(middleware::from_fn(errors_as_json))
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
        stuck: stuck_report(state.clock.now()),
    }
}

/// The core's table of work past its deadline, in wall-clock terms.
fn stuck_report(now: std::time::SystemTime) -> Vec<StuckReport> {
    crate::core::stuck::stuck_now()
        .into_iter()
        .map(|stuck| StuckReport {
            name: match stuck.of {
                Some(of) => format!("{} ({of})", stuck.what),
                None => stuck.what.to_string(),
            },
            count: stuck.count,
            limit: stuck.limit,
            since: rfc3339(now.checked_sub(stuck.oldest).unwrap_or(now)),
        })
        .collect()
}

async fn status(State(state): State<AppState>) -> Json<StatusReport> {
    Json(status_report(&state))
}

/// The effective config; keys the capabilities call private (secret paths,
/// script arguments, environment values) are redacted for non-admins.
async fn effective_config(State(state): State<AppState>, caller: Option<Extension<Caller>>) -> Response {
    let settings = state.settings.borrow().clone();
    let mut value = match serde_json::to_value(settings.as_ref()) {
        Ok(value) => value,
        Err(err) => return ApiError::Internal(format!("cannot render config: {err}")).into_response(),
    };
    let admin = caller.is_some_and(|Extension(caller)| caller.admin);
    if !admin {
        for (section, keys) in state.private_config.iter() {
            redact(&mut value, section, keys);
        }
    }
    Json(value).into_response()
}

/// Every registered collector, read now, in the OpenMetrics text format
/// (which Prometheus scrapes as it does its own).
async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut body, &state.metrics) {
        return ApiError::Internal(format!("cannot encode metrics: {err}")).into_response();
    }
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
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
    json_error(status, code_for_status(status), plain_rejection(&text))
}

/// axum's rejection texts speak of deserializing target types; say what was
/// wrong with the request in the words of its fields.
fn plain_rejection(text: &str) -> String {
    for (prefix, what) in [
        ("Failed to deserialize the JSON body into the target type: ", "the JSON body"),
        ("Failed to parse the request body as JSON: ", "the body is not JSON"),
        ("Failed to deserialize query string: ", "the query"),
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            // "field: message at line 1 column 14": the position says nothing in a one-line body.
            let rest = rest.split(" at line ").next().unwrap_or(rest);
            let rest = match rest.split_once(": ") {
                Some((field, message)) if !field.contains(' ') => {
                    format!("{field}: {}", crate::config::plain_serde_message(message))
                }
                _ => crate::config::plain_serde_message(rest),
            };
            return format!("{what}: {rest}");
        }
    }
    match text {
        "Expected request with `Content-Type: application/json`" => {
            "send the body as JSON, with Content-Type: application/json".to_string()
        }
        other => other.to_string(),
    }
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
    use crate::core::accounts::AccountsView;
    use crate::core::board::{BoardMetrics, StatusBoard};
    use crate::core::component::ComponentId;
    use crate::core::paths::SystemPaths;
    use axum::body::Body;
    use axum::extract::Path;
    use axum::http::{Method, StatusCode};
    use std::time::Duration;
    use tower::ServiceExt;

    struct Fixture {
        _dir: tempfile::TempDir,
        app: Router,
    }

    const IDS: [ComponentId; 3] = [ComponentId::Config, ComponentId::Api, ComponentId::Share];

    /// Routes a capability might hand in, one of each access level.
    fn test_routes() -> Vec<Route> {
        vec![
            Route::post("/v1/test/change", Access::Admin, || async { Json(serde_json::json!({"changed": true})) }),
            Route::post(
                "/v1/test/mine",
                Access::SelfService,
                |Extension(caller): Extension<Caller>, body: String| async move {
                    Json(serde_json::json!({"uid": caller.peer.uid, "admin": caller.admin, "bytes": body.len()}))
                },
            ),
            Route::delete("/v1/test/mine/{id}", Access::SelfService, |Path(id): Path<String>| async move { id }),
            Route::get("/v1/test/slow", Access::Read, || async {
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                "late"
            }),
        ]
    }

    fn fixture() -> Fixture {
        fixture_with(|state| router(state, test_routes()))
    }

    fn fixture_with(build: impl FnOnce(AppState) -> Router) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/bash\nalice:x:1001:1001::/home/alice:/bin/bash\nbob:x:1002:1002::/home/bob:/bin/bash\n").unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\npool-agent-admin:x:990:alice\n").unwrap();
        let settings = Arc::new(
            config::load_str(
                std::path::Path::new("c.toml"),
                "[share]\nkind = \"azure-files\"\naccount = \"mystorage\"\nshare = \"notebooks\"\n[[setup.scripts]]\nname = \"a\"\npath = \"/a\"\nargs = [\"--token\", \"t0p\"]\n",
            )
            .unwrap(),
        );
        let (_tx, rx) = tokio::sync::watch::channel(settings);
        let clock = crate::core::clock::system();
        let paths = SystemPaths::under(dir.path());
        let board = Arc::new(StatusBoard::new(clock.clone(), &[], &IDS));
        let mut metrics = prometheus_client::registry::Registry::with_prefix("pool_agent");
        metrics.register_collector(Box::new(BoardMetrics(board.clone())));
        let state = AppState {
            board,
            settings: rx,
            accounts: AccountsView::for_paths(&paths),
            paths: Arc::new(paths),
            clock: clock.clone(),
            metrics: Arc::new(metrics),
            private_config: Arc::new(vec![("share", &["key_file"]), ("setup", &["scripts.*.args"])]),
            started_at: clock.now(),
            instance: "vm-test".into(),
            admins: Default::default(),
        };
        Fixture { _dir: dir, app: build(state) }
    }

    fn request(method: Method, path: &str, uid: u32) -> Request {
        let mut request = Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
        request.extensions_mut().insert(Peer { uid, gid: uid, pid: None });
        request
    }

    #[test]
    fn rejections_speak_of_the_request_not_of_rust_types() {
        let cases = [
            (
                "Failed to deserialize the JSON body into the target type: duration: invalid type: integer `5`, expected a string at line 1 column 14",
                "the JSON body: duration: expected a quoted string, found integer `5`",
            ),
            (
                "Failed to deserialize the JSON body into the target type: missing field `duration` at line 1 column 17",
                "the JSON body: `duration` is missing",
            ),
            (
                "Failed to deserialize the JSON body into the target type: unknown field `reson`, expected `duration` or `reason` at line 1 column 9",
                "the JSON body: unknown key `reson`; did you mean `reason`?",
            ),
            ("Failed to deserialize query string: offset: invalid digit found in string", "the query: offset: expected a whole number"),
        ];
        for (axum_says, we_say) in cases {
            assert_eq!(plain_rejection(axum_says), we_say);
        }
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
        assert_eq!(names, IDS.map(|id| id.as_str()));
    }

    #[tokio::test]
    async fn writes_need_an_admin_and_refusals_are_json() {
        let f = fixture();
        let refused = f.app.clone().oneshot(request(Method::POST, "/v1/test/change", 1002)).await.unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let body = body_json(refused).await;
        assert_eq!(body["error"], "forbidden");
        assert!(body["message"].as_str().unwrap().contains("pool-agent-admin"));

        // alice is in the admin group, root is root: both get to the handler.
        for uid in [1001, 0] {
            let allowed = f.app.clone().oneshot(request(Method::POST, "/v1/test/change", uid)).await.unwrap();
            assert_eq!(allowed.status(), StatusCode::OK);
            assert_eq!(body_json(allowed).await["changed"], true);
        }
    }

    #[tokio::test]
    async fn self_service_routes_tell_the_handler_who_calls() {
        let f = fixture();
        for (uid, admin) in [(1002, false), (1001, true)] {
            let response = f.app.clone().oneshot(request(Method::POST, "/v1/test/mine", uid)).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let body = body_json(response).await;
            assert_eq!((body["uid"].as_u64(), body["admin"].as_bool()), (Some(uid as u64), Some(admin)));
        }
        let response = f.app.clone().oneshot(request(Method::DELETE, "/v1/test/mine/h-1", 1002)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_write_without_credentials_is_refused() {
        let f = fixture();
        let request = Request::builder().method(Method::POST).uri("/v1/test/change").body(Body::empty()).unwrap();
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
            let body = body_json(response).await;
            assert_eq!(body["error"], "browser_request_refused");
            assert!(body["message"].as_str().unwrap().contains("an `"), "{body}");
        }
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused_declared_or_chunked() {
        let f = fixture();
        let mut req = request(Method::POST, "/v1/test/mine", 1002);
        req.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(1_000_000));
        let response = f.app.clone().oneshot(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body_json(response).await["error"], "body_too_large");

        // A streamed body with no length: bounded while it is read.
        let chunks = futures_util::stream::iter(
            (0..200).map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'x'; 1024]))),
        );
        let mut req = request(Method::POST, "/v1/test/mine", 1002);
        *req.body_mut() = Body::from_stream(chunks);
        let response = f.app.clone().oneshot(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

        // A small streamed body reaches the handler whole.
        let chunks = futures_util::stream::iter(
            (0..3).map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'x'; 1000]))),
        );
        let mut req = request(Method::POST, "/v1/test/mine", 1002);
        *req.body_mut() = Body::from_stream(chunks);
        let response = f.app.oneshot(req).await.unwrap();
        assert_eq!(body_json(response).await["bytes"], 3000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_handler_answers_a_json_timeout_before_the_cli_gives_up() {
        let f = fixture();
        let response = f.app.oneshot(request(Method::GET, "/v1/test/slow", 1002)).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = body_json(response).await;
        assert_eq!(body["error"], "timeout");
        assert!(crate::api::HANDLER_DEADLINE < std::time::Duration::from_secs(10), "the CLI's default timeout is 10 s");
    }

    #[tokio::test]
    async fn config_hides_private_keys_from_users_but_not_admins() {
        let f = fixture();
        let user = body_json(f.app.clone().oneshot(request(Method::GET, "/v1/config", 1002)).await.unwrap()).await;
        assert_eq!(user["share"]["key_file"], "<redacted>");
        assert_eq!(user["setup"]["scripts"][0]["args"], "<redacted>");
        assert_eq!(user["setup"]["scripts"][0]["name"], "a");
        let admin = body_json(f.app.oneshot(request(Method::GET, "/v1/config", 1001)).await.unwrap()).await;
        assert_eq!(admin["share"]["key_file"], "/etc/pool-agent/secrets/storage-key");
        assert_eq!(admin["setup"]["scripts"][0]["args"][1], "t0p");
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
    async fn metrics_are_valid_prometheus_text() {
        let f = fixture();
        let response = f.app.oneshot(request(Method::GET, "/metrics", 1002)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("a Prometheus parser accepts the exposition");
        let healthy = scrape
            .samples
            .iter()
            .find(|s| s.metric == "pool_agent_component_healthy" && s.labels.get("component") == Some("share"))
            .unwrap_or_else(|| panic!("no share health sample in:\n{text}"));
        assert!(matches!(healthy.value, prometheus_parse::Value::Gauge(_)), "{:?}", healthy.value);
        assert!(scrape.samples.iter().any(|s| s.metric == "pool_agent_config_reloads_total"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// sssd hung: every admin look-up blocks its thread until the test ends.
    fn hung_directory_service() -> (Fixture, std::sync::mpsc::Sender<()>) {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = Arc::new(std::sync::Mutex::new(wait));
        let lookups = AdminLookups::new(Arc::new(move |_, _, _| {
            let _ = wait.lock().unwrap().recv();
            true
        }));
        (fixture_with(|state| router_with(state, test_routes(), lookups)), release)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_nss_hung_writes_get_a_json_error_in_time_and_reads_still_answer() {
        let (f, release) = hung_directory_service();
        let started = std::time::Instant::now();
        let refused = f.app.clone().oneshot(request(Method::POST, "/v1/test/change", 1001)).await.unwrap();
        let took = started.elapsed();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = body_json(refused).await;
        assert_eq!(body["error"], "unavailable");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("uid 1001") && message.contains("pool-agent-admin"), "{message}");
        assert!(took < crate::api::admin::LOOKUP_DEADLINE + Duration::from_secs(1), "took {took:?}");

        // Many more writes: each answered at once past the bound, no thread added.
        for _ in 0..20 {
            let started = std::time::Instant::now();
            let again = f.app.clone().oneshot(request(Method::POST, "/v1/test/change", 1002)).await.unwrap();
            assert_eq!(again.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(started.elapsed() < crate::api::admin::LOOKUP_DEADLINE + Duration::from_secs(1));
        }
        // Reads anyone may do answer within a second, as for a user.
        for path in ["/v1/status", "/v1/config"] {
            let started = std::time::Instant::now();
            let read = f.app.clone().oneshot(request(Method::GET, path, 1003)).await.unwrap();
            assert_eq!(read.status(), StatusCode::OK, "{path}");
            assert!(started.elapsed() < Duration::from_secs(1), "{path} took {:?}", started.elapsed());
        }
        // Status names the stuck look-ups and since when (other tests' may be listed too).
        let status = body_json(f.app.clone().oneshot(request(Method::GET, "/v1/status", 1003)).await.unwrap()).await;
        let stuck = status["stuck"].as_array().unwrap();
        let lookups = stuck.iter().find(|s| s["name"] == "admin group look-ups").expect("listed");
        assert!(lookups["count"].as_u64().unwrap() >= 1, "{status:#}");
        assert_eq!(lookups["limit"], crate::api::admin::MAX_STUCK_LOOKUPS);
        let since = humantime::parse_rfc3339(lookups["since"].as_str().unwrap()).unwrap();
        let now = crate::core::clock::Clock::now(&crate::core::clock::SystemClock);
        let waited = now.duration_since(since).unwrap_or_default();
        assert!(waited >= crate::api::admin::LOOKUP_DEADLINE - Duration::from_millis(1100), "{status:#}");
        // Root never needs the directory service.
        let root = f.app.clone().oneshot(request(Method::POST, "/v1/test/change", 0)).await.unwrap();
        assert_eq!(root.status(), StatusCode::OK);
        drop(release);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_nss_slow_a_read_answers_as_a_user_at_once_and_the_next_sees_the_admin() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = calls.clone();
        // A directory service that answers "admin", but only after a second.
        let lookups = AdminLookups::new(Arc::new(move |_, _, _| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (_keep, wait) = std::sync::mpsc::channel::<()>();
            let _ = wait.recv_timeout(Duration::from_secs(1));
            true
        }));
        let f = fixture_with(|state| router_with(state, test_routes(), lookups));
        let started = std::time::Instant::now();
        let first = f.app.clone().oneshot(request(Method::GET, "/v1/config", 1001)).await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(900), "the read waited {:?}", started.elapsed());
        assert_eq!(body_json(first).await["setup"]["scripts"][0]["args"], "<redacted>", "shown as to a user");
        // The look-up went on without the read; once done it is remembered.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let second = f.app.clone().oneshot(request(Method::GET, "/v1/config", 1001)).await.unwrap();
        assert_eq!(body_json(second).await["setup"]["scripts"][0]["args"][1], "t0p", "now shown as to an admin");
        let write = f.app.clone().oneshot(request(Method::POST, "/v1/test/change", 1001)).await.unwrap();
        assert_eq!(write.status(), StatusCode::OK);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "one look-up for all three requests");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_nss_hung_a_self_service_request_acts_for_the_caller_alone() {
        let (f, release) = hung_directory_service();
        let response = f.app.clone().oneshot(request(Method::POST, "/v1/test/mine", 1001)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = body_json(response).await;
        assert_eq!((body["uid"].as_u64(), body["admin"].as_bool()), (Some(1001), Some(false)));
        drop(release);
    }
}
