//! What links report: `GET /v1/links`, shared by the daemon and the CLI.

use crate::core::clock::Stamp;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkState {
    /// Link and folder were right already.
    Ok,
    /// The agent made or mended the link or the folder in this pass.
    Created,
    /// Something of the user's own is where the link belongs; left alone.
    Conflict,
    /// The link is made; the folder waits for the share to be mounted.
    WaitingForShare,
    Error,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Ok => "ok",
            LinkState::Created => "created",
            LinkState::Conflict => "conflict",
            LinkState::WaitingForShare => "waiting-for-share",
            LinkState::Error => "error",
        }
    }

    pub const ALL: [LinkState; 5] =
        [LinkState::Ok, LinkState::Created, LinkState::Conflict, LinkState::WaitingForShare, LinkState::Error];
}

/// One user's link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserLink {
    pub user: String,
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    pub state: LinkState,
    /// `$HOME/notebooks/remote`. Boxed: exact size, one per user.
    pub link: Box<str>,
    /// The user's folder on the share, as the link points at it.
    pub target: Box<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the agent last changed something for this user (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<Stamp>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinksReport {
    /// RFC 3339, the last full pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<String>,
    /// How long the last pass took, in milliseconds.
    #[serde(default)]
    pub last_sync_ms: f64,
    #[serde(default)]
    pub passes: u64,
    pub users: Vec<UserLink>,
}

impl LinksReport {
    pub fn count(&self, state: LinkState) -> usize {
        self.users.iter().filter(|u| u.state == state).count()
    }
}
