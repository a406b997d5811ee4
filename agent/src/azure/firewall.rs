//! IMDS closed to users. The VM's managed identity can read the share's key
//! and change the scale set, and IMDS hands its tokens to any process that
//! asks with `Metadata: true`; so by default only root reaches
//! 169.254.169.254 (`azure.imds_access`). The rule lives in an nftables
//! table of the agent's own (`inet pool_agent`), replaced atomically by
//! `nft -f -`, so the admin's rules are never touched; the Azure host's
//! WireServer (168.63.129.16) is left to the Azure Linux agent, whose
//! `OS.EnableFirewall` lets only root reach it the same way (an owner match
//! on the output path). Azure's Metadata Security Protocol, where offered,
//! guards IMDS on the host side; this rule works on any VM.

use crate::config::fragment::ImdsAccess;
use crate::core::accounts::AccountsView;
use std::time::Duration;

/// IMDS's address (and the managed identity's token endpoint).
pub const IMDS_ADDRESS: &str = "169.254.169.254";
pub const TABLE: &str = "pool_agent";
/// `nft` answers in milliseconds; one that hangs is not waited for.
const NFT_DEADLINE: Duration = Duration::from_secs(10);

/// Who may reach IMDS, as uids and primary gids (root always).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allowed {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    /// Groups named in the config that no account source knows.
    pub unknown_groups: Vec<String>,
}

/// Resolves `azure.imds_access`: None for `everyone` (no rule at all).
pub fn allowed(access: &ImdsAccess, accounts: &AccountsView) -> Option<Allowed> {
    let mut allowed = Allowed { uids: vec![0], ..Allowed::default() };
    match access {
        ImdsAccess::Everyone => return None,
        ImdsAccess::Root => {}
        ImdsAccess::Groups(groups) => {
            for name in groups {
                let Some(group) = accounts.group_by_name(name) else {
                    allowed.unknown_groups.push(name.clone());
                    continue;
                };
                // nftables matches a socket's primary gid only: members who
                // have the group as a supplementary one are listed by uid.
                allowed.gids.push(group.gid);
                allowed.uids.extend(group.members.iter().filter_map(|m| accounts.user_by_name(m)).map(|a| a.uid));
            }
        }
    }
    allowed.uids.sort_unstable();
    allowed.uids.dedup();
    allowed.gids.sort_unstable();
    allowed.gids.dedup();
    Some(allowed)
}

fn set(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

/// Where Azure's load balancer probes come from (the `AzureLoadBalancer`
/// service tag): <https://learn.microsoft.com/azure/load-balancer/load-balancer-custom-probe-overview>
/// ("probes originate from the IP address 168.63.129.16").
pub const PROBE_SOURCE: &str = "168.63.129.16";

/// The whole table, replacing any earlier one in one transaction (the
/// `table` line makes the `delete` valid when there is none yet): IMDS for
/// `allowed` only (`None`: everyone), and the readiness port for the load
/// balancer's probes only (`None`: no readiness listener). Neither: no table.
pub fn ruleset(allowed: Option<&Allowed>, readiness_port: Option<u16>) -> String {
    let mut chains = String::new();
    if let Some(allowed) = allowed {
        // Everyone else's packets to IMDS are refused at once (a TCP reset, an
        // ICMP error otherwise). Packets with no socket (the reset itself, on a
        // VM where IMDS is a local address in a test) match no owner test and pass.
        let mut owner = format!("meta skuid != {{ {} }}", set(&allowed.uids));
        if !allowed.gids.is_empty() {
            owner.push_str(&format!(" meta skgid != {{ {} }}", set(&allowed.gids)));
        }
        chains.push_str(&format!(
            "    chain imds_for_root {{\n        type filter hook output priority filter; policy accept;\n        ip daddr {IMDS_ADDRESS} {owner} meta l4proto tcp counter reject with tcp reset\n        ip daddr {IMDS_ADDRESS} {owner} counter reject\n    }}\n"
        ));
    }
    if let Some(port) = readiness_port {
        // The probe answers only the load balancer (and the VM itself, for an
        // admin's own look): nobody else learns whether the VM takes sessions.
        chains.push_str(&format!(
            "    chain readiness_for_probes {{\n        type filter hook input priority filter; policy accept;\n        tcp dport {port} iifname != \"lo\" ip saddr != {PROBE_SOURCE} counter drop\n        meta nfproto ipv6 tcp dport {port} iifname != \"lo\" counter drop\n    }}\n"
        ));
    }
    if chains.is_empty() {
        return removal();
    }
    format!("table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n{chains}}}\n")
}

/// Removes the table (nothing to do when there is none).
pub fn removal() -> String {
    format!("table inet {TABLE}\ndelete table inet {TABLE}\n")
}

/// Runs `nft -f -` with `script`. Err: why, for status.
pub async fn nft(script: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let spawned = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err("nft is not installed (Debian and Ubuntu: the nftables package)".into())
        }
        Err(err) => return Err(format!("cannot run nft: {}", crate::config::io_text(&err))),
    };
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes()).await.map_err(|e| format!("nft: {}", crate::config::io_text(&e)))?;
        }
        child.wait_with_output().await.map_err(|e| format!("nft: {}", crate::config::io_text(&e)))
    };
    match tokio::time::timeout(NFT_DEADLINE, run).await {
        Err(_) => Err("nft did not answer within 10 s".into()),
        Ok(Err(why)) => Err(why),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!("nft refused the table: {}", String::from_utf8_lossy(&out.stderr).trim())),
    }
}

