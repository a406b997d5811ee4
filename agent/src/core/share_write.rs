//! The one way root writes a file into the share. Every user of the pool
//! can write there, so each step is taken through descriptors from the
//! checked share root: directories opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` and made with `mkdirat`, the file made
//! `O_CREAT|O_EXCL|O_NOFOLLOW` under a temporary name, its mode (and owner)
//! set through the descriptor, then renamed into place in the same directory.
//! A planted symlink anywhere on the way is refused with the reason; the
//! directory the file ends in must still be the one asked for, on the share.
//! Blocking: call it off the async workers.

use crate::core::beneath::{names, open_dir_beneath, open_share_root};
use nix::errno::Errno;
use nix::fcntl::{openat2, renameat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, Mode};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// What to write and how it must end up.
#[derive(Debug, Clone)]
pub struct ShareFile<'a> {
    /// The directory, relative to the share root (made when missing).
    pub dir: &'a Path,
    /// The file's plain name in `dir`.
    pub name: &'a str,
    /// The file's mode, set through its descriptor.
    pub mode: u32,
    /// The mode of directories this write makes.
    pub dir_mode: u32,
    /// (uid, gid) to give the file; `None` leaves it root's.
    pub owner: Option<(u32, u32)>,
    /// The contents must stay private: a share that shows another mode
    /// than `mode` gets nothing. A default cifs mount shows its `file_mode`
    /// whatever is asked; `cifsacl`/`modefromsid` keep modes in the file's ACL
    /// (https://git.zx2c4.com/linux-dev/commit/fs?id=e2f8fbfb8d09c06decde162090fac3ee220aa280).
    pub private: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareWriteError {
    /// The file was made with `asked` and the share shows `shown`.
    ModesNotKept { asked: u32, shown: u32 },
    /// Anything else: a symlink on the way, the share gone, an I/O error.
    Refused(String),
}

impl fmt::Display for ShareWriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShareWriteError::ModesNotKept { asked, shown } => write!(
                f,
                "the share does not keep file modes (SMB without cifsacl/modefromsid): a file made {asked:04o} shows {shown:04o}"
            ),
            ShareWriteError::Refused(why) => f.write_str(why),
        }
    }
}

/// How the mode of a file just made is seen: `fstat` on the system, a fake
/// in tests (a local directory always keeps modes, an SMB mount does not).
pub trait ModesSeen {
    fn mode(&self, fd: &OwnedFd) -> nix::Result<u32>;
}

/// The system's answer.
pub struct Fstat;

impl ModesSeen for Fstat {
    fn mode(&self, fd: &OwnedFd) -> nix::Result<u32> {
        fstat(fd).map(|stat| stat.st_mode & 0o7777)
    }
}

/// Writes `contents` to `<root>/<file.dir>/<file.name>` (see the module);
/// `identity` is the share root's (device, inode) as published.
pub fn write_into_share(
    root: &Path,
    identity: (u64, u64),
    file: &ShareFile,
    contents: &mut dyn Read,
) -> Result<PathBuf, ShareWriteError> {
    write_into_share_seen(root, identity, file, contents, &Fstat)
}

