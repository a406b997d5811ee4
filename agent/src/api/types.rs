//! Request and response bodies of the API's own routes, shared by the daemon
//! and the CLI. Capabilities keep theirs in their own folders.

pub use crate::core::component::{ComponentState, ComponentStatus, ConfigStatus, RejectedReload};
pub use crate::core::http::ErrorBody;
use serde::{Deserialize, Serialize};

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
    /// Work stuck in the kernel past its deadline (share probes, idle reads,
    /// admin look-ups, links passes): each kind with how many and since when.
    #[serde(default)]
    pub stuck: Vec<StuckReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StuckReport {
    /// The kind of work, and which one when there are several ("idle reads (sessions)").
    pub name: String,
    /// Pieces past their deadline, of at most `limit` in flight.
    pub count: usize,
    pub limit: usize,
    /// When the oldest of them started.
    pub since: String,
}
