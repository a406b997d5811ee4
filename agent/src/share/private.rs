//! Per-user private SMB mounts (`links.private = true`, azure-files only).
//!
//! One SMB mount shows every file with one owner and one mode, so it cannot
//! keep users apart. Here each user's folder is mounted again on its own,
//! `//server/share/notebooks/<user>` at `<private_root>/<user>`, with that
//! user's uid/gid and 0700/0600 modes, under a root-owned 0711 parent (users
//! can pass through it, not list it); links point there. A user who is gone
//! is unmounted. The storage key reaches mount.cifs as for the share: a 0600
//! credentials file in the root-only run directory, for the mount call only.

use crate::core::credentials::{self, CredentialsFile, StorageKey};
use crate::core::mount::{MountCall, Mounter};
use crate::core::mountinfo;
use crate::core::shared::{KeyRef, SmbMount};
use crate::core::task;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);
const DISK_DEADLINE: Duration = Duration::from_secs(10);
/// Options the private mount sets itself, per user.
const PER_USER_OPTIONS: &[&str] = &["uid", "gid", "dir_mode", "file_mode"];

/// One user whose folder should be mounted on its own.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// The folder, relative to the share root (`notebooks/alice`).
    pub relative: PathBuf,
}

/// The options of one user's mount: the share's, with the owner and modes the user's.
pub fn options_for(smb: &SmbMount, wanted: &Wanted) -> Vec<String> {
    let mut options: Vec<String> = smb
        .options
        .iter()
        .filter(|o| !PER_USER_OPTIONS.contains(&o.split('=').next().unwrap_or_default()))
        .cloned()
        .collect();
    options.extend([
        format!("uid={}", wanted.uid),
        format!("gid={}", wanted.gid),
        "dir_mode=0700".to_string(),
        "file_mode=0600".to_string(),
    ]);
    options
}

pub fn source_for(smb: &SmbMount, wanted: &Wanted) -> String {
    let relative: Vec<String> =
        wanted.relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    format!("{}/{}", smb.source.trim_end_matches('/'), relative.join("/"))
}

/// The parent: a real directory, root's, 0711. Blocking.
fn prepare_root(root: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if !root.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(root)
            .map_err(|err| format!("cannot create {}: {err}", root.display()))?;
    }
    let meta = std::fs::symlink_metadata(root).map_err(|err| format!("cannot look at {}: {err}", root.display()))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!("{} is not a directory of the agent's own; links.private_root must be", root.display()));
    }
    if meta.mode() & 0o7777 != 0o711 {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711))
            .map_err(|err| format!("cannot set {} to 0711: {err}", root.display()))?;
    }
    Ok(())
}

/// The mount point of one user: an empty real directory, root's, 0700 until mounted. Blocking.
fn prepare_target(target: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory", target.display())),
        Err(_) => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(target)
            .map_err(|err| format!("cannot create {}: {err}", target.display()))?,
    }
    let entries = std::fs::read_dir(target).map_err(|err| format!("cannot read {}: {err}", target.display()))?.count();
    if entries > 0 {
        return Err(format!("{} is not empty; the agent will not mount over it", target.display()));
    }
    Ok(())
}

