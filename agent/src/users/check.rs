//! `--check-config` for `[users]`: the registry planned against this
//! system's accounts as the agent would plan it at start, so a conflict or a
//! shell this image lacks fails the check instead of showing up later as a
//! degraded VM. With `manage = false` the agent changes nothing: the same
//! findings are warnings.

use super::plan::{self, Change, Standing};
use crate::config::ConfigError;
use crate::core::capability::{SystemCheckInput, SystemFinding};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub fn check(input: &SystemCheckInput<'_>) -> Vec<SystemFinding> {
    let users = &input.settings.users;
    if users.accounts.is_empty() {
        return Vec::new();
    }
    let snapshot = input.accounts.snapshot();
    let never_locked = |_: &str| false;
    let local = plan::Local { users: &snapshot.users, groups: &snapshot.groups, locked: &never_locked };
    let plans = plan::plan(&users.accounts, &local);
    let mut findings = Vec::new();
    for (account, plan) in users.accounts.iter().zip(&plans) {
        let at = |message: String| match &account.origin {
            Some(origin) => ConfigError::at(origin, "users.accounts", message),
            None => input.settings.origins.error(input.main_file, "users.accounts", message),
        };
        let finding = |message: String| match users.manage {
            true => SystemFinding::Error(at(message)),
            false => SystemFinding::Warning(
                at(format!("{message} (users.manage is off: nothing would be changed)")).to_string(),
            ),
        };
        if let Standing::Conflict(why) = &plan.standing {
            findings.push(finding(format!(
                "{}: {why}: the agent would leave this account alone on this VM; give the registry ids no local account holds, or change the local one",
                account.name
            )));
            continue;
        }
        let uses_shell = plan.changes.iter().any(|c| match c {
            Change::AddUser { name, .. } | Change::SetShell { name, .. } => *name == account.name,
            _ => false,
        });
        if uses_shell && !is_executable(&input.paths.resolve(Path::new(&account.shell))) {
            findings.push(finding(format!(
                "{}: shell {} is not an executable file on this system: install it in the image, or name another",
                account.name, account.shell
            )));
        }
        if !plan.missing_groups.is_empty() {
            findings.push(SystemFinding::Warning(
                at(format!(
                    "{}: group(s) {} not on this system: the registry names groups, never gids, so make them with the same gid on every VM",
                    account.name,
                    plan.missing_groups.join(", ")
                ))
                .to_string(),
            ));
        }
    }
    findings
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::accounts::AccountsView;
    use crate::core::paths::SystemPaths;

    const MAIN: &str = "/etc/pool-agent/config.toml";

    fn findings(config: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/bash"), "").unwrap();
        std::fs::set_permissions(dir.path().join("bin/bash"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/bash\ncarol:x:1500:1500::/home/carol:/bin/bash\nold:x:2002:2002::/home/old:/bin/bash\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\ncarol:x:1500:\nold:x:2002:\n").unwrap();
        let paths = SystemPaths::under(dir.path());
        let accounts = AccountsView::for_paths(&paths);
        let settings = crate::config::load_str(Path::new(MAIN), config).unwrap();
        let input = SystemCheckInput {
            settings: &settings,
            main_file: Path::new(MAIN),
            paths: &paths,
            accounts: &accounts,
            euid: 0,
        };
        check(&input)
            .into_iter()
            .map(|f| match f {
                SystemFinding::Error(e) => format!("error: {e}"),
                SystemFinding::Warning(w) => format!("warning: {w}"),
                SystemFinding::NeedsRoot(n) => format!("needs root: {n}"),
            })
            .collect()
    }

    #[test]
    fn conflicts_and_a_missing_shell_fail_the_check_at_the_account_s_line_and_missing_groups_warn() {
        let config = "[users]\nmanage = true\n\n[[users.accounts]]\nname = \"carol\"\nuid = 2001\n\n\
                      [[users.accounts]]\nname = \"dave\"\nuid = 2002\n\n\
                      [[users.accounts]]\nname = \"erin\"\nuid = 2003\nshell = \"/bin/zsh\"\ngroups = [\"science\"]\n\n\
                      [[users.accounts]]\nname = \"frank\"\nuid = 2004\n";
        let found = findings(config);
        let about = |who: &str| found.iter().filter(|f| f.contains(&format!("{who}: "))).cloned().collect::<Vec<_>>();
        let carol = about("carol");
        assert!(carol.len() == 1 && carol[0].starts_with("error: ") && carol[0].contains("config.toml:4"), "{carol:?}");
        assert!(carol[0].contains("local account carol has uid 1500, the registry gives 2001"), "{carol:?}");
        let dave = about("dave");
        assert!(
            dave.len() == 1 && dave[0].contains("config.toml:8") && dave[0].contains("uid 2002 is local account old's")
        );
        let erin = about("erin");
        assert!(
            erin.iter().any(|f| f.starts_with("error: ") && f.contains("shell /bin/zsh is not an executable")),
            "{erin:?}"
        );
        assert!(erin.iter().any(|f| f.starts_with("warning: ") && f.contains("group(s) science")), "{erin:?}");
        // A new account with a shell the image has: nothing to say.
        assert!(about("frank").is_empty(), "{found:?}");
    }

    #[test]
    fn with_manage_off_the_same_findings_are_warnings_and_no_registry_means_nothing_to_check() {
        let found = findings("[[users.accounts]]\nname = \"carol\"\nuid = 2001\n");
        assert!(
            found.len() == 1 && found[0].starts_with("warning: ") && found[0].contains("users.manage is off"),
            "{found:?}"
        );
        assert!(findings("[users]\nmanage = true\n").is_empty());
    }
}
