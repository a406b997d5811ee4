//! `GET /v1/share` (anyone) and `POST /v1/share/remount` (admin).

use super::{RemountOutcome, ShareHandle, ShareReport, ShareState};
use crate::core::http::{Access, ApiError, Route};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::time::Duration;

/// A remount answers by then, inside the API's handler deadline; one that
/// takes longer goes on and the answer says how to follow it.
pub const REMOUNT_ANSWER_WITHIN: Duration = Duration::from_secs(6);

pub fn routes(share: &ShareHandle) -> Vec<Route> {
    vec![
        Route::get_with("/v1/share", Access::Read, share.clone(), report),
        Route::post_with("/v1/share/remount", Access::Admin, share.clone(), remount),
    ]
}

async fn report(State(share): State<ShareHandle>) -> Json<ShareReport> {
    Json(share.report())
}

/// Unmounts and mounts again now; answers with the share's state afterwards,
/// or 202 with the state so far when it takes longer.
async fn remount(State(share): State<ShareHandle>) -> Response {
    if share.report().state == ShareState::NotConfigured {
        return ApiError::Conflict("no share is configured ([share] is missing from the config)".to_string())
            .into_response();
    }
    match share.request_remount(REMOUNT_ANSWER_WITHIN).await {
        Ok(RemountOutcome::Finished(report)) if report.state == ShareState::Mounted => Json(report).into_response(),
        Ok(RemountOutcome::Finished(report)) => ApiError::Unavailable(format!(
            "remount failed, the share is {}: {}",
            report.state.as_str(),
            report.last_error.unwrap_or_default()
        ))
        .into_response(),
        Ok(RemountOutcome::StillRunning(mut report)) => {
            report.detail = Some(format!(
                "remount started and still going after {}s; follow it with `pool-agent share`",
                REMOUNT_ANSWER_WITHIN.as_secs()
            ));
            (StatusCode::ACCEPTED, Json(report)).into_response()
        }
        Err(message) => ApiError::Unavailable(message).into_response(),
    }
}
