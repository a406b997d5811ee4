//! One user's link and folder, made safely as root.
//!
//! The home belongs to the user, who may plant symlinks or swap directories
//! while the agent works. Every step below the home (and below the share
//! root) goes through directory descriptors opened with `openat2` and
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, and every change is made relative
//! to such a descriptor: a symlink anywhere on the way is refused, never
//! followed, so the agent cannot be led to create, chown, rename or replace
//! anything outside the user's own home and share folder. Blocking: run it
//! off the async workers.

use crate::core::beneath::{names, open_dir, open_dir_beneath, open_share_root};
use nix::errno::Errno;
use nix::fcntl::{renameat2, AtFlags, RenameFlags};
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode};
use nix::unistd::{fchown, fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Gives a symlink the agent just made to the user, through a descriptor of
/// the entry itself: had the user swapped the name for a hard link to some
/// file in between, that file is not chowned (only a symlink is).
fn chown_symlink(dir: &OwnedFd, name: &str, user: &UserPlan) {
    use nix::fcntl::{openat, OFlag};
    let Ok(entry) = openat(dir, name, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty()) else {
        return;
    };
    let is_symlink = fstat(&entry).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK);
    if is_symlink {
        let _ = fchownat(
            &entry,
            "",
            Some(Uid::from_raw(user.uid)),
            Some(Gid::from_raw(user.gid)),
            AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
        );
    }
}

/// What the agent needs to know of one user.
#[derive(Debug, Clone)]
pub struct UserPlan {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// The home as the agent reaches it (resolved under `--root`).
    pub home: PathBuf,
}

/// Where the user's folder lives, when the share is usable.
#[derive(Debug, Clone)]
pub struct FolderPlan {
    /// The share root as users reach it.
    pub root: PathBuf,
    /// (device, inode) the share's root had when mounted.
    pub identity: (u64, u64),
    /// Relative to the root, `{user}` filled in.
    pub relative: PathBuf,
    pub mode: u32,
}

/// The outcome of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Unchanged,
    Changed,
    /// The user's own things stand in the way; nothing was touched.
    Conflict(String),
    /// The share is not where it was: nothing written (it is not the share).
    ShareGone(String),
    Failed(String),
}

impl Step {
    /// The outcome of two steps: the worse of them.
    pub fn combine(self, other: Step) -> Step {
        fn rank(step: &Step) -> u8 {
            match step {
                Step::Unchanged => 0,
                Step::Changed => 1,
                Step::Conflict(_) => 2,
                Step::ShareGone(_) => 3,
                Step::Failed(_) => 4,
            }
        }
        if rank(&other) > rank(&self) {
            other
        } else {
            self
        }
    }
}

/// Why `name` in `dir` could not be opened as a directory, in the user's words.
fn refusal(dir: &OwnedFd, name: &OsStr) -> &'static str {
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) if stat.st_mode & libc::S_IFMT == libc::S_IFLNK => "is a symlink; the agent follows none",
        _ => "is not a directory",
    }
}

