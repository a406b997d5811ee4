//! `cargo bench -p pool-agent --bench links`: the first reconcile of many
//! users and the useradd-to-link latency, against a shell loop doing what
//! admins script by hand (`mkdir -p; chown; ln -sfn` per user) over the same
//! users in the same run. Root only: the users' homes belong to their uids.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

#[path = "common/mod.rs"]
mod common;
use common::*;

use std::fmt::Write as _;
use std::os::unix::fs::chown;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const FIRST_UID: u32 = 10_000;

fn users(root: &Path, from: u32, count: u32) -> String {
    let mut passwd = String::new();
    for uid in from..from + count {
        let home = root.join(format!("home/u{uid}"));
        std::fs::create_dir_all(&home).unwrap();
        chown(&home, Some(uid), Some(uid)).unwrap();
        let _ = writeln!(passwd, "u{uid}:x:{uid}:{uid}::/home/u{uid}:/bin/bash");
    }
    passwd
}

fn linked(root: &Path, uid: u32) -> bool {
    std::fs::read_link(root.join(format!("home/u{uid}/notebooks/remote"))).is_ok()
        && root.join(format!("srv/share/notebooks/u{uid}")).is_dir()
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP links bench: needs root to give 10,000 homes to their uids");
        return;
    }
    let quick = quick();
    let count: u32 = if quick { 200 } else { 10_000 };
    // tmpfs, as the goal is stated: the filesystem is not what is measured.
    let base = Path::new("/dev/shm");
    let dir = tempfile::tempdir_in(if base.is_dir() { base } else { Path::new("/tmp") }).unwrap();

    // The agent: a sandbox with `count` users and a local share used in place.
    let root = dir.path().join("agent");
    for sub in ["etc/pool-agent", "srv/share"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let passwd = format!("root:x:0:0::/root:/bin/bash\n{}", users(&root, FIRST_UID, count));
    std::fs::write(root.join("etc/passwd"), &passwd).unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(
        root.join("etc/pool-agent/config.toml"),
        "[share]\nkind = \"local\"\npath = \"/srv/share\"\nmount_point = \"/srv/share\"\n",
    )
    .unwrap();
    let started = Instant::now();
    let mut daemon = spawn_daemon(&root);
    let last = FIRST_UID + count - 1;
    // Users are linked in parallel chunks, out of order: wait for every one,
    // moving a cursor past those linked so each look stays cheap.
    let mut next = FIRST_UID;
    while next <= last {
        while next <= last && linked(&root, next) {
            next += 1;
        }
        if next <= last {
            assert!(started.elapsed() < Duration::from_secs(300), "the agent did not link {count} users");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let first_reconcile = started.elapsed();

    // useradd-to-link: a new user by rename, as useradd writes the file.
    let mut latencies = Vec::new();
    let runs = if quick { 2 } else { 5 };
    let mut text = passwd;
    for n in 0..runs {
        let uid = FIRST_UID + count + n;
        text.push_str(&users(&root, uid, 1));
        let next = root.join("etc/passwd+");
        std::fs::write(&next, &text).unwrap();
        let added = Instant::now();
        std::fs::rename(&next, root.join("etc/passwd")).unwrap();
        while !linked(&root, uid) {
            assert!(added.elapsed() < Duration::from_secs(30), "user {uid} never linked");
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies.push(added.elapsed());
        std::thread::sleep(Duration::from_millis(300));
    }
    latencies.sort();
    let latency = latencies[latencies.len() / 2];
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = daemon.wait();

    // The baseline: the same users, the usual shell loop.
    let shell_root = dir.path().join("shell");
    std::fs::create_dir_all(shell_root.join("share/notebooks")).unwrap();
    users(&shell_root, FIRST_UID, count);
    let script = format!(
        "cd {}; for uid in $(seq {FIRST_UID} {last}); do u=u$uid; mkdir -p home/$u/notebooks share/notebooks/$u; \
         chown $uid:$uid home/$u/notebooks share/notebooks/$u; ln -sfn \"$PWD/share/notebooks/$u\" home/$u/notebooks/remote; done",
        shell_root.display()
    );
    let started = Instant::now();
    let status = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(status.success());
    let shell = started.elapsed();

    println!("| measure | pool-agent | baseline | ratio |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| first reconcile of {count} users on tmpfs, from start (s) | {:.2} | {:.2} (shell loop: mkdir -p, chown, ln -sfn) | {:.0}x faster |",
        first_reconcile.as_secs_f64(),
        shell.as_secs_f64(),
        shell.as_secs_f64() / first_reconcile.as_secs_f64()
    );
    println!(
        "| useradd-to-link latency, median of {runs} (ms) | {:.0} | 1000 (the goal) | {:.2}x of the goal |",
        latency.as_secs_f64() * 1e3,
        latency.as_secs_f64()
    );
}
