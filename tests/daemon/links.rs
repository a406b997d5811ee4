//! Links under `pool-agentd --root`: real uids, real chown, homes the users
//! own, a `local` share bind-mounted as the real thing is, and users who plant
//! traps in their homes. Root only (the agent gives folders to other uids).

// Black-box tests poll real processes from plain threads; sleeping is the point.
#![allow(clippy::disallowed_methods)]

use crate::harness::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CAROL_UID: u32 = 1003;
const DAVE_UID: u32 = 1004;

fn needs_root(test: &str) -> bool {
    if nix_is_root() {
        return true;
    }
    skip_note(&format!("SKIP {test}: needs root to give homes and folders to other uids (CI runs as root)"));
    false
}

/// alice, bob and carol with homes they own.
fn sandbox_with_users() -> Sandbox {
    let sandbox = Sandbox::new();
    let passwd = sandbox.root().join("etc/passwd");
    let mut text = std::fs::read_to_string(&passwd).unwrap();
    text.push_str(&format!("carol:x:{CAROL_UID}:{CAROL_UID}::/home/carol:/bin/bash\n"));
    std::fs::write(&passwd, text).unwrap();
    for (user, uid) in [("alice", ADMIN_UID), ("bob", USER_UID), ("carol", CAROL_UID)] {
        give_home(&sandbox, user, uid);
    }
    sandbox
}

fn give_home(sandbox: &Sandbox, user: &str, uid: u32) -> PathBuf {
    let home = sandbox.root().join("home").join(user);
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(uid), Some(uid)).unwrap();
    home
}

fn links_json(sandbox: &Sandbox) -> serde_json::Value {
    sandbox.cli_json(&["links", "--json"])
}

fn user_entry(sandbox: &Sandbox, user: &str) -> Option<serde_json::Value> {
    links_json(sandbox)["users"].as_array()?.iter().find(|u| u["user"] == user).cloned()
}

fn share_root(sandbox: &Sandbox) -> PathBuf {
    sandbox.root().join("data/notebooks")
}

fn wait_linked(sandbox: &Sandbox, users: &[&str]) {
    let done = eventually(Duration::from_secs(10), || {
        users
            .iter()
            .all(|u| user_entry(sandbox, u).is_some_and(|e| e["state"] == "ok" || e["state"] == "created"))
            .then_some(())
    });
    assert!(done.is_some(), "not all of {users:?} linked: {}", links_json(sandbox));
}

