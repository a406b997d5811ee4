//! The pool's registry on the share: `<share>/.pool-agent/users.toml`, one
//! file every VM reads, so adding a user is one edit, picked up within
//! seconds everywhere (a cheap stat every few seconds, a read on change).
//!
//! Whoever can write that file gets an account, with keys, on every VM: it
//! is accepted only when owned by root and not writable by group or others
//! (or when the admin says `users.trust_share = true`). On an SMB mount the
//! owner and mode shown are the mount's options, so there the check proves
//! only that no local user of this VM can write it; everyone holding the
//! storage key can. The file holds `[[users.accounts]]` entries and nothing
//! else (no other section: the share must not steer the agent).

use crate::config::users::UserAccount;
use crate::core::accounts::Group;
use crate::core::beneath::{open_dir_beneath, open_share_root};
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::fstat;
use std::io::Read;
use std::path::{Path, PathBuf};

pub const DIR: &str = ".pool-agent";
pub const NAME: &str = "users.toml";
const MAX_BYTES: u64 = 1024 * 1024;

/// What identifies one version of the file: a change of any re-reads it.
pub type Stamp = (u64, i64, i64, i64, u64, u32, u32);

/// The file as found: absent, refused (and why), or its text and stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Absent,
    Refused { stamp: Option<Stamp>, why: String },
    Read { stamp: Stamp, text: String },
}

impl Found {
    pub fn stamp(&self) -> Option<Stamp> {
        match self {
            Found::Absent => None,
            Found::Refused { stamp, .. } => *stamp,
            Found::Read { stamp, .. } => Some(*stamp),
        }
    }
}

/// Only root may write the pool's registry, unless the admin trusts the share.
pub fn refusal(uid: u32, mode: u32, trust_share: bool) -> Option<String> {
    if trust_share {
        return None;
    }
    if uid != 0 {
        return Some(format!(
            "it belongs to uid {uid}, not root: whoever writes it gets an account on every VM; refused (chown root, or set users.trust_share = true)"
        ));
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "its mode {:04o} lets group or others write it; refused (chmod go-w, or set users.trust_share = true)",
            mode & 0o7777
        ));
    }
    None
}

/// Reads the file below the share root without following a symlink, when
/// its stamp differs from `known` (else `None`: nothing changed). Blocking.
pub fn read(root: &Path, identity: (u64, u64), trust_share: bool, known: Option<Stamp>) -> Option<Found> {
    let found = read_inner(root, identity, trust_share, known);
    match &found {
        Ok(None) => None,
        Ok(Some(found)) => Some(found.clone()),
        Err(why) => Some(Found::Refused { stamp: None, why: why.clone() }),
    }
}

fn read_inner(
    root: &Path,
    identity: (u64, u64),
    trust_share: bool,
    known: Option<Stamp>,
) -> Result<Option<Found>, String> {
    let root_fd = open_share_root(root, identity)?;
    let dir = match open_dir_beneath(&root_fd, DIR.as_ref()) {
        Ok(dir) => dir,
        Err(Errno::ENOENT) => return Ok((known.is_some()).then_some(Found::Absent)),
        Err(err) => return Err(format!("cannot open {DIR} on the share: {}", err.desc())),
    };
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let fd = match openat2(&dir, NAME, how) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok((known.is_some()).then_some(Found::Absent)),
        Err(Errno::ELOOP | Errno::EXDEV) => return Err(format!("{DIR}/{NAME} is a symlink; refused")),
        Err(err) => return Err(format!("cannot open {DIR}/{NAME}: {}", err.desc())),
    };
    let st = fstat(&fd).map_err(|err| format!("cannot stat {DIR}/{NAME}: {}", err.desc()))?;
    let stamp: Stamp =
        (st.st_ino, st.st_mtime, st.st_mtime_nsec, st.st_ctime, st.st_size as u64, st.st_uid, st.st_mode);
    if known == Some(stamp) {
        return Ok(None);
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size as u64 > MAX_BYTES {
        return Ok(Some(Found::Refused {
            stamp: Some(stamp),
            why: format!("{DIR}/{NAME} is not a regular file under {MAX_BYTES} bytes; refused"),
        }));
    }
    if let Some(why) = refusal(st.st_uid, st.st_mode, trust_share) {
        return Ok(Some(Found::Refused { stamp: Some(stamp), why: format!("{DIR}/{NAME}: {why}") }));
    }
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(MAX_BYTES)
        .read_to_string(&mut text)
        .map_err(|err| format!("cannot read {DIR}/{NAME}: {err}"))?;
    Ok(Some(Found::Read { stamp, text }))
}

