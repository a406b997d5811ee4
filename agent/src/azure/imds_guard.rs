//! Keeps the nftables table that closes IMDS to users in place while the
//! agent runs on Azure (the rules themselves: [`super::firewall`]).

use super::{firewall, Azure};
use crate::core::task::TaskContext;
use std::time::Duration;

/// How often group members are looked up again for `azure.imds_access`.
const IMDS_GROUPS_EVERY: Duration = Duration::from_secs(300);

/// Keeps the nftables table that closes IMDS to everyone but root (and the
/// groups `azure.imds_access` names) until shutdown, then removes it.
/// `readiness_port`: the load balancer probe's port, open only to the probes.
pub(super) async fn guard_imds(
    ctx: TaskContext,
    azure: Azure,
    access: crate::config::fragment::ImdsAccess,
    readiness_port: Option<u16>,
) {
    let mut installed: Option<String> = None;
    loop {
        let (accounts, asked) = (ctx.accounts.clone(), access.clone());
        let resolved = crate::core::task::blocking("imds access groups", Duration::from_secs(10), move || {
            firewall::allowed(&asked, &accounts)
        })
        .await;
        match resolved {
            Ok(allowed) => {
                let script = firewall::ruleset(allowed.as_ref(), readiness_port);
                if installed.as_ref() != Some(&script) {
                    match firewall::nft(&script).await {
                        Ok(()) => {
                            azure.update(|r| r.imds_access = firewall::describe(&access, allowed.as_ref()));
                            tracing::info!(
                                component = "azure",
                                "IMDS: {}",
                                firewall::describe(&access, allowed.as_ref())
                            );
                            let table = allowed.is_some() || readiness_port.is_some();
                            azure.0.imds_closed.store(table, std::sync::atomic::Ordering::SeqCst);
                            azure.0.problems.set("imds access", None);
                            installed = Some(script);
                        }
                        Err(why) => {
                            let why = format!("IMDS stays open to every local user: {why}");
                            tracing::warn!(component = "azure", "{why}");
                            azure.update(|r| r.imds_access = why.clone());
                            azure.0.problems.set("imds access", Some(why));
                        }
                    }
                }
            }
            Err(err) => {
                azure.0.problems.set("imds access", Some(format!("cannot look up azure.imds_access's groups: {err}")))
            }
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = tokio::time::sleep(IMDS_GROUPS_EVERY) => {}
        }
    }
    open_imds(&azure).await;
}

/// Removes the agent's table, if it put one in place.
pub(super) async fn open_imds(azure: &Azure) {
    if azure.0.imds_closed.swap(false, std::sync::atomic::Ordering::SeqCst) {
        if let Err(why) = firewall::nft(&firewall::removal()).await {
            tracing::warn!(component = "azure", "cannot remove the IMDS table: {why}");
        }
    }
}