#[test]
fn three_users_get_their_links_and_folders_owned_right() {
    if !needs_root("three_users_get_their_links_and_folders_owned_right") {
        return;
    }
    let sandbox = sandbox_with_users();
    let _daemon = sandbox.start();
    wait_linked(&sandbox, &["alice", "bob", "carol"]);
    for (user, uid) in [("alice", ADMIN_UID), ("bob", USER_UID), ("carol", CAROL_UID)] {
        let folder = share_root(&sandbox).join("notebooks").join(user);
        let link = sandbox.root().join("home").join(user).join("notebooks/remote");
        assert_eq!(std::fs::read_link(&link).unwrap(), folder, "{user}'s link");
        let meta = std::fs::metadata(&folder).unwrap();
        assert_eq!((meta.uid(), meta.permissions().mode() & 0o777), (uid, 0o700), "{user}'s folder");
        let notebooks = std::fs::metadata(link.parent().unwrap()).unwrap();
        assert_eq!(notebooks.uid(), uid, "~/notebooks belongs to {user}");
        assert_eq!(std::fs::symlink_metadata(&link).unwrap().uid(), uid, "the link belongs to {user}");
    }
    // Users can read their own entry and the whole list, as status.
    let out = sandbox.cli_as(USER_UID, &["links", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = sandbox.status_json();
    let links = status["components"].as_array().unwrap().iter().find(|c| c["name"] == "links").cloned().unwrap();
    assert_eq!(links["state"], "ready", "{links}");
    assert!(links["detail"].as_str().unwrap().contains("3 user(s): 3 linked"), "{links}");
    let metrics = stdout(&sandbox.cli(&["metrics"]));
    let linked: i64 = ["ok", "created"]
        .iter()
        .filter_map(|state| {
            let prefix = format!("pool_agent_links_users{{state=\"{state}\"}} ");
            metrics.lines().find_map(|l| l.strip_prefix(prefix.as_str())).map(|v| v.parse::<i64>().unwrap())
        })
        .sum();
    assert_eq!(linked, 3, "{metrics}");
}

#[test]
fn a_user_added_by_rename_is_linked_within_a_second_without_a_sync() {
    if !needs_root("a_user_added_by_rename_is_linked_within_a_second_without_a_sync") {
        return;
    }
    let sandbox = sandbox_with_users();
    let _daemon = sandbox.start();
    wait_linked(&sandbox, &["alice", "bob", "carol"]);
    give_home(&sandbox, "dave", DAVE_UID);
    let link = sandbox.root().join("home/dave/notebooks/remote");
    let started = Instant::now();
    useradd_by_rename(&sandbox, "dave", DAVE_UID);
    let linked = eventually(Duration::from_secs(1), || std::fs::read_link(&link).ok());
    let took = started.elapsed();
    assert_eq!(linked, Some(share_root(&sandbox).join("notebooks/dave")), "dave not linked within a second ({took:?})");
    println!("useradd-to-link: {took:?}");
}

/// Adds `user` to the passwd file as useradd does: a new file renamed over the old one.
fn useradd_by_rename(sandbox: &Sandbox, user: &str, uid: u32) {
    let passwd = sandbox.root().join("etc/passwd");
    let next = sandbox.root().join("etc/passwd+");
    let mut text = std::fs::read_to_string(&passwd).unwrap();
    text.push_str(&format!("{user}:x:{uid}:{uid}::/home/{user}:/bin/bash\n"));
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, &passwd).unwrap();
}

#[test]
fn a_user_added_while_the_first_pass_runs_is_linked_without_waiting_for_the_resync() {
    if !needs_root("a_user_added_while_the_first_pass_runs_is_linked_without_waiting_for_the_resync") {
        return;
    }
    // Enough users that the first pass is still going when the socket answers.
    const MANY: u32 = 3000;
    const FIRST: u32 = 20_000;
    let sandbox = sandbox_with_users();
    let passwd = sandbox.root().join("etc/passwd");
    let mut text = std::fs::read_to_string(&passwd).unwrap();
    for uid in FIRST..FIRST + MANY {
        give_home(&sandbox, &format!("u{uid}"), uid);
        text.push_str(&format!("u{uid}:x:{uid}:{uid}::/home/u{uid}:/bin/bash\n"));
    }
    std::fs::write(&passwd, text).unwrap();
    // The share used in place: no mount to come that would start a second pass.
    sandbox.write_config("[share]\nkind = \"local\"\npath = \"/srv/share\"\nmount_point = \"/srv/share\"\n");
    give_home(&sandbox, "dave", DAVE_UID);
    let _daemon = sandbox.start();
    // Workers take the users in chunks: the first of a chunk linked means the pass has begun.
    let first_linked = sandbox.root().join(format!("home/u{FIRST}/notebooks/remote"));
    let last_linked = sandbox.root().join(format!("home/u{}/notebooks/remote", FIRST + MANY - 1));
    eventually(Duration::from_secs(30), || first_linked.symlink_metadata().ok()).expect("the first pass began");
    useradd_by_rename(&sandbox, "dave", DAVE_UID);
    let pass_was_running = last_linked.symlink_metadata().is_err();
    println!("the first pass was still running when dave was added: {pass_was_running}");
    // The resync interval is a minute: only the watch can link dave sooner.
    let link = sandbox.root().join("home/dave/notebooks/remote");
    let added = Instant::now();
    let linked = eventually(Duration::from_secs(40), || std::fs::read_link(&link).ok());
    println!("dave linked {:?} after being added", added.elapsed());
    assert_eq!(linked, Some(sandbox.root().join("srv/share/notebooks/dave")), "dave added during the first pass");
}

#[test]
fn a_planted_notebooks_symlink_leaves_its_target_untouched_and_is_reported() {
    if !needs_root("a_planted_notebooks_symlink_leaves_its_target_untouched_and_is_reported") {
        return;
    }
    let sandbox = sandbox_with_users();
    // bob points ~/notebooks at a root-owned directory outside his home.
    let outside = sandbox.root().join("etc/pool-agent");
    let before: Vec<_> = std::fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
    let meta_before = std::fs::metadata(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, sandbox.root().join("home/bob/notebooks")).unwrap();
    std::os::unix::fs::lchown(sandbox.root().join("home/bob/notebooks"), Some(USER_UID), Some(USER_UID)).unwrap();
    let _daemon = sandbox.start();
    wait_linked(&sandbox, &["alice", "carol"]);
    let bob = eventually(Duration::from_secs(5), || user_entry(&sandbox, "bob").filter(|b| b["state"] == "conflict"))
        .unwrap_or_else(|| panic!("bob's trap not reported: {}", links_json(&sandbox)));
    assert!(bob["reason"].as_str().unwrap().contains("symlink"), "{bob}");
    let after: Vec<_> = std::fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after, "nothing created through the symlink");
    let meta_after = std::fs::metadata(&outside).unwrap();
    assert_eq!((meta_before.uid(), meta_before.mode()), (meta_after.uid(), meta_after.mode()), "nothing chowned");
}

