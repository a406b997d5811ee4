//! The CLI as a user meets it.

use crate::harness::*;
use std::time::Duration;

#[test]
fn no_daemon_gives_one_line_naming_the_socket() {
    let out = std::process::Command::new(CLI).args(["--socket", "/nonexistent/agent.sock", "status"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let message = stderr(&out);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.contains("/nonexistent/agent.sock"), "{message}");
    assert!(message.contains("systemctl start pool-agentd"), "{message}");
    assert!(stdout(&out).is_empty());
}

#[test]
fn the_socket_can_come_from_the_environment() {
    let sandbox = Sandbox::new();
    let _daemon = sandbox.start();
    let out = std::process::Command::new(CLI)
        .args(["status", "--json"])
        .env("POOL_AGENT_SOCKET", sandbox.socket())
        .output()
        .unwrap();
    assert!(answered(&out), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["agent"]["instance"], "vm-test-0");
}

#[test]
fn human_status_shows_each_component_and_since_when() {
    let sandbox = Sandbox::new();
    let _daemon = sandbox.start();
    let out = sandbox.cli(&["status"]);
    assert!(answered(&out));
    let text = stdout(&out);
    assert!(text.starts_with("pool-agent "), "{text}");
    for name in ["config", "api", "share", "links", "scripts", "idle", "azure", "pool"] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} line in:\n{text}"));
        assert!(line.contains("since "), "{line}");
    }
}

#[test]
fn events_answer_off_azure_with_a_report_not_an_error() {
    let sandbox = Sandbox::new();
    let _daemon = sandbox.start();
    let out = sandbox.cli(&["events", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(body["events"].as_array().is_some_and(|e| e.is_empty()), "{body}");
    assert_eq!(body["approvals"], 0, "{body}");
    let human = stdout(&sandbox.cli(&["events"]));
    assert!(human.starts_with("scheduled events: ") && human.contains("none scheduled"), "{human}");
}

#[test]
fn metrics_and_config_answer() {
    let sandbox = Sandbox::new();
    let _daemon = sandbox.start();
    // The share mounts moments after the socket answers (longer on a loaded machine).
    let healthy = "pool_agent_component_healthy{component=\"share\"} 1";
    let mut metrics = String::new();
    let _ = eventually(Duration::from_secs(10), || {
        metrics = stdout(&sandbox.cli(&["metrics"]));
        metrics.contains(healthy).then_some(())
    });
    assert!(metrics.contains(healthy), "{metrics}");
    // Each `# HELP` reads as one sentence (the encoder adds the full stop).
    for help in metrics.lines().filter(|l| l.starts_with("# HELP")) {
        assert!(!help.ends_with(".."), "{help}");
    }
    // Every read command has a JSON form; the metrics' is their parsed samples.
    let parsed = sandbox.cli_json(&["metrics", "--json"]);
    let share = parsed["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "pool_agent_component_healthy" && s["labels"]["component"] == "share")
        .cloned();
    assert_eq!(share.map(|s| s["value"].clone()), Some(1.0.into()), "{parsed:#}");
    for read in [&["status"][..], &["share"], &["links"], &["scripts"], &["idle"], &["hold", "list"], &["config"]] {
        let out = sandbox.cli(&[read, &["--json"]].concat());
        assert!(serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok(), "{read:?} --json: {}", stdout(&out));
    }
    let config: serde_json::Value = serde_json::from_slice(&sandbox.cli(&["config", "--json"]).stdout).unwrap();
    assert_eq!(config["share"]["kind"], "local");
}

#[test]
fn a_request_that_outlives_the_timeout_is_abandoned() {
    // A socket that accepts but never answers, standing in for a wedged daemon.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(CLI)
        .arg("--socket")
        .arg(&socket)
        .args(["--timeout", "1s", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(stderr(&out).contains("did not answer within"), "{}", stderr(&out));
}
