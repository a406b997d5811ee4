//! The accounts view: users and groups as the system sees them.
//!
//! On a VM the view comes from NSS (getpwent/getgrent, getpwuid_r,
//! getgrouplist), so directory-service users (Entra ID Domain Services or
//! LDAP through sssd) count like local ones. Under `--root` it reads the
//! sandbox's passwd and group files instead, so tests see only their own users.
//! One cached snapshot serves every reader; it is reloaded when the passwd or
//! group file changes (checked at most once a second) and every few minutes
//! for changes only NSS knows of.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a reader may trigger a look at the files' stamps.
const STAMP_CHECK_EVERY: Duration = Duration::from_secs(1);
/// NSS-only sources (sssd, LDAP) change without touching /etc: reload this often.
const NSS_RELOAD_EVERY: Duration = Duration::from_secs(300);
/// Single-user NSS look-ups (users that enumeration does not list) are kept this long.
const LOOKUP_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// Shared: a pool has a handful of shells and thousands of users.
    pub shell: Arc<str>,
}

/// A user name as NSS gave it is usable in a path (a folder on the share, a
/// private mount point) only as one plain component: directory services allow
/// names local files would not (`alice@contoso.com`), but never a `/`, `.`,
/// `..`, a control character or more than a file name's 255 bytes.
pub fn name_fits_a_path(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c.is_control())
}

impl Account {
    /// A human who can log in: not a system account, not a nologin shell.
    pub fn is_login_user(&self, min_uid: u32) -> bool {
        const NO_LOGIN: &[&str] = &["/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false"];
        self.uid >= min_uid && self.uid != 65534 && !NO_LOGIN.contains(&&*self.shell)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

pub fn parse_passwd(text: &str) -> Vec<Account> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() != 7 || fields[0].is_empty() {
                return None;
            }
            Some(Account {
                name: fields[0].to_string(),
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
                home: PathBuf::from(fields[5]),
                shell: fields[6].into(),
            })
        })
        .collect()
}

pub fn parse_group(text: &str) -> Vec<Group> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() != 4 || fields[0].is_empty() {
                return None;
            }
            Some(Group {
                name: fields[0].to_string(),
                gid: fields[2].parse().ok()?,
                members: fields[3].split(',').filter(|m| !m.is_empty()).map(str::to_string).collect(),
            })
        })
        .collect()
}

pub fn read_passwd(path: &Path) -> io::Result<Vec<Account>> {
    Ok(parse_passwd(&std::fs::read_to_string(path)?))
}

pub fn read_group(path: &Path) -> io::Result<Vec<Group>> {
    Ok(parse_group(&std::fs::read_to_string(path)?))
}

/// One allocation per distinct shell instead of one per user.
fn share_shells(users: &mut [Account]) {
    let mut seen: std::collections::HashSet<Arc<str>> = std::collections::HashSet::new();
    for user in users {
        match seen.get(&user.shell) {
            Some(shared) => user.shell = shared.clone(),
            None => {
                seen.insert(user.shell.clone());
            }
        }
    }
}

/// Where the view reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountSource {
    /// The system's NSS; `passwd`/`group` are the local files whose changes trigger a reload.
    Nss { passwd: PathBuf, group: PathBuf },
    /// Plain files (a `--root` sandbox).
    Files { passwd: PathBuf, group: PathBuf },
}

impl AccountSource {
    fn files(&self) -> [&Path; 2] {
        match self {
            AccountSource::Nss { passwd, group } | AccountSource::Files { passwd, group } => [passwd, group],
        }
    }
}

/// A user and every group it is in, primary first.
pub type UserWithGroups = (Account, Vec<u32>);

/// A file's identity and age: a rename (useradd writes a new file) or an edit changes it.
type Stamp = Option<(u64, i64, i64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub users: Vec<Account>,
    pub groups: Vec<Group>,
}

struct Cache {
    snapshot: Arc<Snapshot>,
    stamps: [Stamp; 2],
    stamps_checked: Option<Instant>,
    loaded: Option<Instant>,
    /// NSS users not listed by enumeration, and their supplementary gids.
    lookups: HashMap<u32, (Instant, Option<UserWithGroups>)>,
    reloads: u64,
    /// A reader is loading a new snapshot outside the lock.
    loading: bool,
}

/// The one accounts view, shared by the API (admin checks), the share (uid
/// and gid names) and, later, links and setup scripts.
#[derive(Clone)]
pub struct AccountsView {
    source: Arc<AccountSource>,
    cache: Arc<Mutex<Cache>>,
}

impl std::fmt::Debug for AccountsView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountsView").field("source", &self.source).finish_non_exhaustive()
    }
}

