//! Request and response bodies of the local API, shared by the daemon and the CLI.

use serde::{Deserialize, Serialize};

/// Every error answer: a stable machine code and one human sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
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
        matches!(
            self,
            ComponentState::Ready | ComponentState::Skipped | ComponentState::NotImplemented
        )
    }
}

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
    /// The last reload that was refused, while the config it tried to replace is still in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_reload: Option<RejectedReload>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub version: String,
    pub pid: u32,
    pub instance: String,
    pub started_at: String,
    pub socket: String,
    /// Set when the daemon runs in a `--root` sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub agent: AgentInfo,
    pub config: ConfigStatus,
    pub components: Vec<ComponentStatus>,
}
