//! `pool-agent links` and `links sync`.

use super::Call;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum LinksAction {
    /// Reconcile every user's link now (admin).
    Sync,
}

pub fn call(action: &Option<LinksAction>) -> Call {
    match action {
        None => Call::get("/v1/links"),
        Some(LinksAction::Sync) => Call::post("/v1/links/sync", None),
    }
}
