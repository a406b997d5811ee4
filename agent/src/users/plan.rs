//! What to do for each registry account, given the accounts and groups this
//! VM has: pure, so every outcome (missing, present, conflicting, disabled)
//! is tested without touching a system.
//!
//! The rules: a name and a uid the registry gives must mean the same person
//! here; when they do not (same name with another uid, same uid under
//! another name, the user's group name on another gid, another primary gid)
//! the account is a conflict, reported and never changed. Nothing is ever
//! deleted, and group memberships are only added.

use crate::config::users::UserAccount;
use crate::core::accounts::{Account, Group};
use std::collections::HashMap;

/// One system change, in the order it must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    AddGroup {
        name: String,
        gid: u32,
    },
    AddUser {
        name: String,
        uid: u32,
        gid: u32,
        groups: Vec<String>,
        shell: String,
    },
    SetShell {
        name: String,
        shell: String,
    },
    /// Appends the user to these groups (`usermod -a -G`), never removes.
    JoinGroups {
        name: String,
        groups: Vec<String>,
    },
    /// `usermod -L -e 1` and its sessions ended.
    Lock {
        name: String,
    },
    /// Clears the expiry a lock set (the registry enabled it again).
    Unlock {
        name: String,
    },
}

/// Where an account stands before any change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Missing,
    Present,
    Conflict(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountPlan {
    pub name: String,
    pub standing: Standing,
    pub changes: Vec<Change>,
    /// Supplementary groups this VM lacks: the registry gives names, not
    /// gids, and a gid chosen here would differ from the next VM's.
    pub missing_groups: Vec<String>,
    /// The account is (or will be) there and enabled: its keys go in.
    pub install_keys: bool,
}

/// The local facts a plan reads: accounts, groups, and which accounts are
/// locked (shadow's expiry set by a lock).
pub struct Local<'a> {
    pub users: &'a [Account],
    pub groups: &'a [Group],
    pub locked: &'a dyn Fn(&str) -> bool,
}

/// The plan for every registry account, in registry order. Groups planned
/// for one account count as present for the next.
pub fn plan(registry: &[UserAccount], local: &Local<'_>) -> Vec<AccountPlan> {
    let mut groups: HashMap<String, u32> = local.groups.iter().map(|g| (g.name.clone(), g.gid)).collect();
    let mut gids: HashMap<u32, String> = local.groups.iter().map(|g| (g.gid, g.name.clone())).collect();
    registry
        .iter()
        .map(|account| {
            let plan = plan_one(account, local, &groups, &gids);
            for change in &plan.changes {
                if let Change::AddGroup { name, gid } = change {
                    groups.insert(name.clone(), *gid);
                    gids.insert(*gid, name.clone());
                }
            }
            plan
        })
        .collect()
}

fn plan_one(
    account: &UserAccount,
    local: &Local<'_>,
    groups: &HashMap<String, u32>,
    gids: &HashMap<u32, String>,
) -> AccountPlan {
    let name = account.name.clone();
    let conflict = |why: String| AccountPlan {
        name: name.clone(),
        standing: Standing::Conflict(why),
        changes: Vec::new(),
        missing_groups: Vec::new(),
        install_keys: false,
    };
    let by_name = local.users.iter().find(|u| u.name == account.name);
    let by_uid = local.users.iter().find(|u| u.uid == account.uid && u.name != account.name);
    if let Some(existing) = by_name.filter(|u| u.uid != account.uid) {
        return conflict(format!(
            "local account {} has uid {}, the registry gives {}; left unchanged",
            existing.name, existing.uid, account.uid
        ));
    }
    if let Some(other) = by_uid {
        return conflict(format!("uid {} is local account {}'s; left unchanged", account.uid, other.name));
    }
    if let Some(existing) = by_name.filter(|u| u.gid != account.gid) {
        return conflict(format!(
            "local account {} has primary gid {}, the registry gives {}; left unchanged",
            existing.name, existing.gid, account.gid
        ));
    }
    let mut changes = Vec::new();
    if !gids.contains_key(&account.gid) {
        // The primary group, named after the user as useradd would.
        match groups.get(&account.name) {
            Some(other) => {
                return conflict(format!(
                    "group {} has gid {other}, the registry gives gid {}; left unchanged",
                    account.name, account.gid
                ))
            }
            None => changes.push(Change::AddGroup { name: account.name.clone(), gid: account.gid }),
        }
    }
    let (known, missing_groups): (Vec<String>, Vec<String>) =
        account.groups.iter().cloned().partition(|g| groups.contains_key(g));
    let standing = match by_name {
        None => {
            changes.push(Change::AddUser {
                name: name.clone(),
                uid: account.uid,
                gid: account.gid,
                groups: known,
                shell: account.shell.clone(),
            });
            Standing::Missing
        }
        Some(existing) => {
            if *existing.shell != *account.shell {
                changes.push(Change::SetShell { name: name.clone(), shell: account.shell.clone() });
            }
            let to_join: Vec<String> = known
                .into_iter()
                .filter(|g| !local.groups.iter().any(|lg| lg.name == *g && lg.members.contains(&name)))
                .collect();
            if !to_join.is_empty() {
                changes.push(Change::JoinGroups { name: name.clone(), groups: to_join });
            }
            Standing::Present
        }
    };
    let locked = by_name.is_some() && (local.locked)(&name);
    if !account.enabled && !locked {
        changes.push(Change::Lock { name: name.clone() });
    } else if account.enabled && locked {
        changes.push(Change::Unlock { name: name.clone() });
    }
    AccountPlan { name, standing, changes, missing_groups, install_keys: account.enabled }
}