/// `$HOME/<link>` → `target`: the directories on the way made as the user's,
/// the link made by a temporary link renamed into place, a right link left
/// alone, a wrong symlink replaced, anything else a conflict (moved aside
/// with a timestamp only when `move_conflicts`).
pub fn ensure_link(user: &UserPlan, link: &Path, target: &Path, move_conflicts: bool, stamp: &str) -> Step {
    let home = match open_dir(&user.home) {
        Ok(fd) => fd,
        Err(err) => return Step::Failed(format!("cannot open the home {}: {err}", user.home.display())),
    };
    match fstat(&home) {
        Ok(stat) if stat.st_uid == user.uid => {}
        // Not the user's: writing there as root could hand them someone else's
        // directory. Left alone and reported, like any other trap.
        Ok(stat) => {
            return Step::Conflict(format!(
                "home {} belongs to uid {}, not {} ({}); left alone",
                user.home.display(),
                stat.st_uid,
                user.uid,
                user.name
            ))
        }
        Err(err) => return Step::Failed(format!("cannot stat the home {}: {err}", user.home.display())),
    }
    let parts = names(link);
    let Some((last, parents)) = parts.split_last() else {
        return Step::Failed("links.link is empty".to_string());
    };
    let mut step = Step::Unchanged;
    let mut dir = home;
    let mut shown = PathBuf::from("~");
    for part in parents {
        shown.push(part);
        let opened = match open_dir_beneath(&dir, part) {
            Ok(fd) => Ok(fd),
            Err(Errno::ENOENT) => match mkdirat(&dir, *part, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {
                    // Owned by the user, through the descriptor: if the entry was
                    // swapped meanwhile (a symlink, a hard link to a file), opening
                    // it as a directory without following fails and nothing is chowned.
                    step = Step::Changed;
                    open_dir_beneath(&dir, part).inspect(|fd| {
                        let _ = fchown(fd, Some(Uid::from_raw(user.uid)), Some(Gid::from_raw(user.gid)));
                    })
                }
                Err(err) => Err(err),
            },
            Err(err) => Err(err),
        };
        dir = match opened {
            Ok(fd) => fd,
            Err(Errno::ELOOP) | Err(Errno::EXDEV) | Err(Errno::ENOTDIR) => {
                return Step::Conflict(format!("{} {}; left alone", shown.display(), refusal(&dir, part)))
            }
            Err(err) => return Step::Failed(format!("cannot open {}: {err}", shown.display())),
        };
        match fstat(&dir) {
            Ok(stat) if stat.st_uid == user.uid => {}
            Ok(stat) => {
                return Step::Conflict(format!(
                    "{} belongs to uid {}, not the user; left alone",
                    shown.display(),
                    stat.st_uid
                ))
            }
            Err(err) => return Step::Failed(format!("cannot stat {}: {err}", shown.display())),
        }
    }
    shown.push(last);
    let linked = place_link(&dir, last, target, user, move_conflicts, stamp, &shown);
    step.combine(linked)
}

