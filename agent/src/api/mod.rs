//! The local API: HTTP/1.1 + JSON over `/run/pool-agent/agent.sock`.
//!
//! The API owns the socket, the caller's identity (`SO_PEERCRED`), the access
//! check each route declares, browser refusal, body and time bounds, and the
//! one error shape. Its own routes are status, config and metrics; every
//! other route comes from a capability through the daemon's registry, so the
//! API names no capability.

pub mod access;
pub mod admin;
pub mod routes;
pub mod server;
pub mod types;

pub use crate::core::http::Peer;

use crate::config::Settings;
use crate::core::accounts::AccountsView;
use crate::core::board::SharedBoard;
use crate::core::clock::SharedClock;
use crate::core::paths::SystemPaths;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// The largest request body any route accepts, with or without Content-Length.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Every handler answers within this, well inside the CLI's default 10 s
/// timeout; work that takes longer answers that it started and how to follow it.
pub const HANDLER_DEADLINE: Duration = Duration::from_secs(8);

/// A config section and the keys of it only admins may read.
pub type PrivateKeys = (&'static str, &'static [&'static str]);

/// What the API's own handlers and its access check read.
#[derive(Clone)]
pub struct AppState {
    pub board: SharedBoard,
    pub settings: watch::Receiver<Arc<Settings>>,
    pub paths: Arc<SystemPaths>,
    pub clock: SharedClock,
    pub accounts: AccountsView,
    pub metrics: Arc<Registry>,
    pub private_config: Arc<Vec<PrivateKeys>>,
    pub started_at: SystemTime,
    pub instance: String,
    /// Admins found by the access guard, for the accept loop's reserve.
    pub admins: server::KnownAdmins,
}
