//! `pool-agentd --demo`: a throwaway sandbox with a local share, a few users
//! in its own passwd file and a sample setup script, so the agent can be
//! tried unprivileged on any Linux machine.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const DEMO_USERS: &[&str] = &["azureuser", "alice", "bob"];
const FIRST_DEMO_UID: u32 = 2001;

/// The demo's config. Root plays every user: each gets their link, and the
/// script runs as `azureuser`. Anyone else can only act as themselves: the
/// caller (`you` in the sandbox's passwd) is the one user linked and the
/// script runs as them, so everything the demo shows works.
fn demo_config(caller_uid: u32) -> String {
    let (user, links) = if caller_uid == 0 {
        ("azureuser", "users = \"all\"\n".to_string())
    } else {
        // The caller's uid may lie outside the login range (nobody is 65534).
        let range = format!("min_uid = {}\nmax_uid = {}\n", caller_uid.min(1000), caller_uid.max(60000));
        ("you", format!("users = [\"you\"]\n{range}"))
    };
    format!(
        r#"# pool-agent demo sandbox. Every path below resolves under the sandbox root.
[instance]
name = "demo-vm"
local_user = "{user}"

[share]
kind = "local"
path = "/srv/share"
mount_point = "/data/notebooks"
# The demo cleans up after itself; on a VM the mount outlives the agent.
unmount_on_stop = true

[links]
{links}
[[setup.scripts]]
name = "hello"
path = "/etc/pool-agent/setup.d/10-hello.sh"
run_as = "{user}"
when = "every-boot"
timeout = "1m"

[idle]
interval = "5s"
timeout = "5m"
"#
    )
}

const DEMO_SCRIPT: &str = "#!/bin/sh\n# A sample setup script: prints who and where it runs.\necho \"hello from $(id -un 2>/dev/null || id -u) in $(pwd)\"\n";

/// The default sandbox directory. Root gets a fresh private directory every
/// time: a predictable path in `/tmp` could be made beforehand by any user
/// (a symlink to `/etc`, say) and root would then build in it. Another user
/// gets `pool-agent-demo-<uid>`, made 0700, reused only when it is a real
/// directory of their own.
pub fn default_root() -> io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        let template = std::env::temp_dir().join("pool-agent-demo-XXXXXX");
        return nix::unistd::mkdtemp(&template).map_err(io::Error::from);
    }
    let dir = std::env::temp_dir().join(format!("pool-agent-demo-{uid}"));
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => return Ok(dir),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err),
    }
    let meta = fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != uid.as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} exists and is not a directory of yours; remove it or pass --root DIR", dir.display()),
        ));
    }
    Ok(dir)
}

/// Builds (or refreshes) the sandbox under `root`. A config the user edited is kept.
pub fn prepare(root: &Path) -> io::Result<()> {
    let me = nix::unistd::getuid().as_raw();
    let me_gid = nix::unistd::getgid().as_raw();
    for dir in [
        "etc/pool-agent/config.d",
        "etc/pool-agent/setup.d",
        "srv/share",
        "data/notebooks",
        "run",
        "var/lib",
        "var/log",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    // Sandboxed users may need to traverse the root (e.g. tests that switch uid).
    fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;

    let mut passwd = String::from("root:x:0:0:root:/root:/bin/bash\n");
    let mut group = String::from("root:x:0:\n");
    let mut admins = Vec::new();
    if me != 0 {
        passwd.push_str(&format!("you:x:{me}:{me_gid}:the demo's caller:/home/you:/bin/bash\n"));
        admins.push("you");
        fs::create_dir_all(root.join("home/you"))?;
    }
    let uids = (FIRST_DEMO_UID..).filter(|uid| *uid != me);
    for (name, uid) in DEMO_USERS.iter().zip(uids) {
        passwd.push_str(&format!("{name}:x:{uid}:{uid}::/home/{name}:/bin/bash\n"));
        group.push_str(&format!("{name}:x:{uid}:\n"));
        let home = root.join("home").join(name);
        fs::create_dir_all(&home)?;
        // As on a VM, each home is its user's (only root can arrange that).
        if me == 0 {
            std::os::unix::fs::chown(&home, Some(uid), Some(uid))?;
        }
    }
    group.push_str(&format!("pool-agent-admin:x:990:{}\n", admins.join(",")));
    fs::write(root.join("etc/passwd"), passwd)?;
    fs::write(root.join("etc/group"), group)?;

    let config = root.join("etc/pool-agent/config.toml");
    if !config.exists() {
        fs::write(&config, demo_config(me))?;
    }
    let script = root.join("etc/pool-agent/setup.d/10-hello.sh");
    fs::write(&script, DEMO_SCRIPT)?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

pub fn print_instructions(root: &Path, socket: &Path) {
    println!("pool-agent demo: sandbox in {}", root.display());
    println!("  config: {}", root.join("etc/pool-agent/config.toml").display());
    println!("  query it from another terminal:");
    println!("    export POOL_AGENT_SOCKET={}", socket.display());
    println!("    pool-agent status          # or: cargo run -q --bin pool-agent -- status");
    println!("  reload the config: kill -HUP {}", std::process::id());
    println!("  Ctrl-C stops it.");
}

/// Removes a demo sandbox once the demo stopped — unless something is
/// still mounted under it (its share would go with it): then says so.
pub fn remove_sandbox(root: &Path) {
    let mounted = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|line| line.split(' ').nth(4).is_some_and(|point| Path::new(point).starts_with(root)));
    if mounted {
        eprintln!("pool-agentd: the demo sandbox {} still has a mount under it; left in place", root.display());
        return;
    }
    // remove_dir_all never follows a symlink out of the tree.
    match fs::remove_dir_all(root) {
        Ok(()) => println!("pool-agent demo: removed the sandbox {}", root.display()),
        Err(err) => eprintln!("pool-agentd: cannot remove the demo sandbox {}: {err}", root.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_sandbox_is_never_a_path_someone_else_prepared() {
        use std::os::unix::fs::MetadataExt;
        if nix::unistd::geteuid().is_root() {
            let (first, second) = (default_root().unwrap(), default_root().unwrap());
            assert_ne!(first, second, "root gets a fresh directory each time");
            let meta = fs::symlink_metadata(&first).unwrap();
            assert!(meta.is_dir() && meta.mode() & 0o777 == 0o700 && meta.uid() == 0);
            fs::remove_dir(first).unwrap();
            fs::remove_dir(second).unwrap();
        } else {
            let dir = default_root().unwrap();
            let meta = fs::symlink_metadata(&dir).unwrap();
            assert!(meta.is_dir() && meta.uid() == nix::unistd::geteuid().as_raw());
        }
    }

    #[test]
    fn the_sandbox_has_a_valid_config_users_and_a_share() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path()).unwrap();
        let settings = crate::config::load(&dir.path().join("etc/pool-agent/config.toml")).unwrap();
        assert!(settings.share.is_some());
        assert!(dir.path().join("srv/share").is_dir());
        let users = crate::core::accounts::read_passwd(&dir.path().join("etc/passwd")).unwrap();
        let logins = users.iter().filter(|u| u.is_login_user(1000)).count();
        assert!(logins >= 3, "{users:?}");
        // Running it twice keeps an edited config.
        fs::write(dir.path().join("etc/pool-agent/config.toml"), "# edited\n").unwrap();
        prepare(dir.path()).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("etc/pool-agent/config.toml")).unwrap(), "# edited\n");
    }
}
