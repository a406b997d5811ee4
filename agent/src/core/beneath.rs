//! Directory work below a root the agent does not trust (a user's home, the
//! share): every step opened relative to a directory descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so a planted symlink is
//! refused, never followed. Blocking: call it off the async workers.

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, mkdirat, Mode};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};

/// Opens the directory `name` in `dir`, refusing symlinks and escapes.
pub fn open_dir_beneath(dir: &OwnedFd, name: &OsStr) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    openat2(dir, name, how)
}

/// Opens a directory the agent trusts by path (a home's parent, a mount point).
pub fn open_dir(path: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(path, OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
}

/// The plain names of a relative path (`.`, `..` and `/` dropped).
pub fn names(relative: &Path) -> Vec<&OsStr> {
    relative
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect()
}

/// Opens the share's root and checks it is the mounted share ((device,
/// inode) as published): a mount gone unseen leaves a local directory there,
/// which must never be written to.
pub fn open_share_root(root: &Path, identity: (u64, u64)) -> Result<OwnedFd, String> {
    let fd = open_dir(root).map_err(|err| format!("cannot open the share root {}: {err}", root.display()))?;
    match fstat(&fd) {
        Ok(stat) if (stat.st_dev, stat.st_ino) == identity => Ok(fd),
        Ok(_) => Err(format!("{} is not the mounted share any more", root.display())),
        Err(err) => Err(format!("cannot stat the share root {}: {err}", root.display())),
    }
}

/// Opens `relative` below `dir`, making missing directories with `mode`.
pub fn make_dirs_beneath(dir: OwnedFd, relative: &Path, mode: u32) -> Result<OwnedFd, String> {
    let mut dir = dir;
    for part in names(relative) {
        let opened = match open_dir_beneath(&dir, part) {
            Err(Errno::ENOENT) => match mkdirat(&dir, part, Mode::from_bits_truncate(mode)) {
                Ok(()) | Err(Errno::EEXIST) => open_dir_beneath(&dir, part),
                Err(err) => Err(err),
            },
            other => other,
        };
        dir = opened.map_err(|err| match err {
            Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR => {
                format!("{} is not a directory (or is a symlink); left alone", part.to_string_lossy())
            }
            err => format!("cannot open {}: {err}", part.to_string_lossy()),
        })?;
    }
    Ok(dir)
}

/// A small regular file read below a directory users control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmallFile {
    pub name: String,
    pub owner: u32,
    pub bytes: Vec<u8>,
}

/// Files read at most by one call: a directory others can write may hold
/// any number (a pool of 1,000 VMs has 1,000 records).
pub const MAX_SMALL_FILES: usize = 1000;

/// The regular files named `prefix*suffix` in `base/relative` (the first
/// [`MAX_SMALL_FILES`] met), each at most `max_bytes`, read without following a symlink anywhere below `base` (a
/// FIFO or a device planted there is skipped, not waited on). A missing
/// directory is no files; other failures say why.
pub fn read_small_files_beneath(
    base: &Path,
    relative: &Path,
    prefix: &str,
    suffix: &str,
    max_bytes: u64,
) -> Result<Vec<SmallFile>, String> {
    use std::io::Read;
    let mut dir = match open_dir(base) {
        Ok(dir) => dir,
        Err(Errno::ENOENT) => return Ok(Vec::new()),
        Err(err) => return Err(format!("cannot open {}: {err}", base.display())),
    };
    for part in names(relative) {
        dir = match open_dir_beneath(&dir, part) {
            Ok(next) => next,
            Err(Errno::ENOENT) => return Ok(Vec::new()),
            Err(Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR) => {
                return Err(format!(
                    "{} below {} is a symlink or not a directory; not read",
                    relative.display(),
                    base.display()
                ))
            }
            Err(err) => return Err(format!("cannot open {}: {err}", base.join(relative).display())),
        };
    }
    let listing = nix::dir::Dir::from_fd(dir.try_clone().map_err(|err| format!("cannot list: {err}"))?)
        .map_err(|err| format!("cannot list {}: {err}", base.join(relative).display()))?;
    let mut files = Vec::new();
    for entry in listing.into_iter().flatten() {
        if files.len() >= MAX_SMALL_FILES {
            break;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(prefix) && name.ends_with(suffix)) {
            continue;
        }
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        let Ok(fd) = openat2(&dir, name.as_str(), how) else { continue };
        let Ok(stat) = fstat(&fd) else { continue };
        if stat.st_mode & libc::S_IFMT != libc::S_IFREG || stat.st_size as u64 > max_bytes {
            continue;
        }
        let mut bytes = Vec::new();
        if std::fs::File::from(fd).take(max_bytes).read_to_end(&mut bytes).is_ok() {
            files.push(SmallFile { name, owner: stat.st_uid, bytes });
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_symlink_on_the_way_is_refused_and_nothing_is_made_behind_it() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("Logs")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("Logs/vm1")).unwrap();
        let root = open_dir(tmp.path()).unwrap();
        let err = make_dirs_beneath(root, Path::new("Logs/vm1/deeper"), 0o755).unwrap_err();
        assert!(err.contains("vm1"), "{err}");
        assert!(!outside.path().join("deeper").exists());
        let root = open_dir(tmp.path()).unwrap();
        assert!(make_dirs_beneath(root, Path::new("Logs/vm2"), 0o755).is_ok());
        assert!(tmp.path().join("Logs/vm2").is_dir());
    }

    #[test]
    fn the_share_root_must_be_the_published_one() {
        let tmp = tempfile::tempdir().unwrap();
        let meta = std::fs::metadata(tmp.path()).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert!(open_share_root(tmp.path(), (meta.dev(), meta.ino())).is_ok());
        let err = open_share_root(tmp.path(), (meta.dev(), meta.ino() + 1)).unwrap_err();
        assert!(err.contains("not the mounted share"), "{err}");
    }

    #[test]
    fn small_files_are_read_without_following_symlinks_or_waiting_on_a_fifo() {
        let tmp = tempfile::tempdir().unwrap();
        let runtime = tmp.path().join(".local/share/jupyter/runtime");
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::write(runtime.join("jpserver-1.json"), "{}").unwrap();
        std::fs::write(runtime.join("other.json"), "{}").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", runtime.join("jpserver-2.json")).unwrap();
        nix::unistd::mkfifo(&runtime.join("jpserver-3.json"), Mode::from_bits_truncate(0o600)).unwrap();
        let found =
            read_small_files_beneath(tmp.path(), Path::new(".local/share/jupyter/runtime"), "jpserver-", ".json", 4096)
                .unwrap();
        assert_eq!(found.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), vec!["jpserver-1.json"]);
        // A symlinked directory on the way is refused.
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join(".config")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), tmp.path().join(".config/jupyter")).unwrap();
        assert!(read_small_files_beneath(tmp.path(), Path::new(".config/jupyter"), "", "", 10).is_err());
        assert_eq!(read_small_files_beneath(tmp.path(), Path::new("nothing/here"), "", "", 10), Ok(Vec::new()));
    }
}