fn place_link(
    dir: &OwnedFd,
    name: &OsStr,
    target: &Path,
    user: &UserPlan,
    move_conflicts: bool,
    stamp: &str,
    shown: &Path,
) -> Step {
    let mut moved = None;
    let replacing = match nix::fcntl::readlinkat(dir, name) {
        Ok(current) if Path::new(&current) == target => return Step::Unchanged,
        Ok(_) => true,
        Err(Errno::ENOENT) => false,
        // EINVAL: a real file or directory stands there.
        Err(Errno::EINVAL) => {
            if !move_conflicts {
                return Step::Conflict(format!(
                    "{} is a real file or directory, not a link; left alone (links.move_conflicts = true moves it aside)",
                    shown.display()
                ));
            }
            let aside = format!("{}.conflict-{stamp}", name.to_string_lossy());
            // NOREPLACE: an earlier conflict of the same second is never overwritten.
            if let Err(err) = renameat2(dir, name, dir, aside.as_str(), RenameFlags::RENAME_NOREPLACE) {
                return Step::Failed(format!("cannot move {} aside: {err}", shown.display()));
            }
            moved = Some(aside);
            false
        }
        Err(err) => return Step::Failed(format!("cannot read {}: {err}", shown.display())),
    };
    let temporary = format!(".{}.pool-agent", name.to_string_lossy());
    // A leftover from a crash, or something the user put there: only a symlink may go.
    if nix::fcntl::readlinkat(dir, temporary.as_str()).is_ok() {
        let _ = unlinkat(dir, temporary.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    if let Err(err) = symlinkat(target, dir, temporary.as_str()) {
        return Step::Failed(format!("cannot create a link beside {}: {err}", shown.display()));
    }
    chown_symlink(dir, temporary.as_str(), user);
    // The user may change the link path while this runs: a new name never
    // replaces anything (NOREPLACE), and a wrong symlink is swapped out
    // (EXCHANGE) and removed only if it is still a symlink.
    let placed = if replacing {
        renameat2(dir, temporary.as_str(), dir, name, RenameFlags::RENAME_EXCHANGE).map(|()| {
            if nix::fcntl::readlinkat(dir, temporary.as_str()).is_ok() {
                let _ = unlinkat(dir, temporary.as_str(), UnlinkatFlags::NoRemoveDir);
                true
            } else {
                // Swapped out something real: put it back.
                let _ = renameat2(dir, temporary.as_str(), dir, name, RenameFlags::RENAME_EXCHANGE);
                false
            }
        })
    } else {
        renameat2(dir, temporary.as_str(), dir, name, RenameFlags::RENAME_NOREPLACE).map(|()| true)
    };
    match placed {
        Ok(true) => {}
        Ok(false) | Err(Errno::EEXIST) => {
            let _ = unlinkat(dir, temporary.as_str(), UnlinkatFlags::NoRemoveDir);
            return Step::Conflict(format!("{} changed while the agent linked it; left alone", shown.display()));
        }
        Err(err) => {
            let _ = unlinkat(dir, temporary.as_str(), UnlinkatFlags::NoRemoveDir);
            return Step::Failed(format!("cannot put the link at {}: {err}", shown.display()));
        }
    }
    match moved {
        Some(aside) => Step::Conflict(format!("{} was in the way; moved to {aside} and linked", shown.display())),
        None => Step::Changed,
    }
}

/// The user's folder on the share: parents made (root's, 0755) as needed,
/// the folder made with `mode` and owned by the user. A folder already there
/// owned by root is given to the user; one owned by someone else, or a
/// symlink, is a conflict. Nothing is ever deleted. On SMB, where the mount
/// maps every owner to one uid, a refused chown is expected and not an error.
pub fn ensure_folder(user: &UserPlan, folder: &FolderPlan) -> Step {
    // Everything below is relative to this descriptor: if it is the share now,
    // nothing can land on the local disk, even if the mount goes away meanwhile.
    let root = match open_share_root(&folder.root, folder.identity) {
        Ok(fd) => fd,
        Err(why) => return Step::ShareGone(why),
    };
    let parts = names(&folder.relative);
    let Some((last, parents)) = parts.split_last() else {
        return Step::Failed("links.target is empty".to_string());
    };
    let mut dir = root;
    let mut shown = PathBuf::new();
    for part in parents {
        shown.push(part);
        let opened = match open_dir_beneath(&dir, part) {
            Err(Errno::ENOENT) => match mkdirat(&dir, *part, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => open_dir_beneath(&dir, part),
                Err(err) => Err(err),
            },
            other => other,
        };
        dir = match opened {
            Ok(fd) => fd,
            Err(Errno::ELOOP) | Err(Errno::EXDEV) | Err(Errno::ENOTDIR) => {
                return Step::Conflict(format!("{} on the share {}; left alone", shown.display(), refusal(&dir, part)))
            }
            Err(err) => return Step::Failed(format!("cannot open {} on the share: {err}", shown.display())),
        };
    }
    shown.push(last);
    let mut step = Step::Unchanged;
    let fd = match open_dir_beneath(&dir, last) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            match mkdirat(&dir, *last, Mode::from_bits_truncate(folder.mode)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(err) => return Step::Failed(format!("cannot create {} on the share: {err}", shown.display())),
            }
            step = Step::Changed;
            match open_dir_beneath(&dir, last) {
                Ok(fd) => {
                    // The umask may have narrowed the mode; set it on the descriptor.
                    let _ = fchmod(&fd, Mode::from_bits_truncate(folder.mode));
                    fd
                }
                Err(err) => return Step::Failed(format!("cannot open {} on the share: {err}", shown.display())),
            }
        }
        Err(Errno::ELOOP) | Err(Errno::EXDEV) | Err(Errno::ENOTDIR) => {
            return Step::Conflict(format!("{} on the share {}; left alone", shown.display(), refusal(&dir, last)))
        }
        Err(err) => return Step::Failed(format!("cannot open {} on the share: {err}", shown.display())),
    };
    let owner = match fstat(&fd) {
        Ok(stat) => stat.st_uid,
        Err(err) => return Step::Failed(format!("cannot stat {} on the share: {err}", shown.display())),
    };
    if owner == user.uid {
        return step;
    }
    if owner != 0 {
        // On NFS owners are real: another VM that gave this name another uid
        // made it, or someone else did. `pool-agent pool` names the first.
        return Step::Conflict(format!(
            "{} on the share belongs to uid {owner}, not {} ({}'s uid on this VM): the user's ids differ between VMs, or someone else made it; left alone",
            shown.display(),
            user.uid,
            user.name
        ));
    }
    match fchown(&fd, Some(Uid::from_raw(user.uid)), Some(Gid::from_raw(user.gid))) {
        Ok(()) => Step::Changed,
        // SMB maps every owner to the mount's uid: there is nothing to give.
        Err(_) if is_smb(&fd) => step,
        Err(err) => Step::Failed(format!("cannot give {} on the share to the user: {err}", shown.display())),
    }
}