#[test]
fn a_real_remote_directory_keeps_its_file_and_is_a_conflict() {
    if !needs_root("a_real_remote_directory_keeps_its_file_and_is_a_conflict") {
        return;
    }
    let sandbox = sandbox_with_users();
    let remote = sandbox.root().join("home/carol/notebooks/remote");
    std::fs::create_dir_all(&remote).unwrap();
    std::fs::write(remote.join("thesis.ipynb"), "{\"cells\": []}").unwrap();
    for path in [remote.parent().unwrap(), &remote] {
        std::os::unix::fs::chown(path, Some(CAROL_UID), Some(CAROL_UID)).unwrap();
    }
    let daemon = sandbox.start();
    let carol =
        eventually(Duration::from_secs(10), || user_entry(&sandbox, "carol").filter(|c| c["state"] == "conflict"))
            .unwrap_or_else(|| panic!("carol's directory not reported: {}", links_json(&sandbox)));
    assert!(carol["reason"].as_str().unwrap().contains("not a link"), "{carol}");
    assert_eq!(std::fs::read_to_string(remote.join("thesis.ipynb")).unwrap(), "{\"cells\": []}");
    assert!(remote.is_dir() && !std::fs::symlink_metadata(&remote).unwrap().file_type().is_symlink());
    let out = sandbox.cli(&["links"]);
    assert!(stdout(&out).contains("conflict"), "{}", stdout(&out));
    // Status says links need a look, with the count and who.
    let status = sandbox.cli(&["status", "--json"]);
    assert_eq!(status.status.code(), Some(1), "a conflict leaves the VM not all ready");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let links = status["components"].as_array().unwrap().iter().find(|c| c["name"] == "links").cloned().unwrap();
    assert_eq!(links["state"], "degraded", "{links}");
    assert!(links["detail"].as_str().unwrap().contains("1 conflict"), "{links}");
    assert!(links["last_error"].as_str().unwrap_or_default().starts_with("carol: "), "{links}");
    // And the journal has it as a warning, once (not at every pass).
    let log = daemon.log();
    let warned = log.lines().filter(|l| l.contains("WARN") && l.contains("carol") && l.contains("conflict")).count();
    assert_eq!(warned, 1, "{log}");
}

