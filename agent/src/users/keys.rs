//! `~/.ssh/authorized_keys` for a registry account, written as the user:
//! every step below the home opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` through `core::beneath`, owner set through the
//! descriptor, the file replaced by a rename inside `~/.ssh`. A planted
//! `~/.ssh -> /root/.ssh` (or a symlinked `authorized_keys`) is refused.
//! Blocking: run it on a blocking thread.
//!
//! The registry's keys live between two marker lines; lines the user added
//! outside them are kept.

use crate::core::beneath::{open_dir, open_dir_beneath};
use nix::errno::Errno;
use nix::fcntl::{openat2, renameat, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

pub const BEGIN: &str = "# pool-agent registry keys: begin (edited by pool-agent)";
pub const END: &str = "# pool-agent registry keys: end";
/// An authorized_keys file larger than this is not read (nor replaced).
const MAX_BYTES: u64 = 256 * 1024;
const TEMP_NAME: &str = ".authorized_keys.pool-agent";

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysOutcome {
    Written,
    Unchanged,
}

/// The file's new text: its lines outside the markers, then the registry's block.
pub fn merged(existing: &str, keys: &[String]) -> String {
    let mut kept = Vec::new();
    let mut inside = false;
    for line in existing.lines() {
        match line {
            BEGIN => inside = true,
            END => inside = false,
            _ if !inside => kept.push(line),
            _ => {}
        }
    }
    let mut out = String::new();
    for line in kept {
        out.push_str(line);
        out.push('\n');
    }
    if !keys.is_empty() {
        out.push_str(BEGIN);
        out.push('\n');
        for key in keys {
            out.push_str(key.trim());
            out.push('\n');
        }
        out.push_str(END);
        out.push('\n');
    }
    out
}

fn refused(what: &str, err: Errno) -> String {
    match err {
        Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR => {
            format!("{what} is a symlink or not a directory; refused, nothing written")
        }
        err => format!("cannot open {what}: {}", err.desc()),
    }
}

/// Installs `keys` for the user owning `home` (uid, gid).
pub fn install(home: &Path, uid: u32, gid: u32, keys: &[String]) -> Result<KeysOutcome, String> {
    let home_fd = open_dir(home).map_err(|err| format!("cannot open the home {}: {}", home.display(), err.desc()))?;
    let home_stat = fstat(&home_fd).map_err(|err| format!("cannot stat the home: {}", err.desc()))?;
    if home_stat.st_uid != uid {
        return Err(format!("the home {} belongs to uid {}, not {uid}; refused", home.display(), home_stat.st_uid));
    }
    let ssh = match open_dir_beneath(&home_fd, ".ssh".as_ref()) {
        Err(Errno::ENOENT) => {
            match mkdirat(&home_fd, ".ssh", Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(err) => return Err(format!("cannot make ~/.ssh: {}", err.desc())),
            }
            let fd = open_dir_beneath(&home_fd, ".ssh".as_ref()).map_err(|err| refused("~/.ssh", err))?;
            fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(|err| format!("cannot give ~/.ssh to uid {uid}: {}", err.desc()))?;
            fd
        }
        other => other.map_err(|err| refused("~/.ssh", err))?,
    };
    let ssh_stat = fstat(&ssh).map_err(|err| format!("cannot stat ~/.ssh: {}", err.desc()))?;
    if ssh_stat.st_uid != uid {
        return Err(format!("~/.ssh belongs to uid {}, not {uid}; refused", ssh_stat.st_uid));
    }
    // sshd's StrictModes refuses keys in a directory others can write.
    if ssh_stat.st_mode & 0o077 != 0 {
        fchmod(&ssh, Mode::from_bits_truncate(0o700)).map_err(|err| format!("cannot chmod ~/.ssh: {}", err.desc()))?;
    }
    let existing = read_existing(&ssh)?;
    let text = merged(existing.as_deref().unwrap_or(""), keys);
    if existing.as_deref() == Some(text.as_str()) {
        return Ok(KeysOutcome::Unchanged);
    }
    write_replacing(&ssh, uid, gid, text.as_bytes())?;
    Ok(KeysOutcome::Written)
}

fn read_existing(ssh: &OwnedFd) -> Result<Option<String>, String> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let fd = match openat2(ssh, "authorized_keys", how) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP | Errno::EXDEV) => {
            return Err("~/.ssh/authorized_keys is a symlink; refused, nothing written".to_string())
        }
        Err(err) => return Err(format!("cannot read ~/.ssh/authorized_keys: {}", err.desc())),
    };
    let stat = fstat(&fd).map_err(|err| format!("cannot stat ~/.ssh/authorized_keys: {}", err.desc()))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFREG || stat.st_size as u64 > MAX_BYTES {
        return Err(format!("~/.ssh/authorized_keys is not a regular file under {MAX_BYTES} bytes; left alone"));
    }
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(MAX_BYTES)
        .read_to_string(&mut text)
        .map_err(|err| format!("cannot read ~/.ssh/authorized_keys: {err}"))?;
    Ok(Some(text))
}

