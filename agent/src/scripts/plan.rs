//! Which scripts run, as whom, and whether they may: the scripts in
//! `setup.dir` and the `[[setup.scripts]]` entries, in name order, each
//! checked before it runs. Blocking (stats and reads files): call it off the
//! async workers.

use crate::config::{RunWhen, ScriptSettings, Settings, DEFAULT_SCRIPT_TIMEOUT};
use crate::core::accounts::{Account, AccountsView};
use crate::core::paths::SystemPaths;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Larger script files are refused rather than hashed.
const MAX_SCRIPT_BYTES: u64 = 16 * 1024 * 1024;
/// PATH as login(1) sets it on Debian (login.defs ENV_SUPATH / ENV_PATH).
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games";

/// One script as it will run, or why it will not.
#[derive(Debug, Clone)]
pub struct Planned {
    pub script: ScriptSettings,
    /// Where the agent reaches the file (under `--root` in the sandbox).
    pub file: PathBuf,
    pub verdict: Result<Vetted, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vetted {
    pub account: Account,
    /// Primary group first, then every supplementary group.
    pub groups: Vec<u32>,
    pub content_hash: String,
    pub workdir: PathBuf,
    /// The file that was checked, every link resolved: what runs. Its
    /// directories were checked, so only trusted users could swap it.
    pub program: PathBuf,
}

/// What the agent itself may do: root switches to anyone; another uid
/// (tests as nobody) runs scripts only as itself.
#[derive(Debug, Clone, Copy)]
pub struct Runner {
    pub euid: u32,
}

/// Every script, in name order: the directory's executables, with explicit
/// entries replacing a directory script of the same name or file.
pub fn scripts(settings: &Settings, paths: &SystemPaths) -> Vec<(ScriptSettings, Result<(), String>)> {
    let setup = &settings.setup;
    let mut by_name: BTreeMap<String, (ScriptSettings, Result<(), String>)> = BTreeMap::new();
    let explicit_files: Vec<PathBuf> = setup.scripts.iter().map(|s| s.path.clone()).collect();
    let dir = paths.resolve(&setup.dir);
    if let Ok(entries) = fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if skipped_name(&name) {
                continue;
            }
            let system_path = setup.dir.join(&name);
            if explicit_files.contains(&system_path) {
                continue;
            }
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            let found = if meta.file_type().is_symlink() {
                Err("is a symlink; put the script itself in the directory".to_string())
            } else if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                // Like run-parts: only executable regular files are scripts.
                continue;
            } else if !name_ok(&name) {
                Err("its name may hold only letters, digits, '.', '_' and '-'".to_string())
            } else {
                Ok(())
            };
            let script = ScriptSettings {
                name: name.clone(),
                path: system_path,
                run_as: settings.instance.local_user.clone(),
                when: RunWhen::Once,
                args: Vec::new(),
                workdir: None,
                timeout: DEFAULT_SCRIPT_TIMEOUT,
                env: BTreeMap::new(),
                blocking: true,
                entry: None,
            };
            by_name.insert(name, (script, found));
        }
    }
    for script in &setup.scripts {
        by_name.insert(script.name.clone(), (script.clone(), Ok(())));
    }
    by_name.into_values().collect()
}

