//! `pool-agent links` and `links sync`.

use super::Call;
use crate::links::report::LinksReport;
use clap::Subcommand;
use std::fmt::Write;

#[derive(Debug, Subcommand)]
pub enum LinksAction {
    /// Reconcile every user's link now (admin).
    Sync,
}

pub fn call(action: &Option<LinksAction>) -> Call {
    let call = match action {
        None => Call::get("/v1/links"),
        Some(LinksAction::Sync) => Call::post("/v1/links/sync", None),
    };
    call.shown_by(|body| {
        serde_json::from_slice::<LinksReport>(body)
            .map(|report| summary(&report))
            .map_err(|err| format!("unexpected links answer: {err}"))
    })
}

/// One line per user: state, link → folder, and why when it is not ok.
pub fn summary(report: &LinksReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} user(s), last pass {} ({:.1} ms)",
        report.users.len(),
        report.last_sync.as_deref().unwrap_or("never"),
        report.last_sync_ms
    );
    let width = report.users.iter().map(|u| u.user.len()).max().unwrap_or(0);
    for user in &report.users {
        let _ = writeln!(out, "{:width$}  {:17}  {} -> {}", user.user, user.state.as_str(), user.link, user.target);
        if let Some(reason) = &user.reason {
            let _ = writeln!(out, "{:width$}  {:17}  {reason}", "", "");
        }
    }
    out
}
