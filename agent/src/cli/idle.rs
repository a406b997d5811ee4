//! `pool-agent idle` and `pool-agent hold`.

use super::{path_segment, Call};
use crate::idle::holds::Hold;
use crate::idle::report::IdleReport;
use clap::{Args, Subcommand};
use std::fmt::Write;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HoldArgs {
    /// How long to keep the VM awake: 30m, 2h, 1d.
    #[arg(value_name = "DURATION")]
    pub duration: Option<String>,
    /// Why, shown to admins and in the idle verdict.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    #[command(subcommand)]
    pub action: Option<HoldAction>,
}

#[derive(Debug, Subcommand)]
pub enum HoldAction {
    /// List keep-awake leases (yours; all of them for admins).
    List,
    /// End a lease early; `release lost` (admins) clears holds lost with a corrupt holds file.
    Release { id: String },
}

pub fn idle() -> Call {
    Call::get("/v1/idle").shown_by(|body| {
        serde_json::from_slice::<IdleReport>(body)
            .map(|report| summary(&report))
            .map_err(|err| format!("unexpected idle answer: {err}"))
    })
}

/// The verdict, since when and by what, then one line per signal with its
/// last activity and reasons. Until the VM is idle the verdict reads "not
/// idle yet", so a countdown ("nothing active since ...") is no contradiction.
pub fn summary(report: &IdleReport) -> String {
    let mut out = String::new();
    let verdict = match report.verdict.as_str() {
        "active" => "not idle yet",
        other => other,
    };
    let _ = writeln!(
        out,
        "verdict: {verdict} (timeout {}, action {})",
        crate::config::duration::format(std::time::Duration::from_secs(report.timeout_seconds)),
        report.action
    );
    if let Some(since) = &report.idle_since {
        let _ = match &report.last_activity_by {
            Some(by) if &by.at == since => writeln!(out, "last activity: {since}, {}: {}", by.signal, by.reason),
            Some(by) => writeln!(out, "last activity: {since} (last named: {} at {}: {})", by.signal, by.at, by.reason),
            None => writeln!(out, "last activity: {since}"),
        };
    }
    if report.verdict == "active" {
        if let Some(at) = &report.idle_at {
            let _ = writeln!(out, "idle at: {at} if nothing happens");
        }
    }
    if let Some(at) = &report.would_have_scaled_in_at {
        let _ = writeln!(out, "would have scaled in at: {at}");
    }
    for reason in &report.reasons {
        let _ = writeln!(out, "  {reason}");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{:12}  {:8}  {:20}  reason", "SIGNAL", "STATE", "LAST ACTIVITY");
    for signal in &report.signals {
        let first = signal.reasons.first().map(String::as_str).unwrap_or("");
        let _ = writeln!(
            out,
            "{:12}  {:8}  {:20}  {first}",
            signal.name,
            signal.state.as_str(),
            signal.last_activity.as_deref().unwrap_or("-")
        );
        for more in signal.reasons.iter().skip(1) {
            let _ = writeln!(out, "{:12}  {:8}  {:20}  {more}", "", "", "");
        }
    }
    out
}

/// `DELETE /v1/holds/lost`'s answer.
#[derive(serde::Deserialize)]
struct LostCleared {
    cleared_files: usize,
}

fn holds_summary(holds: &[Hold]) -> String {
    if holds.is_empty() {
        return "no holds\n".to_string();
    }
    let mut out = format!("{:8}  {:12}  {:20}  reason\n", "ID", "OWNER", "EXPIRES");
    for hold in holds {
        let _ = writeln!(out, "{:8}  {:12}  {:20}  {}", hold.id, hold.owner, hold.expires, hold.reason);
    }
    out
}

pub fn hold(hold: &HoldArgs) -> Result<Call, String> {
    match (&hold.action, &hold.duration) {
        (Some(HoldAction::List), _) => Ok(Call::get("/v1/holds").shown_by(|body| {
            serde_json::from_slice::<Vec<Hold>>(body)
                .map(|h| holds_summary(&h))
                .map_err(|err| format!("unexpected answer: {err}"))
        })),
        (Some(HoldAction::Release { id }), _) => Ok(Call::delete(&format!("/v1/holds/{}", path_segment(id)?))
            .shown_by(|body| {
                if let Ok(cleared) = serde_json::from_slice::<LostCleared>(body) {
                    return Ok(format!(
                        "lost holds cleared ({} file(s) kept as *.cleared); the holds signal counts again\n",
                        cleared.cleared_files
                    ));
                }
                serde_json::from_slice::<Hold>(body)
                    .map(|h| format!("released hold {} of {}\n", h.id, h.owner))
                    .map_err(|err| format!("unexpected answer: {err}"))
            })),
        (None, Some(duration)) => {
            crate::config::duration::parse(duration)?;
            let body = serde_json::json!({ "duration": duration, "reason": hold.reason });
            Ok(Call::post("/v1/holds", Some(body)).shown_by(|body| {
                serde_json::from_slice::<Hold>(body)
                    .map(|h| {
                        format!(
                            "hold {} keeps this VM active until {} (release: pool-agent hold release {})\n",
                            h.id, h.expires, h.id
                        )
                    })
                    .map_err(|err| format!("unexpected answer: {err}"))
            }))
        }
        (None, None) => {
            Err("hold needs a DURATION (e.g. `pool-agent hold 2h`), or `hold list` / `hold release ID`".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idle::report::{ActivityBy, SignalReport};
    use crate::idle::signal::SignalState;

    fn report(verdict: &str, by: Option<ActivityBy>) -> IdleReport {
        IdleReport {
            verdict: verdict.into(),
            idle_since: Some("2026-12-03T17:00:00Z".into()),
            idle_at: Some("2026-12-03T17:30:00Z".into()),
            timeout_seconds: 1800,
            action: "report".into(),
            reasons: vec![
                "nothing active since 2026-12-03T17:00:00Z; idle at 2026-12-03T17:30:00Z (timeout 30m)".into()
            ],
            signals: vec![SignalReport {
                name: "jupyter".into(),
                state: SignalState::Idle,
                last_activity: None,
                reasons: vec!["no kernels".into()],
                figures: Default::default(),
            }],
            last_activity_by: by,
            ..Default::default()
        }
    }

    #[test]
    fn a_countdown_reads_not_idle_yet_and_names_the_signal_behind_last_activity() {
        let by = ActivityBy {
            signal: "jupyter".into(),
            reason: "kernel busy python3 (bob)".into(),
            at: "2026-12-03T17:00:00Z".into(),
        };
        let text = summary(&report("active", Some(by.clone())));
        assert!(text.starts_with("verdict: not idle yet (timeout 30m, action report)\n"), "{text}");
        assert!(!text.contains("verdict: active"), "{text}");
        assert!(text.contains("last activity: 2026-12-03T17:00:00Z, jupyter: kernel busy python3 (bob)\n"), "{text}");
        assert!(text.contains("idle at: 2026-12-03T17:30:00Z if nothing happens"), "{text}");
        // The signal itself is quiet now: its row has no last activity, the header still says who.
        assert!(text.contains("jupyter       idle      -"), "{text}");

        let idle = summary(&report("idle", Some(by.clone())));
        assert!(idle.starts_with("verdict: idle (timeout 30m"), "{idle}");
        assert!(!idle.contains("idle at:"), "{idle}");

        // Named earlier, at another moment: said as such, not as the cause of this one.
        let older = ActivityBy { at: "2026-12-03T16:00:00Z".into(), ..by };
        let text = summary(&report("active", Some(older)));
        assert!(
            text.contains("last activity: 2026-12-03T17:00:00Z (last named: jupyter at 2026-12-03T16:00:00Z: kernel busy python3 (bob))"),
            "{text}"
        );
    }
}
