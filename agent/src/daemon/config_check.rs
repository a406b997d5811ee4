//! `--check-config`: every error of every file, then what the config names
//! on this system (the key file, users and groups, scripts) for each part
//! whose values are valid, so a config that would fail at run time fails
//! the check instead. Without root it says what it could not check.

use crate::config::{self, ConfigError, Settings, ShareSource, Unsure};
use crate::core::accounts::AccountsView;
use crate::core::capability::{SystemCheckInput, SystemFinding};
use crate::core::credentials::{self, KeyError};
use crate::core::paths::SystemPaths;
use crate::daemon::registry;
use std::path::Path;
use std::process::ExitCode;

/// What the check found: errors fail it; warnings are keys left at a default
/// that this system does not have (an image without `azureuser`, say).
#[derive(Debug, Default)]
pub struct SystemCheck {
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<String>,
    /// Checks this uid could not make: they need root.
    pub needs_root: Vec<String>,
}

/// `pool-agentd --check-config`: prints the effective config and exits 0, or
/// every error (exit 2); warnings and what was not checked go to stderr.
pub fn run(config_file: &Path, user_data: Option<&str>, paths: &SystemPaths) -> ExitCode {
    let checked = config::check_with(config_file, user_data);
    let mut errors = checked.errors;
    let mut warnings = Vec::new();
    let mut needs_root = Vec::new();
    if let Some(settings) = &checked.settings {
        warnings.extend(settings.skipped.iter().cloned());
        let accounts = AccountsView::for_paths(paths);
        let check = check_against_system(settings, &checked.unsure, config_file, paths, &accounts);
        errors.extend(check.errors);
        warnings.extend(check.warnings);
        needs_root = check.needs_root;
        // In the order an admin reads the files: file by file, line by line.
        let rank = |error: &ConfigError| settings.sources.iter().position(|f| f == error.file()).unwrap_or(usize::MAX);
        errors.sort_by_key(|error| (rank(error), error.line()));
    }
    for warning in &warnings {
        eprintln!("pool-agentd: warning: {warning}");
    }
    if checked.unsure.incomplete {
        eprintln!(
            "pool-agentd: not checked: what the config names on this system (a file above could not be read whole)"
        );
    } else if !checked.unsure.is_empty() {
        // Only the sections that name something on the system: the others have nothing to check.
        let named = ["instance", "share", "setup", "api", "users"];
        let parts: Vec<String> =
            checked.unsure.sections().filter(|s| named.contains(s)).map(|s| format!("[{s}]")).collect();
        if !parts.is_empty() {
            eprintln!(
                "pool-agentd: not checked: what {} name on this system, until the errors in them are fixed",
                parts.join(", ")
            );
        }
    }
    for unchecked in &needs_root {
        eprintln!("pool-agentd: not checked: {unchecked}");
    }
    if !needs_root.is_empty() {
        eprintln!(
            "pool-agentd: {} check(s) need root; run `sudo pool-agentd --check-config` for all of them",
            needs_root.len()
        );
    }
    match (&checked.settings, errors.is_empty()) {
        (Some(settings), true) => {
            print!("{}", config::render_effective_toml(settings));
            ExitCode::SUCCESS
        }
        _ => {
            for error in &errors {
                eprintln!("pool-agentd: invalid config: {error}");
            }
            ExitCode::from(2)
        }
    }
}

/// scripts/plan.rs refuses a script whose user the agent cannot become.
/// The daemon that runs a config runs as root: for a check run without
/// root that is a check it could not make, not an error of the config.
const CANNOT_BECOME: &str = "cannot run scripts as";

