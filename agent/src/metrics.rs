//! Prometheus text exposition of the agent's own state. Capabilities add
//! their gauges here as they land.

use crate::api::types::StatusReport;
use std::fmt::Write;

/// Label values are quoted strings: escape what the format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn render(report: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP pool_agent_build_info Version of the running agent."
    );
    let _ = writeln!(out, "# TYPE pool_agent_build_info gauge");
    let _ = writeln!(
        out,
        "pool_agent_build_info{{version=\"{}\"}} 1",
        label(&report.agent.version)
    );

    let _ = writeln!(out, "# HELP pool_agent_component_healthy 1 when the component does its job (ready, or nothing to do).");
    let _ = writeln!(out, "# TYPE pool_agent_component_healthy gauge");
    for component in &report.components {
        let _ = writeln!(
            out,
            "pool_agent_component_healthy{{component=\"{}\"}} {}",
            label(&component.name),
            u8::from(component.state.is_healthy())
        );
    }

    let _ = writeln!(out, "# HELP pool_agent_component_state Current state of each component (1 for the state it is in).");
    let _ = writeln!(out, "# TYPE pool_agent_component_state gauge");
    for component in &report.components {
        let _ = writeln!(
            out,
            "pool_agent_component_state{{component=\"{}\",state=\"{}\"}} 1",
            label(&component.name),
            component.state.as_str()
        );
    }

    let _ = writeln!(
        out,
        "# HELP pool_agent_config_reloads_total Config reloads by result."
    );
    let _ = writeln!(out, "# TYPE pool_agent_config_reloads_total counter");
    let _ = writeln!(
        out,
        "pool_agent_config_reloads_total{{result=\"applied\"}} {}",
        report.config.reloads_applied
    );
    let _ = writeln!(
        out,
        "pool_agent_config_reloads_total{{result=\"rejected\"}} {}",
        report.config.reloads_rejected
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
