//! The answer for the Application Health extension. Unhealthy makes Azure's
//! automatic repair delete and re-create the VM, so it is said only when no
//! one can lose work: the verdict is idle (no signal active or unknown, and
//! fresh), and a blocking part — the share, a blocking setup script — has
//! been failing for longer than `azure.unhealthy_after`. Never during boot.

use crate::config::Settings;
use crate::core::component::{ComponentId, ComponentState, ComponentStatus};
use crate::core::shared::IdleNews;
use crate::core::task::TaskContext;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Health {
    pub healthy: bool,
    pub why: String,
}

/// `components`: the status board's rows (their state and since when).
pub fn judge(idle: &IdleNews, components: &[ComponentStatus], unhealthy_after: Duration, now: SystemTime) -> Health {
    let healthy = |why: String| Health { healthy: true, why };
    if !idle.known {
        return healthy("no verdict yet (booting)".into());
    }
    if !idle.idle_now(now) {
        let first = idle.reasons.first().cloned().unwrap_or_else(|| "the verdict is stale".into());
        return healthy(format!("in use or not known to be idle: {first}"));
    }
    for id in [ComponentId::Share, ComponentId::Scripts] {
        let Some(row) = components.iter().find(|c| c.name == id.as_str()) else { continue };
        if !matches!(row.state, ComponentState::Failed | ComponentState::Degraded) {
            continue;
        }
        let since = humantime::parse_rfc3339(&row.since).unwrap_or(now);
        let failing_for = now.duration_since(since).unwrap_or_default();
        if failing_for > unhealthy_after {
            let detail = row.last_error.clone().or_else(|| row.detail.clone()).unwrap_or_default();
            return Health {
                healthy: false,
                why: format!(
                    "idle, and {} {} for {} (longer than azure.unhealthy_after): {detail}",
                    row.name,
                    row.state.as_str(),
                    crate::config::duration::format_rounded(failing_for)
                ),
            };
        }
    }
    healthy("idle, and the share and setup scripts are well".into())
}

/// Answers the Application Health extension on `azure.health_listen` once
/// on Azure; a restart that keeps the address keeps the listener (no gap).
pub(super) async fn health_server(ctx: &TaskContext, azure: &super::Azure, settings: &Settings) {
    let listen = settings.azure.health_listen.clone();
    let mut health = azure.0.health.lock().await;
    if health.as_ref().is_some_and(|h| h.addr() == listen) {
        azure.update(|r| r.health_listen = listen.clone());
        return;
    }
    // Another address (or none): the old one stops and frees its port first.
    *health = None;
    if listen.is_empty() {
        return;
    }
    azure.update(|r| r.health_listen = listen.clone());
    let answer_from = azure.clone();
    let answer: super::listener::Answer = std::sync::Arc::new(move || {
        let healthy = answer_from.health_now().is_none_or(|h| h.healthy);
        super::listener::Reply::json(
            serde_json::json!({ "ApplicationHealthState": if healthy { "Healthy" } else { "Unhealthy" } }).to_string(),
        )
    });
    match super::listener::ProbeListener::bind(&listen, "/health", answer, ctx.shutdown.clone()).await {
        Ok(listening) => *health = Some(listening),
        Err(err) => {
            let why = format!("health endpoint {listen}: {}", crate::config::io_text(&err));
            tracing::warn!(component = "azure", "cannot answer health probes: {why}");
            azure.update(|r| r.error = Some(why.clone()));
            azure.0.problems.set("health", Some(why));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, state: ComponentState, since: SystemTime) -> ComponentStatus {
        ComponentStatus {
            name: name.into(),
            state,
            since: crate::core::clock::rfc3339(since),
            detail: None,
            last_error: Some("mount error(113): Host is down".into()),
        }
    }

    #[test]
    fn unhealthy_only_when_idle_and_a_blocking_part_failed_past_the_limit() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let limit = Duration::from_secs(600);
        let idle = IdleNews {
            known: true,
            idle: true,
            sampled_at: Some(now),
            interval: Duration::from_secs(10),
            ..IdleNews::default()
        };
        let share_down_long = [row("share", ComponentState::Degraded, now - Duration::from_secs(900))];
        assert!(!judge(&idle, &share_down_long, limit, now).healthy);
        let share_down_short = [row("share", ComponentState::Degraded, now - Duration::from_secs(300))];
        assert!(judge(&idle, &share_down_short, limit, now).healthy, "not yet past unhealthy_after");
        let busy = IdleNews { idle: false, reasons: vec!["sessions: ssh alice pts/0".into()], ..idle.clone() };
        let verdict = judge(&busy, &share_down_long, limit, now);
        assert!(verdict.healthy && verdict.why.contains("ssh alice"), "{verdict:?}");
        let stale = IdleNews { sampled_at: Some(now - Duration::from_secs(3600)), ..idle.clone() };
        assert!(judge(&stale, &share_down_long, limit, now).healthy, "a stale verdict is not idle");
        assert!(judge(&IdleNews::default(), &share_down_long, limit, now).healthy, "booting");
        let starting = [row("scripts", ComponentState::Starting, now - Duration::from_secs(3600))];
        assert!(judge(&idle, &starting, limit, now).healthy, "a blocking script still running");
        let failed = [row("scripts", ComponentState::Failed, now - Duration::from_secs(3600))];
        assert!(!judge(&idle, &failed, limit, now).healthy);
    }
}
