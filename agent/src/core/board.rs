//! The status board: one entry per component, read by the API, the metrics
//! and the systemd STATUS= line.

use super::clock::{rfc3339, SharedClock};
use super::component::{ComponentId, ComponentState, ComponentStatus, ConfigStatus, RejectedReload};
use crate::config::ConfigError;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

type ChangeHook = Box<dyn Fn(&str) + Send + Sync>;

pub struct StatusBoard {
    clock: SharedClock,
    inner: Mutex<Board>,
    on_change: Option<ChangeHook>,
}

struct Board {
    ids: Vec<ComponentId>,
    components: Vec<ComponentStatus>,
    config: ConfigStatus,
}

impl StatusBoard {
    /// A board for `ids`, in that order (the daemon passes its own components
    /// followed by the registry's capabilities).
    pub fn new(clock: SharedClock, config_files: &[PathBuf], ids: &[ComponentId]) -> Self {
        let now = rfc3339(clock.now());
        let components = ids
            .iter()
            .map(|id| ComponentStatus {
                name: id.as_str().to_string(),
                state: ComponentState::Starting,
                since: now.clone(),
                detail: None,
                last_error: None,
            })
            .collect();
        let config = ConfigStatus {
            files: config_files.iter().map(|f| f.display().to_string()).collect(),
            loaded_at: now,
            reloads_applied: 0,
            reloads_rejected: 0,
            rejected_reload: None,
            running_on: None,
        };
        Self { clock, inner: Mutex::new(Board { ids: ids.to_vec(), components, config }), on_change: None }
    }

    /// Called with a one-line summary after every state change (systemd STATUS=).
    pub fn with_change_hook(mut self, hook: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_change = Some(Box::new(hook));
        self
    }

    fn lock(&self) -> MutexGuard<'_, Board> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets a component's state; `since` moves only when the state changes.
    pub fn set(&self, id: ComponentId, state: ComponentState, detail: Option<String>) {
        self.update(id, state, detail, None);
    }

    /// Sets a component's state and records the error that caused it.
    pub fn set_error(&self, id: ComponentId, state: ComponentState, detail: Option<String>, error: String) {
        self.update(id, state, detail, Some(error));
    }

    /// Clears a component's last error (a good reload, a recovery that makes it moot).
    pub fn clear_error(&self, id: ComponentId) {
        let mut board = self.lock();
        if let Some(index) = board.ids.iter().position(|known| *known == id) {
            board.components[index].last_error = None;
        }
    }

    fn update(&self, id: ComponentId, state: ComponentState, detail: Option<String>, error: Option<String>) {
        let now = rfc3339(self.clock.now());
        let summary = {
            let mut board = self.lock();
            let Some(index) = board.ids.iter().position(|known| *known == id) else {
                // The board is built from the registry, so this is a wiring bug: say so loudly.
                tracing::error!(component = %id, "status for a component that is not on the board");
                return;
            };
            let entry = &mut board.components[index];
            let changed = entry.state != state;
            if changed {
                entry.since = now;
            }
            entry.state = state;
            entry.detail = detail;
            if error.is_some() {
                entry.last_error = error;
            }
            if !changed {
                return;
            }
            summarize(&board.components)
        };
        if let Some(hook) = &self.on_change {
            hook(&summary);
        }
    }

    pub fn config_applied(&self, files: &[PathBuf]) {
        {
            let mut board = self.lock();
            board.config.files = files.iter().map(|f| f.display().to_string()).collect();
            board.config.loaded_at = rfc3339(self.clock.now());
            board.config.reloads_applied += 1;
            board.config.rejected_reload = None;
            board.config.running_on = None;
        }
        self.clear_error(ComponentId::Config);
        self.set(ComponentId::Config, ComponentState::Ready, Some(format!("{} file(s) in force", files.len())));
    }

    /// A reload was refused: the config in force stays, and says so.
    pub fn config_rejected(&self, error: &ConfigError) {
        self.record_rejection(error, None);
    }

    /// The config on disk is invalid at start: the daemon runs on `in_force`
    /// (the last valid config or the defaults) until a reload fixes it.
    pub fn config_failed(&self, error: &ConfigError, in_force: &str) {
        self.record_rejection(error, Some(in_force));
    }

    fn record_rejection(&self, error: &ConfigError, running_on: Option<&str>) {
        let message = error.to_string();
        let running_on = {
            let mut board = self.lock();
            if let Some(in_force) = running_on {
                board.config.files.clear();
                board.config.running_on = Some(in_force.to_string());
            } else {
                board.config.reloads_rejected += 1;
            }
            board.config.rejected_reload = Some(RejectedReload {
                at: rfc3339(self.clock.now()),
                file: error.file().display().to_string(),
                line: error.line(),
                key: error.key().map(str::to_string),
                message: message.clone(),
            });
            board.config.running_on.clone()
        };
        // Still running on a fallback: the files on disk have never been in force.
        let (state, detail) = match running_on {
            Some(in_force) => (ComponentState::Failed, format!("the config on disk is invalid; running on {in_force}")),
            None => (ComponentState::Degraded, "reload rejected; the previous config stays in force".to_string()),
        };
        self.set_error(ComponentId::Config, state, Some(detail), message);
    }

