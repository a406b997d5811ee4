//! pool-agent: the node agent for pools of interactive data-science VMs.
//!
//! The boot flow lives in [`daemon`]; each capability has its own module:
//! [`share`], [`links`], [`scripts`], [`idle`], [`azure`] and the local [`api`].
//! The CLI ([`cli`]) shares its request and response types with the server
//! through [`api::types`].
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod accounts;
pub mod api;
pub mod azure;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod idle;
pub mod links;
pub mod metrics;
pub mod paths;
pub mod scripts;
pub mod share;
pub mod status;

/// The version every binary and API answer reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