impl AccountsView {
    pub fn new(source: AccountSource) -> Self {
        let cache = Cache {
            snapshot: Arc::new(Snapshot::default()),
            stamps: [None, None],
            stamps_checked: None,
            loaded: None,
            lookups: HashMap::new(),
            reloads: 0,
            loading: false,
        };
        Self { source: Arc::new(source), cache: Arc::new(Mutex::new(cache)) }
    }

    /// NSS on a real system, the sandbox's files under `--root`.
    pub fn for_paths(paths: &super::paths::SystemPaths) -> Self {
        if paths.is_sandbox() {
            Self::new(AccountSource::Files { passwd: paths.passwd(), group: paths.group() })
        } else {
            Self::new(AccountSource::Nss { passwd: paths.passwd(), group: paths.group() })
        }
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current snapshot, reloaded first if the files changed. May block
    /// on NSS: call it from a blocking thread where that matters. The load
    /// runs outside the cache's lock and is swapped in, so a slow directory
    /// service holds only the one reader that loads; others meanwhile get the
    /// snapshot they had (or, before the first, load too).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let now = Instant::now();
        let stamps = {
            let mut cache = self.lock();
            let check_due = cache.stamps_checked.is_none_or(|at| now.duration_since(at) >= STAMP_CHECK_EVERY);
            let nss_due = matches!(*self.source, AccountSource::Nss { .. })
                && cache.loaded.is_some_and(|at| now.duration_since(at) >= NSS_RELOAD_EVERY);
            // Before the first load there is nothing to hand out: load too,
            // even while another reader loads (its stamp check is no answer).
            if cache.loaded.is_some() && (!(check_due || nss_due) || cache.loading) {
                return cache.snapshot.clone();
            }
            cache.stamps_checked = Some(now);
            let [passwd, group] = self.source.files();
            let stamps = [stamp(passwd), stamp(group)];
            if cache.loaded.is_some() && stamps == cache.stamps && !nss_due {
                return cache.snapshot.clone();
            }
            cache.loading = true;
            stamps
        };
        let loaded = Arc::new(self.load());
        let mut cache = self.lock();
        cache.loading = false;
        // A load that started later may have been swapped in already.
        if cache.loaded.is_some_and(|at| at > now) {
            return cache.snapshot.clone();
        }
        cache.snapshot = loaded;
        cache.stamps = stamps;
        cache.loaded = Some(now);
        cache.lookups.clear();
        cache.reloads += 1;
        cache.snapshot.clone()
    }

    /// Forgets the snapshot; the next reader loads it again.
    pub fn invalidate(&self) {
        let mut cache = self.lock();
        cache.loaded = None;
        cache.stamps_checked = None;
        cache.lookups.clear();
    }

    /// How many times the snapshot was loaded (for tests and status).
    pub fn reloads(&self) -> u64 {
        self.lock().reloads
    }

    fn load(&self) -> Snapshot {
        let mut snapshot = match &*self.source {
            AccountSource::Files { passwd, group } => Snapshot {
                users: read_passwd(passwd).unwrap_or_default(),
                groups: read_group(group).unwrap_or_default(),
            },
            AccountSource::Nss { .. } => nss::enumerate(),
        };
        share_shells(&mut snapshot.users);
        snapshot
    }

    pub fn user_by_name(&self, name: &str) -> Option<Account> {
        if let Some(found) = self.snapshot().users.iter().find(|a| a.name == name) {
            return Some(found.clone());
        }
        match &*self.source {
            AccountSource::Nss { .. } => nss::user_by_name(name),
            AccountSource::Files { .. } => None,
        }
    }

    pub fn group_by_name(&self, name: &str) -> Option<Group> {
        if let Some(found) = self.snapshot().groups.iter().find(|g| g.name == name) {
            return Some(found.clone());
        }
        match &*self.source {
            AccountSource::Nss { .. } => nss::group_by_name(name),
            AccountSource::Files { .. } => None,
        }
    }

    /// The user with `uid` and every group it is in (primary first), or None
    /// for a uid no source knows.
    pub fn user_with_groups(&self, uid: u32) -> Option<UserWithGroups> {
        let snapshot = self.snapshot();
        if let AccountSource::Files { .. } = &*self.source {
            let account = snapshot.users.iter().find(|a| a.uid == uid)?.clone();
            let mut gids = vec![account.gid];
            gids.extend(
                snapshot
                    .groups
                    .iter()
                    .filter(|g| g.members.iter().any(|m| m == &account.name) && g.gid != account.gid)
                    .map(|g| g.gid),
            );
            return Some((account, gids));
        }
        let now = Instant::now();
        if let Some((at, found)) = self.lock().lookups.get(&uid) {
            if now.duration_since(*at) < LOOKUP_TTL {
                return found.clone();
            }
        }
        let account = snapshot.users.iter().find(|a| a.uid == uid).cloned().or_else(|| nss::user_by_uid(uid));
        let found = account.map(|account| {
            let gids = nss::group_list(&account.name, account.gid);
            (account, gids)
        });
        self.lock().lookups.insert(uid, (now, found.clone()));
        found
    }

