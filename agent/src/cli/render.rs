//! Human summaries of API answers. `--json` bypasses all of this.

use crate::api::types::{ComponentState, ShareReport, StatusReport};
use crate::clock::{Clock, SystemClock};
use std::fmt::Write;
use std::time::Duration;

/// `3m ago`, `2h ago`; empty when the time cannot be read.
fn age(rfc3339: &str, clock: &dyn Clock) -> String {
    let Ok(then) = humantime::parse_rfc3339(rfc3339) else {
        return String::new();
    };
    let elapsed = clock.now().duration_since(then).unwrap_or(Duration::ZERO).as_secs();
    let rounded = if elapsed >= 86_400 {
        format!("{}d", elapsed / 86_400)
    } else if elapsed >= 3600 {
        format!("{}h", elapsed / 3600)
    } else if elapsed >= 60 {
        format!("{}m", elapsed / 60)
    } else {
        format!("{elapsed}s")
    };
    format!("{rounded} ago")
}

pub fn status(report: &StatusReport) -> String {
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
    if let Some(rejected) = &report.config.rejected_reload {
        let _ = writeln!(out, "! config reload at {} was rejected; the previous config stays in force:", rejected.at);
        let _ = writeln!(out, "    {}", rejected.message);
    }
    out
}

pub fn share(report: &ShareReport) -> String {
    share_at(report, &SystemClock)
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
        let _ = writeln!(out, "mounted   {mount_point}");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::*;
    use crate::clock::fake::FakeClock;
    use std::time::UNIX_EPOCH;

    #[test]
    fn summary_shows_state_age_and_errors() {
        let clock = FakeClock::at(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let at = |secs_ago: u64| crate::clock::rfc3339(clock.now() - Duration::from_secs(secs_ago));
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
    }
}