    pub fn components(&self) -> Vec<ComponentStatus> {
        self.lock().components.clone()
    }

    pub fn config_status(&self) -> ConfigStatus {
        self.lock().config.clone()
    }

    pub fn state_of(&self, id: ComponentId) -> Option<ComponentState> {
        let board = self.lock();
        board.ids.iter().position(|known| *known == id).map(|index| board.components[index].state)
    }
}

/// The board's own metrics: build info, each component's health and state,
/// config reloads. Read at scrape time, so they never drift from `status`.
#[derive(Debug)]
pub struct BoardMetrics(pub SharedBoard);

impl std::fmt::Debug for StatusBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusBoard").finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for BoardMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let components = self.0.components();
        let config = self.0.config_status();

        let info = ConstGauge::new(1i64);
        let mut family =
            encoder.encode_descriptor("build_info", "Version of the running agent.", None, info.metric_type())?;
        info.encode(family.encode_family(&[("version", crate::VERSION)])?)?;

        let healthy = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "component_healthy",
            "1 when the component does its job (ready, or nothing to do).",
            None,
            healthy.metric_type(),
        )?;
        for component in &components {
            let value = ConstGauge::new(i64::from(component.state.is_healthy()));
            value.encode(family.encode_family(&[("component", component.name.as_str())])?)?;
        }

        let mut family = encoder.encode_descriptor(
            "component_state",
            "Current state of each component (1 for the state it is in).",
            None,
            healthy.metric_type(),
        )?;
        for component in &components {
            for state in ComponentState::ALL {
                let value = ConstGauge::new(i64::from(component.state == state));
                value.encode(
                    family.encode_family(&[("component", component.name.as_str()), ("state", state.as_str())])?,
                )?;
            }
        }

        let reloads = ConstCounter::new(0u64);
        let mut family =
            encoder.encode_descriptor("config_reloads", "Config reloads by result.", None, reloads.metric_type())?;
        for (result, count) in [("applied", config.reloads_applied), ("rejected", config.reloads_rejected)] {
            ConstCounter::new(count).encode(family.encode_family(&[("result", result)])?)?;
        }
        Ok(())
    }
}

/// `share: ready; links: not-implemented; ...` — short enough for `systemctl status`.
fn summarize(components: &[ComponentStatus]) -> String {
    components
        .iter()
        // The daemon's own rows only when they are not ready (a broken config).
        .filter(|c| !ComponentId::DAEMON.iter().any(|id| id.as_str() == c.name) || c.state != ComponentState::Ready)
        .map(|c| format!("{}: {}", c.name, c.state.as_str()))
        .collect::<Vec<_>>()
        .join("; ")
}

pub type SharedBoard = Arc<StatusBoard>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::fake::FakeClock;
    use std::time::{Duration, UNIX_EPOCH};

    const ALL: [ComponentId; 3] = [ComponentId::Config, ComponentId::Api, ComponentId::Share];

    #[test]
    fn since_moves_only_on_a_state_change_and_errors_stick() {
        let clock = FakeClock::at(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let board = StatusBoard::new(clock.clone(), &[], &ALL)
            .with_change_hook(move |s| sink.lock().unwrap().push(s.to_string()));
        board.set(ComponentId::Share, ComponentState::Ready, None);
        let first = board.components().into_iter().find(|c| c.name == "share").unwrap();
        clock.advance(Duration::from_secs(60));
        board.set(ComponentId::Share, ComponentState::Ready, Some("still".into()));
        let same = board.components().into_iter().find(|c| c.name == "share").unwrap();
        assert_eq!(first.since, same.since);
        board.set_error(ComponentId::Share, ComponentState::Degraded, None, "server gone".into());
        board.set(ComponentId::Share, ComponentState::Ready, None);
        let now = board.components().into_iter().find(|c| c.name == "share").unwrap();
        assert_ne!(now.since, first.since);
        assert_eq!(now.last_error.as_deref(), Some("server gone"));
        assert_eq!(seen.lock().unwrap().len(), 3, "hook fires on changes only");
        assert!(seen.lock().unwrap()[0].contains("share: ready"));
    }

    #[test]
    fn rejected_reload_is_kept_until_a_good_one() {
        let board = StatusBoard::new(crate::core::clock::system(), &[], &ALL);
        let err = ConfigError::Invalid {
            file: "/etc/x.toml".into(),
            line: 4,
            key: "share.bogus".into(),
            message: "unknown key".into(),
        };
        board.config_rejected(&err);
        let config = board.config_status();
        let rejected = config.rejected_reload.unwrap();
        assert_eq!((rejected.line, rejected.key.as_deref()), (Some(4), Some("share.bogus")));
        assert_eq!(board.state_of(ComponentId::Config), Some(ComponentState::Degraded));
        board.config_applied(&[PathBuf::from("/etc/x.toml")]);
        assert!(board.config_status().rejected_reload.is_none());
        assert_eq!(board.state_of(ComponentId::Config), Some(ComponentState::Ready));
    }
}
