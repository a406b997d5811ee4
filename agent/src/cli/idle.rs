//! `pool-agent idle` and `pool-agent hold`.

use super::{path_segment, Call};
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HoldArgs {
    /// How long to keep the VM awake: 30m, 2h, 1d.
    #[arg(value_name = "DURATION")]
    pub duration: Option<String>,
    /// Why, shown to admins and in the idle verdict.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    #[command(subcommand)]
    pub action: Option<HoldAction>,
}

#[derive(Debug, Subcommand)]
pub enum HoldAction {
    /// List keep-awake leases (yours; all of them for admins).
    List,
    /// End a lease early.
    Release { id: String },
}

pub fn idle() -> Call {
    Call::get("/v1/idle")
}

pub fn hold(hold: &HoldArgs) -> Result<Call, String> {
    match (&hold.action, &hold.duration) {
        (Some(HoldAction::List), _) => Ok(Call::get("/v1/holds")),
        (Some(HoldAction::Release { id }), _) => Ok(Call::delete(&format!("/v1/holds/{}", path_segment(id)?))),
        (None, Some(duration)) => {
            crate::config::duration::parse(duration)?;
            let body = serde_json::json!({ "duration": duration, "reason": hold.reason });
            Ok(Call::post("/v1/holds", Some(body)))
        }
        (None, None) => {
            Err("hold needs a DURATION (e.g. `pool-agent hold 2h`), or `hold list` / `hold release ID`".into())
        }
    }
}
