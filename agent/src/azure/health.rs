//! The answer for the Application Health extension. Unhealthy makes Azure's
//! automatic repair delete and re-create the VM, so it is said only when no
//! one can lose work: the verdict is idle (no signal active or unknown, and
//! fresh), and a blocking part — the share, a blocking setup script — has
//! been failing for longer than `azure.unhealthy_after`. Never during boot.

use crate::core::component::{ComponentId, ComponentState, ComponentStatus};
use crate::core::shared::IdleNews;
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
