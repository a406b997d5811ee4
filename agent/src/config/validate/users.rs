//! `[users]`: account names, ids in range, no name or uid twice, shells
//! and keys that can be written as they are.

use super::checks::{invalid, is_account_name};
use crate::config::error::ConfigError;
use crate::config::source::Sourced;
use crate::config::users::*;
use std::collections::HashMap;

pub(super) fn validate_users(section: Option<Sourced<UsersFragment>>) -> Result<UsersSettings, ConfigError> {
    let Some(section) = section.map(|s| s.value) else { return Ok(UsersSettings::default()) };
    let manage = section.manage.is_some_and(|m| m.value);
    let trust_share = section.trust_share.is_some_and(|t| t.value);
    let mut accounts = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut uids: HashMap<u32, (String, usize)> = HashMap::new();
    for entry in section.accounts.map(|a| a.value).unwrap_or_default() {
        let line = entry.origin.line;
        let origin = entry.origin.clone();
        let entry = entry.value;
        let name = &entry.name;
        if !is_account_name(&name.value) {
            return Err(invalid(
                &name.origin,
                "users.accounts.name",
                format!(
                    "{:?} is not a valid user name (lower-case letters, digits, `_`, `-`, `.`; at most 32)",
                    name.value
                ),
            ));
        }
        if let Some(first) = names.insert(name.value.clone(), line) {
            return Err(invalid(
                &name.origin,
                "users.accounts.name",
                format!("{:?} is listed twice (first at line {first})", name.value),
            ));
        }
        let uid = id_in_range("users.accounts.uid", &entry.uid)?;
        if let Some((other, first)) = uids.insert(uid, (name.value.clone(), line)) {
            return Err(invalid(
                &entry.uid.origin,
                "users.accounts.uid",
                format!("{uid} is also {other:?}'s (line {first}); two names on one uid share every file"),
            ));
        }
        let gid = match &entry.gid {
            Some(gid) => id_in_range("users.accounts.gid", gid)?,
            None => uid,
        };
        let groups = entry.groups.map(|g| (g.value, g.origin)).unwrap_or_else(|| (Vec::new(), name.origin.clone()));
        for group in &groups.0 {
            if !is_account_name(group) {
                return Err(invalid(
                    &groups.1,
                    "users.accounts.groups",
                    format!("{group:?} is not a valid group name"),
                ));
            }
        }
        let shell = match entry.shell {
            Some(shell) if !shell.value.starts_with('/') || shell.value.contains(['\n', ':']) => {
                return Err(invalid(
                    &shell.origin,
                    "users.accounts.shell",
                    format!("{:?} must be an absolute path (no `:`)", shell.value),
                ))
            }
            Some(shell) => shell.value,
            None => DEFAULT_SHELL.to_string(),
        };
        let ssh_keys = match entry.ssh_keys {
            Some(keys) => {
                for key in &keys.value {
                    if key.trim().is_empty() || key.contains(['\n', '\r', '\0']) {
                        return Err(invalid(
                            &keys.origin,
                            "users.accounts.ssh_keys",
                            "each key is one non-empty authorized_keys line",
                        ));
                    }
                }
                keys.value
            }
            None => Vec::new(),
        };
        accounts.push(UserAccount {
            name: name.value.clone(),
            uid,
            gid,
            groups: groups.0,
            shell,
            ssh_keys,
            enabled: entry.enabled.is_none_or(|e| e.value),
            origin: Some(origin),
        });
    }
    Ok(UsersSettings { manage, trust_share, accounts })
}

