//! Who is who on the status board: component identity and state.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Every component of the agent, in boot order. `status` lists them in this
/// order. A new capability adds its variant here and one line in the daemon's
/// registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComponentId {
    Config,
    Api,
    Share,
    Links,
    Scripts,
    Idle,
    Azure,
    Pool,
    Users,
}

impl ComponentId {
    /// The name used in the API, the metrics and STATUS=.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentId::Config => "config",
            ComponentId::Api => "api",
            ComponentId::Share => "share",
            ComponentId::Links => "links",
            ComponentId::Scripts => "scripts",
            ComponentId::Idle => "idle",
            ComponentId::Azure => "azure",
            ComponentId::Pool => "pool",
            ComponentId::Users => "users",
        }
    }

    /// The components the daemon itself runs (not capabilities).
    pub const DAEMON: [ComponentId; 2] = [ComponentId::Config, ComponentId::Api];
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComponentState {
    Starting,
    Ready,
    Degraded,
    Failed,
    Skipped,
    NotImplemented,
    Stopped,
}

impl ComponentState {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentState::Starting => "starting",
            ComponentState::Ready => "ready",
            ComponentState::Degraded => "degraded",
            ComponentState::Failed => "failed",
            ComponentState::Skipped => "skipped",
            ComponentState::NotImplemented => "not-implemented",
            ComponentState::Stopped => "stopped",
        }
    }

    /// Whether the component does its job right now (for health and metrics).
    pub fn is_healthy(self) -> bool {
        matches!(self, ComponentState::Ready | ComponentState::Skipped | ComponentState::NotImplemented)
    }

    pub const ALL: [ComponentState; 7] = [
        ComponentState::Starting,
        ComponentState::Ready,
        ComponentState::Degraded,
        ComponentState::Failed,
        ComponentState::Skipped,
        ComponentState::NotImplemented,
        ComponentState::Stopped,
    ];
}

/// One row of the status board as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    pub state: ComponentState,
    /// RFC 3339, when `state` was entered.
    pub since: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedReload {
    pub at: String,
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The whole error, `file:line: key: message`.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigStatus {
    pub files: Vec<String>,
    pub loaded_at: String,
    pub reloads_applied: u64,
    pub reloads_rejected: u64,
    /// The last reload that was refused, while the config it tried to replace
    /// is still in force; at start, the error that kept the files out of force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_reload: Option<RejectedReload>,
    /// Set when the files on disk were invalid at start: what runs instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_on: Option<String>,
}