/// Mounts every wanted user's folder that is not mounted yet and unmounts the
/// mounts of users no longer wanted. Returns, per wanted user, Ok or why not.
#[allow(clippy::too_many_arguments)]
pub async fn reconcile(
    mounter: Arc<dyn Mounter>,
    smb: &SmbMount,
    root: &Path,
    credentials_dir: &Path,
    wanted: &[Wanted],
    present: &HashSet<String>,
    made_file: &Path,
    fetched_key: Option<StorageKey>,
) -> HashMap<String, Result<(), String>> {
    let mut outcome = HashMap::new();
    let mut made = MadeMounts::load(made_file).await;
    let prepared = if wanted.is_empty() {
        Ok(Ok(()))
    } else {
        let root = root.to_path_buf();
        task::blocking("preparing the private root", DISK_DEADLINE, move || prepare_root(&root)).await
    };
    if let Err(why) = prepared.map_err(|e| e.to_string()).and_then(|r| r) {
        for user in wanted {
            outcome.insert(user.user.clone(), Err(why.clone()));
        }
        return outcome;
    }
    // Without the table nothing can be told apart: mount nothing, sweep nothing.
    let table = match crate::core::mount::table_off_workers(mounter.clone()).await {
        Ok(table) => table,
        Err(err) => {
            for user in wanted {
                outcome.insert(user.user.clone(), Err(format!("cannot read the mount table: {err}")));
            }
            return outcome;
        }
    };
    // A key fetched from Azure is handed in; a key file is read at the first mount.
    let mut key: Option<Result<StorageKey, String>> = match &smb.key {
        KeyRef::Fetched => Some(fetched_key.ok_or_else(|| "no storage key fetched from Azure yet".to_string())),
        KeyRef::File { .. } => None,
    };
    let mut mounted_now = BTreeSet::new();
    for user in wanted {
        let target = root.join(&user.user);
        let source = source_for(smb, user);
        if let Some(top) = mountinfo::top_mount_at(&table, &target) {
            let ours = matches!(top.fstype.as_str(), "cifs" | "smb3") && top.source.eq_ignore_ascii_case(&source);
            let result = if ours {
                Ok(())
            } else {
                Err(format!("{} {} is mounted at {}", top.fstype, top.source, target.display()))
            };
            outcome.insert(user.user.clone(), result);
            continue;
        }
        let result = mount_one(mounter.as_ref(), smb, &mut key, credentials_dir, user, &target, &source).await;
        if result.is_ok() {
            made.points.insert(target.clone());
            mounted_now.insert(target.clone());
        }
        outcome.insert(user.user.clone(), result);
    }
    // Users gone (or private mode off): their mounts go. Only CIFS mounts the
    // agent made itself, right under the root; a user still there keeps
    // theirs through a passing error on their folder.
    // (Under an earlier private_root too: the list says where they were made.)
    let ours: Vec<_> = table.iter().filter(|e| made.points.contains(&e.mount_point)).collect();
    for entry in ours {
        let name = entry.mount_point.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let still_wanted = entry.mount_point.parent() == Some(root) && present.contains(&name);
        if !matches!(entry.fstype.as_str(), "cifs" | "smb3") || still_wanted {
            continue;
        }
        if let Err(err) = mounter.unmount_lazy(entry.mount_point.clone(), MOUNT_TIMEOUT).await {
            tracing::warn!(component = "links", "cannot unmount {}: {err}", entry.mount_point.display());
            continue;
        }
        made.points.remove(&entry.mount_point);
        let point = entry.mount_point.clone();
        let _ =
            task::blocking("removing a private mount point", DISK_DEADLINE, move || std::fs::remove_dir(point)).await;
    }
    // Mounts gone by other hands are forgotten too.
    made.points.retain(|point| mounted_now.contains(point) || table.iter().any(|e| &e.mount_point == point));
    made.save(made_file).await;
    outcome
}

/// The private mounts the agent made, kept in its state directory: the sweep
/// never takes away a mount someone else made under the root.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct MadeMounts {
    points: BTreeSet<PathBuf>,
}

