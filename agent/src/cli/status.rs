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
    Call::get("/metrics").as_text().json_by(|body| metrics_json(&String::from_utf8_lossy(body)))
}

/// The Prometheus text as JSON: `{"samples": [{"name", "labels", "value"}],
/// "help": {name: text}}`. The agent's own exposition is simple (no
/// timestamps, no exemplars); a line that is not a sample is left out.
pub fn metrics_json(text: &str) -> serde_json::Value {
    let mut samples = Vec::new();
    let mut help = serde_json::Map::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, what)) = rest.split_once(' ') {
                help.insert(name.to_string(), what.into());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(sample) = parse_sample(line) {
            samples.push(sample);
        }
    }
    serde_json::json!({ "samples": samples, "help": help })
}

fn parse_sample(line: &str) -> Option<serde_json::Value> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(at) => line.split_at(at),
        None => return None,
    };
    let mut labels = serde_json::Map::new();
    let mut rest = rest;
    if let Some(inside) = rest.strip_prefix('{') {
        let mut chars = inside.char_indices();
        let mut key = String::new();
        let end = loop {
            let (at, c) = chars.next()?;
            match c {
                '}' => break at,
                ',' | ' ' => {}
                '=' => {
                    // A quoted value with \\, \" and \n escapes.
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value.into());
                }
                other => key.push(other),
            }
        };
        rest = &inside[end + 1..];
    }
    let value: f64 = match rest.trim() {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        number => number.split_whitespace().next()?.parse().ok()?,
    };
    // JSON has no NaN or infinity: such a value is null.
    let value = serde_json::Number::from_f64(value).map(serde_json::Value::Number).unwrap_or_default();
    Some(serde_json::json!({ "name": name, "labels": labels, "value": value }))
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
    for stuck in &report.stuck {
        let _ = writeln!(
            out,
            "! stuck in the kernel: {}, {} of at most {}, the oldest since {} ({})",
            stuck.name,
            stuck.count,
            stuck.limit,
            stuck.since,
            age(&stuck.since, clock)
        );
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
            stuck: vec![StuckReport { name: "idle reads (sessions)".into(), count: 1, limit: 1, since: at(125) }],
        };
        let text = status_at(&report, clock.as_ref());
        assert!(text.contains("on vm-3 (pid 7), started 2h ago"), "{text}");
        assert!(text.contains("! share  degraded"), "{text}");
        assert!(text.contains("(3m ago)"), "{text}");
        assert!(text.contains("last error: server gone"), "{text}");
        assert!(text.contains("c.toml:3: share.bogus: unknown key"), "{text}");
        assert!(
            text.contains(&format!(
                "! stuck in the kernel: idle reads (sessions), 1 of at most 1, the oldest since {} (2m ago)",
                at(125)
            )),
            "{text}"
        );
        assert_eq!(verdict(&report), NOT_READY);
        let mut healthy = report.clone();
        healthy.components[0].state = ComponentState::Ready;
        assert_eq!(verdict(&healthy), ALL_READY);
    }
}

#[cfg(test)]
mod metrics_tests {
    use super::*;

    #[test]
    fn metrics_text_becomes_samples_with_labels_and_help() {
        let text = "# HELP pool_agent_up Up.\n# TYPE pool_agent_up gauge\npool_agent_up 1\n\
                    pool_agent_component_healthy{component=\"share\",why=\"a \\\"b\\\" c\\\\d\"} 0\n\
                    pool_agent_idle_seconds_total 12.5\nbucket{le=\"+Inf\"} +Inf\n";
        let json = metrics_json(text);
        let samples = json["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 4, "{json:#}");
        assert_eq!(samples[0], serde_json::json!({"name": "pool_agent_up", "labels": {}, "value": 1.0}));
        assert_eq!(samples[1]["labels"]["component"], "share");
        assert_eq!(samples[1]["labels"]["why"], "a \"b\" c\\d");
        assert_eq!(samples[1]["value"], 0.0);
        assert_eq!(samples[2]["value"], 12.5);
        assert_eq!(samples[3]["value"], serde_json::Value::Null, "infinity has no JSON form");
        assert_eq!(json["help"]["pool_agent_up"], "Up.");
    }
}
