//! Local accounts from the passwd and group files (under the sandbox root when
//! there is one). The agent reads the files rather than NSS so that `--root`
//! sandboxes see only their own users.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
}

impl Account {
    /// A human who can log in: not a system account, not a nologin shell.
    pub fn is_login_user(&self, min_uid: u32) -> bool {
        const NO_LOGIN: &[&str] = &["/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false"];
        self.uid >= min_uid && self.uid != 65534 && !NO_LOGIN.contains(&self.shell.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

pub fn parse_passwd(text: &str) -> Vec<Account> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() != 7 || fields[0].is_empty() {
                return None;
            }
            Some(Account {
                name: fields[0].to_string(),
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
                home: PathBuf::from(fields[5]),
                shell: fields[6].to_string(),
            })
        })
        .collect()
}

pub fn parse_group(text: &str) -> Vec<Group> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() != 4 || fields[0].is_empty() {
                return None;
            }
            Some(Group {
                name: fields[0].to_string(),
                gid: fields[2].parse().ok()?,
                members: fields[3].split(',').filter(|m| !m.is_empty()).map(str::to_string).collect(),
            })
        })
        .collect()
}

pub fn read_passwd(path: &Path) -> io::Result<Vec<Account>> {
    Ok(parse_passwd(&std::fs::read_to_string(path)?))
}

pub fn read_group(path: &Path) -> io::Result<Vec<Group>> {
    Ok(parse_group(&std::fs::read_to_string(path)?))
}

/// Whether a caller may change the VM: root, or a member of the admin group
/// (by primary gid or by the group's member list).
pub fn is_admin(uid: u32, gid: u32, admin_group: &str, accounts: &[Account], groups: &[Group]) -> bool {
    if uid == 0 {
        return true;
    }
    let Some(group) = groups.iter().find(|g| g.name == admin_group) else {
        return false;
    };
    if gid == group.gid {
        return true;
    }
    accounts.iter().filter(|a| a.uid == uid).any(|a| a.gid == group.gid || group.members.iter().any(|m| m == &a.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n# comment\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nalice:x:1001:1001::/home/alice:/bin/bash\nbob:x:1002:1002::/home/bob:/bin/bash\nsvc:x:1003:1003::/srv:/usr/sbin/nologin\nbroken line\n";
    const GROUP: &str = "root:x:0:\npool-agent-admin:x:990:alice\nbob:x:1002:\n";

    #[test]
    fn parses_accounts_and_skips_junk() {
        let accounts = parse_passwd(PASSWD);
        assert_eq!(accounts.len(), 5);
        assert_eq!(accounts[2].home, PathBuf::from("/home/alice"));
        let logins: Vec<_> = accounts.iter().filter(|a| a.is_login_user(1000)).map(|a| a.name.as_str()).collect();
        assert_eq!(logins, ["alice", "bob"]);
    }

    #[test]
    fn admin_is_root_or_a_group_member() {
        let accounts = parse_passwd(PASSWD);
        let groups = parse_group(GROUP);
        assert!(is_admin(0, 0, "pool-agent-admin", &accounts, &groups));
        assert!(is_admin(1001, 1001, "pool-agent-admin", &accounts, &groups));
        assert!(!is_admin(1002, 1002, "pool-agent-admin", &accounts, &groups));
        assert!(is_admin(1002, 990, "pool-agent-admin", &accounts, &groups), "primary gid counts");
        assert!(!is_admin(4242, 4242, "pool-agent-admin", &accounts, &groups), "unknown uid is not admin");
        assert!(!is_admin(1001, 1001, "no-such-group", &accounts, &groups));
    }
}