impl MadeMounts {
    async fn load(file: &Path) -> Self {
        let file = file.to_path_buf();
        let read = task::blocking("reading the private mounts made", DISK_DEADLINE, move || std::fs::read(file)).await;
        match read {
            Ok(Ok(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
            _ => Self::default(),
        }
    }

    async fn save(&self, file: &Path) {
        let Ok(bytes) = serde_json::to_vec_pretty(self) else { return };
        let file = file.to_path_buf();
        let written = task::blocking("saving the private mounts made", DISK_DEADLINE, move || {
            crate::core::atomic::replace_file(&file, &bytes, 0o600)
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!(component = "links", "cannot save the list of private mounts made: {written:?}");
        }
    }
}

async fn mount_one(
    mounter: &dyn Mounter,
    smb: &SmbMount,
    key: &mut Option<Result<StorageKey, String>>,
    credentials_dir: &Path,
    user: &Wanted,
    target: &Path,
    source: &str,
) -> Result<(), String> {
    let point = target.to_path_buf();
    task::blocking("preparing a private mount point", DISK_DEADLINE, move || prepare_target(&point))
        .await
        .map_err(|e| e.to_string())??;
    if let (None, KeyRef::File { path, owner }) = (&key, &smb.key) {
        let (file, owner) = (path.clone(), *owner);
        let read = task::blocking("reading the storage key", DISK_DEADLINE, move || {
            credentials::read_key_file(&file, owner).map_err(|err| err.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        *key = Some(read);
    }
    let key = match key {
        Some(Ok(key)) => key,
        Some(Err(why)) => return Err(why.clone()),
        None => return Err("no storage key".to_string()),
    };
    // Held until the mount call returns, then removed.
    let credentials = CredentialsFile::write_as(credentials_dir, "links.credentials", &smb.username, key)
        .map_err(|err| format!("cannot write the credentials file in {}: {err}", credentials_dir.display()))?;
    let mut options = options_for(smb, user);
    options.push(format!("credentials={}", credentials.path().display()));
    let call = MountCall {
        fstype: Some("cifs".to_string()),
        source: source.to_string(),
        target: target.to_path_buf(),
        options,
    };
    let mounted = mounter.mount(call, MOUNT_TIMEOUT).await.map_err(|err| err.to_string());
    drop(credentials);
    mounted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smb() -> SmbMount {
        SmbMount {
            source: "//acct.file.core.windows.net/notebooks".into(),
            options: ["vers=3.1.1", "uid=0", "gid=100", "dir_mode=0775", "file_mode=0664", "serverino", "actimeo=30"]
                .map(String::from)
                .to_vec(),
            username: "acct".into(),
            key: KeyRef::File { path: "/etc/pool-agent/secrets/storage-key".into(), owner: 0 },
        }
    }

    #[test]
    fn each_user_gets_their_folder_with_their_owner_and_private_modes() {
        let alice = Wanted { user: "alice".into(), uid: 1001, gid: 1001, relative: "notebooks/alice".into() };
        assert_eq!(source_for(&smb(), &alice), "//acct.file.core.windows.net/notebooks/notebooks/alice");
        assert_eq!(
            options_for(&smb(), &alice),
            ["vers=3.1.1", "serverino", "actimeo=30", "uid=1001", "gid=1001", "dir_mode=0700", "file_mode=0600"]
        );
    }

    use crate::core::mount::MountError;
    use crate::core::mountinfo::MountEntry;
    use futures_util::future::BoxFuture;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Fake {
        table: Mutex<Vec<MountEntry>>,
        calls: Mutex<Vec<(String, Vec<String>, String)>>,
        unmounts: Mutex<Vec<PathBuf>>,
    }

    impl Mounter for Fake {
        fn mount(&self, call: MountCall, _timeout: Duration) -> BoxFuture<'static, Result<(), MountError>> {
            let credentials = call
                .options
                .iter()
                .find_map(|o| o.strip_prefix("credentials="))
                .map(|p| std::fs::read_to_string(p).unwrap_or_default())
                .unwrap_or_default();
            self.calls.lock().unwrap().push((call.source.clone(), call.options.clone(), credentials));
            self.table.lock().unwrap().push(MountEntry {
                root: "/".into(),
                mount_point: call.target,
                fstype: "cifs".into(),
                source: call.source,
                super_options: String::new(),
            });
            Box::pin(async { Ok(()) })
        }
        fn unmount_lazy(&self, target: PathBuf, _timeout: Duration) -> BoxFuture<'static, Result<(), MountError>> {
            self.table.lock().unwrap().retain(|e| e.mount_point != target);
            self.unmounts.lock().unwrap().push(target);
            Box::pin(async { Ok(()) })
        }
        fn table(&self) -> std::io::Result<Vec<MountEntry>> {
            Ok(self.table.lock().unwrap().clone())
        }
    }

    #[tokio::test]
    async fn mounts_each_wanted_user_once_and_unmounts_those_gone() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("storage-key");
        std::fs::write(&key_file, "s3cret\n").unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let smb = SmbMount { key: KeyRef::File { path: key_file, owner: nix::unistd::geteuid().as_raw() }, ..smb() };
        let root = dir.path().join("private");
        let run = dir.path().join("run");
        let wanted = |names: &[(&str, u32)]| -> Vec<Wanted> {
            names
                .iter()
                .map(|(n, uid)| Wanted {
                    user: n.to_string(),
                    uid: *uid,
                    gid: *uid,
                    relative: format!("notebooks/{n}").into(),
                })
                .collect()
        };
        let made = dir.path().join("private-mounts.json");
        let present = |names: &[&str]| -> HashSet<String> { names.iter().map(|n| n.to_string()).collect() };
        let fake = Arc::new(Fake::default());
        // Someone else's CIFS mount under the root, made before the agent: never swept.
        fake.table.lock().unwrap().push(MountEntry {
            root: "/".into(),
            mount_point: root.join("scratch"),
            fstype: "cifs".into(),
            source: "//other/scratch".into(),
            super_options: String::new(),
        });
        let both = present(&["alice", "bob"]);
        let outcome =
            reconcile(fake.clone(), &smb, &root, &run, &wanted(&[("alice", 1001), ("bob", 1002)]), &both, &made, None)
                .await;
        assert!(outcome.values().all(|r| r.is_ok()), "{outcome:?}");
        let calls = fake.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2);
        assert!(calls[0].0.ends_with("/notebooks/alice") && calls[0].1.contains(&"uid=1001".to_string()));
        assert_eq!(calls[0].2, "username=acct\npassword=s3cret\n", "the key went by credentials file");
        assert!(!run.join("links.credentials").exists(), "and the file went away");
        assert_eq!(std::fs::metadata(&root).unwrap().permissions().mode() & 0o777, 0o711);

        // Again: nothing to do. bob's folder fails for a moment (not wanted
        // this pass) but he is still a user: he keeps his mount.
        reconcile(fake.clone(), &smb, &root, &run, &wanted(&[("alice", 1001), ("bob", 1002)]), &both, &made, None)
            .await;
        assert_eq!(fake.calls.lock().unwrap().len(), 2, "mounted ones are left alone");
        reconcile(fake.clone(), &smb, &root, &run, &wanted(&[("alice", 1001)]), &both, &made, None).await;
        assert!(fake.unmounts.lock().unwrap().is_empty(), "a passing folder error unmounts nobody");
        // bob is gone: only his mount goes, never the one the agent did not make.
        reconcile(fake.clone(), &smb, &root, &run, &wanted(&[("alice", 1001)]), &present(&["alice"]), &made, None)
            .await;
        assert_eq!(fake.unmounts.lock().unwrap().clone(), [root.join("bob")]);
        assert!(!root.join("bob").exists(), "the empty mount point is removed");
        assert!(root.join("alice").is_dir());
        // Private mode off: the agent's own mounts go, the other one stays.
        reconcile(fake.clone(), &smb, &root, &run, &[], &HashSet::new(), &made, None).await;
        assert_eq!(fake.unmounts.lock().unwrap().clone(), [root.join("bob"), root.join("alice")]);
        assert!(fake.table.lock().unwrap().iter().any(|e| e.mount_point == root.join("scratch")));
        let kept: MadeMounts = serde_json::from_slice(&std::fs::read(&made).unwrap()).unwrap();
        assert!(kept.points.is_empty(), "{kept:?}");
        assert_eq!(std::fs::metadata(&made).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[tokio::test]
    async fn a_mount_point_with_something_in_it_is_not_mounted_over() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("private");
        std::fs::create_dir_all(root.join("alice")).unwrap();
        std::fs::write(root.join("alice/left-behind"), "x").unwrap();
        let fake = Arc::new(Fake::default());
        let alice = Wanted { user: "alice".into(), uid: 1001, gid: 1001, relative: "notebooks/alice".into() };
        let present: HashSet<String> = ["alice".to_string()].into();
        let made = dir.path().join("made.json");
        let outcome = reconcile(fake.clone(), &smb(), &root, dir.path(), &[alice], &present, &made, None).await;
        assert!(matches!(outcome.get("alice"), Some(Err(why)) if why.contains("not empty")), "{outcome:?}");
        assert!(fake.calls.lock().unwrap().is_empty());
    }
}
