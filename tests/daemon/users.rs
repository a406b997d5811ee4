//! The pool's registry of accounts (#28): `[[users.accounts]]` made real on
//! the sandbox's passwd, group and shadow by the system's own tools
//! (`useradd --prefix <root>`), keys written as the user, conflicts left alone.

// Black-box tests poll real processes from plain threads; sleeping is the point.
#![allow(clippy::disallowed_methods)]

use crate::harness::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

const CAROL_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly carol@laptop";

/// Root only: the tools edit passwd and chown homes. Empty shadow files, as
/// a VM has them (a lock is an expiry in shadow).
fn registry_sandbox(test: &str) -> Option<Sandbox> {
    if !nix_is_root() {
        skip_note(&format!("SKIP {test}: useradd and chown need root (CI runs as root)"));
        return None;
    }
    if std::process::Command::new("useradd").arg("--help").output().is_err() {
        skip_note(&format!("SKIP {test}: useradd (shadow-utils) is not installed"));
        return None;
    }
    let sandbox = Sandbox::new();
    for file in ["etc/shadow", "etc/gshadow"] {
        std::fs::write(sandbox.root().join(file), "").unwrap();
        std::fs::set_permissions(sandbox.root().join(file), std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    Some(sandbox)
}

fn account(name: &str, uid: u32, extra: &str) -> String {
    format!("\n[[users.accounts]]\nname = \"{name}\"\nuid = {uid}\n{extra}")
}

fn passwd_line(root: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(root.join("etc/passwd")).ok()?;
    text.lines().find(|l| l.starts_with(&format!("{name}:"))).map(str::to_string)
}

fn state_of(users: &serde_json::Value, name: &str) -> serde_json::Value {
    users["accounts"].as_array().unwrap().iter().find(|a| a["name"] == name).cloned().unwrap_or_default()
}

/// Waits until the users report has every named account settled (not empty).
fn users_when(sandbox: &Sandbox, limit: Duration, ready: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    eventually(limit, || Some(sandbox.cli_json(&["users", "--json"])).filter(&ready))
        .unwrap_or_else(|| panic!("users never settled: {:#}", sandbox.cli_json(&["users", "--json"])))
}

#[test]
fn three_registry_users_are_created_with_their_ids_keys_installed_and_a_conflict_left_alone() {
    let test = "three_registry_users_are_created_with_their_ids_keys_installed_and_a_conflict_left_alone";
    let Some(sandbox) = registry_sandbox(test) else { return };
    let root = sandbox.root().to_path_buf();
    // alice (1001) is a local user already: her registry entry matches, but
    // she planted ~/.ssh -> /root/.ssh to get her keys written into root's.
    std::fs::create_dir_all(root.join("root/.ssh")).unwrap();
    std::os::unix::fs::symlink(root.join("root/.ssh"), root.join("home/alice/.ssh")).unwrap();
    let bob_before = passwd_line(&root, "bob").unwrap();
    let config = format!(
        "{LOCAL_SHARE_CONFIG}\n[users]\nmanage = true\n{}{}{}{}{}",
        account("carol", 2001, &format!("ssh_keys = [\"{CAROL_KEY}\"]\n")),
        account("dave", 2002, "gid = 2500\nshell = \"/bin/sh\"\n"),
        account("erin", 2003, "groups = [\"pool-agent-admin\", \"nowhere\"]\n"),
        account("bob", 3002, ""),
        account("alice", 1001, &format!("ssh_keys = [\"{CAROL_KEY}\"]\n")),
    );
    sandbox.write_config(&config);
    let _daemon = sandbox.start();
    let users = users_when(&sandbox, Duration::from_secs(30), |u| {
        u["accounts"].as_array().is_some_and(|a| a.len() == 5 && a.iter().all(|s| s["state"] != ""))
    });

    // Exactly the registry's ids, homes made and owned.
    assert_eq!(passwd_line(&root, "carol").unwrap(), "carol:x:2001:2001::/home/carol:/bin/bash", "{users:#}");
    assert_eq!(passwd_line(&root, "dave").unwrap(), "dave:x:2002:2500::/home/dave:/bin/sh");
    assert_eq!(passwd_line(&root, "erin").unwrap(), "erin:x:2003:2003::/home/erin:/bin/bash");
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l == "dave:x:2500:"), "{group}");
    assert!(group.lines().any(|l| l.starts_with("pool-agent-admin:x:990:") && l.contains("erin")), "{group}");
    for (name, uid) in [("carol", 2001), ("dave", 2002), ("erin", 2003)] {
        assert_eq!(state_of(&users, name)["state"], "created", "{users:#}");
        assert_eq!(std::fs::metadata(root.join("home").join(name)).unwrap().uid(), uid);
    }
    assert!(state_of(&users, "erin")["notes"].to_string().contains("group nowhere does not exist"), "{users:#}");

    // carol's keys, as carol: 0600 in a 0700 ~/.ssh.
    let keys = root.join("home/carol/.ssh/authorized_keys");
    let meta = std::fs::symlink_metadata(&keys).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (2001, 2001, 0o600));
    let ssh = std::fs::metadata(root.join("home/carol/.ssh")).unwrap();
    assert_eq!((ssh.uid(), ssh.mode() & 0o777), (2001, 0o700));
    assert!(std::fs::read_to_string(&keys).unwrap().contains(CAROL_KEY));
    assert_eq!(state_of(&users, "carol")["keys"], "installed");

    // bob is uid 1002 here: a conflict, named, his line untouched.
    let bob = state_of(&users, "bob");
    let state = bob["state"].as_str().unwrap();
    assert!(state.starts_with("conflict") && state.contains("1002") && state.contains("3002"), "{bob}");
    assert_eq!(passwd_line(&root, "bob").unwrap(), bob_before);
    let status = sandbox.status_json();
    let row = status["components"].as_array().unwrap().iter().find(|c| c["name"] == "users").cloned().unwrap();
    assert_eq!(row["state"], "degraded", "{row}");
    assert!(row["last_error"].as_str().unwrap().contains("bob"), "{row}");
    let metrics = stdout(&sandbox.cli(&["metrics"]));
    assert!(metrics.contains("users_accounts{state=\"conflict\"} 1"), "{metrics}");
    assert!(metrics.contains("users_accounts{state=\"created\"} 3"), "{metrics}");

    // alice's planted ~/.ssh is refused with a reason; root's .ssh stays empty.
    let alice = state_of(&users, "alice");
    assert_eq!(alice["state"], "present", "{alice}");
    assert!(alice["keys"].as_str().unwrap().contains("~/.ssh is a symlink"), "{alice}");
    assert_eq!(std::fs::read_dir(root.join("root/.ssh")).unwrap().count(), 0, "nothing written in /root/.ssh");

    // The human view says the same.
    let text = stdout(&sandbox.cli(&["users"]));
    assert!(text.contains("carol") && text.contains("created") && text.contains("keys installed"), "{text}");
    assert!(text.contains("conflict: local account bob has uid 1002"), "{text}");
}

