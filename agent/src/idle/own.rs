//! Signals read from the agent's own state: users' holds and running setup scripts.

use super::holds::Hold;
use super::report::{IdleReport, SignalReport};
use super::signal::{Sample, SignalState, Source};
use super::{Idle, Started};
use crate::core::clock::rfc3339;
use futures_util::future::BoxFuture;
use std::time::{Duration, SystemTime};

/// How a live hold reads among the verdict's reasons.
pub(super) fn hold_reason(hold: &Hold) -> String {
    let why = if hold.reason.is_empty() { String::new() } else { format!(": {}", hold.reason) };
    format!("hold {} by {} until {}{why}", hold.id, hold.owner, hold.expires)
}

/// The holds as they stand at `now`: active while one is live, unknown while
/// the holds file cannot be read or a corrupt one's holds may still run.
pub(super) fn holds_sample(started: &Started, now: SystemTime) -> Sample {
    let live = started.holds.live(now);
    let max_hold = started.settings.borrow().idle.max_hold;
    let problem = started.holds.unreadable().or_else(|| {
        started.holds.lost(max_hold, now).map(|lost| {
            format!(
                "the holds file was corrupt and was moved to {}; a hold it held may run until {}; an admin clears this with `pool-agent hold release lost`",
                lost.file.display(),
                rfc3339(lost.until)
            )
        })
    });
    let sample = if let Some(problem) = problem {
        Sample::unknown(problem)
    } else if live.is_empty() {
        Sample::idle("no holds")
    } else {
        let until = live.iter().filter_map(|hold| hold.expires_at()).max();
        Sample::active(live.iter().map(hold_reason).collect()).until(until)
    };
    sample.with_figure("holds", live.len() as f64)
}

/// The last sample's report with the holds as they are now: a hold taken or
/// released since that sample shows at once, not an interval later (the
/// sample it triggers follows). A holds problem (unknown) is left to the
/// samples: the verdict machine alone knows how long it has lasted.
pub(super) fn show_holds_now(report: &mut IdleReport, now_holds: &Sample, timeout: Duration, now: SystemTime) {
    let row = report.signals.iter().position(|s| s.name == HOLDS);
    let was = row.map(|i| report.signals[i].state);
    if now_holds.state == SignalState::Unknown || was == Some(SignalState::Unknown) {
        return;
    }
    // Before the first sample there are no rows: a live hold shows in the reasons only.
    if let Some(i) = row {
        report.signals[i] = SignalReport::of(HOLDS, now_holds, now);
    }
    let prefix = format!("{HOLDS}: ");
    report.reasons.retain(|r| !r.strip_prefix(&prefix).is_some_and(|r| r.starts_with("hold ")));
    if now_holds.state == SignalState::Active {
        let held: Vec<String> = now_holds.reasons.iter().map(|r| format!("{prefix}{r}")).collect();
        if report.verdict == "idle" {
            report.verdict = "active".into();
            report.reasons.retain(|r| !r.starts_with(super::verdict::QUIET));
        }
        report.reasons.splice(0..0, held);
        if let Some(until) = now_holds.active_until {
            let after = rfc3339(until + timeout);
            // Both are RFC 3339 in UTC: the later reads the larger.
            if report.idle_at.as_ref().is_none_or(|at| *at < after) {
                report.idle_at = Some(after);
            }
        }
    } else if report.verdict == "active" && report.reasons.is_empty() {
        report.reasons.push(format!("{prefix}no hold now; the next sample recounts from the last activity"));
    }
}

const HOLDS: &str = "holds";

/// Users' keep-awake holds as a signal.
pub(super) struct HoldsSource(pub(super) Idle);

impl Source for HoldsSource {
    fn name(&self) -> &'static str {
        HOLDS
    }
    fn sample(&mut self, now: SystemTime) -> BoxFuture<'_, Sample> {
        let sample = match self.0.started.get() {
            Some(started) => holds_sample(started, now),
            None => Sample::unknown("the holds are not loaded yet"),
        };
        Box::pin(async move { sample })
    }
}

/// Running setup scripts (from the core's shared state) as a signal.
pub(super) struct ScriptsSource(pub(super) crate::core::shared::SharedState);

impl Source for ScriptsSource {
    fn name(&self) -> &'static str {
        "scripts"
    }
    fn sample(&mut self, _now: SystemTime) -> BoxFuture<'_, Sample> {
        let running = self.0.scripts().running;
        Box::pin(async move {
            if running.is_empty() {
                Sample::idle("no setup script running")
            } else {
                Sample::active(running.iter().map(|name| format!("setup script {name} running")).collect())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle_report(at: SystemTime) -> IdleReport {
        IdleReport {
            verdict: "idle".into(),
            idle_at: Some(rfc3339(at)),
            reasons: vec![format!("{}{} (timeout 30m)", super::super::verdict::QUIET, rfc3339(at))],
            signals: vec![SignalReport::of(HOLDS, &Sample::idle("no holds"), at)],
            ..Default::default()
        }
    }

    #[test]
    fn a_hold_taken_since_the_last_sample_makes_the_report_active_and_a_release_drops_it() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let until = now + Duration::from_secs(3600);
        let held = Sample::active(vec!["hold 1a2b by alice until 2027-01-15T09:00:00Z: x".into()])
            .until(Some(until))
            .with_figure("holds", 1.0);
        let mut report = idle_report(now);
        show_holds_now(&mut report, &held, Duration::from_secs(1800), now);
        assert_eq!(report.verdict, "active");
        assert_eq!(report.reasons, vec!["holds: hold 1a2b by alice until 2027-01-15T09:00:00Z: x".to_string()]);
        assert_eq!(report.signals[0].state, SignalState::Active);
        assert_eq!(report.idle_at, Some(rfc3339(until + Duration::from_secs(1800))), "not before its end + timeout");
        // Released before the next sample: not named any more; active until that sample recounts.
        show_holds_now(&mut report, &Sample::idle("no holds"), Duration::from_secs(1800), now);
        assert_eq!(report.verdict, "active");
        assert!(report.reasons.iter().all(|r| !r.contains("1a2b")), "{report:?}");
        assert_eq!(report.signals[0].state, SignalState::Idle);
        // A holds problem is the samples' to report: left as the last sample said.
        let mut report = idle_report(now);
        show_holds_now(&mut report, &Sample::unknown("cannot read holds.json"), Duration::from_secs(1800), now);
        assert_eq!(report, idle_report(now));
    }
}
