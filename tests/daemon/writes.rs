//! The writes signal under `pool-agentd --root` as root: a real fanotify
//! group with a mount mark on the file system holding the sandbox's homes
//! (a plain directory on the host: a mount mark sees it), and a real
//! process of alice's uid saving a file.

// Black-box tests poll real processes from plain threads; sleeping is the point.
#![allow(clippy::disallowed_methods)]

use crate::harness::*;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant, SystemTime};

fn verdict(sandbox: &Sandbox) -> serde_json::Value {
    sandbox.cli_json(&["idle", "--json"])
}

fn writes(verdict: &serde_json::Value) -> serde_json::Value {
    verdict["signals"].as_array().unwrap().iter().find(|s| s["name"] == "writes").cloned().unwrap_or_default()
}

#[test]
fn a_file_saved_every_20s_keeps_the_vm_active_past_the_timeout_and_once_nothing_writes_it_goes_idle() {
    let test = "a_file_saved_every_20s_keeps_the_vm_active_past_the_timeout_and_once_nothing_writes_it_goes_idle";
    if !nix_is_root() {
        skip_note(&format!("SKIP {test}: fanotify needs root (CAP_SYS_ADMIN)"));
        return;
    }
    let sandbox = Sandbox::new();
    let timeout = Duration::from_secs(60);
    sandbox.write_config(
        &LOCAL_SHARE_CONFIG.replace("interval = \"10s\"\ntimeout = \"30m\"\n", "interval = \"5s\"\ntimeout = \"1m\"\n"),
    );
    let _daemon = sandbox.start();
    let first = eventually(Duration::from_secs(20), || Some(writes(&verdict(&sandbox))).filter(|w| !w.is_null()))
        .expect("a writes signal");
    if first["state"] == "absent" {
        skip_note(&format!("SKIP {test}: no fanotify here: {first}"));
        return;
    }
    assert_eq!(first["state"], "idle", "{first:#}");
    // The marker marks the homes at its start; give it a moment.
    std::thread::sleep(Duration::from_secs(2));
    let notes = sandbox.root().join("home/alice/notes.txt");
    let script = format!("for i in 1 2 3 4 5 6; do echo $i >> '{}'; sleep 20; done", notes.display());
    let started = Instant::now();
    let mut alice =
        std::process::Command::new("sh").args(["-c", &script]).uid(ADMIN_UID).gid(ADMIN_UID).spawn().unwrap();
    let mut seen_writing = None;
    // Two minutes of a save every 20 s: active all along, twice the 1 minute timeout.
    while started.elapsed() < Duration::from_secs(115) {
        let now = verdict(&sandbox);
        assert_eq!(now["verdict"], "active", "after {:?} of saving: {now:#}", started.elapsed());
        let signal = writes(&now);
        if signal["state"] == "active" {
            seen_writing = Some(signal);
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    let seen = seen_writing.expect("the writes signal saw the saves");
    let reason = seen["reasons"][0].as_str().unwrap();
    assert!(reason.starts_with("alice wrote ") && reason.contains("notes.txt (sh pid "), "{seen:#}");
    alice.wait().unwrap();
    // Nothing writes any more: idle one timeout after the last save, not before.
    let last_save = std::fs::metadata(&notes).unwrap().modified().unwrap();
    let idle = eventually(Duration::from_secs(120), || {
        let now = verdict(&sandbox);
        let at = SystemTime::now();
        if now["verdict"] == "idle" {
            return Some((now, at));
        }
        None
    });
    let (idle, at) = idle.unwrap_or_else(|| panic!("never idle after the saves stopped: {:#}", verdict(&sandbox)));
    let quiet = at.duration_since(last_save).unwrap();
    assert!(quiet >= timeout - Duration::from_secs(1), "idle {quiet:?} after the last save: {idle:#}");
    assert!(quiet <= timeout + Duration::from_secs(20), "idle only {quiet:?} after the last save: {idle:#}");
}