/// Whether the agent's table is in place (`nft list table`): an admin's
/// `nft flush ruleset` or `systemctl restart nftables` removes it unseen.
pub async fn table_present() -> bool {
    let listed = tokio::process::Command::new("nft")
        .args(["list", "table", "inet", TABLE])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status();
    matches!(tokio::time::timeout(NFT_DEADLINE, listed).await, Ok(Ok(status)) if status.success())
}

/// What `pool-agent azure` says of IMDS access.
pub fn describe(access: &ImdsAccess, allowed: Option<&Allowed>) -> String {
    match (access, allowed) {
        (ImdsAccess::Everyone, _) => {
            "everyone on the VM (azure.imds_access = \"everyone\"): any local user can use the pool's identity".into()
        }
        (ImdsAccess::Root, _) => "root only (nftables table inet pool_agent)".into(),
        (ImdsAccess::Groups(groups), Some(allowed)) => {
            let mut text = format!("root and the groups {} (uids {})", groups.join(", "), set(&allowed.uids));
            if !allowed.unknown_groups.is_empty() {
                text.push_str(&format!("; unknown groups: {}", allowed.unknown_groups.join(", ")));
            }
            text
        }
        (ImdsAccess::Groups(groups), None) => format!("root and the groups {}", groups.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lets_root_and_the_named_groups_through_and_rejects_everyone_else_at_once() {
        let root = ruleset(Some(&Allowed { uids: vec![0], ..Allowed::default() }), None);
        assert!(root.starts_with("table inet pool_agent\ndelete table inet pool_agent\n"), "{root}");
        assert!(
            root.contains(
                "ip daddr 169.254.169.254 meta skuid != { 0 } meta l4proto tcp counter reject with tcp reset"
            ),
            "refused at once, not a timeout: {root}"
        );
        assert!(!root.contains("skgid"), "{root}");
        assert!(!root.contains("168.63.129.16"), "the WireServer is the Azure Linux agent's");
        let groups = ruleset(Some(&Allowed { uids: vec![0, 1001], gids: vec![2000], unknown_groups: vec![] }), None);
        assert!(groups.contains("meta skuid != { 0, 1001 } meta skgid != { 2000 }"), "{groups}");
        assert!(!groups.contains("readiness"), "{groups}");
    }

    #[test]
    fn the_readiness_port_takes_only_the_load_balancer_s_probes() {
        let both = ruleset(Some(&Allowed { uids: vec![0], ..Allowed::default() }), Some(8766));
        assert!(both.contains("chain imds_for_root") && both.contains("chain readiness_for_probes"), "{both}");
        assert!(both.contains("tcp dport 8766 iifname != \"lo\" ip saddr != 168.63.129.16 counter drop"), "{both}");
        assert!(both.contains("meta nfproto ipv6 tcp dport 8766"), "IPv6 cannot come from the probe: {both}");
        let probe_only = ruleset(None, Some(8766));
        assert!(!probe_only.contains("imds") && probe_only.contains("readiness_for_probes"), "{probe_only}");
        assert_eq!(ruleset(None, None), removal(), "nothing to keep: no table");
        // nft itself, where installed, accepts the text (`-c`: check only, nothing applied).
        for script in [both, probe_only] {
            let checked = std::process::Command::new("nft")
                .args(["-c", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    use std::io::Write;
                    child.stdin.take().unwrap().write_all(script.as_bytes())?;
                    child.wait_with_output()
                });
            match checked {
                Ok(out) if nix::unistd::Uid::effective().is_root() => {
                    assert!(out.status.success(), "nft -c: {}\n{script}", String::from_utf8_lossy(&out.stderr))
                }
                _ => eprintln!("nft -c not run (no nft or not root)"),
            }
        }
    }

    #[test]
    fn groups_resolve_to_their_members_and_primary_gid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("passwd"),
            "root:x:0:0::/root:/bin/sh\nalice:x:1001:1001::/home/alice:/bin/sh\nbob:x:1002:1002::/home/bob:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("group"), "root:x:0:\ndatasci:x:2000:alice\n").unwrap();
        let accounts = AccountsView::new(crate::core::accounts::AccountSource::Files {
            passwd: dir.path().join("passwd"),
            group: dir.path().join("group"),
        });
        let found = allowed(&ImdsAccess::Groups(vec!["datasci".into(), "nope".into()]), &accounts).unwrap();
        assert_eq!(
            (found.uids, found.gids, found.unknown_groups),
            (vec![0, 1001], vec![2000], vec!["nope".to_string()])
        );
        assert_eq!(allowed(&ImdsAccess::Everyone, &accounts), None);
        assert_eq!(allowed(&ImdsAccess::Root, &accounts).unwrap().uids, vec![0]);
    }
}
