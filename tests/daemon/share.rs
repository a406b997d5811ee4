//! The share through the real code path: real mount(8), real bind mounts and
//! tmpfs under the sandbox (root only), and the key-file rules (any user).

use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const FAST_LOCAL: &str = r#"[share]
kind = "local"
path = "/srv/share"
mount_point = "/data/notebooks"
probe_interval = "1s"
probe_timeout = "1s"
"#;

const SECRET: &str = "Zm9vYmFyLXN0b3JhZ2Uta2V5LXRoYXQtbXVzdC1uZXZlci1sZWFr";

fn needs_root(test: &str) -> bool {
    if nix_is_root() {
        return true;
    }
    skip_note(&format!("SKIP {test}: needs root to mount (CI runs as root)"));
    false
}

/// The share's report; `share` exits 1 while it is not mounted, with the report all the same.
fn share_json(sandbox: &Sandbox) -> serde_json::Value {
    let out = sandbox.cli(&["share", "--json"]);
    assert!(answered(&out), "pool-agent share: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_share_state(sandbox: &Sandbox, state: &str, limit: Duration) -> serde_json::Value {
    eventually(limit, || {
        let share = share_json(sandbox);
        (share["state"] == state).then_some(share)
    })
    .unwrap_or_else(|| panic!("share never became {state}: {}", share_json(sandbox)))
}

fn target(sandbox: &Sandbox) -> String {
    sandbox.root().join("data/notebooks").display().to_string()
}

fn mounts_at(sandbox: &Sandbox) -> usize {
    let target = target(sandbox);
    mounts_under(sandbox.root()).iter().filter(|m| **m == target).count()
}

#[test]
fn a_local_share_is_bind_mounted_then_adopted_after_a_restart_never_stacked() {
    if !needs_root("a_local_share_is_bind_mounted_then_adopted_after_a_restart_never_stacked") {
        return;
    }
    let sandbox = Sandbox::new();
    sandbox.write_config(FAST_LOCAL);
    std::fs::write(sandbox.root().join("srv/share/hello.txt"), "from the share").unwrap();
    let mut daemon = sandbox.start();
    let share = wait_share_state(&sandbox, "mounted", Duration::from_secs(10));
    assert_eq!(share["adopted"], false);
    assert_eq!(mounts_at(&sandbox), 1);
    assert_eq!(std::fs::read_to_string(sandbox.root().join("data/notebooks/hello.txt")).unwrap(), "from the share");

    daemon.signal("TERM");
    daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(mounts_at(&sandbox), 1, "the mount outlives the agent by default");

    let _again = sandbox.start();
    let share = wait_share_state(&sandbox, "mounted", Duration::from_secs(10));
    assert_eq!(share["adopted"], true, "{share}");
    assert_eq!(mounts_at(&sandbox), 1, "adopted, not stacked");
}

#[test]
fn another_filesystem_at_the_mount_point_is_a_conflict() {
    if !needs_root("another_filesystem_at_the_mount_point_is_a_conflict") {
        return;
    }
    let sandbox = Sandbox::new();
    sandbox.write_config(FAST_LOCAL);
    let target = target(&sandbox);
    std::fs::create_dir_all(&target).unwrap();
    assert!(std::process::Command::new("mount").args(["-t", "tmpfs", "scratch", &target]).status().unwrap().success());
    let _daemon = sandbox.start();
    let share = wait_share_state(&sandbox, "conflict", Duration::from_secs(10));
    let error = share["last_error"].as_str().unwrap();
    assert!(error.contains("tmpfs scratch is already mounted"), "{error}");
    assert_eq!(mounts_at(&sandbox), 1, "nothing stacked on the tmpfs");
    let status = sandbox.status_json();
    let component = status["components"].as_array().unwrap().iter().find(|c| c["name"] == "share").cloned().unwrap();
    assert_eq!(component["state"], "failed");
}

#[test]
fn a_mount_point_under_mnt_is_refused_unless_allowed() {
    let sandbox = Sandbox::new();
    sandbox.write_config("[share]\nkind = \"local\"\npath = \"/srv/share\"\nmount_point = \"/mnt/notebooks\"\n");
    let out = sandbox.daemon_command().arg("--check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let message = stderr(&out);
    assert!(
        message.contains("config.toml:4: share.mount_point") && message.contains("temporary resource disk"),
        "{message}"
    );
    sandbox.write_config(
        "[share]\nkind = \"local\"\npath = \"/srv/share\"\nmount_point = \"/mnt/notebooks\"\nallow_mnt = true\n",
    );
    assert!(sandbox.daemon_command().arg("--check-config").output().unwrap().status.success());
}

fn azure_files_config(sandbox: &Sandbox, key_mode: u32) -> std::path::PathBuf {
    let key_file = sandbox.root().join("etc/pool-agent/secrets/storage-key");
    std::fs::create_dir_all(key_file.parent().unwrap()).unwrap();
    std::fs::write(&key_file, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(key_mode)).unwrap();
    sandbox.write_config(
        r#"[share]
kind = "azure-files"
account = "poolstore"
share = "notebooks"
# Nothing listens here: every mount attempt fails.
source = "//127.0.0.1/notebooks"
uid = "root"
gid = "root"
key_file = "/etc/pool-agent/secrets/storage-key"
probe_interval = "2s"
probe_timeout = "1s"
mount_timeout = "10s"
"#,
    );
    key_file
}

fn assert_secret_absent(what: &str, text: &str) {
    assert!(!text.contains(SECRET), "the storage key appeared in {what}:\n{text}");
}

#[test]
fn an_open_key_file_is_refused_naming_the_file_never_the_key() {
    let sandbox = Sandbox::new();
    azure_files_config(&sandbox, 0o644);
    let daemon = sandbox.start();
    let share = wait_share_state(&sandbox, "unmounted", Duration::from_secs(10));
    let error = share["last_error"].as_str().unwrap();
    assert!(
        error.contains("storage-key is readable by group or others (mode 0644)") && error.contains("chmod 600"),
        "{error}"
    );

    assert_secret_absent("pool-agent share", &share.to_string());
    assert_secret_absent("pool-agent status", &stdout(&sandbox.cli(&["status", "--json"])));
    assert_secret_absent("pool-agent config", &stdout(&sandbox.cli(&["config", "--json"])));
    assert_secret_absent("pool-agent metrics", &stdout(&sandbox.cli(&["metrics"])));
    assert_secret_absent("--check-config", &stdout(&sandbox.daemon_command().arg("--check-config").output().unwrap()));
    assert_secret_absent("the daemon's log", &daemon.log());
}

#[test]
fn a_failing_cifs_mount_never_shows_the_key_anywhere() {
    if !needs_root("a_failing_cifs_mount_never_shows_the_key_anywhere") {
        return;
    }
    if !std::path::Path::new("/sbin/mount.cifs").exists() && !std::path::Path::new("/usr/sbin/mount.cifs").exists() {
        skip_note("SKIP a_failing_cifs_mount_never_shows_the_key_anywhere: mount.cifs (cifs-utils) is not installed");
        return;
    }
    let sandbox = Sandbox::new();
    azure_files_config(&sandbox, 0o600);
    let daemon = sandbox.start();
    // Sample every process while the agent keeps trying (and once more on request).
    let socket = sandbox.socket();
    let remount = std::thread::spawn(move || {
        std::process::Command::new(CLI).arg("--socket").arg(socket).args(["share", "remount"]).output().unwrap()
    });
    let started = std::time::Instant::now();
    let mut samples = 0;
    while started.elapsed() < Duration::from_secs(4) {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            for file in ["cmdline", "environ"] {
                if let Ok(bytes) = std::fs::read(entry.path().join(file)) {
                    assert!(
                        !String::from_utf8_lossy(&bytes).contains(SECRET),
                        "key in {}/{file}",
                        entry.path().display()
                    );
                }
            }
        }
        samples += 1;
    }
    let remount = remount.join().unwrap();
    assert!(!remount.status.success(), "nothing listens, so the remount fails");
    assert!(stderr(&remount).contains("[unavailable]"), "{}", stderr(&remount));
    let share = share_json(&sandbox);
    assert_eq!(share["state"], "unmounted");
    assert!(share["last_error"].as_str().unwrap().contains("mount"), "{share}");
    assert!(share["options"].as_array().unwrap().iter().any(|o| o.as_str().unwrap().starts_with("credentials=")));
    let private = sandbox.root().join("run/pool-agent/private");
    assert!(private.is_dir(), "the credentials directory was never made");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(!private.join("share.credentials").exists(), "credentials file outlived the mount call");
    assert_secret_absent("the daemon's log", &daemon.log());
    assert_secret_absent("pool-agent share", &share.to_string());
    println!("sampled /proc {samples} times while pool-agentd mounted");
}

#[test]
fn an_admin_can_remount_and_a_user_cannot() {
    if !can_switch_uid("an_admin_can_remount_and_a_user_cannot") {
        return;
    }
    let sandbox = Sandbox::new();
    sandbox.write_config(FAST_LOCAL);
    let _daemon = sandbox.start();
    wait_share_state(&sandbox, "mounted", Duration::from_secs(10));
    let refused = sandbox.cli_as(USER_UID, &["share", "remount"]);
    assert!(stderr(&refused).contains("[forbidden]"), "{}", stderr(&refused));

    let out = sandbox.cli_as(ADMIN_UID, &["share", "remount"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("share     mounted"), "{text}");
    assert!(text.contains("2 mount(s)"), "{text}");
    assert_eq!(mounts_at(&sandbox), 1, "a remount replaces the mount");
}

#[test]
fn a_share_unmounted_behind_the_agents_back_comes_back_by_itself() {
    if !needs_root("a_share_unmounted_behind_the_agents_back_comes_back_by_itself") {
        return;
    }
    let sandbox = Sandbox::new();
    sandbox.write_config(FAST_LOCAL);
    let _daemon = sandbox.start();
    wait_share_state(&sandbox, "mounted", Duration::from_secs(10));
    // Right after mounting, the agent's first pass over the share (links,
    // the pool's record, write events) holds short-lived descriptors on it:
    // an admin's umount can meet "target is busy" and is tried again, as
    // the admin would.
    let unmounted = eventually(Duration::from_secs(10), || {
        let out = std::process::Command::new("umount").arg(target(&sandbox)).output().unwrap();
        out.status.success().then_some(()).or_else(|| {
            println!("umount: {}", String::from_utf8_lossy(&out.stderr).trim());
            None
        })
    });
    assert!(unmounted.is_some(), "the share stayed busy for 10 s: the agent holds it open");
    assert_eq!(mounts_at(&sandbox), 0);
    let back = eventually(Duration::from_secs(15), || (mounts_at(&sandbox) == 1).then_some(()));
    assert!(back.is_some(), "not remounted: {}", share_json(&sandbox));
    let share = wait_share_state(&sandbox, "mounted", Duration::from_secs(5));
    assert!(share["last_error"].as_str().unwrap().contains("unmounted from"), "{share}");
}

#[test]
fn unmount_on_stop_takes_the_mount_away() {
    if !needs_root("unmount_on_stop_takes_the_mount_away") {
        return;
    }
    let sandbox = Sandbox::new();
    sandbox.write_config(&format!("{FAST_LOCAL}unmount_on_stop = true\n"));
    let mut daemon = sandbox.start();
    wait_share_state(&sandbox, "mounted", Duration::from_secs(10));
    assert_eq!(mounts_at(&sandbox), 1);
    daemon.signal("TERM");
    let (code, _) = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert_eq!(mounts_at(&sandbox), 0);
}

#[test]
fn share_shows_a_human_summary() {
    let sandbox = Sandbox::new();
    sandbox.write_config(FAST_LOCAL);
    let _daemon = sandbox.start();
    eventually(Duration::from_secs(10), || (share_json(&sandbox)["state"] == "mounted").then_some(()));
    let text = stdout(&sandbox.cli(&["share"]));
    assert!(text.starts_with("share     mounted"), "{text}");
    // As root the local share is bind-mounted; otherwise it is used in place.
    assert!(text.contains("source    ") && text.contains("(local via "), "{text}");
}

#[test]
fn share_exits_1_while_the_share_is_not_mounted_and_0_once_it_is() {
    let sandbox = Sandbox::new();
    sandbox.write_config(&LOCAL_SHARE_CONFIG.replace("path = \"/srv/share\"", "path = \"/srv/not-yet\""));
    let daemon = sandbox.start();
    let down = eventually(Duration::from_secs(10), || {
        let out = sandbox.cli(&["share", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (report["state"] != "mounted" && report["state"] != "mounting").then_some((out.status.code(), report))
    });
    let (code, report) = down.unwrap_or_else(|| panic!("{}", daemon.log()));
    assert_eq!(code, Some(1), "not mounted: {report:#}");
    assert_eq!(sandbox.cli(&["share"]).status.code(), Some(1), "the human form too");
    std::fs::create_dir_all(sandbox.root().join("srv/not-yet")).unwrap();
    sandbox.cli(&["share", "remount"]);
    let mounted = eventually(Duration::from_secs(20), || {
        let out = sandbox.cli(&["share", "--json"]);
        Some(out.status.code()).filter(|code| *code == Some(0))
    });
    assert!(mounted.is_some(), "{:#}", share_json(&sandbox));
}
