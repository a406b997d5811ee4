//! `pool-agent share` and `share remount`.

use super::render::age;
use super::Call;
use crate::core::clock::{Clock, SystemClock};
use crate::share::{ShareReport, ShareState};
use clap::Subcommand;
use std::fmt::Write;

#[derive(Debug, Subcommand)]
pub enum ShareAction {
    /// Unmount and mount the share again now (admin).
    Remount,
}

pub fn call(action: &Option<ShareAction>) -> Call {
    let call = match action {
        // Like `status`: 0 when the share is mounted (or none is configured), else 1.
        None => Call::get("/v1/share").exit_code_by(|body| match serde_json::from_slice::<ShareReport>(body) {
            Ok(report) if matches!(report.state, ShareState::Mounted | ShareState::NotConfigured) => 0,
            _ => 1,
        }),
        Some(ShareAction::Remount) => Call::post("/v1/share/remount", None),
    };
    call.shown_by(|body| {
        serde_json::from_slice::<ShareReport>(body)
            .map(|report| share_at(&report, &SystemClock))
            .map_err(|err| format!("unexpected share answer: {err}"))
    })
}

pub fn share_at(report: &ShareReport, clock: &dyn Clock) -> String {
    let mut out = String::new();
    let _ =
        writeln!(out, "share     {}  since {} ({})", report.state.as_str(), report.since, age(&report.since, clock));
    if let (Some(kind), Some(source)) = (&report.kind, &report.source) {
        let fstype = report.fstype.as_deref().unwrap_or("?");
        let adopted = if report.adopted { ", adopted" } else { "" };
        let _ = writeln!(out, "source    {source} ({kind} via {fstype}{adopted})");
    }
    if let Some(mount_point) = &report.mount_point {
        let _ = writeln!(out, "target    {mount_point}");
    }
    if !report.options.is_empty() {
        let _ = writeln!(out, "options   {}", report.options.join(","));
    }
    if let Some(detail) = &report.detail {
        let _ = writeln!(out, "detail    {detail}");
    }
    match (&report.last_good_probe, report.probe_latency_ms) {
        (Some(at), Some(latency)) => {
            let every = report.probe_interval.as_deref().unwrap_or("?");
            let _ = writeln!(out, "probe     last good {at} ({}), {latency:.1} ms, every {every}", age(at, clock));
        }
        _ => {
            let _ = writeln!(out, "probe     no good probe yet");
        }
    }
    let _ = writeln!(out, "counters  {} mount(s), {} failed probe(s)", report.mounts, report.failed_probes);
    if let Some(error) = &report.last_error {
        let at = report.last_error_at.as_deref().map(|at| format!(" ({})", age(at, clock))).unwrap_or_default();
        let _ = writeln!(out, "error     {error}{at}");
    }
    if let Some(next) = &report.next_attempt {
        let _ = writeln!(out, "retry     next attempt at {next}");
    }
    out
}