fn skipped_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || [".dpkg-old", ".dpkg-new", ".dpkg-dist", ".dpkg-tmp", ".ucf-old", ".ucf-new", ".disabled"]
            .iter()
            .any(|suffix| name.ends_with(suffix))
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Checks one script and hashes what makes it the same script.
/// `share_root`: where the share is mounted (resolved), if one is configured.
pub fn vet(
    script: &ScriptSettings,
    paths: &SystemPaths,
    accounts: &AccountsView,
    share_root: Option<&Path>,
    trust_share: bool,
    runner: Runner,
) -> Result<Vetted, String> {
    let file = paths.resolve(&script.path);
    let real = fs::canonicalize(&file).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound if share_root.is_some_and(|root| file.starts_with(root)) => {
            format!("{} is not there (the share is not mounted?)", script.path.display())
        }
        _ => format!("{}: {}", script.path.display(), crate::config::io_text(&err)),
    })?;
    let meta =
        fs::metadata(&real).map_err(|err| format!("{}: {}", script.path.display(), crate::config::io_text(&err)))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", script.path.display()));
    }
    if meta.mode() & 0o111 == 0 {
        return Err(format!("{} is not executable (chmod +x)", script.path.display()));
    }
    if meta.len() > MAX_SCRIPT_BYTES {
        return Err(format!("{} is larger than 16 MiB", script.path.display()));
    }
    check_interpreter_line(&real).map_err(|why| format!("{} {why}", script.path.display()))?;
    let account = match accounts.user_by_name(&script.run_as) {
        Some(account) => account,
        None if script.run_as == "root" => {
            Account { name: "root".into(), uid: 0, gid: 0, home: "/root".into(), shell: "/bin/sh".into() }
        }
        None => return Err(format!("run_as: no user {:?} on this VM", script.run_as)),
    };
    // Root is a uid, not a name: an alias of uid 0 gets every root check.
    let as_root = account.uid == 0;
    let share = share_root.filter(|root| real.starts_with(root) || file.starts_with(root));
    if share.is_some() && !trust_share {
        return Err(format!(
            "{} is on the share, and scripts there run only with setup.trust_share = true: every user of the pool, on every VM, and anyone with the storage key can change them",
            script.path.display()
        ));
    }
    if as_root && share.is_some() {
        return Err("a script stored on the share runs only as a non-root user (anyone who can write the share could change it)".into());
    }
    // Who may change the script decides who it may run as: root, the user
    // it runs as (who gains nothing), or the agent itself in a sandbox.
    let trusted = |uid: u32| uid == 0 || uid == runner.euid || uid == account.uid;
    let who = if as_root { "root".to_string() } else { format!("root or {}", account.name) };
    if share.is_none() {
        if !trusted(meta.uid()) {
            return Err(format!(
                "{} belongs to uid {}; a script run as {} must belong to {who}",
                script.path.display(),
                meta.uid(),
                account.name
            ));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(format!(
                "{} is writable by its group or others (mode {:o}); a setup script must not be (chmod go-w)",
                script.path.display(),
                meta.mode() & 0o7777
            ));
        }
    }
    // The directories it is reached through (on a trusted share, those above it).
    check_directories(&real, paths.root(), share, trusted, &who)?;
    if runner.euid != 0 && account.uid != runner.euid && !(as_root && paths.is_sandbox()) {
        return Err(format!(
            "the agent runs as uid {} and cannot run scripts as {} (uid {})",
            runner.euid, account.name, account.uid
        ));
    }
    let groups = accounts.user_with_groups(account.uid).map(|(_, gids)| gids).unwrap_or_else(|| vec![account.gid]);
    let content_hash = content_hash(&real, script)?;
    let workdir = match &script.workdir {
        Some(dir) => paths.resolve(dir),
        None => file.parent().map(Path::to_path_buf).unwrap_or_else(|| paths.resolve("/")),
    };
    Ok(Vetted { account, groups, content_hash, workdir, program: real })
}

/// A `#!` line ending in `\r` names an interpreter that does not exist
/// (`/bin/bash\r`): the run would fail with a puzzling "No such file".
fn check_interpreter_line(real: &Path) -> Result<(), String> {
    let mut first = [0u8; 256];
    let read = fs::File::open(real)
        .and_then(|mut f| f.read(&mut first))
        .map_err(|err| format!(": {}", crate::config::io_text(&err)))?;
    let line = first[..read].split(|b| *b == b'\n').next().unwrap_or_default();
    if line.starts_with(b"#!") && line.ends_with(b"\r") {
        return Err("has Windows line endings (its #! line ends in \\r): run dos2unix on it".to_string());
    }
    Ok(())
}