/// [`write_into_share`] with the mode check through a seam.
pub fn write_into_share_seen(
    root: &Path,
    identity: (u64, u64),
    file: &ShareFile,
    contents: &mut dyn Read,
    modes: &dyn ModesSeen,
) -> Result<PathBuf, ShareWriteError> {
    let shown = file.dir.join(file.name);
    let refused = |why: String| ShareWriteError::Refused(format!("{} on the share: {why}", shown.display()));
    if file.name.is_empty() || file.name.contains('/') || file.name == "." || file.name == ".." {
        return Err(refused("not a plain file name".into()));
    }
    let root_fd = open_share_root(root, identity).map_err(ShareWriteError::Refused)?;
    let root_path = fd_path(&root_fd).map_err(|err| refused(format!("cannot tell where the share root is: {err}")))?;
    let dir = make_dirs(&root_fd, file.dir, file.dir_mode).map_err(refused)?;
    // The directory must be the one asked for, on the share's file system:
    // a parent renamed or swapped since it was opened fails here.
    let expected = root_path.join(relative(file.dir));
    match (fstat(&dir), fd_path(&dir)) {
        (Ok(stat), Ok(path)) if stat.st_dev == identity.0 && path == expected => {}
        (Ok(_), Ok(path)) => {
            return Err(refused(format!(
                "the directory opened is {}, not {}; left alone",
                path.display(),
                expected.display()
            )))
        }
        (Err(err), _) => return Err(refused(format!("cannot check the directory: {err}"))),
        (_, Err(err)) => return Err(refused(format!("cannot check the directory: {err}"))),
    }
    check_target(&dir, file.name).map_err(refused)?;
    let temporary = format!(".{}.{}.tmp", file.name, std::process::id());
    let _ = unlinkat(&dir, temporary.as_str(), UnlinkatFlags::NoRemoveDir);
    let how = OpenHow::new()
        .flags(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .mode(Mode::from_bits_truncate(file.mode))
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let fd = openat2(&dir, temporary.as_str(), how).map_err(|err| refused(format!("cannot create it: {err}")))?;
    let written = fill(&fd, file, contents, modes).and_then(|()| {
        // Checked again just before: a symlink there now is replaced, never followed.
        check_target(&dir, file.name).map_err(ShareWriteError::Refused)?;
        renameat(&dir, temporary.as_str(), &dir, file.name)
            .map_err(|err| ShareWriteError::Refused(format!("cannot put it in place: {err}")))
    });
    if let Err(err) = written {
        let _ = unlinkat(&dir, temporary.as_str(), UnlinkatFlags::NoRemoveDir);
        return Err(match err {
            ShareWriteError::Refused(why) => refused(why),
            modes => modes,
        });
    }
    Ok(root.join(relative(file.dir)).join(file.name))
}

/// Removes `<root>/<dir>/<name>` if it is a regular file (an earlier copy
/// that must not stay, e.g. a root log copied before the share was found to
/// fake modes); a symlink or anything else there is left alone. Missing
/// folders or file: nothing to do. Returns whether a file was removed.
pub fn remove_from_share(root: &Path, identity: (u64, u64), dir: &Path, name: &str) -> Result<bool, String> {
    let root_fd = open_share_root(root, identity)?;
    let mut fd = root_fd;
    for part in names(dir) {
        fd = match open_dir_beneath(&fd, part) {
            Ok(next) => next,
            Err(Errno::ENOENT) => return Ok(false),
            Err(err) => return Err(format!("{}: {err}; left alone", dir.display())),
        };
    }
    match fstatat(&fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(false),
        Err(err) => Err(format!("{}/{name}: {err}", dir.display())),
        Ok(stat) if stat.st_mode & libc::S_IFMT == libc::S_IFREG => unlinkat(&fd, name, UnlinkatFlags::NoRemoveDir)
            .map(|()| true)
            .map_err(|err| format!("cannot remove {}/{name}: {err}", dir.display())),
        Ok(_) => Ok(false),
    }
}

/// `dir` as plain names (no `/`, `.` or `..`).
fn relative(dir: &Path) -> PathBuf {
    names(dir).iter().collect()
}

/// Owner, mode, the mode check, then the bytes: a private file on a share
/// that fakes modes is never given its contents.
fn fill(fd: &OwnedFd, file: &ShareFile, contents: &mut dyn Read, modes: &dyn ModesSeen) -> Result<(), ShareWriteError> {
    let failed = |what: &str, err: String| ShareWriteError::Refused(format!("{what}: {err}"));
    if let Some((uid, gid)) = file.owner {
        fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| failed("cannot set its owner", e.to_string()))?;
    }
    fchmod(fd, Mode::from_bits_truncate(file.mode)).map_err(|e| failed("cannot set its mode", e.to_string()))?;
    let shown = modes.mode(fd).map_err(|e| failed("cannot read its mode", e.to_string()))?;
    if file.private && shown != file.mode & 0o7777 {
        return Err(ShareWriteError::ModesNotKept { asked: file.mode & 0o7777, shown });
    }
    let mut out = std::fs::File::from(fd.try_clone().map_err(|e| failed("cannot write", e.to_string()))?);
    io::copy(contents, &mut out).map_err(|e| failed("cannot write", e.to_string()))?;
    out.flush().and_then(|()| out.sync_all()).map_err(|e| failed("cannot write", e.to_string()))
}

/// The name may be missing or a regular file; a symlink, a directory or
/// anything else planted there is refused, saying what it is.
fn check_target(dir: &OwnedFd, name: &str) -> Result<(), String> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(()),
        Err(err) => Err(format!("cannot look at it: {err}")),
        Ok(stat) => match stat.st_mode & libc::S_IFMT {
            libc::S_IFREG => Ok(()),
            libc::S_IFLNK => Err("a symlink is planted there; not followed, nothing written".into()),
            libc::S_IFDIR => Err("a directory is there; left alone".into()),
            _ => Err("something other than a file is there; left alone".into()),
        },
    }
}