/// What the settings name on this system. `unsure`: the parts whose values
/// are not all valid, left out (their errors are already named).
pub fn check_against_system(
    settings: &Settings,
    unsure: &Unsure,
    main_file: &Path,
    paths: &SystemPaths,
    accounts: &AccountsView,
) -> SystemCheck {
    let origins = &settings.origins;
    // (key, whether the config sets it, what is wrong)
    let mut found: Vec<(&str, bool, String)> = Vec::new();
    let is_set = |key: &str| origins.is_set(key);

    let euid = nix::unistd::geteuid().as_raw();
    let mut check = SystemCheck::default();
    if let Some(share) = settings.share.as_ref().filter(|_| !unsure.section("share")) {
        if let ShareSource::AzureFiles { key_file: Some(key_file), uid, gid, .. } = &share.source {
            let expected_owner = if paths.is_sandbox() { euid } else { 0 };
            match credentials::read_key_file(&paths.resolve(key_file), expected_owner) {
                Err(KeyError::Unreadable { source, .. })
                    if euid != 0 && source.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    check
                        .needs_root
                        .push(format!("share.key_file: {} is root's alone; reading it needs root", key_file.display()));
                }
                // The key is needed whether the path was written or defaulted.
                Err(err) => found.push(("share.key_file", true, with_fix(&err))),
                Ok(_) => {}
            }
            if uid.parse::<u32>().is_err() && accounts.user_by_name(uid).is_none() {
                found.push(("share.uid", true, format!("no user `{uid}` on this system (checked through NSS)")));
            }
            if gid.parse::<u32>().is_err() && accounts.group_by_name(gid).is_none() {
                found.push(("share.gid", true, format!("no group `{gid}` on this system (checked through NSS)")));
            }
        }
    }
    let group = &settings.api.admin_group;
    if !unsure.section("api") && accounts.group_by_name(group).is_none() {
        found.push((
            "api.admin_group",
            is_set("api.admin_group"),
            format!("no group `{group}` on this system: only root could change the VM (groupadd it, or name another)"),
        ));
    }
    let user = &settings.instance.local_user;
    if !unsure.section("instance") && accounts.user_by_name(user).is_none() {
        found.push((
            "instance.local_user",
            is_set("instance.local_user"),
            format!("no user `{user}` on this system: setup scripts run as this user (useradd it, or name another)"),
        ));
    }
    for (key, set, message) in found {
        let error = origins.error(main_file, key, message);
        if set {
            check.errors.push(error);
        } else {
            check.warnings.push(error.to_string());
        }
    }
    let input = SystemCheckInput { settings, main_file, paths, accounts, euid };
    for capability in registry::capabilities(&crate::core::clock::system()) {
        if unsure.section(capability.config_section()) {
            continue;
        }
        for finding in capability.check_system(&input) {
            match finding {
                SystemFinding::Error(error) if euid != 0 && error.to_string().contains(CANNOT_BECOME) => {
                    check
                        .needs_root
                        .push(format!("{error} (the daemon runs as root: only a check run as root can tell)"));
                }
                SystemFinding::Error(error) => check.errors.push(error),
                SystemFinding::NeedsRoot(text) => check.needs_root.push(text),
                SystemFinding::Warning(text) => check.warnings.push(text),
            }
        }
    }
    // In the order an admin reads the files: file by file, line by line.
    let file_rank = |error: &ConfigError| settings.sources.iter().position(|f| f == error.file()).unwrap_or(usize::MAX);
    check.errors.sort_by_key(|error| (file_rank(error), error.line()));
    check
}