/// Every directory from the script up to `/` (up to the sandbox's root)
/// belongs to a trusted uid and is not writable by group or others: else
/// whoever can write there could swap the script for their own. Directories
/// inside a trusted share are the share's business (its modes are the mount's).
fn check_directories(
    real: &Path,
    stop_at: &Path,
    share: Option<&Path>,
    trusted: impl Fn(u32) -> bool,
    who: &str,
) -> Result<(), String> {
    let mut dir = real.parent();
    while let Some(current) = dir {
        let inside_share = share.is_some_and(|root| current.starts_with(root));
        if !inside_share {
            let meta = fs::metadata(current)
                .map_err(|err| format!("{}: {}", current.display(), crate::config::io_text(&err)))?;
            if !trusted(meta.uid()) {
                return Err(format!("its directory {} belongs to uid {}, not {who}", current.display(), meta.uid()));
            }
            if meta.mode() & 0o022 != 0 {
                return Err(format!(
                    "its directory {} is writable by group or others (mode {:o})",
                    current.display(),
                    meta.mode() & 0o7777
                ));
            }
        }
        if current == stop_at || current == Path::new("/") {
            break;
        }
        dir = current.parent();
    }
    Ok(())
}

/// sha256 over the file, the arguments and the user: the identity of a
/// `once` run.
fn content_hash(real: &Path, script: &ScriptSettings) -> Result<String, String> {
    let mut file =
        fs::File::open(real).map_err(|err| format!("{}: {}", script.path.display(), crate::config::io_text(&err)))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(|err| format!("{}: {}", script.path.display(), crate::config::io_text(&err)))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    for arg in &script.args {
        hasher.update(b"\0arg\0");
        hasher.update(arg.as_bytes());
    }
    hasher.update(b"\0run_as\0");
    hasher.update(script.run_as.as_bytes());
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// What the script's environment holds, and nothing of the agent's own.
pub struct EnvFacts<'a> {
    pub instance: &'a str,
    pub share_path: Option<&'a Path>,
    pub settings: &'a Settings,
    pub lang: String,
}

/// A login-like environment for `account`, the pool's names, the
/// compute-instance names scripts written for Azure ML expect, then the
/// script's own `env`.
pub fn environment(script: &ScriptSettings, account: &Account, facts: &EnvFacts<'_>) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    set("HOME", account.home.display().to_string());
    set("USER", account.name.clone());
    set("LOGNAME", account.name.clone());
    set("SHELL", if account.shell.is_empty() { "/bin/sh".into() } else { account.shell.to_string() });
    set("PATH", if account.uid == 0 { ROOT_PATH } else { USER_PATH }.to_string());
    set("LANG", facts.lang.clone());
    set("POOL_INSTANCE_NAME", facts.instance.to_string());
    set("POOL_SHARE_PATH", facts.share_path.map(|p| p.display().to_string()).unwrap_or_default());
    set("POOL_LOCAL_USER", facts.settings.instance.local_user.clone());
    set("POOL_SCRIPT_NAME", script.name.clone());
    set("CI_NAME", facts.instance.to_string());
    set("CI_LOCAL_UBUNTU_USER", facts.settings.instance.local_user.clone());
    set("CI_RESOURCE_GROUP", facts.settings.instance.resource_group.clone());
    set("CI_WORKSPACE", facts.settings.instance.workspace.clone());
    for (key, value) in &script.env {
        set(key, value.clone());
    }
    env.into_iter().collect()
}

