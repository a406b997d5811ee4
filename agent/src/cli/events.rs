//! `pool-agent events`: Azure Scheduled Events seen and handled.

use super::Call;
use crate::azure::events::EventsReport;
use std::fmt::Write;

pub fn call() -> Call {
    Call::get("/v1/events").shown_by(|body| {
        serde_json::from_slice::<EventsReport>(body)
            .map(|report| summary(&report))
            .map_err(|err| format!("unexpected events answer: {err}"))
    })
}

pub fn summary(report: &EventsReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "scheduled events: {} (document {})", report.state, report.incarnation);
    if let Some(error) = &report.error {
        let _ = writeln!(out, "  last error: {error}");
    }
    if let Some(warning) = &report.warning {
        let _ = writeln!(out, "  warning: {warning}");
    }
    if report.events.is_empty() {
        let _ = writeln!(out, "  none scheduled");
    }
    for event in &report.events {
        let _ = writeln!(
            out,
            "  {} {} [{}] for {}{}: {}",
            event.kind,
            event.id,
            event.status,
            event.resources.join(", "),
            if event.not_before.is_empty() { String::new() } else { format!(", not before {}", event.not_before) },
            event.handling
        );
    }
    if let Some(drain) = &report.last_drain {
        let _ = writeln!(out, "  last drain: {drain}");
    }
    let _ = writeln!(out, "  approvals sent: {}", report.approvals);
    out
}
