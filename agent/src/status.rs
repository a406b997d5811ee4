//! The status board: one entry per component, read by the API, the metrics
//! and the systemd STATUS= line.

use crate::api::types::{ComponentState, ComponentStatus, ConfigStatus, RejectedReload};
use crate::clock::{rfc3339, SharedClock};
use crate::config::ConfigError;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// The components in boot order; `status` lists them in this order.
pub const COMPONENTS: &[&str] = &["config", "api", "share", "links", "scripts", "idle", "azure"];

type ChangeHook = Box<dyn Fn(&str) + Send + Sync>;

pub struct StatusBoard {
    clock: SharedClock,
    inner: Mutex<Board>,
    on_change: Option<ChangeHook>,
}

struct Board {
    components: Vec<ComponentStatus>,
    config: ConfigStatus,
}

impl StatusBoard {
    pub fn new(clock: SharedClock, config_files: &[PathBuf]) -> Self {
        let now = rfc3339(clock.now());
        let components = COMPONENTS
            .iter()
            .map(|name| ComponentStatus {
                name: name.to_string(),
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
        };
        Self { clock, inner: Mutex::new(Board { components, config }), on_change: None }
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
    pub fn set(&self, name: &str, state: ComponentState, detail: Option<String>) {
        self.update(name, state, detail, None);
    }

    /// Sets a component's state and records the error that caused it.
    pub fn set_error(&self, name: &str, state: ComponentState, detail: Option<String>, error: String) {
        self.update(name, state, detail, Some(error));
    }

    fn update(&self, name: &str, state: ComponentState, detail: Option<String>, error: Option<String>) {
        let now = rfc3339(self.clock.now());
        let summary = {
            let mut board = self.lock();
            let Some(entry) = board.components.iter_mut().find(|c| c.name == name) else {
                tracing::warn!(component = name, "status for an unknown component ignored");
                return;
            };
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
        }
        self.set("config", ComponentState::Ready, Some(format!("{} file(s) in force", files.len())));
    }

    pub fn config_rejected(&self, error: &ConfigError) {
        let message = error.to_string();
        {
            let mut board = self.lock();
            board.config.reloads_rejected += 1;
            board.config.rejected_reload = Some(RejectedReload {
                at: rfc3339(self.clock.now()),
                file: error.file().display().to_string(),
                line: error.line(),
                key: error.key().map(str::to_string),
                message: message.clone(),
            });
        }
        self.set_error(
            "config",
            ComponentState::Degraded,
            Some("reload rejected; the previous config stays in force".to_string()),
            message,
        );
    }

    pub fn components(&self) -> Vec<ComponentStatus> {
        self.lock().components.clone()
    }

    pub fn config_status(&self) -> ConfigStatus {
        self.lock().config.clone()
    }

    pub fn state_of(&self, name: &str) -> Option<ComponentState> {
        self.lock().components.iter().find(|c| c.name == name).map(|c| c.state)
    }
}

/// `share: ready; links: not-implemented; ...` — short enough for `systemctl status`.
fn summarize(components: &[ComponentStatus]) -> String {
    components
        .iter()
        .filter(|c| c.name != "config" && c.name != "api")
        .map(|c| format!("{}: {}", c.name, c.state.as_str()))
        .collect::<Vec<_>>()
        .join("; ")
}

pub type SharedBoard = Arc<StatusBoard>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::fake::FakeClock;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn since_moves_only_on_a_state_change_and_errors_stick() {
        let clock = FakeClock::at(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let board =
            StatusBoard::new(clock.clone(), &[]).with_change_hook(move |s| sink.lock().unwrap().push(s.to_string()));
        board.set("share", ComponentState::Ready, None);
        let first = board.components().into_iter().find(|c| c.name == "share").unwrap();
        clock.advance(Duration::from_secs(60));
        board.set("share", ComponentState::Ready, Some("still".into()));
        let same = board.components().into_iter().find(|c| c.name == "share").unwrap();
        assert_eq!(first.since, same.since);
        board.set_error("share", ComponentState::Degraded, None, "server gone".into());
        board.set("share", ComponentState::Ready, None);
        let now = board.components().into_iter().find(|c| c.name == "share").unwrap();
        assert_ne!(now.since, first.since);
        assert_eq!(now.last_error.as_deref(), Some("server gone"));
        assert_eq!(seen.lock().unwrap().len(), 3, "hook fires on changes only");
        assert!(seen.lock().unwrap()[0].contains("share: ready"));
    }

    #[test]
    fn rejected_reload_is_kept_until_a_good_one() {
        let board = StatusBoard::new(crate::clock::system(), &[]);
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
        assert_eq!(board.state_of("config"), Some(ComponentState::Degraded));
        board.config_applied(&[PathBuf::from("/etc/x.toml")]);
        assert!(board.config_status().rejected_reload.is_none());
        assert_eq!(board.state_of("config"), Some(ComponentState::Ready));
    }
}
