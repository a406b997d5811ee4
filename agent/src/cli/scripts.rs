//! `pool-agent scripts`, `scripts run NAME`, `scripts log NAME [--follow]`.

use super::{path_segment, Call};
use crate::scripts::report::{LogChunk, ScriptReport, ScriptState, ScriptsReport};
use clap::Subcommand;
use std::fmt::Write;

#[derive(Debug, Subcommand)]
pub enum ScriptsAction {
    /// Run a setup script now, whatever ran before (admin).
    Run { name: String },
    /// Print a setup script's log (its end; all of it that is new with --follow).
    Log {
        name: String,
        /// Keep printing while the script runs.
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

pub fn call(action: &Option<ScriptsAction>) -> Result<Call, String> {
    Ok(match action {
        None => Call::get("/v1/scripts").shown_by(|body| {
            serde_json::from_slice::<ScriptsReport>(body)
                .map(|report| summary(&report))
                .map_err(|err| format!("unexpected scripts answer: {err}"))
        }),
        Some(ScriptsAction::Run { name }) => Call::post(&format!("/v1/scripts/{}/run", path_segment(name)?), None)
            .shown_by(|body| {
                serde_json::from_slice::<ScriptReport>(body)
                    .map(|script| {
                        format!(
                            "{}: queued; `pool-agent scripts log {} --follow` shows it run\n",
                            script.name, script.name
                        )
                    })
                    .map_err(|err| format!("unexpected answer: {err}"))
            }),
        Some(ScriptsAction::Log { name, follow }) => {
            let call = Call::get(&format!("/v1/scripts/{}/log", path_segment(name)?)).shown_by(|body| {
                serde_json::from_slice::<LogChunk>(body)
                    .map(|chunk| chunk.text)
                    .map_err(|err| format!("unexpected log answer: {err}"))
            });
            if *follow {
                call.following(next_piece)
            } else {
                call
            }
        }
    })
}

/// For `--follow`: where to ask from next, and whether to go on asking.
fn next_piece(body: &[u8]) -> Option<(u64, bool)> {
    let chunk = serde_json::from_slice::<LogChunk>(body).ok()?;
    // Go on while it runs, and while a big log still has more to give.
    let more = chunk.running || chunk.next_offset > chunk.offset;
    Some((chunk.next_offset, more))
}

fn seconds(value: f64) -> String {
    let total = value.round() as u64;
    match total {
        0..=59 => format!("{value:.1}s"),
        60..=3599 => format!("{}m{:02}s", total / 60, total % 60),
        _ => format!("{}h{:02}m", total / 3600, (total % 3600) / 60),
    }
}

/// One line per script: state, user, when, how long (elapsed / timeout while it runs), and why.
pub fn summary(report: &ScriptsReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} setup script(s), {} runner, {}", report.scripts.len(), report.runner, report.phase);
    if let Some(note) = &report.log_to_share_note {
        let _ = writeln!(out, "logs: {note}");
    }
    let width = report.scripts.iter().map(|s| s.name.len()).max().unwrap_or(0).max(4);
    for script in &report.scripts {
        let took = match (script.state, script.duration_seconds) {
            (ScriptState::Running, Some(so_far)) => {
                format!("{} / {}", seconds(so_far), seconds(script.timeout_seconds as f64))
            }
            (_, Some(took)) => seconds(took),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "{:width$}  {:11}  {:10}  {:10}  {:>15}{}",
            script.name,
            script.state.as_str(),
            script.run_as,
            script.when,
            took,
            if script.blocking { "" } else { "  (not blocking)" }
        );
        if let Some(pid) = script.pid.filter(|_| script.state == ScriptState::Running) {
            let _ = writeln!(
                out,
                "{:width$}  pid {pid}{}",
                "",
                script.unit.as_deref().map(|u| format!(", unit {u}")).unwrap_or_default()
            );
        }
        if let Some(reason) = &script.reason {
            let _ = writeln!(out, "{:width$}  {reason}", "");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_script_shows_elapsed_of_timeout_and_a_failed_one_its_reason() {
        let row = |name: &str, state, duration, reason: Option<&str>| ScriptReport {
            name: name.into(),
            path: format!("/etc/pool-agent/setup.d/{name}"),
            run_as: "azureuser".into(),
            run_as_uid: None,
            when: "once".into(),
            blocking: true,
            state,
            reason: reason.map(String::from),
            pid: Some(42),
            unit: None,
            started: None,
            finished: None,
            duration_seconds: duration,
            timeout_seconds: 900,
            exit_code: None,
            signal: None,
            log: String::new(),
            shared_log: None,
            content_hash: String::new(),
        };
        let report = ScriptsReport {
            runner: "systemd".into(),
            phase: "running".into(),
            scripts: vec![
                row("10-conda", ScriptState::Running, Some(62.0), None),
                row("20-kernel", ScriptState::Failed, Some(3.2), Some("failed (exit 3)")),
            ],
            log_to_share_note: None,
        };
        let text = summary(&report);
        assert!(!text.contains("logs:"), "{text}");
        assert!(summary(&ScriptsReport {
            log_to_share_note: Some("the share does not keep file modes".into()),
            ..report.clone()
        })
        .contains("logs: the share does not keep file modes"));
        assert!(text.contains("1m02s / 15m00s"), "{text}");
        assert!(text.contains("pid 42"), "{text}");
        assert!(text.contains("failed (exit 3)"), "{text}");
    }
}