fn id_in_range(key: &str, id: &Sourced<i64>) -> Result<u32, ConfigError> {
    match u32::try_from(id.value) {
        Ok(value) if (MIN_ID..=MAX_ID).contains(&value) => Ok(value),
        _ => Err(invalid(
            &id.origin,
            key,
            format!(
                "{} is outside {MIN_ID}..={MAX_ID} (below are system accounts, above directory services' ranges)",
                id.value
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::error::ConfigError;
    use crate::config::load_str;
    use std::path::Path;

    fn invalid(text: &str) -> (usize, String, String) {
        match load_str(Path::new("/etc/pool-agent/config.toml"), text) {
            Err(ConfigError::Invalid { line, key, message, .. }) => (line, key, message),
            other => panic!("expected an invalid-key error, got {other:?}"),
        }
    }

    #[test]
    fn accounts_read_with_defaults_and_nothing_managed_unless_asked() {
        let text = "[[users.accounts]]\nname = \"carol\"\nuid = 2001\nssh_keys = [\"ssh-ed25519 AAAA carol\"]\n\n\
                    [[users.accounts]]\nname = \"dave\"\nuid = 2002\ngid = 3000\ngroups = [\"science\"]\nshell = \"/bin/zsh\"\nenabled = false\n";
        let settings = load_str(Path::new("c.toml"), text).unwrap();
        assert!(!settings.users.manage, "off by default");
        let [carol, dave] = &settings.users.accounts[..] else { panic!("{:?}", settings.users) };
        assert_eq!((carol.uid, carol.gid, carol.shell.as_str(), carol.enabled), (2001, 2001, "/bin/bash", true));
        assert_eq!(carol.ssh_keys, ["ssh-ed25519 AAAA carol"]);
        assert_eq!((dave.gid, dave.groups.clone(), dave.enabled), (3000, vec!["science".to_string()], false));
        let managed = load_str(Path::new("c.toml"), "[users]\nmanage = true\n").unwrap();
        assert!(managed.users.manage && managed.users.accounts.is_empty());
    }

    #[test]
    fn a_bad_name_an_id_out_of_range_and_duplicates_name_their_line_and_key() {
        let (line, key, message) = invalid("[[users.accounts]]\nname = \"Carol!\"\nuid = 2001\n");
        assert_eq!((line, key.as_str()), (2, "users.accounts.name"), "{message}");
        let (line, key, message) = invalid("[[users.accounts]]\nname = \"carol\"\nuid = 0\n");
        assert_eq!((line, key.as_str()), (3, "users.accounts.uid"), "{message}");
        assert!(message.contains("1000..=60000"), "{message}");
        let (_, key, _) = invalid("[[users.accounts]]\nname = \"carol\"\nuid = 2001\ngid = 70000\n");
        assert_eq!(key, "users.accounts.gid");
        let (_, key, _) = invalid("[[users.accounts]]\nname = \"carol\"\nuid = -5\n");
        assert_eq!(key, "users.accounts.uid");
        let twice =
            "[[users.accounts]]\nname = \"carol\"\nuid = 2001\n[[users.accounts]]\nname = \"carol\"\nuid = 2002\n";
        let (line, key, message) = invalid(twice);
        assert_eq!((line, key.as_str()), (5, "users.accounts.name"));
        assert!(message.contains("line 1") || message.contains("twice"), "{message}");
        let same_uid =
            "[[users.accounts]]\nname = \"carol\"\nuid = 2001\n[[users.accounts]]\nname = \"dave\"\nuid = 2001\n";
        let (line, key, message) = invalid(same_uid);
        assert_eq!((line, key.as_str()), (6, "users.accounts.uid"));
        assert!(message.contains("carol"), "{message}");
    }

    #[test]
    fn a_key_with_a_newline_a_relative_shell_and_an_unknown_key_are_refused() {
        let (_, key, _) = invalid("[[users.accounts]]\nname = \"carol\"\nuid = 2001\nssh_keys = [\"a\\nb\"]\n");
        assert_eq!(key, "users.accounts.ssh_keys");
        let (_, key, _) = invalid("[[users.accounts]]\nname = \"carol\"\nuid = 2001\nshell = \"bash\"\n");
        assert_eq!(key, "users.accounts.shell");
        let err = load_str(Path::new("c.toml"), "[[users.accounts]]\nname = \"carol\"\nuid = 2001\nhome = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("home"), "{err}");
    }
}
