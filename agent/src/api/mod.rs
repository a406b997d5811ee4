//! The local API: HTTP/1.1 + JSON over `/run/pool-agent/agent.sock`.
//!
//! Reads are open to every local user; state-changing routes need root or the
//! admin group, decided from `SO_PEERCRED` before any route logic runs
//! ([`access`]). Browser requests (`Origin`/`Referer`) are refused, bodies are
//! bounded and every error is `{"error": code, "message": text}` ([`error`]).

pub mod access;
pub mod error;
pub mod routes;
pub mod server;
pub mod types;

use crate::clock::SharedClock;
use crate::config::Settings;
use crate::paths::SystemPaths;
use crate::status::SharedBoard;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;

/// The largest request body any route accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler may read.
#[derive(Clone)]
pub struct AppState {
    pub share: crate::share::ShareHandle,
    pub board: SharedBoard,
    pub settings: watch::Receiver<Arc<Settings>>,
    pub paths: Arc<SystemPaths>,
    pub clock: SharedClock,
    pub started_at: SystemTime,
    pub instance: String,
}

/// The caller, as the kernel reports it for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}
