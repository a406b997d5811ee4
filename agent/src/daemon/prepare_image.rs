//! `pool-agentd --prepare-image`: makes a VM that ran the agent fit to be
//! captured as a pool's image, in the spirit of `waagent -deprovision` and
//! `cloud-init clean`. What one machine learned is cleared so every VM made
//! from the image starts as new: its `once` scripts run, no hold or
//! last-good config of the build VM is carried. Config, keys and the unit
//! (enabled, so it starts at first boot) stay as they are.

use crate::config::Settings;
use crate::core::mount::{Mounter, SystemMounter};
use crate::core::paths::SystemPaths;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const UNIT: &str = "pool-agentd.service";
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);

/// What each entry of the state directory is, to say what was cleared.
fn describe(name: &str) -> &'static str {
    match name {
        "scripts" => "setup scripts' run records (once scripts run again)",
        "holds.json" => "holds",
        "last-good-config.toml" => "the last good config",
        "private-mounts.json" => "the private mounts made",
        _ => "state",
    }
}

pub fn prepare(paths: &SystemPaths, settings: Option<&Settings>) -> ExitCode {
    let mut failures = Vec::new();
    if let Err(err) = stop_the_agent(paths) {
        eprintln!("pool-agentd: --prepare-image: {err}");
        return ExitCode::from(1);
    }
    if let Some(settings) = settings {
        unmount_network_mounts(paths, settings, &mut failures);
    }
    let mut cleared = 0;
    for (dir, what) in [(paths.state_dir(), None), (paths.script_log_dir(), Some("setup scripts' logs"))] {
        match clear_dir(&dir) {
            Ok(removed) => {
                for name in &removed {
                    let described = what.unwrap_or_else(|| describe(name));
                    println!("cleared {described}: {}", dir.join(name).display());
                }
                cleared += removed.len();
            }
            Err(err) => failures.push(format!("cannot clear {}: {err}", dir.display())),
        }
    }
    if cleared == 0 && failures.is_empty() {
        println!("nothing to clear: no state or logs of this machine");
    }
    for failure in &failures {
        eprintln!("pool-agentd: --prepare-image: {failure}");
    }
    if crate::core::machine::machine_id(paths).is_some() {
        println!(
            "note: {} is the OS's and is kept; image tools empty it (and remove /var/lib/dbus/machine-id) so each VM gets its own",
            paths.resolve(crate::core::machine::MACHINE_ID_FILE).display()
        );
    }
    if failures.is_empty() {
        println!("ready for capture: the config in {} is kept, and {UNIT} starts at the image's first boot", {
            paths.resolve("/etc/pool-agent").display()
        });
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// A running agent would write its state again: on the system it is stopped
/// through systemd (nothing else is); in a sandbox it must be stopped first.
fn stop_the_agent(paths: &SystemPaths) -> Result<(), String> {
    let socket = paths.socket();
    if !answers(&socket) {
        return Ok(());
    }
    if paths.is_sandbox() {
        return Err(format!("a pool-agentd answers on {}: stop it first", socket.display()));
    }
    let stopped = std::process::Command::new("systemctl")
        .args(["stop", UNIT])
        .status()
        .map_err(|err| format!("pool-agentd is running and systemctl cannot be run to stop it: {err}"))?;
    if !stopped.success() || answers(&socket) {
        return Err(format!("pool-agentd is running and `systemctl stop {UNIT}` did not stop it"));
    }
    println!("stopped {UNIT}");
    Ok(())
}

fn answers(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

/// The share and private mounts the agent made: a captured disk holds none
/// of them, but the build VM should not keep serving a share it forgot.
fn unmount_network_mounts(paths: &SystemPaths, settings: &Settings, failures: &mut Vec<String>) {
    let Ok(table) = crate::core::mountinfo::read() else { return };
    let share = settings.share.as_ref().map(|share| paths.resolve(&share.mount_point));
    let private = paths.resolve(&settings.links.private_root);
    let mut targets: Vec<PathBuf> = table
        .iter()
        .filter(|m| matches!(m.fstype.as_str(), "cifs" | "smb3" | "nfs" | "nfs4"))
        .filter(|m| Some(&m.mount_point) == share.as_ref() || m.mount_point.starts_with(&private))
        .map(|m| m.mount_point.clone())
        .collect();
    if targets.is_empty() {
        return;
    }
    // Deepest first: a mount inside another comes off before its parent.
    targets.sort_by_key(|t| std::cmp::Reverse(t.components().count()));
    targets.dedup();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return failures.push(format!("cannot unmount the share: {err}")),
    };
    for target in targets {
        match runtime.block_on(SystemMounter.unmount_lazy(target.clone(), UNMOUNT_TIMEOUT)) {
            Ok(()) => println!("unmounted {}", target.display()),
            Err(err) => failures.push(format!("cannot unmount {}: {err}", target.display())),
        }
    }
}

/// Removes everything inside `dir` (not `dir` itself: the package made it,
/// with its owner and mode). Returns the names removed, in order.
fn clear_dir(dir: &Path) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        // A DirEntry's type is the entry's own: a link is removed, never followed.
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clearing_removes_files_directories_and_links_but_not_what_a_link_points_at() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(state.join("scripts")).unwrap();
        std::fs::write(state.join("scripts/10-a.json"), "{}").unwrap();
        std::fs::write(state.join("holds.json"), "[]").unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, state.join("planted")).unwrap();
        let removed = clear_dir(&state).unwrap();
        assert_eq!(removed, ["holds.json", "planted", "scripts"]);
        assert!(state.is_dir(), "the directory itself stays");
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
        assert!(outside.join("keep").exists(), "a link's target is not touched");
        assert_eq!(clear_dir(&dir.path().join("missing")).unwrap(), Vec::<String>::new());
    }
}