    /// The name of the user with `uid`, looked up now (a user added since
    /// start has one), or `uid N` for a uid no source knows: for reasons and logs.
    pub fn user_name(&self, uid: u32) -> String {
        self.user_with_groups(uid).map_or_else(|| format!("uid {uid}"), |(account, _)| account.name)
    }

    /// Root, or a member of `admin_group`: by the connection's gid, the user's
    /// primary group, the group's member list or any supplementary (NSS) group.
    pub fn is_admin(&self, uid: u32, gid: u32, admin_group: &str) -> bool {
        if uid == 0 {
            return true;
        }
        let Some(group) = self.group_by_name(admin_group) else {
            return false;
        };
        if gid == group.gid {
            return true;
        }
        match self.user_with_groups(uid) {
            Some((account, gids)) => gids.contains(&group.gid) || group.members.iter().any(|m| m == &account.name),
            None => false,
        }
    }
}

/// The libc side: enumeration is not reentrant, so one lock guards it.
mod nss {
    use super::{Account, Group};
    use std::ffi::{CStr, CString};
    use std::path::PathBuf;
    use std::sync::Mutex;

    static ENUMERATION: Mutex<()> = Mutex::new(());

    fn text(ptr: *const libc::c_char) -> String {
        if ptr.is_null() {
            return String::new();
        }
        // SAFETY: NSS hands out NUL-terminated strings that live until the next call, under our lock.
        unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned()
    }

    fn account(user: nix::unistd::User) -> Account {
        Account {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
            shell: user.shell.display().to_string().into(),
        }
    }

    fn group(group: nix::unistd::Group) -> Group {
        Group { name: group.name, gid: group.gid.as_raw(), members: group.mem }
    }

    pub fn enumerate() -> super::Snapshot {
        let _guard = ENUMERATION.lock().unwrap_or_else(|p| p.into_inner());
        let mut users = Vec::new();
        let mut groups = Vec::new();
        // SAFETY: setpwent/getpwent/endpwent (and the group ones) are called
        // under one lock, and each entry is copied before the next call.
        unsafe {
            libc::setpwent();
            loop {
                let entry = libc::getpwent();
                if entry.is_null() {
                    break;
                }
                let entry = &*entry;
                users.push(Account {
                    name: text(entry.pw_name),
                    uid: entry.pw_uid,
                    gid: entry.pw_gid,
                    home: PathBuf::from(text(entry.pw_dir)),
                    shell: text(entry.pw_shell).into(),
                });
            }
            libc::endpwent();
            libc::setgrent();
            loop {
                let entry = libc::getgrent();
                if entry.is_null() {
                    break;
                }
                let entry = &*entry;
                let mut members = Vec::new();
                let mut member = entry.gr_mem;
                while !member.is_null() && !(*member).is_null() {
                    members.push(text(*member));
                    member = member.add(1);
                }
                groups.push(Group { name: text(entry.gr_name), gid: entry.gr_gid, members });
            }
            libc::endgrent();
        }
        super::Snapshot { users, groups }
    }

    pub fn user_by_uid(uid: u32) -> Option<Account> {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(account)
    }

    pub fn user_by_name(name: &str) -> Option<Account> {
        nix::unistd::User::from_name(name).ok().flatten().map(account)
    }

    pub fn group_by_name(name: &str) -> Option<Group> {
        nix::unistd::Group::from_name(name).ok().flatten().map(group)
    }

