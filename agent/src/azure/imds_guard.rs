//! Keeps the nftables table that closes IMDS to users in place while the
//! agent runs on Azure (the rules themselves: [`super::firewall`]).

use super::{firewall, Azure};
use crate::core::task::TaskContext;
use std::time::Duration;

/// How often group members are looked up again for `azure.imds_access`.
const IMDS_GROUPS_EVERY: Duration = Duration::from_secs(300);
/// How often the table is looked for (an admin's `nft flush ruleset` removes
/// it unseen), and the longest wait between tries after a failure: one `nft`
/// process a minute, a few milliseconds of CPU.
const TABLE_CHECK_EVERY: Duration = Duration::from_secs(60);

/// Keeps the nftables table that closes IMDS to everyone but root (and the
/// groups `azure.imds_access` names) until shutdown; `run` removes it then.
/// `readiness_port`: the load balancer probe's port, open only to the probes.
pub(super) async fn guard_imds(
    ctx: TaskContext,
    azure: Azure,
    access: crate::config::fragment::ImdsAccess,
    readiness_port: Option<u16>,
) {
    let mut installed: Option<String> = None;
    let mut allowed: Option<Option<firewall::Allowed>> = None;
    let mut resolve_at = tokio::time::Instant::now();
    let mut retry = crate::core::backoff::Backoff::new(Duration::from_secs(2), TABLE_CHECK_EVERY);
    loop {
        if allowed.is_none() || tokio::time::Instant::now() >= resolve_at {
            let (accounts, asked) = (ctx.accounts.clone(), access.clone());
            let resolved = crate::core::task::blocking("imds access groups", Duration::from_secs(10), move || {
                firewall::allowed(&asked, &accounts)
            })
            .await;
            match resolved {
                Ok(now) => {
                    allowed = Some(now);
                    resolve_at = tokio::time::Instant::now() + IMDS_GROUPS_EVERY;
                }
                Err(err) => azure
                    .0
                    .problems
                    .set("imds access", Some(format!("cannot look up azure.imds_access's groups: {err}"))),
            }
        }
        let mut wait = TABLE_CHECK_EVERY;
        // Until the groups are known (NSS hung), root only: never open for want of an answer.
        let root_only = Some(firewall::Allowed { uids: vec![0], ..firewall::Allowed::default() });
        let allowed = allowed.clone().unwrap_or(root_only);
        {
            let script = firewall::ruleset(allowed.as_ref(), readiness_port);
            let table = allowed.is_some() || readiness_port.is_some();
            let in_place = installed.as_ref() == Some(&script) && (!table || firewall::table_present().await);
            if installed.as_ref() == Some(&script) && !in_place {
                tracing::warn!(
                    component = "azure",
                    "the agent's nftables table was removed (nft flush ruleset?); putting it back"
                );
            }
            if !in_place {
                // Said before trying: an nft that applied the table and then timed out
                // still gets its table removed at stop (a removal with none is harmless).
                if table {
                    azure.0.imds_closed.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                match firewall::nft(&script).await {
                    Ok(()) => {
                        let said = firewall::describe(&access, allowed.as_ref());
                        azure.update(|r| r.imds_access = said.clone());
                        tracing::info!(component = "azure", "IMDS: {said}");
                        azure.0.imds_closed.store(table, std::sync::atomic::Ordering::SeqCst);
                        azure.0.problems.set("imds access", None);
                        installed = Some(script);
                        retry.reset();
                    }
                    Err(why) => {
                        let why = format!("IMDS stays open to every local user: {why}");
                        tracing::warn!(component = "azure", "{why}");
                        azure.update(|r| r.imds_access = why.clone());
                        azure.0.problems.set("imds access", Some(why));
                        installed = None;
                        wait = retry.next_delay();
                    }
                }
            }
        }
        tokio::select! {
            // The table is removed by whoever awaits the capability's end
            // (`run`), never here: this task is aborted when `run_with`
            // returns, and a removal begun here would be killed half-way
            // (its nft with it) after taking the flag that says to remove.
            _ = ctx.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Removes the agent's table, if it put one in place.
pub(super) async fn open_imds(azure: &Azure) {
    if azure.0.imds_closed.swap(false, std::sync::atomic::Ordering::SeqCst) {
        if let Err(why) = firewall::nft(&firewall::removal()).await {
            tracing::warn!(component = "azure", "cannot remove the IMDS table: {why}");
        }
    }
}
