//! Share: the team's workspace, mounted and kept mounted.
//!
//! Kinds: `azure-files` (SMB 3.x), `nfs`, `local` (a directory, for dev and
//! demos). This first cut checks a `local` share; mounting the network kinds
//! lands with the share work and is reported as not implemented until then.

use crate::api::types::ComponentState;
use crate::config::{Settings, ShareSource};
use crate::daemon::supervisor::{ComponentContext, TaskResult};

pub async fn run(ctx: ComponentContext) -> TaskResult {
    let mut settings = ctx.settings.clone();
    loop {
        let current = settings.borrow_and_update().clone();
        evaluate(&ctx, &current);
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            changed = settings.changed() => if changed.is_err() { return Ok(()) },
        }
    }
}

fn evaluate(ctx: &ComponentContext, settings: &Settings) {
    let Some(share) = &settings.share else {
        ctx.set(
            ComponentState::Skipped,
            "no [share] in the config".to_string(),
        );
        return;
    };
    match &share.source {
        ShareSource::Local { path } => {
            let dir = ctx.paths.resolve(path);
            if dir.is_dir() {
                ctx.set(
                    ComponentState::Ready,
                    format!("local share {} used in place", path.display()),
                );
            } else {
                ctx.board.set_error(
                    ctx.name,
                    ComponentState::Failed,
                    None,
                    format!("local share {} is not a directory", dir.display()),
                );
            }
        }
        ShareSource::AzureFiles { .. } | ShareSource::Nfs { .. } => ctx.set(
            ComponentState::NotImplemented,
            format!(
                "mounting {} shares lands with the share work",
                kind_name(&share.source)
            ),
        ),
    }
}

fn kind_name(source: &ShareSource) -> &'static str {
    match source {
        ShareSource::AzureFiles { .. } => "azure-files",
        ShareSource::Nfs { .. } => "nfs",
        ShareSource::Local { .. } => "local",
    }
}