#[test]
fn no_user_folder_is_made_under_the_mount_point_while_the_share_is_missing() {
    if !needs_root("no_user_folder_is_made_under_the_mount_point_while_the_share_is_missing") {
        return;
    }
    let sandbox = sandbox_with_users();
    std::fs::remove_dir(sandbox.root().join("srv/share")).unwrap();
    let _daemon = sandbox.start();
    let alice = eventually(Duration::from_secs(10), || {
        user_entry(&sandbox, "alice").filter(|a| a["state"] == "waiting-for-share")
    })
    .unwrap_or_else(|| panic!("alice is not waiting for the share: {}", links_json(&sandbox)));
    assert!(alice["reason"].as_str().unwrap().contains("waits for the share"), "{alice}");
    // The link is there (it works once the share is back); nothing under the mount point.
    let link = sandbox.root().join("home/alice/notebooks/remote");
    assert_eq!(std::fs::read_link(&link).unwrap(), share_root(&sandbox).join("notebooks/alice"));
    std::thread::sleep(Duration::from_millis(500));
    let under: Vec<_> = match std::fs::read_dir(share_root(&sandbox)) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    assert!(under.is_empty(), "folders made on the local disk under the mount point: {under:?}");
    // The share comes: the folders follow without anyone asking.
    std::fs::create_dir_all(sandbox.root().join("srv/share")).unwrap();
    let made =
        eventually(Duration::from_secs(15), || share_root(&sandbox).join("notebooks/alice").is_dir().then_some(()));
    assert!(made.is_some(), "folder never made once the share came: {}", links_json(&sandbox));
    let source_side = sandbox.root().join("srv/share/notebooks/alice");
    assert!(source_side.is_dir(), "the folder is on the share itself: {}", Path::new(&source_side).display());
}

#[test]
fn at_rest_the_links_watch_starts_no_pass_and_reads_of_etc_and_homes_do_not_count() {
    // No root needed: a user without a home yet is linked later; the pass count is what matters.
    let sandbox = Sandbox::new();
    // Resyncs every second: with the same users they re-read the users and pass no more.
    std::fs::write(
        sandbox.root().join("etc/pool-agent/config.d/50-resync.toml"),
        "[links]\nresync_interval = \"1s\"\n",
    )
    .unwrap();
    let _daemon = sandbox.start();
    let passes = |sandbox: &Sandbox| links_json(sandbox)["passes"].as_u64().unwrap_or(0);
    let settled = eventually(Duration::from_secs(10), || (passes(&sandbox) >= 1).then_some(()));
    assert!(settled.is_some(), "no first pass: {}", links_json(&sandbox));
    std::thread::sleep(Duration::from_secs(1));
    let before = passes(&sandbox);
    // What everyone does on a VM all day: read /etc and list /home.
    for _ in 0..50 {
        let _ = std::fs::read_to_string(sandbox.root().join("etc/passwd")).unwrap();
        let _ = std::fs::read_to_string(sandbox.root().join("etc/group"));
        let _ = std::fs::read_dir(sandbox.root().join("home")).map(|d| d.count());
        std::fs::write(sandbox.root().join("etc/motd"), "unrelated file written\n").unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = passes(&sandbox);
    assert_eq!(after, before, "passes at rest went from {before} to {after}");
    // A real change still starts one at once.
    let passwd = sandbox.root().join("etc/passwd");
    let mut text = std::fs::read_to_string(&passwd).unwrap();
    text.push_str("erin:x:1005:1005::/home/erin:/bin/bash\n");
    let staged = sandbox.root().join("etc/passwd+");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, &passwd).unwrap();
    let seen = eventually(Duration::from_secs(5), || (passes(&sandbox) > after).then_some(()));
    assert!(seen.is_some(), "useradd's rename started no pass");
}
