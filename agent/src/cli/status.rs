//! `pool-agent status`, `config` and `metrics`: the API's own routes.

use super::render::age;
use super::Call;
use crate::api::types::{ComponentState, StatusReport};
use crate::core::clock::{Clock, SystemClock};
use std::fmt::Write;

/// Exit codes of `pool-agent status`, for scripts and health probes.
pub const ALL_READY: u8 = 0;
pub const NOT_READY: u8 = 1;

pub fn status() -> Call {
    Call::get("/v1/status")
        .shown_by(|body| {
            serde_json::from_slice::<StatusReport>(body)
                .map(|report| status_text(&report))
                .map_err(|err| format!("unexpected status answer: {err}"))
        })
        .exit_code_by(|body| match serde_json::from_slice::<StatusReport>(body) {
            Ok(report) => verdict(&report),
            Err(_) => NOT_READY,
        })
}

/// 0 when every component does its job (ready, nothing to do, or not built),
/// 1 when one is starting, degraded, failed or stopped.
pub fn verdict(report: &StatusReport) -> u8 {
    if report.components.iter().all(|c| c.state.is_healthy()) {
        ALL_READY
    } else {
        NOT_READY
    }
}

pub fn config() -> Call {
    Call::get("/v1/config")
}

pub fn metrics() -> Call {
    Call::get("/metrics").as_text()
}

pub fn status_text(report: &StatusReport) -> String {
    status_at(report, &SystemClock)
}

pub fn status_at(report: &StatusReport, clock: &dyn Clock) -> String {
    let mut out = String::new();
    let agent = &report.agent;
    let _ = writeln!(
        out,
        "pool-agent {} on {} (pid {}), started {}",
        agent.version,
        agent.instance,
        agent.pid,
        age(&agent.started_at, clock)
    );
    if let Some(root) = &agent.root {
        let _ = writeln!(out, "sandbox root: {root}");
    }
    let name_width = report.components.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for component in &report.components {
        let marker = match component.state {
            ComponentState::Failed | ComponentState::Degraded => "!",
            _ => " ",
        };
        let _ = write!(
            out,
            "{marker} {:name_width$}  {:15}  since {} ({})",
            component.name,
            component.state.as_str(),
            component.since,
            age(&component.since, clock)
        );
        if let Some(detail) = &component.detail {
            let _ = write!(out, "  {detail}");
        }
        out.push('\n');
        if let Some(error) = &component.last_error {
            let _ = writeln!(out, "  {:name_width$}  last error: {error}", "");
        }
    }
    match (&report.config.rejected_reload, &report.config.running_on) {
        (Some(rejected), Some(running_on)) => {
            let _ = writeln!(out, "! the config on disk is invalid; running on {running_on}:");
            let _ = writeln!(out, "    {}", rejected.message);
        }
        (Some(rejected), None) => {
            let _ =
                writeln!(out, "! config reload at {} was rejected; the previous config stays in force:", rejected.at);
            let _ = writeln!(out, "    {}", rejected.message);
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::*;
    use crate::core::clock::fake::FakeClock;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn summary_shows_state_age_and_errors() {
        let clock = FakeClock::at(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let at = |secs_ago: u64| crate::core::clock::rfc3339(clock.now() - Duration::from_secs(secs_ago));
        let report = StatusReport {
            agent: AgentInfo {
                version: "0.1.0".into(),
                pid: 7,
                instance: "vm-3".into(),
                started_at: at(7200),
                socket: "/s".into(),
                root: None,
            },
            config: ConfigStatus {
                files: vec![],
                loaded_at: at(0),
                reloads_applied: 0,
                reloads_rejected: 1,
                rejected_reload: Some(RejectedReload {
                    at: at(5),
                    file: "c.toml".into(),
                    line: Some(3),
                    key: Some("share.bogus".into()),
                    message: "c.toml:3: share.bogus: unknown key".into(),
                }),
                running_on: None,
            },
            components: vec![ComponentStatus {
                name: "share".into(),
                state: ComponentState::Degraded,
                since: at(180),
                detail: None,
                last_error: Some("server gone".into()),
            }],
        };
        let text = status_at(&report, clock.as_ref());
        assert!(text.contains("on vm-3 (pid 7), started 2h ago"), "{text}");
        assert!(text.contains("! share  degraded"), "{text}");
        assert!(text.contains("(3m ago)"), "{text}");
        assert!(text.contains("last error: server gone"), "{text}");
        assert!(text.contains("c.toml:3: share.bogus: unknown key"), "{text}");
        assert_eq!(verdict(&report), NOT_READY);
        let mut healthy = report.clone();
        healthy.components[0].state = ComponentState::Ready;
        assert_eq!(verdict(&healthy), ALL_READY);
    }
}