/// The accounts the file lists, validated as the config's are (errors name
/// the file, line and key); any other section is refused.
pub fn parse(path_shown: &Path, text: &str) -> Result<Vec<UserAccount>, String> {
    let table: toml::Table = text.parse().map_err(|err| format!("{}: {err}", path_shown.display()))?;
    let extra: Vec<String> = table
        .iter()
        .flat_map(|(section, value)| match (section.as_str(), value) {
            ("users", toml::Value::Table(keys)) => {
                keys.keys().filter(|k| k.as_str() != "accounts").map(|k| format!("users.{k}")).collect()
            }
            _ => vec![section.clone()],
        })
        .collect();
    if !extra.is_empty() {
        return Err(format!(
            "{}: only [[users.accounts]] entries belong here; refused: {}",
            path_shown.display(),
            extra.join(", ")
        ));
    }
    crate::config::load_str(path_shown, text).map(|s| s.users.accounts).map_err(|err| err.to_string())
}

/// The config's accounts, then the share's: the config wins a name it
/// lists, and a share entry whose uid is a config account's is dropped.
pub fn combine(config: &[UserAccount], share: Vec<UserAccount>) -> (Vec<UserAccount>, Vec<String>) {
    let mut all = config.to_vec();
    let mut notes = Vec::new();
    for account in share {
        if let Some(mine) = config.iter().find(|c| c.name == account.name) {
            if *mine != account {
                notes.push(format!("{}: the config's entry is used, not the share's", account.name));
            }
        } else if let Some(mine) = config.iter().find(|c| c.uid == account.uid) {
            notes.push(format!(
                "{}: uid {} is the config's {}; the share's entry is left out",
                account.name, account.uid, mine.name
            ));
        } else {
            all.push(account);
        }
    }
    (all, notes)
}

/// Takes from a share account the groups that give power on the VM: system
/// groups (gid below 1000: sudo, adm, docker...) and the agent's admin
/// group. Only the config, root's own file, may give those. Says what it took.
pub fn strip_privileged(account: &mut UserAccount, groups: &[Group], admin_group: &str) -> Vec<String> {
    let privileged = |name: &str| {
        name == admin_group || groups.iter().any(|g| g.name == name && g.gid < crate::config::users::MIN_ID)
    };
    let (taken, kept): (Vec<String>, Vec<String>) = account.groups.drain(..).partition(|g| privileged(g));
    account.groups = kept;
    taken
        .into_iter()
        .map(|g| format!("group {g} gives power on the VM; only the config may grant it, not the share"))
        .collect()
}