#[test]
fn a_reloaded_config_adds_a_user_and_locks_a_disabled_one() {
    let test = "a_reloaded_config_adds_a_user_and_locks_a_disabled_one";
    let Some(sandbox) = registry_sandbox(test) else { return };
    let root = sandbox.root().to_path_buf();
    let base = format!("{LOCAL_SHARE_CONFIG}\n[users]\nmanage = true\n");
    sandbox.write_config(&format!("{base}{}{}", account("carol", 2001, ""), account("dave", 2002, "")));
    let daemon = sandbox.start();
    users_when(&sandbox, Duration::from_secs(30), |u| {
        u["accounts"].as_array().is_some_and(|a| a.len() == 2 && a.iter().all(|s| s["state"] == "created"))
    });
    let shadow_line = |name: &str| {
        let shadow = std::fs::read_to_string(root.join("etc/shadow")).unwrap();
        shadow.lines().find(|l| l.starts_with(&format!("{name}:"))).map(str::to_string)
    };
    assert!(!shadow_line("dave").unwrap().ends_with(":1:"), "not locked yet");

    // dave leaves the team, frank joins: the new config is applied on SIGHUP.
    sandbox.write_config(&format!(
        "{base}{}{}{}",
        account("carol", 2001, ""),
        account("dave", 2002, "enabled = false\n"),
        account("frank", 2004, "")
    ));
    daemon.signal("HUP");
    let users = users_when(&sandbox, Duration::from_secs(30), |u| {
        state_of(u, "frank")["state"] == "created" && state_of(u, "dave")["state"] == "locked"
    });
    assert_eq!(passwd_line(&root, "frank").unwrap(), "frank:x:2004:2004::/home/frank:/bin/bash");
    // Locked as `usermod -L -e 1` does: the password marked, the account expired.
    let dave = shadow_line("dave").unwrap();
    let fields: Vec<&str> = dave.split(':').collect();
    assert!(fields[1].starts_with('!'), "{dave}");
    assert_eq!(fields[7], "1", "{dave}");
    // Never deleted: his entry and home stay.
    assert_eq!(passwd_line(&root, "dave").unwrap(), "dave:x:2002:2002::/home/dave:/bin/bash");
    assert!(root.join("home/dave").is_dir());
    let notes = state_of(&users, "dave")["notes"].to_string();
    assert!(notes.contains("sessions not ended"), "the sandbox says what it cannot do: {notes}");
    assert_eq!(state_of(&users, "carol")["state"], "present", "{users:#}");

    // Back in the team: the lock's expiry is cleared, the account kept as it was.
    sandbox.write_config(&format!("{base}{}{}", account("carol", 2001, ""), account("dave", 2002, "")));
    daemon.signal("HUP");
    users_when(&sandbox, Duration::from_secs(30), |u| state_of(u, "dave")["state"] == "present");
    let dave = shadow_line("dave").unwrap();
    assert_eq!(dave.split(':').nth(7), Some(""), "{dave}");
}