/// Opens `relative` below `root`, making missing directories with `mode`
/// (set through the descriptor: the agent's umask does not decide it).
fn make_dirs(root: &OwnedFd, relative: &Path, mode: u32) -> Result<OwnedFd, String> {
    let mut dir = root.try_clone().map_err(|err| format!("cannot open the share root: {err}"))?;
    for part in names(relative) {
        let shown = part.to_string_lossy();
        let opened = match open_dir_beneath(&dir, part) {
            Err(Errno::ENOENT) => match mkdirat(&dir, part, Mode::from_bits_truncate(mode)) {
                Ok(()) => open_dir_beneath(&dir, part).and_then(|made| {
                    fchmod(&made, Mode::from_bits_truncate(mode))?;
                    Ok(made)
                }),
                Err(Errno::EEXIST) => open_dir_beneath(&dir, part),
                Err(err) => Err(err),
            },
            other => other,
        };
        dir = opened.map_err(|err| match err {
            Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR => {
                format!("{shown} is a symlink or not a directory; not followed, nothing written")
            }
            err => format!("cannot open {shown}: {err}"),
        })?;
    }
    Ok(dir)
}

/// Where a descriptor's file is now, as the kernel says.
fn fd_path(fd: &OwnedFd) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    struct Share {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        elsewhere: PathBuf,
        identity: (u64, u64),
    }

    fn share() -> Share {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("share");
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&elsewhere).unwrap();
        fs::write(elsewhere.join("shadow"), "root:secret\n").unwrap();
        let meta = fs::metadata(&root).unwrap();
        Share { identity: (meta.dev(), meta.ino()), root, elsewhere, _tmp: tmp }
    }

    fn log(dir: &str, name: &'static str) -> ShareFile<'static> {
        let dir: &'static Path = Box::leak(PathBuf::from(dir).into_boxed_path());
        ShareFile { dir, name, mode: 0o600, dir_mode: 0o700, owner: None, private: true }
    }

    fn write(share: &Share, file: &ShareFile) -> Result<PathBuf, ShareWriteError> {
        write_into_share(&share.root, share.identity, file, &mut &b"token=abc\n"[..])
    }

    /// Everything below `elsewhere`, with contents: must not change.
    fn outside(share: &Share) -> Vec<(String, String)> {
        let mut seen: Vec<_> = fs::read_dir(&share.elsewhere)
            .unwrap()
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), fs::read_to_string(e.path()).unwrap_or_default()))
            .collect();
        seen.sort();
        seen
    }

    #[test]
    fn a_log_lands_with_its_mode_through_new_directories_and_replaces_the_last_copy() {
        let share = share();
        let placed = write(&share, &log("Logs/vm-1/drain", "a.log")).unwrap();
        assert_eq!(placed, share.root.join("Logs/vm-1/drain/a.log"));
        assert_eq!(fs::read_to_string(&placed).unwrap(), "token=abc\n");
        assert_eq!(fs::metadata(&placed).unwrap().permissions().mode() & 0o777, 0o600);
        let made = fs::metadata(share.root.join("Logs/vm-1")).unwrap();
        assert_eq!(made.permissions().mode() & 0o777, 0o700, "set through the descriptor, not left to the umask");
        write_into_share(&share.root, share.identity, &log("Logs/vm-1/drain", "a.log"), &mut &b"second\n"[..]).unwrap();
        assert_eq!(fs::read_to_string(&placed).unwrap(), "second\n");
        let left: Vec<_> = fs::read_dir(share.root.join("Logs/vm-1/drain")).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn a_symlink_planted_as_the_file_name_is_refused_and_its_target_untouched() {
        let share = share();
        fs::create_dir_all(share.root.join("Logs/vm-1/drain")).unwrap();
        symlink(share.elsewhere.join("shadow"), share.root.join("Logs/vm-1/drain/x.log")).unwrap();
        let before = outside(&share);
        let err = write(&share, &log("Logs/vm-1/drain", "x.log")).unwrap_err().to_string();
        assert!(err.contains("Logs/vm-1/drain/x.log") && err.contains("symlink"), "{err}");
        assert_eq!(outside(&share), before);
        assert!(fs::symlink_metadata(share.root.join("Logs/vm-1/drain/x.log")).unwrap().file_type().is_symlink());
        let left: Vec<_> = fs::read_dir(share.root.join("Logs/vm-1/drain")).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "the temporary file is gone");
    }

    #[test]
    fn a_symlinked_parent_is_refused_at_any_depth_and_nothing_is_made_behind_it() {
        for (plant, at) in [("Logs", ""), ("Logs/vm-1", "Logs"), ("Logs/vm-1/drain", "Logs/vm-1")] {
            let share = share();
            fs::create_dir_all(share.root.join(at)).unwrap();
            symlink(&share.elsewhere, share.root.join(plant)).unwrap();
            let before = outside(&share);
            let err = write(&share, &log("Logs/vm-1/drain", "a.log")).unwrap_err().to_string();
            let last = Path::new(plant).file_name().unwrap().to_string_lossy().into_owned();
            assert!(err.contains(&format!("{last} is a symlink")), "{plant}: {err}");
            assert_eq!(outside(&share), before, "{plant}: nothing written outside the share");
        }
    }

    #[test]
    fn a_share_gone_unseen_or_an_odd_name_gets_nothing() {
        let share = share();
        let wrong = (share.identity.0, share.identity.1 + 1);
        let err = write_into_share(&share.root, wrong, &log("Logs", "a.log"), &mut &b"x"[..]).unwrap_err();
        assert!(err.to_string().contains("not the mounted share"), "{err}");
        assert!(!share.root.join("Logs").exists());
        for name in ["", "..", "a/b"] {
            let file = ShareFile { name, ..log("Logs", "a.log") };
            assert!(write(&share, &file).is_err(), "{name:?}");
        }
        assert!(!share.root.join("Logs").exists());
    }

    #[test]
    fn a_directory_or_fifo_where_the_file_goes_is_left_alone() {
        let share = share();
        fs::create_dir_all(share.root.join("Logs/a.log")).unwrap();
        let err = write(&share, &log("Logs", "a.log")).unwrap_err().to_string();
        assert!(err.contains("directory"), "{err}");
        nix::unistd::mkfifo(&share.root.join("Logs/b.log"), Mode::from_bits_truncate(0o600)).unwrap();
        let err = write(&share, &log("Logs", "b.log")).unwrap_err().to_string();
        assert!(err.contains("other than a file"), "{err}");
    }

    /// An SMB mount without cifsacl/modefromsid: every file shows 0664.
    struct Smb;
    impl ModesSeen for Smb {
        fn mode(&self, _fd: &OwnedFd) -> nix::Result<u32> {
            Ok(0o664)
        }
    }

    struct Unreadable;
    impl ModesSeen for Unreadable {
        fn mode(&self, _fd: &OwnedFd) -> nix::Result<u32> {
            Err(Errno::EIO)
        }
    }

    #[test]
    fn a_private_file_on_a_share_that_fakes_modes_gets_no_bytes_and_says_why() {
        let share = share();
        let file = log("Logs/vm-1", "root.log");
        let err = write_into_share_seen(&share.root, share.identity, &file, &mut &b"secret"[..], &Smb).unwrap_err();
        assert_eq!(err, ShareWriteError::ModesNotKept { asked: 0o600, shown: 0o664 });
        assert!(err.to_string().contains("does not keep file modes"), "{err}");
        let left: Vec<_> = fs::read_dir(share.root.join("Logs/vm-1")).unwrap().flatten().collect();
        assert!(left.is_empty(), "neither the file nor its temporary name stays");
        // A mode that cannot be read is not taken as kept.
        let err = write_into_share_seen(&share.root, share.identity, &file, &mut &b"secret"[..], &Unreadable);
        assert!(matches!(err, Err(ShareWriteError::Refused(_))), "{err:?}");
        assert!(fs::read_dir(share.root.join("Logs/vm-1")).unwrap().next().is_none());
        // Not private: written all the same, with what the share gives.
        let open = ShareFile { private: false, ..file };
        assert!(write_into_share_seen(&share.root, share.identity, &open, &mut &b"hello"[..], &Smb).is_ok());
        assert_eq!(fs::read_to_string(share.root.join("Logs/vm-1/root.log")).unwrap(), "hello");
    }

    #[test]
    fn an_earlier_copy_is_removed_but_a_symlink_there_or_behind_a_symlinked_folder_is_left() {
        let share = share();
        write(&share, &log("Logs/vm-1", "a.log")).unwrap();
        assert_eq!(remove_from_share(&share.root, share.identity, Path::new("Logs/vm-1"), "a.log"), Ok(true));
        assert!(!share.root.join("Logs/vm-1/a.log").exists());
        assert_eq!(remove_from_share(&share.root, share.identity, Path::new("Logs/vm-1"), "a.log"), Ok(false));
        assert_eq!(remove_from_share(&share.root, share.identity, Path::new("Logs/none"), "a.log"), Ok(false));
        symlink(share.elsewhere.join("shadow"), share.root.join("Logs/vm-1/b.log")).unwrap();
        assert_eq!(remove_from_share(&share.root, share.identity, Path::new("Logs/vm-1"), "b.log"), Ok(false));
        assert!(fs::symlink_metadata(share.root.join("Logs/vm-1/b.log")).is_ok());
        symlink(&share.elsewhere, share.root.join("Logs/vm-2")).unwrap();
        assert!(remove_from_share(&share.root, share.identity, Path::new("Logs/vm-2"), "shadow").is_err());
        assert_eq!(fs::read_to_string(share.elsewhere.join("shadow")).unwrap(), "root:secret\n");
    }
}
