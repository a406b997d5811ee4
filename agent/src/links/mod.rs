//! Links: every user's `$HOME/notebooks/remote` pointing at their folder on the share.
//!
//! Not implemented yet: the task says so in `pool-agent status`, and its API
//! routes answer 501 until its issue lands.

use crate::api::types::ComponentState;
use crate::daemon::supervisor::{ComponentContext, TaskResult};

pub async fn run(ctx: ComponentContext) -> TaskResult {
    ctx.set(ComponentState::NotImplemented, "not built yet: user links comes with its own issue".to_string());
    ctx.idle_until_shutdown().await;
    Ok(())
}