/// The system's LANG (`/etc/default/locale`, `/etc/locale.conf`), else C.UTF-8.
pub fn system_lang(paths: &SystemPaths) -> String {
    for file in ["/etc/default/locale", "/etc/locale.conf"] {
        if let Ok(text) = fs::read_to_string(paths.resolve(file)) {
            for line in text.lines() {
                if let Some(value) = line.trim().strip_prefix("LANG=") {
                    let value = value.trim_matches('"').trim_matches('\'');
                    if !value.is_empty() {
                        return value.to_string();
                    }
                }
            }
        }
    }
    "C.UTF-8".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::accounts::AccountSource;
    use std::os::unix::fs::PermissionsExt;

    fn sandbox() -> (tempfile::TempDir, SystemPaths, AccountsView) {
        let tmp = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        fs::create_dir_all(tmp.path().join("etc/pool-agent/setup.d")).unwrap();
        fs::write(
            tmp.path().join("etc/passwd"),
            format!("azureuser:x:{me}:{me}::/home/azureuser:/bin/bash\nbob:x:4242:4242::/home/bob:/bin/sh\n"),
        )
        .unwrap();
        fs::write(tmp.path().join("etc/group"), format!("azureuser:x:{me}:\ndocker:x:999:azureuser\n")).unwrap();
        for dir in [tmp.path().to_path_buf(), tmp.path().join("etc"), tmp.path().join("etc/pool-agent")] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let paths = SystemPaths::under(tmp.path());
        let accounts = AccountsView::new(AccountSource::Files { passwd: paths.passwd(), group: paths.group() });
        (tmp, paths, accounts)
    }

    fn script(name: &str, run_as: &str) -> ScriptSettings {
        ScriptSettings {
            name: name.into(),
            path: format!("/etc/pool-agent/setup.d/{name}").into(),
            run_as: run_as.into(),
            when: RunWhen::Once,
            args: vec![],
            workdir: None,
            timeout: DEFAULT_SCRIPT_TIMEOUT,
            env: BTreeMap::new(),
            blocking: true,
            entry: None,
        }
    }

    fn write(paths: &SystemPaths, name: &str, mode: u32) {
        let file = paths.resolve(format!("/etc/pool-agent/setup.d/{name}"));
        fs::write(&file, "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn runner() -> Runner {
        Runner { euid: nix::unistd::geteuid().as_raw() }
    }

    #[test]
    fn group_writable_root_scripts_and_directories_are_refused_with_the_reason() {
        let (_tmp, paths, accounts) = sandbox();
        fs::set_permissions(paths.resolve("/etc/pool-agent/setup.d"), fs::Permissions::from_mode(0o755)).unwrap();
        write(&paths, "10-ok", 0o755);
        write(&paths, "20-gw", 0o775);
        assert!(vet(&script("10-ok", "root"), &paths, &accounts, None, false, runner()).is_ok());
        let why = vet(&script("20-gw", "root"), &paths, &accounts, None, false, runner()).unwrap_err();
        assert!(why.contains("writable by its group or others") && why.contains("775"), "{why}");
        // Nor as a user: anyone in its group could change what that user runs.
        let why = vet(&script("20-gw", "azureuser"), &paths, &accounts, None, false, runner()).unwrap_err();
        assert!(why.contains("writable by its group or others"), "{why}");
        fs::set_permissions(paths.resolve("/etc/pool-agent/setup.d"), fs::Permissions::from_mode(0o777)).unwrap();
        let why = vet(&script("10-ok", "root"), &paths, &accounts, None, false, runner()).unwrap_err();
        assert!(why.contains("setup.d is writable by group or others"), "{why}");
    }

    #[test]
    fn a_script_on_the_share_never_runs_as_root() {
        let (_tmp, paths, accounts) = sandbox();
        write(&paths, "10-ok", 0o755);
        let share = paths.resolve("/etc/pool-agent");
        let why = vet(&script("10-ok", "root"), &paths, &accounts, Some(&share), true, runner()).unwrap_err();
        assert!(why.contains("only as a non-root user"), "{why}");
        // bob (uid 4242) with the admin's opt-in; an agent that is not root cannot switch to him.
        match vet(&script("10-ok", "bob"), &paths, &accounts, Some(&share), true, runner()) {
            Ok(_) => {}
            Err(why) => assert!(runner().euid != 0 && why.contains("cannot run scripts as bob"), "{why}"),
        }
        // Without the admin's opt-in, not even as a user.
        let why = vet(&script("10-ok", "bob"), &paths, &accounts, Some(&share), false, runner()).unwrap_err();
        assert!(why.contains("setup.trust_share = true"), "{why}");
    }

    #[test]
    fn root_is_a_uid_and_the_script_that_runs_is_the_one_checked() {
        let (_tmp, paths, accounts) = sandbox();
        // toor is uid 0 by another name: the root checks apply to it.
        let passwd = fs::read_to_string(paths.passwd()).unwrap();
        fs::write(paths.passwd(), format!("{passwd}toor:x:0:0::/root:/bin/sh\n")).unwrap();
        accounts.invalidate();
        write(&paths, "20-gw", 0o775);
        let why = vet(&script("20-gw", "toor"), &paths, &accounts, None, false, runner()).unwrap_err();
        assert!(why.contains("writable by its group or others"), "{why}");
        let share = paths.resolve("/etc/pool-agent");
        write(&paths, "10-ok", 0o755);
        let why = vet(&script("10-ok", "toor"), &paths, &accounts, Some(&share), true, runner()).unwrap_err();
        assert!(why.contains("only as a non-root user"), "{why}");
        // Configured through a link: what runs is the file the link led to when checked.
        let target = paths.resolve("/etc/pool-agent/setup.d/10-ok");
        let link = paths.resolve("/etc/pool-agent/setup.d/30-link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let vetted = vet(&script("30-link", "root"), &paths, &accounts, None, false, runner()).unwrap();
        assert_eq!(vetted.program, fs::canonicalize(&target).unwrap());
    }

    #[test]
    fn the_hash_changes_with_content_arguments_and_user_and_groups_come_from_the_accounts() {
        let (_tmp, paths, accounts) = sandbox();
        write(&paths, "10-ok", 0o755);
        let first = vet(&script("10-ok", "azureuser"), &paths, &accounts, None, false, runner()).unwrap();
        assert_eq!(first.groups[1..], [999], "supplementary groups from the group file");
        let mut with_args = script("10-ok", "azureuser");
        with_args.args = vec!["--fast".into()];
        let second = vet(&with_args, &paths, &accounts, None, false, runner()).unwrap();
        assert_ne!(first.content_hash, second.content_hash);
        fs::write(paths.resolve("/etc/pool-agent/setup.d/10-ok"), "#!/bin/sh\necho changed\n").unwrap();
        let third = vet(&script("10-ok", "azureuser"), &paths, &accounts, None, false, runner()).unwrap();
        assert_ne!(first.content_hash, third.content_hash);
        assert_eq!(third.workdir, paths.resolve("/etc/pool-agent/setup.d"));
    }

    #[test]
    fn the_directory_gives_executables_in_name_order_and_config_entries_replace_them() {
        let (_tmp, paths, _) = sandbox();
        write(&paths, "20-b", 0o755);
        write(&paths, "10-a", 0o755);
        write(&paths, "README", 0o644);
        write(&paths, "30-c.dpkg-old", 0o755);
        std::os::unix::fs::symlink("/bin/true", paths.resolve("/etc/pool-agent/setup.d/15-link")).unwrap();
        let mut settings = crate::config::load_str(Path::new("/etc/pool-agent/config.toml"), "[instance]\nlocal_user = \"azureuser\"\n[[setup.scripts]]\nname = \"20-b\"\npath = \"/etc/pool-agent/setup.d/20-b\"\nrun_as = \"root\"\n").unwrap();
        settings.setup.dir = "/etc/pool-agent/setup.d".into();
        let found = scripts(&settings, &paths);
        let names: Vec<_> = found.iter().map(|(s, _)| s.name.as_str()).collect();
        assert_eq!(names, ["10-a", "15-link", "20-b"]);
        assert!(found[1].1.as_ref().unwrap_err().contains("symlink"));
        assert_eq!(found[0].0.run_as, "azureuser");
        assert_eq!(found[2].0.run_as, "root", "the config entry wins");
    }

    #[test]
    fn the_environment_is_login_like_with_the_pool_and_compute_instance_names() {
        let settings = crate::config::load_str(
            Path::new("/etc/pool-agent/config.toml"),
            "[instance]\nlocal_user = \"azureuser\"\nresource_group = \"rg1\"\nworkspace = \"ws1\"\n",
        )
        .unwrap();
        let account = Account {
            name: "azureuser".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/azureuser".into(),
            shell: "/bin/bash".into(),
        };
        let mut s = script("10-a", "azureuser");
        s.env.insert("EXTRA".into(), "1".into());
        let facts = EnvFacts {
            instance: "vm-7",
            share_path: Some(Path::new("/data/notebooks")),
            settings: &settings,
            lang: "C.UTF-8".into(),
        };
        let env: BTreeMap<_, _> = environment(&s, &account, &facts).into_iter().collect();
        assert_eq!(env["HOME"], "/home/azureuser");
        assert_eq!(env["CI_NAME"], "vm-7");
        assert_eq!(env["CI_RESOURCE_GROUP"], "rg1");
        assert_eq!(env["CI_WORKSPACE"], "ws1");
        assert_eq!(env["CI_LOCAL_UBUNTU_USER"], "azureuser");
        assert_eq!(env["POOL_SHARE_PATH"], "/data/notebooks");
        assert_eq!(env["EXTRA"], "1");
        assert!(!env.contains_key("NOTIFY_SOCKET"));
    }
}
