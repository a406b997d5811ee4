//! State files that survive crashes: written whole to a temporary file,
//! fsynced, renamed over the old one, and the directory fsynced, so a crash
//! leaves the old content or the new, never half of either.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `path` with `bytes` (mode `mode`), making its directory if needed.
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other(format!("{} has no directory", path.display())))?;
    let name = path.file_name().ok_or_else(|| io::Error::other(format!("{} has no file name", path.display())))?;
    fs::create_dir_all(dir)?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(name);
    temporary_name.push(".tmp");
    let temporary = dir.join(temporary_name);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_replaced_whole_and_a_planted_symlink_as_temporary_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state/holds.json");
        replace_file(&path, b"one", 0o644).unwrap();
        replace_file(&path, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let elsewhere = tmp.path().join("elsewhere");
        std::os::unix::fs::symlink(&elsewhere, tmp.path().join("state/.holds.json.tmp")).unwrap();
        assert!(replace_file(&path, b"three", 0o644).is_err());
        assert!(!elsewhere.exists());
        assert_eq!(fs::read(&path).unwrap(), b"two");
    }
}
