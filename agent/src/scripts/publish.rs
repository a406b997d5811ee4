//! What the scripts look like from outside: each script's row for
//! `pool-agent scripts`, what runs now for the idle verdict, and the board row.

use super::plan::Planned;
use super::record::{Outcome, RunRecord};
use super::report::{ScriptReport, ScriptState};
use super::Batch;
use crate::config::RunWhen;
use crate::config::Settings;
use crate::core::component::ComponentState;
use crate::core::shared::ScriptsNews;
use std::sync::Arc;
use std::time::Duration;

impl Batch {
    /// While the batch waits (for the share, then the links), every script
    /// the config names is listed as it will be met: pending, or refused now
    /// for what is known in advance (an unknown `run_as`, a missing file).
    /// A script on the share is checked only once the share is there.
    pub(super) async fn preview(&self, settings: &Arc<Settings>) {
        let Ok(planned) = self.plan(settings).await else { return };
        let previous = self.scripts.report();
        let rows = planned
            .iter()
            .map(|item| {
                let record = self.records.load(&item.script.name);
                let before = previous.scripts.iter().find(|s| s.name == item.script.name);
                let mut row = self.row(item, record.as_ref(), before);
                match &item.verdict {
                    Err(why) if why.contains("not mounted?") => {
                        row.reason = Some("on the share: checked once the share is mounted".into());
                    }
                    Err(why) => {
                        // Said once per reason, as the batch itself does.
                        if before.is_none_or(|b| b.state != ScriptState::Refused || b.reason.as_ref() != Some(why)) {
                            tracing::warn!(script = %item.script.name, "refused: {why}");
                        }
                        row.state = ScriptState::Refused;
                        row.reason = Some(why.clone());
                    }
                    // Due to run (as the batch will judge it): pending, whatever ran before.
                    Ok(vetted)
                        if row.state != ScriptState::Interrupted && !self.done(item, vetted, record.as_ref()) =>
                    {
                        row.state = ScriptState::Pending;
                        row.reason = None;
                    }
                    Ok(_) => {}
                }
                row
            })
            .collect();
        self.scripts.update(|report| report.scripts = rows);
    }

    /// A script's row from its record (what ran before) and the last report.
    pub(super) fn row(
        &self,
        item: &Planned,
        record: Option<&RunRecord>,
        previous: Option<&ScriptReport>,
    ) -> ScriptReport {
        let script = &item.script;
        let mut row = ScriptReport {
            name: script.name.clone(),
            path: script.path.display().to_string(),
            run_as: script.run_as.clone(),
            run_as_uid: item.verdict.as_ref().ok().map(|v| v.account.uid),
            when: match script.when {
                RunWhen::Once => "once".into(),
                RunWhen::EveryBoot => "every-boot".into(),
            },
            blocking: script.blocking,
            state: ScriptState::Pending,
            reason: None,
            pid: None,
            unit: None,
            started: None,
            finished: None,
            duration_seconds: None,
            timeout_seconds: script.timeout.as_secs(),
            exit_code: None,
            signal: None,
            log: self.log_path(&script.name).display().to_string(),
            shared_log: previous.and_then(|p| p.shared_log.clone()),
            content_hash: item.verdict.as_ref().map(|v| v.content_hash.clone()).unwrap_or_default(),
        };
        if let Some(record) = record {
            row.started = Some(record.started.clone());
            row.finished = record.finished.clone();
            row.duration_seconds = record.duration_seconds;
            row.exit_code = record.exit_code;
            row.signal = record.signal.clone();
            row.unit = record.unit.clone();
            let (state, when) = match record.outcome {
                Outcome::Succeeded => (ScriptState::Succeeded, "succeeded"),
                Outcome::Failed => (ScriptState::Failed, "failed"),
                Outcome::TimedOut => (ScriptState::TimedOut, "timed out"),
                Outcome::Running => (ScriptState::Interrupted, "was interrupted"),
            };
            row.state = state;
            let finished = record.finished.as_deref().unwrap_or(&record.started);
            let this_boot = if record.boot_id == self.host.boot_id { "in this boot" } else { "in an earlier boot" };
            row.reason = Some(match (&item.verdict, record.outcome) {
                _ if self.host.is_other_machine(record) => {
                    format!("{when} at {finished} on another machine (the image's build VM); runs on this one")
                }
                (Ok(v), _) if v.content_hash != record.content_hash => {
                    format!("{when} at {finished}; changed since, runs again")
                }
                (_, Outcome::Succeeded) if script.when == RunWhen::Once => {
                    format!("ran once at {finished} ({this_boot}); unchanged since, not run again")
                }
                _ => format!("{when} at {finished} ({this_boot}){}", failure_detail(record)),
            });
        }
        row
    }

    pub(super) fn publish_running(&self, running: Option<&str>) {
        let news = match running {
            Some(name) => ScriptsNews { running: vec![name.to_string()] },
            None => ScriptsNews::default(),
        };
        self.ctx.shared.publish_scripts(news);
    }

    /// The board row: not ready while a blocking script runs or waits,
    /// failed (the VM unhealthy) when a blocking script did not succeed.
    pub(super) fn publish_board(&self) {
        let report = self.scripts.report();
        let count = |state: ScriptState| report.scripts.iter().filter(|s| s.state == state).count();
        if let Some(running) = report.scripts.iter().find(|s| s.state == ScriptState::Running) {
            let detail = format!(
                "running {} (timeout {}){}",
                running.name,
                crate::config::duration::format(Duration::from_secs(running.timeout_seconds)),
                if running.blocking { "; the VM is not ready until it ends" } else { " in the background" }
            );
            let state = if running.blocking { ComponentState::Starting } else { ComponentState::Ready };
            self.ctx.set(state, detail);
            return;
        }
        let waiting = report
            .scripts
            .iter()
            .any(|s| s.blocking && matches!(s.state, ScriptState::Pending | ScriptState::Interrupted));
        if waiting && report.phase != "done" {
            self.ctx.set(ComponentState::Starting, format!("{} setup script(s) to run", report.scripts.len()));
            return;
        }
        if report.scripts.is_empty() {
            self.ctx.set(ComponentState::Ready, "no setup scripts".to_string());
            return;
        }
        let mut detail = format!("{} script(s): {} succeeded", report.scripts.len(), count(ScriptState::Succeeded));
        for state in [ScriptState::Failed, ScriptState::TimedOut, ScriptState::Refused, ScriptState::Interrupted] {
            if count(state) > 0 {
                detail.push_str(&format!(", {} {}", count(state), state.as_str()));
            }
        }
        match report.scripts.iter().find(|s| s.blocking && s.state.is_failure()) {
            Some(failed) => self.ctx.set_error(
                ComponentState::Failed,
                detail,
                format!(
                    "{}: {}",
                    failed.name,
                    failed.reason.clone().unwrap_or_else(|| failed.state.as_str().to_string())
                ),
            ),
            None => self.ctx.set(ComponentState::Ready, detail),
        }
    }
}

pub(super) fn outcome_word(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "failed",
        Outcome::TimedOut => "timed out",
        Outcome::Running => "interrupted",
    }
}

pub(super) fn failure_detail(record: &RunRecord) -> String {
    match (record.outcome, record.exit_code, &record.signal) {
        (Outcome::Failed, Some(code), _) => format!(" (exit {code})"),
        (Outcome::Failed, None, Some(signal)) => format!(" (killed by {signal})"),
        _ => String::new(),
    }
}