/// Whether a shadow line's account expiry (field 8) is set to a day already
/// past: `usermod -e 1` sets day 1 (2 Jan 1970).
pub fn expired_in_shadow(shadow: &str, name: &str, today: i64) -> bool {
    shadow.lines().any(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        fields.len() >= 8 && fields[0] == name && fields[7].parse::<i64>().is_ok_and(|day| day <= today)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn account(name: &str, uid: u32) -> UserAccount {
        UserAccount {
            name: name.into(),
            uid,
            gid: uid,
            groups: Vec::new(),
            shell: "/bin/bash".into(),
            ssh_keys: Vec::new(),
            enabled: true,
            origin: None,
        }
    }
    fn user(name: &str, uid: u32, gid: u32) -> Account {
        Account { name: name.into(), uid, gid, home: PathBuf::from(format!("/home/{name}")), shell: "/bin/bash".into() }
    }
    fn group(name: &str, gid: u32, members: &[&str]) -> Group {
        Group { name: name.into(), gid, members: members.iter().map(|m| m.to_string()).collect() }
    }
    fn never_locked(_: &str) -> bool {
        false
    }

    #[test]
    fn missing_accounts_get_their_group_and_user_with_exactly_the_registry_ids() {
        let registry = [account("carol", 2001), account("dave", 2002), account("erin", 2003)];
        let users = [user("root", 0, 0)];
        let groups = [group("root", 0, &[])];
        let local = Local { users: &users, groups: &groups, locked: &never_locked };
        let plans = plan(&registry, &local);
        assert_eq!(plans.len(), 3);
        assert_eq!(plans[0].standing, Standing::Missing);
        assert_eq!(
            plans[0].changes,
            [
                Change::AddGroup { name: "carol".into(), gid: 2001 },
                Change::AddUser {
                    name: "carol".into(),
                    uid: 2001,
                    gid: 2001,
                    groups: vec![],
                    shell: "/bin/bash".into()
                },
            ]
        );
        assert!(plans.iter().all(|p| p.install_keys));
    }

    #[test]
    fn same_name_other_uid_and_same_uid_other_name_are_conflicts_with_no_change() {
        let mut disabled = account("bob", 3002);
        disabled.enabled = false;
        let registry = [disabled, account("zed", 1001), account("alice", 1001)];
        let users = [user("alice", 1001, 1001), user("bob", 1002, 1002)];
        let groups = [group("alice", 1001, &[]), group("bob", 1002, &[])];
        let plans = plan(&registry, &Local { users: &users, groups: &groups, locked: &never_locked });
        for conflicted in &plans[..2] {
            assert!(matches!(conflicted.standing, Standing::Conflict(_)), "{conflicted:?}");
            assert!(conflicted.changes.is_empty(), "a conflict is never changed, not even locked");
            assert!(!conflicted.install_keys);
        }
        let Standing::Conflict(why) = &plans[0].standing else { unreachable!() };
        assert!(why.contains("1002") && why.contains("3002"), "{why}");
        let Standing::Conflict(why) = &plans[1].standing else { unreachable!() };
        assert!(why.contains("alice"), "{why}");
        // alice is the same person: present, nothing to do.
        assert_eq!(plans[2].standing, Standing::Present);
        assert!(plans[2].changes.is_empty());
    }

    #[test]
    fn another_primary_gid_or_the_user_s_group_name_on_another_gid_is_a_conflict() {
        let mut carol = account("carol", 2001);
        carol.gid = 2500;
        let users = [user("carol", 2001, 2001)];
        let plans = plan(&[carol], &Local { users: &users, groups: &[], locked: &never_locked });
        assert!(matches!(&plans[0].standing, Standing::Conflict(w) if w.contains("primary gid")), "{plans:?}");
        let groups = [group("dave", 4000, &[])];
        let plans = plan(&[account("dave", 2002)], &Local { users: &[], groups: &groups, locked: &never_locked });
        assert!(matches!(&plans[0].standing, Standing::Conflict(w) if w.contains("4000")), "{plans:?}");
        assert!(plans[0].changes.is_empty());
    }

    #[test]
    fn a_present_user_gets_its_shell_and_missing_memberships_and_unknown_groups_are_named_not_made() {
        let mut carol = account("carol", 2001);
        carol.shell = "/bin/zsh".into();
        carol.groups = vec!["science".into(), "docker".into(), "nowhere".into()];
        let users = [user("carol", 2001, 2001)];
        let groups = [group("carol", 2001, &[]), group("science", 3000, &["carol"]), group("docker", 998, &[])];
        let plans = plan(&[carol], &Local { users: &users, groups: &groups, locked: &never_locked });
        assert_eq!(
            plans[0].changes,
            [
                Change::SetShell { name: "carol".into(), shell: "/bin/zsh".into() },
                Change::JoinGroups { name: "carol".into(), groups: vec!["docker".into()] },
            ]
        );
        assert_eq!(plans[0].missing_groups, ["nowhere"]);
    }

    #[test]
    fn a_disabled_account_is_locked_once_and_unlocked_when_enabled_again() {
        let mut dave = account("dave", 2002);
        dave.enabled = false;
        let users = [user("dave", 2002, 2002)];
        let groups = [group("dave", 2002, &[])];
        let plans = plan(std::slice::from_ref(&dave), &Local { users: &users, groups: &groups, locked: &never_locked });
        assert_eq!(plans[0].changes, [Change::Lock { name: "dave".into() }]);
        assert!(!plans[0].install_keys);
        let locked = |name: &str| name == "dave";
        let plans = plan(std::slice::from_ref(&dave), &Local { users: &users, groups: &groups, locked: &locked });
        assert!(plans[0].changes.is_empty(), "already locked: {plans:?}");
        dave.enabled = true;
        let plans = plan(&[dave], &Local { users: &users, groups: &groups, locked: &locked });
        assert_eq!(plans[0].changes, [Change::Unlock { name: "dave".into() }]);
        // A missing disabled account is made, then locked.
        let mut erin = account("erin", 2003);
        erin.enabled = false;
        let plans = plan(&[erin], &Local { users: &[], groups: &[], locked: &never_locked });
        assert!(matches!(plans[0].changes.last(), Some(Change::Lock { .. })), "{plans:?}");
    }

    #[test]
    fn two_accounts_on_one_new_gid_make_the_group_once() {
        let mut a = account("carol", 2001);
        a.gid = 3000;
        let mut b = account("dave", 2002);
        b.gid = 3000;
        let plans = plan(&[a, b], &Local { users: &[], groups: &[], locked: &never_locked });
        assert!(matches!(plans[0].changes[0], Change::AddGroup { gid: 3000, .. }));
        assert!(!plans[1].changes.iter().any(|c| matches!(c, Change::AddGroup { .. })), "{plans:?}");
    }

    #[test]
    fn shadow_expiry_reads_a_lock_and_ignores_other_accounts_and_no_expiry() {
        let shadow = "dave:!:20790:0:99999:7::1:\ncarol:!:20790:0:99999:7:::\nbad line\n";
        assert!(expired_in_shadow(shadow, "dave", 20790));
        assert!(!expired_in_shadow(shadow, "carol", 20790));
        assert!(!expired_in_shadow(shadow, "erin", 20790));
        assert!(!expired_in_shadow("dave:!:1:0:99999:7::30000:\n", "dave", 20790), "a future expiry is no lock");
    }
}