#[test]
fn with_manage_off_nothing_is_created_and_the_report_says_what_would_be() {
    let test = "with_manage_off_nothing_is_created_and_the_report_says_what_would_be";
    let Some(sandbox) = registry_sandbox(test) else { return };
    let root = sandbox.root().to_path_buf();
    let passwd_before = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    sandbox.write_config(&format!(
        "{LOCAL_SHARE_CONFIG}{}",
        account("carol", 2001, "ssh_keys = [\"ssh-ed25519 AAAA\"]\n")
    ));
    let _daemon = sandbox.start();
    let users = users_when(&sandbox, Duration::from_secs(30), |u| state_of(u, "carol")["state"] == "missing");
    assert_eq!(users["manage"], false);
    assert!(state_of(&users, "carol")["notes"].to_string().contains("would add user carol (2001:2001)"), "{users:#}");
    assert_eq!(std::fs::read_to_string(root.join("etc/passwd")).unwrap(), passwd_before);
    assert!(!root.join("home/carol").exists());
}

#[test]
fn a_share_registry_a_non_admin_can_write_is_refused_and_once_root_s_is_applied_within_seconds() {
    let test = "a_share_registry_a_non_admin_can_write_is_refused_and_once_root_s_is_applied_within_seconds";
    let Some(sandbox) = registry_sandbox(test) else { return };
    let root = sandbox.root().to_path_buf();
    sandbox.write_config(&format!("{LOCAL_SHARE_CONFIG}\n[users]\nmanage = true\n{}", account("carol", 2001, "")));
    let _daemon = sandbox.start();
    users_when(&sandbox, Duration::from_secs(30), |u| state_of(u, "carol")["state"] == "created");

    // bob (not an admin) writes the pool's registry: it would give gina an account everywhere.
    let dir = root.join("srv/share/.pool-agent");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("users.toml");
    std::fs::write(&file, "[[users.accounts]]\nname = \"gina\"\nuid = 2010\ngroups = [\"pool-agent-admin\"]\n")
        .unwrap();
    std::os::unix::fs::chown(&file, Some(USER_UID), Some(USER_UID)).unwrap();
    let users = users_when(&sandbox, Duration::from_secs(15), |u| u["share_error"].is_string());
    let why = users["share_error"].as_str().unwrap();
    assert!(why.contains("uid 1002") && why.contains("refused"), "{users:#}");
    assert!(passwd_line(&root, "gina").is_none(), "nothing made from a refused file");
    let status = sandbox.status_json();
    let row = status["components"].as_array().unwrap().iter().find(|c| c["name"] == "users").cloned().unwrap();
    assert_eq!(row["state"], "degraded", "{row}");

    // Group-writable is refused too, even root's.
    std::os::unix::fs::chown(&file, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).unwrap();
    let users = users_when(&sandbox, Duration::from_secs(15), |u| {
        u["share_error"].as_str().is_some_and(|w| w.contains("0664"))
    });
    assert!(passwd_line(&root, "gina").is_none(), "{users:#}");

    // Root's, 0644: gina exists within seconds, with the registry's uid.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let started = std::time::Instant::now();
    let users = users_when(&sandbox, Duration::from_secs(15), |u| state_of(u, "gina")["state"] == "created");
    println!("{test}: the share's registry applied {:?} after its fix", started.elapsed());
    assert_eq!(passwd_line(&root, "gina").unwrap(), "gina:x:2010:2010::/home/gina:/bin/bash");
    assert!(users["share_error"].is_null(), "{users:#}");
    assert!(users["share_registry"].as_str().unwrap().contains("1 account(s)"), "{users:#}");
    // The share cannot make her an admin of the agent: only the config may.
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    let admins = group.lines().find(|l| l.starts_with("pool-agent-admin:")).unwrap();
    assert!(!admins.contains("gina"), "{admins}");
    assert!(state_of(&users, "gina")["notes"].to_string().contains("only the config may grant it"), "{users:#}");

    // An entry naming an account this VM has already (alice, the local admin here)
    // changes nothing of it: whoever holds the storage key must not re-key or lock it.
    let alice_before = passwd_line(&root, "alice");
    std::fs::write(
        &file,
        format!("{}[[users.accounts]]\nname = \"alice\"\nuid = {ADMIN_UID}\nshell = \"/bin/sh\"\nssh_keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwned attacker\"]\nenabled = false\n",
            std::fs::read_to_string(&file).unwrap()),
    )
    .unwrap();
    let users = users_when(&sandbox, Duration::from_secs(15), |u| {
        state_of(u, "alice")["notes"].to_string().contains("only adds accounts")
    });
    assert_eq!(passwd_line(&root, "alice"), alice_before, "shell untouched: {users:#}");
    assert!(!root.join("home/alice/.ssh/authorized_keys").exists(), "no key installed: {users:#}");
    let shadow = std::fs::read_to_string(root.join("etc/shadow")).unwrap_or_default();
    assert!(!shadow.lines().any(|l| l.starts_with("alice:")), "not locked: {shadow}");
}
