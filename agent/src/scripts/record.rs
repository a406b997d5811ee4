//! What is remembered of each script across restarts and reboots: one small
//! JSON file per script under `/var/lib/pool-agent/scripts/`, replaced
//! atomically ([`crate::core::atomic`]).

use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Written before the script starts: found at start, it means the agent
    /// or the VM died while the script ran.
    Running,
    Succeeded,
    Failed,
    TimedOut,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub content_hash: String,
    pub outcome: Outcome,
    /// `/proc/sys/kernel/random/boot_id` of the boot it ran in.
    pub boot_id: String,
    /// The machine it ran on ([`crate::core::machine`]): a record that came
    /// with a captured image is another machine's, and counts for nothing
    /// here. Records written before this field count as this machine's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    pub started: String,
    #[serde(default)]
    pub finished: Option<String>,
    #[serde(default)]
    pub duration_seconds: Option<f64>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<String>,
    /// The process group leader of a direct run and its start time (clock
    /// ticks since boot), to stop what is left of it after a crash, and
    /// never a process that merely reuses the pid.
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// The transient unit of a run under systemd.
    #[serde(default)]
    pub unit: Option<String>,
    /// Whether the log of this run reached the share.
    #[serde(default)]
    pub log_on_share: bool,
}

impl RunRecord {
    /// What is written before a run starts: `running`, nothing known of its end.
    pub fn running(content_hash: &str, host: &Host, started: &str) -> Self {
        Self {
            content_hash: content_hash.to_string(),
            outcome: Outcome::Running,
            boot_id: host.boot_id.clone(),
            machine_id: host.machine_id.clone(),
            started: started.to_string(),
            finished: None,
            duration_seconds: None,
            exit_code: None,
            signal: None,
            pid: None,
            pid_start: None,
            unit: None,
            log_on_share: false,
        }
    }
}

pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// The record of `name`; a missing or unreadable one is none (the script
    /// runs again, which is the safe side).
    pub fn load(&self, name: &str) -> Option<RunRecord> {
        let text = fs::read(self.file(name)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn store(&self, name: &str, record: &RunRecord) -> io::Result<()> {
        let body = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        crate::core::atomic::replace_file(&self.file(name), &body, 0o644)
    }
}

/// Where and when a run happens: this boot and this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub boot_id: String,
    pub machine_id: Option<String>,
}

impl Host {
    pub fn this(paths: &crate::core::paths::SystemPaths) -> Self {
        Self { boot_id: boot_id(), machine_id: crate::core::machine::machine_id(paths) }
    }

    /// Whether `record` ran on another machine: an image's build VM, whose
    /// records were captured with its disk.
    pub fn is_other_machine(&self, record: &RunRecord) -> bool {
        match &record.machine_id {
            Some(theirs) => self.machine_id.as_ref() != Some(theirs),
            None => false,
        }
    }
}

/// This boot's id; records from another boot are of an earlier boot.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// A process's start time in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`), to tell it from a later process with the same pid.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // The command name may hold spaces and parentheses: count from the last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_a_reload_and_a_torn_temporary_file_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let records = Records::new(tmp.path().join("scripts"));
        assert_eq!(records.load("10-a"), None);
        let record = RunRecord {
            pid: Some(std::process::id()),
            pid_start: process_start(std::process::id()),
            ..RunRecord::running("abc", &Host { boot_id: boot_id(), machine_id: None }, "2026-11-23T10:00:00Z")
        };
        records.store("10-a", &record).unwrap();
        fs::write(tmp.path().join("scripts/.10-a.json.tmp"), "{\"content_ha").unwrap();
        assert_eq!(records.load("10-a"), Some(record));
        assert!(process_start(std::process::id()).is_some());
    }

    #[test]
    fn a_record_of_another_machine_counts_for_nothing_and_one_from_before_machine_ids_does() {
        let here = Host { boot_id: "b".into(), machine_id: Some("a".repeat(32)) };
        let mine = RunRecord::running("h", &here, "2026-11-23T10:00:00Z");
        assert!(!here.is_other_machine(&mine));
        let build_vm = Host { machine_id: Some("b".repeat(32)), ..here.clone() };
        assert!(here.is_other_machine(&RunRecord::running("h", &build_vm, "2026-11-23T10:00:00Z")));
        let older: RunRecord = serde_json::from_str(
            r#"{"content_hash":"h","outcome":"succeeded","boot_id":"x","started":"2026-11-23T10:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(older.machine_id, None);
        assert!(!here.is_other_machine(&older), "an upgrade does not run every once script again");
        let unknown_here = Host { machine_id: None, ..here.clone() };
        assert!(unknown_here.is_other_machine(&mine), "a machine that cannot say who it is runs them");
    }
}
