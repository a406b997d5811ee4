//! pool-agent: the node agent for pools of interactive data-science VMs.
//!
//! Layers, each importing only the ones below it: [`cli`] and the binaries;
//! [`daemon`] (boot flow, supervisor, the registry of capabilities); [`api`]
//! (socket server, access, JSON errors); the capabilities [`share`],
//! [`links`], [`scripts`], [`idle`], [`azure`], [`pool`] and [`users`], which never import each
//! other, the API or the daemon; [`core`], what they all share; [`config`].
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod api;
pub mod azure;
pub mod cli;
pub mod config;
pub mod core;
pub mod daemon;
pub mod idle;
pub mod links;
pub mod pool;
pub mod scripts;
pub mod share;
pub mod users;

/// The version every binary and API answer reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
