//! What `GET /v1/scripts` answers; the CLI reads the same types.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScriptState {
    /// Not run yet in this boot (waiting for the share, the links or its turn).
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    /// It was running when the agent or the VM stopped; it runs again.
    Interrupted,
    /// Not allowed to run; `reason` says why.
    Refused,
}

impl ScriptState {
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptState::Pending => "pending",
            ScriptState::Running => "running",
            ScriptState::Succeeded => "succeeded",
            ScriptState::Failed => "failed",
            ScriptState::TimedOut => "timed-out",
            ScriptState::Interrupted => "interrupted",
            ScriptState::Refused => "refused",
        }
    }

    pub const ALL: [ScriptState; 7] = [
        ScriptState::Pending,
        ScriptState::Running,
        ScriptState::Succeeded,
        ScriptState::Failed,
        ScriptState::TimedOut,
        ScriptState::Interrupted,
        ScriptState::Refused,
    ];

    /// A blocking script in this state leaves the VM unhealthy.
    pub fn is_failure(self) -> bool {
        matches!(self, ScriptState::Failed | ScriptState::TimedOut | ScriptState::Refused)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScriptReport {
    pub name: String,
    pub path: String,
    pub run_as: String,
    /// `run_as` resolved when the script was checked: who besides admins may
    /// read its log. Not on the wire.
    #[serde(skip)]
    pub run_as_uid: Option<u32>,
    /// `once` or `every-boot`.
    pub when: String,
    pub blocking: bool,
    pub state: ScriptState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// While running: the script's process (under systemd: its unit's main process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// Of the last finished run; while running, the time so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    pub timeout_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// The local log file.
    pub log: String,
    /// Where the log was copied on the share, once it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_log: Option<String>,
    /// sha256 of the file, its arguments and its user: a `once` script runs
    /// again when this changes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content_hash: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScriptsReport {
    /// `systemd` (transient units) or `direct` (children of the agent).
    pub runner: String,
    /// What the batch is doing: waiting for the share, running, done.
    pub phase: String,
    pub scripts: Vec<ScriptReport>,
    /// Why some logs are not copied to the share (root scripts' logs on a
    /// share that does not keep file modes); none when all are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_to_share_note: Option<String>,
}

/// `GET /v1/scripts/{name}/log`: a piece of the log from `offset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogChunk {
    pub name: String,
    pub path: String,
    pub offset: u64,
    pub next_offset: u64,
    pub text: String,
    /// Whether the script runs now (a follower keeps asking while it does).
    pub running: bool,
}
