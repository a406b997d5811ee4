//! Each script's log: stdout and stderr interleaved as they come, each line
//! with its time, appended to `/var/log/pool-agent/scripts/<name>.log`
//! (rotated past a size), and copied to `Logs/<instance>/<name>.log` on the
//! share once it is mounted.

use super::report::ScriptReport;
use crate::core::share_write::{write_into_share_seen, ModesSeen, ShareFile, ShareWriteError};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A log grows to this, then becomes `<name>.log.1` (older ones shift up).
pub const MAX_LOG_BYTES: u64 = 4 * 1024 * 1024;
/// Rotated logs kept besides the current one.
pub const KEPT_LOGS: u32 = 3;
/// One line longer than this is cut (a binary blob on stdout).
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// `scripts log` without an offset shows the end of the log.
pub const TAIL_BYTES: u64 = 64 * 1024;

pub struct LogFile {
    path: PathBuf,
    file: fs::File,
    size: u64,
}

impl LogFile {
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        let mut log = Self { path: path.to_path_buf(), file, size };
        if log.size >= MAX_LOG_BYTES {
            log.rotate()?;
        }
        Ok(log)
    }

    /// Appends one line with its time; rotates when the file is full.
    pub fn line(&mut self, stamp: &str, text: &str) -> io::Result<()> {
        let text = text.trim_end_matches(['\n', '\r']);
        let line = format!("{stamp} {text}\n");
        self.file.write_all(line.as_bytes())?;
        self.size += line.len() as u64;
        if self.size >= MAX_LOG_BYTES {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        for n in (1..KEPT_LOGS).rev() {
            let _ = fs::rename(numbered(&self.path, n), numbered(&self.path, n + 1));
        }
        fs::rename(&self.path, numbered(&self.path, 1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new().append(true).create(true).mode(0o640).custom_flags(libc::O_NOFOLLOW).open(path)
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The log from `offset` (or its last [`TAIL_BYTES`]), at most `limit` bytes;
/// returns the text and the offset to ask from next. A log rotated under a
/// follower (offset past its end) starts again from 0.
pub fn read_from(path: &Path, offset: Option<u64>, limit: u64) -> io::Result<(u64, String, u64)> {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok((0, String::new(), 0)),
        Err(err) => return Err(err),
    };
    let size = file.metadata()?.len();
    let start = match offset {
        Some(offset) if offset <= size => offset,
        Some(_) => 0,
        None => size.saturating_sub(TAIL_BYTES),
    };
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    let next = start + bytes.len() as u64;
    Ok((start, String::from_utf8_lossy(&bytes).into_owned(), next))
}

/// Copies the local log to `<root>/Logs/<instance>/<name>.log` through the
/// core's one way of writing into the share (checked root, no symlink
/// followed, temporary file renamed into place). The copy is 0600 in a 0700
/// folder: output often holds tokens, and every VM of the pool writes here.
/// `private` (a root script's log) refuses a share that does not keep modes.
pub fn copy_to_share(
    local: &Path,
    root: &Path,
    identity: (u64, u64),
    instance: &str,
    name: &str,
    private: bool,
    modes: &dyn ModesSeen,
) -> Result<PathBuf, ShareWriteError> {
    let dir = Path::new("Logs").join(instance);
    let file_name = format!("{name}.log");
    let file = ShareFile { dir: &dir, name: &file_name, mode: 0o600, dir_mode: 0o700, owner: None, private };
    let mut input =
        fs::File::open(local).map_err(|err| ShareWriteError::Refused(format!("{}: {err}", local.display())))?;
    write_into_share_seen(root, identity, &file, &mut input, modes)
}

/// Removes an earlier copy of the log from the share (copied before the
/// share was found to fake modes, or by an older agent): it must not stay
/// readable there.
pub fn remove_from_share(root: &Path, identity: (u64, u64), instance: &str, name: &str) -> Result<bool, String> {
    crate::core::share_write::remove_from_share(
        root,
        identity,
        &Path::new("Logs").join(instance),
        &format!("{name}.log"),
    )
}

/// Whether a script's log must stay private on the share: a root script's,
/// or one whose user is not known (the safe side).
pub fn is_private(row: Option<&ScriptReport>) -> bool {
    row.is_none_or(|row| row.run_as_uid.is_none_or(|uid| uid == 0) || row.run_as == "root")
}

/// What `pool-agent scripts` says when root scripts' logs stay on the VM.
pub fn modes_not_kept_note(local_dir: &Path) -> String {
    format!(
        "the share does not keep file modes (SMB without cifsacl/modefromsid): root scripts' logs stay on the VM in {}",
        local_dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn lines_are_stamped_and_the_log_rotates_keeping_three() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("scripts/a.log");
        let mut log = LogFile::open(&path).unwrap();
        log.line("2026-11-23T10:00:00.000Z", "hello\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "2026-11-23T10:00:00.000Z hello\n");
        let long = "x".repeat(1024 * 1024);
        for _ in 0..(4 * KEPT_LOGS + 2) {
            log.line("t", &long).unwrap();
        }
        assert!(fs::metadata(&path).unwrap().len() < MAX_LOG_BYTES);
        assert!(numbered(&path, KEPT_LOGS).exists());
        assert!(!numbered(&path, KEPT_LOGS + 1).exists());
    }

    #[test]
    fn a_follower_reads_on_from_its_offset_and_starts_over_after_a_rotation() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.log");
        fs::write(&path, "one\ntwo\n").unwrap();
        let (start, text, next) = read_from(&path, None, 1 << 20).unwrap();
        assert_eq!((start, text.as_str(), next), (0, "one\ntwo\n", 8));
        fs::write(&path, "one\ntwo\nthree\n").unwrap();
        assert_eq!(read_from(&path, Some(next), 1 << 20).unwrap().1, "three\n");
        fs::write(&path, "new\n").unwrap();
        assert_eq!(read_from(&path, Some(14), 1 << 20).unwrap().1, "new\n");
    }

    #[test]
    fn the_log_lands_under_logs_instance_and_not_through_a_planted_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir_all(&share).unwrap();
        fs::create_dir_all(&elsewhere).unwrap();
        let local = tmp.path().join("a.log");
        fs::write(&local, "t line\n").unwrap();
        let meta = fs::metadata(&share).unwrap();
        let identity = (meta.dev(), meta.ino());
        let placed =
            copy_to_share(&local, &share, identity, "vm-1", "10-a", true, &crate::core::share_write::Fstat).unwrap();
        assert_eq!(placed, share.join("Logs/vm-1/10-a.log"));
        assert_eq!(fs::read_to_string(&placed).unwrap(), "t line\n");
        std::os::unix::fs::symlink(&elsewhere, share.join("Logs/vm-2")).unwrap();
        assert!(
            copy_to_share(&local, &share, identity, "vm-2", "10-a", true, &crate::core::share_write::Fstat).is_err()
        );
        assert!(fs::read_dir(&elsewhere).unwrap().next().is_none(), "nothing written through the symlink");
        assert!(copy_to_share(
            &local,
            &share,
            (meta.dev(), meta.ino() + 1),
            "vm-1",
            "10-a",
            true,
            &crate::core::share_write::Fstat
        )
        .is_err());
    }

    #[test]
    fn a_root_script_s_log_or_one_whose_user_is_unknown_is_private_a_local_user_s_is_not() {
        let row = |run_as: &str, uid: Option<u32>| ScriptReport {
            name: "a".into(),
            path: String::new(),
            run_as: run_as.into(),
            run_as_uid: uid,
            when: "once".into(),
            blocking: true,
            state: super::super::report::ScriptState::Succeeded,
            reason: None,
            pid: None,
            unit: None,
            started: None,
            finished: None,
            duration_seconds: None,
            timeout_seconds: 900,
            exit_code: None,
            signal: None,
            log: String::new(),
            shared_log: None,
            content_hash: String::new(),
        };
        assert!(is_private(Some(&row("root", Some(0)))));
        assert!(is_private(Some(&row("azureuser", None))), "a user not resolved is the safe side");
        assert!(is_private(Some(&row("toor", Some(0)))), "uid 0 under another name");
        assert!(is_private(None), "no row: the safe side");
        assert!(!is_private(Some(&row("azureuser", Some(1000)))));
        let note = modes_not_kept_note(Path::new("/var/log/pool-agent/scripts"));
        assert!(note.contains("does not keep file modes") && note.ends_with("/var/log/pool-agent/scripts"), "{note}");
    }
}
