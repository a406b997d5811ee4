//! The scripts' routes: the report, a run on demand, a script's log.

use super::report::{LogChunk, ScriptState, ScriptsReport};
use super::{log, Scripts};
use crate::core::http::{ApiError, Caller};
use crate::core::task;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use std::path::PathBuf;
use std::time::Duration;

/// The most of a log one answer carries.
const LOG_CHUNK_BYTES: u64 = 256 * 1024;

pub(super) async fn scripts_report(State(scripts): State<Scripts>) -> Json<ScriptsReport> {
    Json(with_elapsed(scripts.report(), scripts.clock.now()))
}

/// A running script's duration is the time so far.
pub(super) fn with_elapsed(mut report: ScriptsReport, now: std::time::SystemTime) -> ScriptsReport {
    for script in &mut report.scripts {
        if script.state == ScriptState::Running {
            if let Some(started) = script.started.as_deref().and_then(|s| humantime::parse_rfc3339(s).ok()) {
                let so_far = now.duration_since(started).unwrap_or_default();
                script.duration_seconds = Some((so_far.as_secs_f64() * 10.0).round() / 10.0);
            }
        }
    }
    report
}

pub(super) async fn run_now(State(scripts): State<Scripts>, UrlPath(name): UrlPath<String>) -> Response {
    let report = scripts.report();
    let Some(script) = report.scripts.iter().find(|s| s.name == name) else {
        return ApiError::NotFound(format!("no setup script {name:?}; `pool-agent scripts` lists them"))
            .into_response();
    };
    if script.state == ScriptState::Running {
        return ApiError::Conflict(format!("{name} is running now")).into_response();
    }
    scripts.set_queued(&name, true);
    if scripts.runs.try_send(name.clone()).is_err() {
        scripts.set_queued(&name, false);
        return ApiError::Unavailable("too many runs are queued; try again later".into()).into_response();
    }
    let mut queued = script.clone();
    queued.reason = Some("queued: runs after the script running now, if any".into());
    (StatusCode::ACCEPTED, Json(queued)).into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogQuery {
    pub(super) offset: Option<u64>,
}

pub(super) async fn script_log(
    State(scripts): State<Scripts>,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<LogQuery>,
    caller: Option<Extension<Caller>>,
) -> Response {
    let report = scripts.report();
    let Some(script) = report.scripts.iter().find(|s| s.name == name) else {
        return ApiError::NotFound(format!("no setup script {name:?}; `pool-agent scripts` lists them"))
            .into_response();
    };
    // Output routinely holds tokens (`set -x`): admins and the user it ran as only.
    let allowed = caller.is_some_and(|Extension(c)| c.admin || script.run_as_uid == Some(c.peer.uid));
    if !allowed {
        return ApiError::Forbidden(format!(
            "the log of {name} is for admins and for {} (the user it runs as) only",
            script.run_as
        ))
        .into_response();
    }
    let path = PathBuf::from(&script.log);
    // A run asked for and not started yet counts: `scripts run X` then
    // `scripts log X --follow` follows the new run, not the last one's end.
    let running = script.state == ScriptState::Running || scripts.is_queued(&name);
    let read_path = path.clone();
    match task::blocking("reading the log", Duration::from_secs(5), move || {
        log::read_from(&read_path, query.offset, LOG_CHUNK_BYTES)
    })
    .await
    {
        Ok(Ok((offset, text, next_offset))) => {
            Json(LogChunk { name, path: path.display().to_string(), offset, next_offset, text, running })
                .into_response()
        }
        Ok(Err(err)) => ApiError::Unavailable(format!("cannot read {}: {err}", path.display())).into_response(),
        Err(err) => ApiError::Timeout(err.to_string()).into_response(),
    }
}