    /// Every group of a user (primary first), as initgroups would set them.
    pub fn group_list(name: &str, primary: u32) -> Vec<u32> {
        let Ok(name) = CString::new(name) else {
            return vec![primary];
        };
        match nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(primary)) {
            Ok(gids) => gids.into_iter().map(|g| g.as_raw()).collect(),
            Err(_) => vec![primary],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n# comment\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nalice:x:1001:1001::/home/alice:/bin/bash\nbob:x:1002:1002::/home/bob:/bin/bash\nsvc:x:1003:1003::/srv:/usr/sbin/nologin\nbroken line\n";
    const GROUP: &str = "root:x:0:\npool-agent-admin:x:990:alice\nbob:x:1002:\n";

    #[test]
    fn a_reader_that_comes_while_the_first_load_runs_loads_too_and_never_sees_no_users() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("group"), GROUP).unwrap();
        let view = AccountsView::new(AccountSource::Files {
            passwd: dir.path().join("passwd"),
            group: dir.path().join("group"),
        });
        // The state another thread leaves when it has just started the first load.
        {
            let mut cache = view.lock();
            cache.stamps_checked = Some(Instant::now());
            cache.loading = true;
        }
        assert_eq!(view.user_by_name("alice").map(|a| a.uid), Some(1001), "an empty snapshot was handed out");
    }

    #[test]
    fn parses_accounts_and_skips_junk() {
        let accounts = parse_passwd(PASSWD);
        assert_eq!(accounts.len(), 5);
        assert_eq!(accounts[2].home, PathBuf::from("/home/alice"));
        let logins: Vec<_> = accounts.iter().filter(|a| a.is_login_user(1000)).map(|a| a.name.as_str()).collect();
        assert_eq!(logins, ["alice", "bob"]);
    }

    #[test]
    fn only_names_that_are_one_plain_path_component_fit_a_path() {
        for good in ["alice", "alice@contoso.com", "Bob.Smith", "svc_1"] {
            assert!(name_fits_a_path(good), "{good}");
        }
        for bad in ["", ".", "..", "../etc", "a/b", "a\nb", "x\u{1b}[2J"] {
            assert!(!name_fits_a_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn users_of_one_shell_share_it() {
        let mut accounts = parse_passwd(PASSWD);
        share_shells(&mut accounts);
        assert!(Arc::ptr_eq(&accounts[2].shell, &accounts[3].shell), "alice and bob: one /bin/bash");
        assert!(Arc::ptr_eq(&accounts[0].shell, &accounts[2].shell));
        assert!(!Arc::ptr_eq(&accounts[1].shell, &accounts[2].shell));
        assert_eq!(&*accounts[1].shell, "/usr/sbin/nologin");
    }

    #[test]
    fn admin_is_root_or_a_group_member() {
        let (_dir, view) = sandbox(PASSWD, GROUP);
        assert!(view.is_admin(0, 0, "pool-agent-admin"));
        assert!(view.is_admin(1001, 1001, "pool-agent-admin"));
        assert!(!view.is_admin(1002, 1002, "pool-agent-admin"));
        assert!(view.is_admin(1002, 990, "pool-agent-admin"), "primary gid counts");
        assert!(!view.is_admin(4242, 4242, "pool-agent-admin"), "unknown uid is not admin");
        assert!(!view.is_admin(1001, 1001, "no-such-group"));
    }

    fn sandbox(passwd: &str, group: &str) -> (tempfile::TempDir, AccountsView) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("passwd"), passwd).unwrap();
        std::fs::write(dir.path().join("group"), group).unwrap();
        let view = AccountsView::new(AccountSource::Files {
            passwd: dir.path().join("passwd"),
            group: dir.path().join("group"),
        });
        (dir, view)
    }

    #[test]
    fn the_view_reads_once_and_reloads_when_a_file_is_replaced() {
        let (dir, view) = sandbox(PASSWD, GROUP);
        assert_eq!(view.snapshot().users.len(), 5);
        for _ in 0..100 {
            view.snapshot();
        }
        assert_eq!(view.reloads(), 1, "not re-read per reader");
        // useradd writes a new file and renames it over the old one.
        let next = dir.path().join("passwd.new");
        std::fs::write(&next, format!("{PASSWD}carol:x:1004:1004::/home/carol:/bin/bash\n")).unwrap();
        std::fs::rename(&next, dir.path().join("passwd")).unwrap();
        view.invalidate(); // skip the one-second throttle in the test
        assert!(view.user_by_name("carol").is_some());
        assert_eq!(view.reloads(), 2);
    }

    #[test]
    fn supplementary_groups_make_an_admin() {
        // carol's primary group is not the admin group; she is listed as a member.
        let (_dir, view) = sandbox(
            &format!("{PASSWD}carol:x:1004:1004::/home/carol:/bin/bash\n"),
            "root:x:0:\npool-agent-admin:x:990:alice,carol\ncarol:x:1004:\n",
        );
        assert!(view.is_admin(1004, 1004, "pool-agent-admin"));
        let (_, gids) = view.user_with_groups(1004).unwrap();
        assert_eq!(gids, [1004, 990]);
        assert!(!view.is_admin(1002, 1002, "pool-agent-admin"));
        assert!(view.is_admin(1002, 990, "pool-agent-admin"), "the connection's gid counts");
        assert!(!view.is_admin(4242, 4242, "pool-agent-admin"));
        assert!(view.is_admin(0, 0, "no-such-group"));
    }

    #[test]
    fn nss_lookups_answer_for_root() {
        // Every system NSS knows uid 0; this exercises the libc path for real.
        let view = AccountsView::new(AccountSource::Nss { passwd: "/etc/passwd".into(), group: "/etc/group".into() });
        let snapshot = view.snapshot();
        assert!(snapshot.users.iter().any(|a| a.uid == 0), "getpwent lists root");
        let (root, gids) = view.user_with_groups(0).unwrap();
        assert_eq!(root.uid, 0);
        assert!(gids.contains(&0));
        assert!(view.user_by_name(&root.name).is_some());
    }
}