/// A new file beside the old, owned by the user, 0600, then renamed over it.
fn write_replacing(ssh: &OwnedFd, uid: u32, gid: u32, bytes: &[u8]) -> Result<(), String> {
    // A leftover from a crash (or planted by the user) goes first; unlink never follows.
    let _ = unlinkat(ssh, TEMP_NAME, UnlinkatFlags::NoRemoveDir);
    let how = OpenHow::new()
        .flags(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .mode(Mode::from_bits_truncate(0o600))
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let fd = openat2(ssh, TEMP_NAME, how).map_err(|err| format!("cannot write in ~/.ssh: {}", err.desc()))?;
    let written = (|| {
        fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(|err| err.desc().to_string())?;
        fchmod(&fd, Mode::from_bits_truncate(0o600)).map_err(|err| err.desc().to_string())?;
        let mut file = std::fs::File::from(fd);
        file.write_all(bytes).map_err(|err| err.to_string())?;
        file.sync_all().map_err(|err| err.to_string())
    })();
    let renamed =
        written.and_then(|()| renameat(ssh, TEMP_NAME, ssh, "authorized_keys").map_err(|err| err.desc().to_string()));
    renamed.map_err(|why| {
        let _ = unlinkat(ssh, TEMP_NAME, UnlinkatFlags::NoRemoveDir);
        format!("cannot write ~/.ssh/authorized_keys: {why}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn me() -> (u32, u32) {
        (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw())
    }

    #[test]
    fn the_registry_block_is_replaced_and_the_user_s_own_lines_kept() {
        let keys = vec!["ssh-ed25519 AAAA carol@laptop".to_string()];
        let first = merged("ssh-rsa BBBB own-key\n", &keys);
        assert_eq!(first, format!("ssh-rsa BBBB own-key\n{BEGIN}\nssh-ed25519 AAAA carol@laptop\n{END}\n"));
        let second = merged(&first, &["ssh-ed25519 CCCC new".to_string()]);
        assert!(second.contains("own-key") && second.contains("CCCC") && !second.contains("AAAA"), "{second}");
        assert_eq!(merged(&second, &[]), "ssh-rsa BBBB own-key\n", "no keys: the block goes");
    }

    #[test]
    fn keys_land_0600_in_a_0700_ssh_dir_and_a_second_run_changes_nothing() {
        let home = tempfile::tempdir().unwrap();
        let (uid, gid) = me();
        let keys = vec!["ssh-ed25519 AAAA carol".to_string()];
        assert_eq!(install(home.path(), uid, gid, &keys), Ok(KeysOutcome::Written));
        let file = home.path().join(".ssh/authorized_keys");
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
        assert_eq!(std::fs::metadata(home.path().join(".ssh")).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(std::fs::read_to_string(&file).unwrap().contains("AAAA carol"));
        assert_eq!(install(home.path(), uid, gid, &keys), Ok(KeysOutcome::Unchanged));
    }

    #[test]
    fn a_planted_ssh_symlink_or_keys_symlink_is_refused_and_nothing_is_written_behind_it() {
        let home = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let (uid, gid) = me();
        std::os::unix::fs::symlink(elsewhere.path(), home.path().join(".ssh")).unwrap();
        let err = install(home.path(), uid, gid, &["ssh-ed25519 AAAA".into()]).unwrap_err();
        assert!(err.contains("~/.ssh is a symlink"), "{err}");
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);

        std::fs::remove_file(home.path().join(".ssh")).unwrap();
        std::fs::create_dir(home.path().join(".ssh")).unwrap();
        let target = elsewhere.path().join("victim");
        std::fs::write(&target, "root's keys\n").unwrap();
        std::os::unix::fs::symlink(&target, home.path().join(".ssh/authorized_keys")).unwrap();
        let err = install(home.path(), uid, gid, &["ssh-ed25519 AAAA".into()]).unwrap_err();
        assert!(err.contains("authorized_keys is a symlink"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "root's keys\n");
    }

    #[test]
    fn a_home_of_another_uid_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let (uid, gid) = me();
        let err = install(home.path(), uid + 1, gid, &["ssh-ed25519 AAAA".into()]).unwrap_err();
        assert!(err.contains("belongs to uid"), "{err}");
        assert!(!home.path().join(".ssh").exists());
    }
}
