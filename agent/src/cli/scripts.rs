//! `pool-agent scripts`, `scripts run NAME`, `scripts log NAME`.

use super::{path_segment, Call};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ScriptsAction {
    /// Run a setup script now (admin).
    Run { name: String },
    /// Print a setup script's last log.
    Log { name: String },
}

pub fn call(action: &Option<ScriptsAction>) -> Result<Call, String> {
    Ok(match action {
        None => Call::get("/v1/scripts"),
        Some(ScriptsAction::Run { name }) => Call::post(&format!("/v1/scripts/{}/run", path_segment(name)?), None),
        Some(ScriptsAction::Log { name }) => Call::get(&format!("/v1/scripts/{}/log", path_segment(name)?)).as_text(),
    })
}