/// Where the file is, for messages.
pub fn shown(root: &Path) -> PathBuf {
    root.join(DIR).join(NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str, uid: u32) -> UserAccount {
        UserAccount {
            name: name.into(),
            uid,
            gid: uid,
            groups: vec![],
            shell: "/bin/bash".into(),
            ssh_keys: vec![],
            enabled: true,
            origin: None,
        }
    }

    #[test]
    fn only_a_root_owned_file_nobody_else_can_write_is_accepted_unless_the_share_is_trusted() {
        assert_eq!(refusal(0, 0o100644, false), None);
        assert_eq!(refusal(0, 0o100600, false), None);
        let err = refusal(1002, 0o100644, false).unwrap();
        assert!(err.contains("uid 1002") && err.contains("trust_share"), "{err}");
        let err = refusal(0, 0o100664, false).unwrap();
        assert!(err.contains("0664"), "{err}");
        assert!(refusal(0, 0o100646, false).is_some());
        assert_eq!(refusal(1002, 0o100666, true), None);
    }

    #[test]
    fn the_file_holds_accounts_only_validated_like_the_config() {
        let path = Path::new("/data/notebooks/.pool-agent/users.toml");
        let ok = parse(path, "[[users.accounts]]\nname = \"gina\"\nuid = 2010\n").unwrap();
        // Named by the share file's own line (for --check-config and reports).
        let origin = Some(crate::config::source::Origin::new(path, 1));
        assert_eq!(ok, [UserAccount { origin, ..account("gina", 2010) }]);
        let err = parse(path, "[users]\nmanage = true\n[[users.accounts]]\nname = \"gina\"\nuid = 2010\n").unwrap_err();
        assert!(err.contains("users.manage"), "the share cannot turn management on: {err}");
        let err = parse(path, "[[setup.scripts]]\nname = \"x\"\npath = \"/bin/sh\"\n").unwrap_err();
        assert!(err.contains("setup"), "{err}");
        let err = parse(path, "[[users.accounts]]\nname = \"gina\"\nuid = 0\n").unwrap_err();
        assert!(err.contains("users.toml:3") && err.contains("uid"), "{err}");
    }

    #[test]
    fn a_share_account_joins_no_system_group_and_not_the_admin_group() {
        let groups = [
            Group { name: "sudo".into(), gid: 27, members: vec![] },
            Group { name: "science".into(), gid: 3000, members: vec![] },
            Group { name: "pool-agent-admin".into(), gid: 1990, members: vec![] },
        ];
        let mut gina = account("gina", 2010);
        gina.groups = vec!["sudo".into(), "science".into(), "pool-agent-admin".into(), "nowhere".into()];
        let notes = strip_privileged(&mut gina, &groups, "pool-agent-admin");
        assert_eq!(gina.groups, ["science", "nowhere"]);
        assert_eq!(notes.len(), 2);
        assert!(notes[0].contains("sudo"), "{notes:?}");
    }

    #[test]
    fn the_config_wins_a_name_and_a_uid_it_holds() {
        let config = [account("carol", 2001)];
        let mut other_carol = account("carol", 2001);
        other_carol.shell = "/bin/zsh".into();
        let (all, notes) = combine(&config, vec![other_carol, account("mallory", 2001), account("gina", 2010)]);
        assert_eq!(all.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["carol", "gina"]);
        assert_eq!(all[0].shell, "/bin/bash");
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[1].contains("mallory"), "{notes:?}");
    }

    #[test]
    fn a_file_read_from_a_share_is_refused_when_another_user_owns_it_and_read_when_root_does() {
        let tmp = tempfile::tempdir().unwrap();
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(tmp.path()).unwrap();
        let identity = (meta.dev(), meta.ino());
        assert_eq!(read(tmp.path(), identity, false, None), None, "no file, nothing new");
        std::fs::create_dir(tmp.path().join(DIR)).unwrap();
        let file = tmp.path().join(DIR).join(NAME);
        std::fs::write(&file, "[[users.accounts]]\nname = \"gina\"\nuid = 2010\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let found = read(tmp.path(), identity, false, None).unwrap();
        assert!(matches!(&found, Found::Refused { why, .. } if why.contains("write")), "{found:?}");
        // Trusted, it is read; asked again with its stamp, nothing is new.
        let found = read(tmp.path(), identity, true, None).unwrap();
        let Found::Read { stamp, text } = &found else { panic!("{found:?}") };
        assert!(text.contains("gina"));
        assert_eq!(read(tmp.path(), identity, true, Some(*stamp)), None);
        // A symlink in its place is refused, not followed.
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &file).unwrap();
        let found = read(tmp.path(), identity, true, Some(*stamp)).unwrap();
        assert!(matches!(&found, Found::Refused { why, .. } if why.contains("symlink")), "{found:?}");
        // The wrong share root is never read.
        let found = read(tmp.path(), (identity.0, identity.1 + 1), true, None).unwrap();
        assert!(matches!(&found, Found::Refused { why, .. } if why.contains("not the mounted share")), "{found:?}");
    }
}