/// Whether `fd` lives on an SMB mount (cifs), where owners are the mount's.
fn is_smb(fd: &OwnedFd) -> bool {
    const CIFS_SUPER_MAGIC: i64 = 0xFF53_4D42;
    const SMB2_SUPER_MAGIC: i64 = 0xFE53_4D42;
    match nix::sys::statfs::fstatfs(fd) {
        Ok(fs) => {
            let kind = fs.filesystem_type().0;
            kind == CIFS_SUPER_MAGIC || kind == SMB2_SUPER_MAGIC
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn me() -> (u32, u32) {
        (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw())
    }

    fn setup() -> (tempfile::TempDir, UserPlan, FolderPlan) {
        let dir = tempfile::tempdir().unwrap();
        let (uid, gid) = me();
        std::fs::create_dir_all(dir.path().join("home/alice")).unwrap();
        std::fs::create_dir_all(dir.path().join("share")).unwrap();
        let user = UserPlan { name: "alice".into(), uid, gid, home: dir.path().join("home/alice") };
        let root = dir.path().join("share");
        let identity = {
            let meta = std::fs::metadata(&root).unwrap();
            (meta.dev(), meta.ino())
        };
        let folder = FolderPlan { root, identity, relative: "notebooks/alice".into(), mode: 0o700 };
        (dir, user, folder)
    }

    const LINK: &str = "notebooks/remote";

    #[test]
    fn makes_the_folder_and_the_link_then_leaves_them_alone() {
        let (_dir, user, folder) = setup();
        let target = folder.root.join(&folder.relative);
        assert_eq!(ensure_folder(&user, &folder), Step::Changed);
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(ensure_link(&user, Path::new(LINK), &target, false, "t"), Step::Changed);
        assert_eq!(std::fs::read_link(user.home.join(LINK)).unwrap(), target);
        assert_eq!(ensure_folder(&user, &folder), Step::Unchanged);
        assert_eq!(ensure_link(&user, Path::new(LINK), &target, false, "t"), Step::Unchanged);
        assert!(!user.home.join("notebooks/.remote.pool-agent").exists(), "no temporary left");
    }

    #[test]
    fn a_wrong_symlink_is_replaced_and_a_real_directory_is_kept() {
        let (_dir, user, folder) = setup();
        let target = folder.root.join(&folder.relative);
        std::fs::create_dir_all(user.home.join("notebooks")).unwrap();
        std::os::unix::fs::symlink("/somewhere/else", user.home.join(LINK)).unwrap();
        assert_eq!(ensure_link(&user, Path::new(LINK), &target, false, "t"), Step::Changed);
        assert_eq!(std::fs::read_link(user.home.join(LINK)).unwrap(), target);

        std::fs::remove_file(user.home.join(LINK)).unwrap();
        std::fs::create_dir(user.home.join(LINK)).unwrap();
        std::fs::write(user.home.join(LINK).join("work.ipynb"), "{}").unwrap();
        let step = ensure_link(&user, Path::new(LINK), &target, false, "t");
        assert!(matches!(step, Step::Conflict(ref why) if why.contains("real file or directory")), "{step:?}");
        assert_eq!(std::fs::read_to_string(user.home.join(LINK).join("work.ipynb")).unwrap(), "{}");

        let step = ensure_link(&user, Path::new(LINK), &target, true, "20261123T120000Z");
        assert!(matches!(step, Step::Conflict(ref why) if why.contains("moved to remote.conflict-20261123T120000Z")));
        assert_eq!(std::fs::read_link(user.home.join(LINK)).unwrap(), target);
        let aside = user.home.join("notebooks/remote.conflict-20261123T120000Z/work.ipynb");
        assert_eq!(std::fs::read_to_string(aside).unwrap(), "{}", "the user's file survives the move");
    }

    #[test]
    fn a_planted_notebooks_symlink_is_never_followed() {
        let (dir, user, folder) = setup();
        let outside = dir.path().join("etc");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, user.home.join("notebooks")).unwrap();
        let step = ensure_link(&user, Path::new(LINK), &folder.root.join(&folder.relative), true, "t");
        assert!(matches!(step, Step::Conflict(ref why) if why.contains("symlink")), "{step:?}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing was made in the symlink's target");
    }

    #[test]
    fn only_a_symlink_is_given_to_the_user_never_a_file_swapped_in_for_it() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP only_a_symlink_is_given_to_the_user…: needs root to chown (CI runs as root)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let user = UserPlan { name: "alice".into(), uid: 4242, gid: 4242, home: dir.path().into() };
        std::fs::write(dir.path().join("precious"), "root's").unwrap();
        // The user swapped the agent's temporary link for a hard link to a root file.
        std::fs::hard_link(dir.path().join("precious"), dir.path().join(".remote.pool-agent")).unwrap();
        std::os::unix::fs::symlink("/data/notebooks/alice", dir.path().join("link")).unwrap();
        let fd = open_dir(dir.path()).unwrap();
        chown_symlink(&fd, ".remote.pool-agent", &user);
        chown_symlink(&fd, "link", &user);
        assert_eq!(std::fs::metadata(dir.path().join("precious")).unwrap().uid(), 0, "the file stays root's");
        assert_eq!(std::fs::symlink_metadata(dir.path().join("link")).unwrap().uid(), 4242, "the link is alice's");
    }

    #[test]
    fn a_planted_symlink_on_the_share_is_never_followed_or_chowned() {
        let (dir, user, folder) = setup();
        let outside = dir.path().join("etc");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(folder.root.join("notebooks")).unwrap();
        std::os::unix::fs::symlink(&outside, folder.root.join("notebooks/alice")).unwrap();
        let before = std::fs::metadata(&outside).unwrap();
        let step = ensure_folder(&user, &folder);
        assert!(matches!(step, Step::Conflict(ref why) if why.contains("symlink")), "{step:?}");
        let after = std::fs::metadata(&outside).unwrap();
        assert_eq!((before.mode(), before.uid()), (after.mode(), after.uid()));
    }

    #[test]
    fn a_root_that_is_not_the_mounted_share_gets_nothing() {
        let (_dir, user, mut folder) = setup();
        folder.identity.1 += 1; // the mount went away: another directory stands there
        let step = ensure_folder(&user, &folder);
        assert!(matches!(step, Step::ShareGone(_)), "{step:?}");
        assert_eq!(std::fs::read_dir(&folder.root).unwrap().count(), 0, "nothing written on the local disk");
    }

    #[test]
    fn a_home_that_is_not_the_users_is_left_alone() {
        let (_dir, mut user, folder) = setup();
        user.uid += 1;
        let step = ensure_link(&user, Path::new(LINK), &folder.root.join(&folder.relative), false, "t");
        assert!(matches!(step, Step::Conflict(ref why) if why.contains("belongs to uid")), "{step:?}");
        assert!(!user.home.join("notebooks").exists());
    }
}
