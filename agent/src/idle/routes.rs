//! The idle capability's routes: the verdict, and users' keep-awake holds.

use super::holds::{Hold, HoldError};
use super::own::hold_reason;
use super::report::{HoldRequest, IdleReport};
use super::{Idle, Started};
use crate::core::http::{ApiError, Caller};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use std::time::Duration;

/// The verdict for everyone; other users' holds (who, why) only for admins,
/// as `/v1/holds` lists them: a hold's reason is its owner's business.
pub(super) async fn idle_report(State(idle): State<Idle>, caller: Option<Extension<Caller>>) -> Json<IdleReport> {
    let mut report = idle.report();
    let admin = caller.as_ref().is_some_and(|Extension(c)| c.admin);
    if !admin {
        let uid = caller.map(|Extension(c)| c.peer.uid);
        let live = idle.started.get().map(|s| s.holds.live(idle.clock.now())).unwrap_or_default();
        // The verdict's own reasons carry the signal's name first.
        let shown = |reason: &mut String| {
            let (prefix, text) = match reason.strip_prefix("holds: ") {
                Some(text) => ("holds: ", text),
                None => ("", reason.as_str()),
            };
            if !text.starts_with("hold ") {
                return;
            }
            let mine = live.iter().any(|h| Some(h.owner_uid) == uid && text == hold_reason(h));
            if !mine {
                let other = match live.iter().find(|h| text == hold_reason(h)) {
                    Some(h) => format!("a hold by another user until {}", h.expires),
                    None => "a hold by another user".to_string(),
                };
                *reason = format!("{prefix}{other}");
            }
        };
        report.reasons.iter_mut().for_each(shown);
        for signal in report.signals.iter_mut().filter(|s| s.name == "holds") {
            signal.reasons.iter_mut().for_each(shown);
        }
        // What last moved the count may be someone's hold, said in its words.
        if let Some(by) = report.last_activity_by.as_mut().filter(|by| by.signal == "holds") {
            shown(&mut by.reason);
        }
    }
    Json(report)
}

fn started_or_unavailable(idle: &Idle) -> Result<&Started, ApiError> {
    idle.started.get().ok_or_else(|| ApiError::Unavailable("the idle task is starting; try again in a moment".into()))
}

pub(super) async fn list_holds(State(idle): State<Idle>, Extension(caller): Extension<Caller>) -> Response {
    match started_or_unavailable(&idle) {
        Ok(started) => {
            let live: Vec<Hold> = started
                .holds
                .live(idle.clock.now())
                .into_iter()
                .filter(|h| caller.admin || h.owner_uid == caller.peer.uid)
                .collect();
            Json(live).into_response()
        }
        Err(err) => err.into_response(),
    }
}

pub(super) async fn add_hold(
    State(idle): State<Idle>,
    Extension(caller): Extension<Caller>,
    Json(request): Json<HoldRequest>,
) -> Response {
    let started = match started_or_unavailable(&idle) {
        Ok(started) => started,
        Err(err) => return err.into_response(),
    };
    let duration = match crate::config::duration::parse(&request.duration) {
        Ok(duration) => duration,
        Err(why) => return ApiError::BadRequest(format!("duration {:?}: {why}", request.duration)).into_response(),
    };
    let (max_hold, min_uid, max_uid) = {
        let settings = started.settings.borrow();
        (settings.idle.max_hold, settings.links.min_uid, settings.links.max_uid)
    };
    let uid = caller.peer.uid;
    // System accounts (nobody, a service, a cron job) do not keep a VM billed.
    if !caller.admin && !crate::core::user_uids::UserUids::new(min_uid, max_uid).contains(&uid) {
        return ApiError::Forbidden(format!(
            "uid {uid} is not a user (links.min_uid {min_uid} to links.max_uid {max_uid}) nor an admin; only users and admins may hold the VM"
        ))
        .into_response();
    }
    let reason = request.reason.unwrap_or_default();
    let now = idle.clock.now();
    let added = on_holds(&idle, "saving the hold", move |started| {
        let owner = started.accounts.user_name(uid);
        started.holds.add(uid, &owner, duration, &reason, max_hold, now).map(|hold| (hold, owner, reason))
    });
    match added.await {
        Ok((hold, owner, reason)) => {
            idle.resample.notify_one();
            tracing::info!("hold {} by {owner} until {}: {reason}", hold.id, hold.expires);
            (StatusCode::CREATED, Json(hold)).into_response()
        }
        Err(err) => err.into_response(),
    }
}

pub(super) async fn release_hold(
    State(idle): State<Idle>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if let Err(err) = started_or_unavailable(&idle) {
        return err.into_response();
    }
    let now = idle.clock.now();
    if id == super::holds::LOST_ID {
        if !caller.admin {
            return ApiError::Forbidden("only an admin may clear lost holds".into()).into_response();
        }
        return match on_holds(&idle, "clearing lost holds", |started| started.holds.clear_lost()).await {
            Ok(cleared) => {
                tracing::warn!("lost holds cleared by uid {} ({cleared} file(s))", caller.peer.uid);
                Json(serde_json::json!({"id": super::holds::LOST_ID, "cleared_files": cleared})).into_response()
            }
            Err(err) => err.into_response(),
        };
    }
    let (uid, admin) = (caller.peer.uid, caller.admin);
    match on_holds(&idle, "saving the holds", move |started| started.holds.release(&id, uid, admin, now)).await {
        Ok(hold) => {
            idle.resample.notify_one();
            tracing::info!("hold {} of {} released by uid {}", hold.id, hold.owner, uid);
            Json(hold).into_response()
        }
        Err(err) => err.into_response(),
    }
}

/// Runs `work` on the holds off the async workers (NSS names, a file
/// written and fsynced), as the answer's error on failure.
async fn on_holds<T: Send + 'static>(
    idle: &Idle,
    what: &str,
    work: impl FnOnce(&Started) -> Result<T, HoldError> + Send + 'static,
) -> Result<T, ApiError> {
    let idle = idle.clone();
    let work = move || match idle.started.get() {
        Some(started) => work(started),
        None => Err(HoldError::Store("the idle task is starting".into())),
    };
    match crate::core::task::blocking(what, HOLD_DEADLINE, work).await {
        Ok(done) => done.map_err(hold_error),
        Err(err) => Err(ApiError::Internal(err.to_string())),
    }
}

/// Saving holds writes and fsyncs a small file on local disk.
pub(super) const HOLD_DEADLINE: Duration = Duration::from_secs(5);

fn hold_error(err: HoldError) -> ApiError {
    match err {
        HoldError::Refused(_) => ApiError::BadRequest(err.to_string()),
        HoldError::NotFound(_) => ApiError::NotFound(err.to_string()),
        HoldError::NotYours { .. } => ApiError::Forbidden(err.to_string()),
        HoldError::Store(_) => ApiError::Internal(err.to_string()),
    }
}