/// A key file error and what to do about it, where the error does not say.
fn with_fix(error: &KeyError) -> String {
    let fix = match error {
        KeyError::Unreadable { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            "; put the storage account's key there (one line, owned by root, mode 0600), or set share.key_source = \"key-vault\" or \"storage-account\" to fetch it with the VM's identity"
        }
        KeyError::Empty { .. } | KeyError::Malformed { .. } => {
            "; write the storage account's key into it, on one line and nothing else"
        }
        KeyError::NotAFile { .. } => "; point share.key_file at the key file itself",
        _ => "",
    };
    format!("{error}{fix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sandbox() -> (tempfile::TempDir, SystemPaths, AccountsView) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/pool-agent/secrets")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/bash\nazureuser:x:1000:1000::/home/azureuser:/bin/bash\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nusers:x:100:\npool-agent-admin:x:990:\n").unwrap();
        let paths = SystemPaths::under(dir.path());
        let accounts = AccountsView::for_paths(&paths);
        (dir, paths, accounts)
    }

    fn settings(text: &str) -> Settings {
        crate::config::load_str(Path::new("/etc/pool-agent/config.toml"), text).unwrap()
    }

    fn check_against_system_all(
        settings: &Settings,
        main: &Path,
        paths: &SystemPaths,
        accounts: &AccountsView,
    ) -> SystemCheck {
        check_against_system(settings, &Unsure::default(), main, paths, accounts)
    }

    const AZURE: &str = "[share]\nkind = \"azure-files\"\naccount = \"acct\"\nshare = \"notebooks\"\n";

    #[test]
    fn a_missing_or_open_key_file_fails_the_check_naming_the_key() {
        let (dir, paths, accounts) = sandbox();
        let main = Path::new("/etc/pool-agent/config.toml");
        let check = check_against_system_all(&settings(AZURE), main, &paths, &accounts);
        assert_eq!(check.errors.len(), 1, "{:?}", check.errors);
        let text = check.errors[0].to_string();
        assert!(text.contains("share.key_file") && text.contains("storage-key"), "{text}");
        assert!(text.contains("put the storage account's key there (one line, owned by root, mode 0600)"), "{text}");

        let key = dir.path().join("etc/pool-agent/secrets/storage-key");
        std::fs::write(&key, "k3y\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let check = check_against_system_all(&settings(AZURE), main, &paths, &accounts);
        let text = check.errors[0].to_string();
        assert!(text.contains("chmod 600") && !text.contains("k3y"), "{text}");

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let check = check_against_system_all(&settings(AZURE), main, &paths, &accounts);
        assert!(check.errors.is_empty(), "{:?}", check.errors);
    }

    #[test]
    fn a_section_with_a_wrong_value_is_left_out_of_the_system_checks_and_the_others_are_checked() {
        let (dir, paths, accounts) = sandbox();
        // No azureuser: the default that stands in for the wrong user would be missing too.
        std::fs::write(paths.passwd(), "root:x:0:0::/root:/bin/bash\n").unwrap();
        accounts.invalidate();
        let main = dir.path().join("etc/pool-agent/config.toml");
        std::fs::write(&main, "[instance]\nlocal_user = \"Not A Name\"\n[api]\nadmin_group = \"wheel\"\n").unwrap();
        let checked = crate::config::check_with(&main, None);
        assert_eq!(checked.errors.len(), 1, "{:?}", checked.errors);
        let settings = checked.settings.unwrap();
        let check = check_against_system(&settings, &checked.unsure, &main, &paths, &accounts);
        let errors: Vec<String> = check.errors.iter().map(|e| e.to_string()).collect();
        // [api] is valid and checked; [instance] is not checked with the default standing in for its wrong user.
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("config.toml:4: api.admin_group: no group `wheel`"), "{errors:?}");
        assert!(!check.warnings.iter().any(|w| w.contains("local_user")), "{:?}", check.warnings);
    }

    #[test]
    fn unknown_users_and_groups_fail_when_set_and_warn_when_defaulted() {
        let (_dir, paths, accounts) = sandbox();
        let main = Path::new("/etc/pool-agent/config.toml");
        let text = "[instance]\nlocal_user = \"dsadmin\"\n[api]\nadmin_group = \"wheel\"\n";
        let check = check_against_system_all(&settings(text), main, &paths, &accounts);
        let errors: Vec<String> = check.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors.iter().any(|e| e.contains("config.toml:2: instance.local_user: no user `dsadmin`")),
            "{errors:?}"
        );
        assert!(errors.iter().any(|e| e.contains("config.toml:4: api.admin_group: no group `wheel`")), "{errors:?}");

        std::fs::write(paths.passwd(), "root:x:0:0::/root:/bin/bash\n").unwrap();
        accounts.invalidate();
        let check = check_against_system_all(&settings(""), main, &paths, &accounts);
        assert!(check.errors.is_empty(), "{:?}", check.errors);
        assert!(
            check.warnings.iter().any(|w| w.contains("azureuser") && w.contains("default")),
            "{:?}",
            check.warnings
        );

        let text = format!("{AZURE}uid = \"nobody-here\"\ngid = \"nogroup-here\"\n");
        let check = check_against_system_all(&settings(&text), main, &paths, &accounts);
        let errors: Vec<String> = check.errors.iter().map(|e| e.to_string()).collect();
        assert!(errors.iter().any(|e| e.contains(":5: share.uid: no user `nobody-here`")), "{errors:?}");
        assert!(errors.iter().any(|e| e.contains(":6: share.gid: no group `nogroup-here`")), "{errors:?}");
    }
}
