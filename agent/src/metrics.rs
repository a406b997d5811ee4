//! Prometheus text exposition of the agent's own state. Capabilities add
//! their gauges here as they land.

use crate::api::types::{ShareReport, ShareState, StatusReport};
use std::fmt::Write;

/// Label values are quoted strings: escape what the format requires.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub fn render(report: &StatusReport, share: &ShareReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# HELP pool_agent_build_info Version of the running agent.");
    let _ = writeln!(out, "# TYPE pool_agent_build_info gauge");
    let _ = writeln!(out, "pool_agent_build_info{{version=\"{}\"}} 1", label(&report.agent.version));

    let _ = writeln!(
        out,
        "# HELP pool_agent_component_healthy 1 when the component does its job (ready, or nothing to do)."
    );
    let _ = writeln!(out, "# TYPE pool_agent_component_healthy gauge");
    for component in &report.components {
        let _ = writeln!(
            out,
            "pool_agent_component_healthy{{component=\"{}\"}} {}",
            label(&component.name),
            u8::from(component.state.is_healthy())
        );
    }

    let _ =
        writeln!(out, "# HELP pool_agent_component_state Current state of each component (1 for the state it is in).");
    let _ = writeln!(out, "# TYPE pool_agent_component_state gauge");
    for component in &report.components {
        let _ = writeln!(
            out,
            "pool_agent_component_state{{component=\"{}\",state=\"{}\"}} 1",
            label(&component.name),
            component.state.as_str()
        );
    }

    let _ = writeln!(out, "# HELP pool_agent_config_reloads_total Config reloads by result.");
    let _ = writeln!(out, "# TYPE pool_agent_config_reloads_total counter");
    let _ = writeln!(out, "pool_agent_config_reloads_total{{result=\"applied\"}} {}", report.config.reloads_applied);
    let _ = writeln!(out, "pool_agent_config_reloads_total{{result=\"rejected\"}} {}", report.config.reloads_rejected);
    if share.state != ShareState::NotConfigured {
        share_metrics(&mut out, share);
    }
    out
}

fn share_metrics(out: &mut String, share: &ShareReport) {
    let mut gauge = |name: &str, kind: &str, help: &str, labels: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name}{labels} {value}");
    };
    gauge(
        "pool_agent_share_mounted",
        "gauge",
        "1 while the share is mounted and its last probe passed.",
        "",
        f64::from(u8::from(share.state == ShareState::Mounted)),
    );
    gauge(
        "pool_agent_share_state",
        "gauge",
        "The share's current state (1 for the state it is in).",
        &format!("{{state=\"{}\"}}", share.state.as_str()),
        1.0,
    );
    if let Some(latency_ms) = share.probe_latency_ms {
        gauge(
            "pool_agent_share_probe_latency_seconds",
            "gauge",
            "Latency of the last good health probe.",
            "",
            latency_ms / 1000.0,
        );
    }
    gauge("pool_agent_share_mounts_total", "counter", "Mounts made by the agent.", "", share.mounts as f64);
    gauge(
        "pool_agent_share_failed_probes_total",
        "counter",
        "Health probes that failed or hung.",
        "",
        share.failed_probes as f64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
