//! News capabilities publish for each other. A capability never imports
//! another: the share says here whether it is mounted, and links, setup
//! scripts and idle read it from here.

use crate::core::credentials::StorageKey;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// What other capabilities need to know of the share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareNews {
    /// The share has not said anything yet (the daemon just started).
    NotYetKnown,
    /// No `[share]` in the config.
    NotConfigured,
    /// Configured but not usable now; `why` is for status lines.
    Down { why: String },
    /// Mounted and its last probe passed; `root` is where it is reachable and
    /// `identity` its (device, inode) when mounted. Whoever writes under `root`
    /// checks the identity on the directory it opened: a mount gone unseen
    /// leaves an empty local directory there, which must never be written to.
    Mounted { root: PathBuf, identity: (u64, u64), smb: Option<SmbMount> },
}

/// How an SMB share is mounted, for capabilities that mount parts of it on
/// their own (per-user private mounts). Holds no secret: it says where the key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmbMount {
    /// `//server/share`.
    pub source: String,
    /// The main mount's options, without credentials.
    pub options: Vec<String>,
    /// The account name for the credentials file.
    pub username: String,
    pub key: KeyRef,
}

/// Where the SMB share's key comes from, for the private mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// A root-only file (resolved under the root), and the uid that must own it.
    File { path: PathBuf, owner: u32 },
    /// Fetched from Azure by the Azure capability: [`SharedState::storage_key`].
    Fetched,
}

/// The storage key the Azure capability fetched for the share
/// (`share.key_source` = `key-vault` or `storage-account`). The key stays in
/// memory only (wiped on drop); its `Debug` says nothing of it.
#[derive(Debug, Clone, Default)]
pub struct KeyNews {
    /// Bumped for each key fetched; 0 while there is none.
    pub generation: u64,
    pub key: Option<StorageKey>,
    /// Where it came from, for status lines.
    pub from: String,
    pub fetched_at: Option<std::time::SystemTime>,
    /// Why there is no key yet, or why the last fetch failed.
    pub error: Option<String>,
}

/// A user whose folder links found or made on the share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFolder {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// Relative to the share root (`notebooks/alice`).
    pub relative: PathBuf,
}

/// Published by links after each pass over everyone, for the share's
/// private mounts: whose folders are there, and who is still a user. Empty
/// unless `links.private` is on (a pool of thousands pays nothing for it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FolderNews {
    pub private: bool,
    pub ready: Vec<UserFolder>,
    pub present: std::collections::BTreeSet<String>,
}

/// Published by the share: the users whose private mount failed, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrivateMountNews {
    pub failed: std::collections::BTreeMap<String, String>,
}

/// Where a user reaches their folder: their own mount under
/// `links.private_root` in private mode, else their folder on the share.
pub fn user_folder(
    links: &crate::config::LinksSettings,
    paths: &crate::core::paths::SystemPaths,
    share_root: &std::path::Path,
    user: &str,
) -> PathBuf {
    if links.private {
        paths.resolve(&links.private_root).join(user)
    } else {
        share_root.join(links.target.replace("{user}", user))
    }
}

/// What idle and status need to know of setup scripts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptsNews {
    /// Names of the scripts running now.
    pub running: Vec<String>,
}

/// The idle verdict, for Azure reporting (metrics, scale-in protection,
/// self-removal) to read without importing idle.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdleNews {
    /// Whether a verdict was made yet.
    pub known: bool,
    pub idle: bool,
    /// Since when nothing was active (while idle, and while counting down).
    pub idle_since: Option<std::time::SystemTime>,
    /// When the VM turns (or turned) idle if nothing happens.
    pub idle_at: Option<std::time::SystemTime>,
    /// Why the VM is active (each active or unknown signal), or why idle.
    pub reasons: Vec<String>,
    /// Per-signal figures: sessions, cpu_percent, gpu_percent, connections...
    pub figures: std::collections::BTreeMap<String, f64>,
    /// When the samples behind this verdict were taken.
    pub sampled_at: Option<std::time::SystemTime>,
    /// The sampling interval in force: a verdict older than
    /// [`STALE_AFTER_INTERVALS`] of them is stale.
    pub interval: std::time::Duration,
    /// A signal is active now: someone (or their work) uses the VM. Not boot
    /// grace, not the agent's start, not an unknown signal: demand, for autoscale.
    pub in_use: bool,
    /// Within `idle.boot_grace` after boot.
    pub in_grace: bool,
    /// A signal cannot be read (it counts as active for the verdict): nobody
    /// can say the VM is free.
    pub unknown: bool,
    /// Open sessions per user name.
    pub session_users: std::collections::BTreeMap<String, u32>,
}

/// A verdict older than this many sampling intervals is not acted on.
pub const STALE_AFTER_INTERVALS: u32 = 3;

/// Whether a verdict sampled at `sampled_at`, every `interval`, is too old at `now`.
pub fn verdict_is_stale(
    sampled_at: std::time::SystemTime,
    interval: std::time::Duration,
    now: std::time::SystemTime,
) -> bool {
    now.duration_since(sampled_at).unwrap_or_default() > interval * STALE_AFTER_INTERVALS
}

impl IdleNews {
    /// A verdict older than three sampling intervals: sampling stalled, so
    /// nobody may take it for idle.
    pub fn is_stale(&self, now: std::time::SystemTime) -> bool {
        self.sampled_at.is_some_and(|at| verdict_is_stale(at, self.interval, now))
    }

    /// When this verdict turns stale if no new one comes (just past three intervals).
    pub fn stale_at(&self) -> Option<std::time::SystemTime> {
        let age = self.interval.checked_mul(STALE_AFTER_INTERVALS)? + std::time::Duration::from_millis(1);
        self.sampled_at?.checked_add(age)
    }

    /// The only verdict anyone may act on: made, idle, and fresh.
    pub fn idle_now(&self, now: std::time::SystemTime) -> bool {
        self.known && self.idle && !self.is_stale(now)
    }
}

/// Scale-in protection as the Azure capability believes it, for the
/// metrics and self-delete to read as a type (never a display string).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProtectionNews {
    /// The agent keeps no protection (`azure.protect = false`, off Azure, not a scale set's VM).
    #[default]
    NotKept,
    /// Not read yet, or an answer was lost.
    Unknown,
    Protected,
    /// Released, as a read or a write's answer showed.
    Released,
    /// Absent on repeated reads: being deleted.
    Gone,
}

#[derive(Clone)]
pub struct SharedState {
    share: Arc<watch::Sender<ShareNews>>,
    /// Bumped after each links pass; scripts wait for the first.
    links_passes: Arc<watch::Sender<u64>>,
    scripts: Arc<watch::Sender<ScriptsNews>>,
    idle: Arc<watch::Sender<IdleNews>>,
    folders: Arc<watch::Sender<FolderNews>>,
    private_mounts: Arc<watch::Sender<PrivateMountNews>>,
    /// The instance's name (config, else IMDS, else the hostname).
    instance: Arc<std::sync::RwLock<String>>,
    /// A config fragment from the scale set's userData (IMDS), for the
    /// daemon to apply as the last drop-in; empty when there is none.
    user_data: Arc<watch::Sender<Arc<str>>>,
    /// Bumped at each reload an admin asks for (SIGHUP), valid or not.
    reloads: Arc<watch::Sender<u64>>,
    storage_key: Arc<watch::Sender<KeyNews>>,
    /// The generation of the fetched key a mount refused (authentication):
    /// the Azure capability fetches again.
    fresh_key_wanted: Arc<watch::Sender<u64>>,
    protection: Arc<watch::Sender<ProtectionNews>>,
}

impl Default for SharedState {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedState {
    pub fn new() -> Self {
        let (share, _) = watch::channel(ShareNews::NotYetKnown);
        let (links_passes, _) = watch::channel(0);
        let (scripts, _) = watch::channel(ScriptsNews::default());
        let (idle, _) = watch::channel(IdleNews::default());
        let (folders, _) = watch::channel(FolderNews::default());
        let (private_mounts, _) = watch::channel(PrivateMountNews::default());
        let (user_data, _) = watch::channel(Arc::from(""));
        let (reloads, _) = watch::channel(0);
        let (storage_key, _) = watch::channel(KeyNews::default());
        let (fresh_key_wanted, _) = watch::channel(0);
        let (protection, _) = watch::channel(ProtectionNews::default());
        Self {
            protection: Arc::new(protection),
            storage_key: Arc::new(storage_key),
            fresh_key_wanted: Arc::new(fresh_key_wanted),
            reloads: Arc::new(reloads),
            user_data: Arc::new(user_data),
            folders: Arc::new(folders),
            private_mounts: Arc::new(private_mounts),
            share: Arc::new(share),
            links_passes: Arc::new(links_passes),
            scripts: Arc::new(scripts),
            idle: Arc::new(idle),
            instance: Arc::new(std::sync::RwLock::new(String::new())),
        }
    }

    pub fn publish_protection(&self, news: ProtectionNews) {
        self.protection.send_if_modified(|current| std::mem::replace(current, news) != news);
    }

    pub fn protection(&self) -> ProtectionNews {
        *self.protection.borrow()
    }

    pub fn publish_storage_key(&self, news: KeyNews) {
        self.storage_key.send_replace(news);
    }

    pub fn storage_key(&self) -> KeyNews {
        self.storage_key.borrow().clone()
    }

    pub fn watch_storage_key(&self) -> watch::Receiver<KeyNews> {
        self.storage_key.subscribe()
    }

    /// A mount refused the key of this generation: ask for a fresh one.
    pub fn ask_fresh_key(&self, refused_generation: u64) {
        self.fresh_key_wanted.send_if_modified(|wanted| {
            let newer = refused_generation > *wanted;
            if newer {
                *wanted = refused_generation;
            }
            newer
        });
    }

    pub fn watch_fresh_key_wanted(&self) -> watch::Receiver<u64> {
        self.fresh_key_wanted.subscribe()
    }

    pub fn publish_reload_asked(&self) {
        self.reloads.send_modify(|count| *count += 1);
    }

    pub fn watch_reloads(&self) -> watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// Tells of the scale set's config fragment; only a change wakes the daemon.
    pub fn publish_user_data(&self, text: &str) {
        self.user_data.send_if_modified(|current| {
            let changed = &**current != text;
            if changed {
                *current = Arc::from(text);
            }
            changed
        });
    }

    pub fn user_data(&self) -> Arc<str> {
        self.user_data.borrow().clone()
    }

    pub fn watch_user_data(&self) -> watch::Receiver<Arc<str>> {
        self.user_data.subscribe()
    }

    pub fn publish_instance_name(&self, name: &str) {
        *self.instance.write().unwrap_or_else(|p| p.into_inner()) = name.to_string();
    }

    pub fn instance_name(&self) -> String {
        self.instance.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Published by links after each pass over everyone.
    pub fn publish_folders(&self, news: FolderNews) {
        publish_if_changed(&self.folders, news);
    }

    pub fn watch_folders(&self) -> watch::Receiver<FolderNews> {
        self.folders.subscribe()
    }

    /// Published by the share after each round of private mounts.
    pub fn publish_private_mounts(&self, news: PrivateMountNews) {
        publish_if_changed(&self.private_mounts, news);
    }

    pub fn private_mounts(&self) -> PrivateMountNews {
        self.private_mounts.borrow().clone()
    }

    pub fn watch_private_mounts(&self) -> watch::Receiver<PrivateMountNews> {
        self.private_mounts.subscribe()
    }

    /// Published by links after every pass.
    pub fn publish_links_pass(&self) {
        self.links_passes.send_modify(|passes| *passes += 1);
    }

    pub fn watch_links_passes(&self) -> watch::Receiver<u64> {
        self.links_passes.subscribe()
    }

    pub fn publish_scripts(&self, news: ScriptsNews) {
        publish_if_changed(&self.scripts, news);
    }

    pub fn scripts(&self) -> ScriptsNews {
        self.scripts.borrow().clone()
    }

    /// Published by idle after every sample.
    pub fn publish_idle(&self, news: IdleNews) {
        publish_if_changed(&self.idle, news);
    }

    pub fn idle(&self) -> IdleNews {
        self.idle.borrow().clone()
    }

    pub fn watch_idle(&self) -> watch::Receiver<IdleNews> {
        self.idle.subscribe()
    }

    /// Published by the share capability; readers are woken only by a real change.
    pub fn publish_share(&self, news: ShareNews) {
        publish_if_changed(&self.share, news);
    }

    pub fn share(&self) -> ShareNews {
        self.share.borrow().clone()
    }

    /// For capabilities that wait for the share (links, scripts).
    pub fn watch_share(&self) -> watch::Receiver<ShareNews> {
        self.share.subscribe()
    }
}

/// Replaces the news; readers are woken only by a real change.
fn publish_if_changed<T: PartialEq>(sender: &watch::Sender<T>, news: T) {
    sender.send_if_modified(|current| {
        let changed = *current != news;
        *current = news;
        changed
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_reaches_their_folder_on_the_share_or_through_their_own_mount() {
        let mut settings = crate::config::load_str(std::path::Path::new("c.toml"), "").unwrap().links;
        let paths = crate::core::paths::SystemPaths::system();
        let root = std::path::Path::new("/data/notebooks");
        assert_eq!(user_folder(&settings, &paths, root, "alice"), PathBuf::from("/data/notebooks/notebooks/alice"));
        settings.private = true;
        assert_eq!(user_folder(&settings, &paths, root, "alice"), PathBuf::from("/data/notebooks-private/alice"));
    }

    #[tokio::test]
    async fn readers_see_changes_only() {
        let shared = SharedState::new();
        let mut rx = shared.watch_share();
        rx.borrow_and_update();
        shared.publish_share(ShareNews::Mounted { root: "/data/notebooks".into(), identity: (1, 2), smb: None });
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        shared.publish_share(ShareNews::Mounted { root: "/data/notebooks".into(), identity: (1, 2), smb: None });
        assert!(!rx.has_changed().unwrap(), "the same news again wakes nobody");
        assert_eq!(shared.share(), ShareNews::Mounted { root: "/data/notebooks".into(), identity: (1, 2), smb: None });
    }

    #[test]
    fn an_idle_verdict_older_than_three_intervals_is_not_idle() {
        let at = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let interval = std::time::Duration::from_secs(10);
        let news = IdleNews { known: true, idle: true, sampled_at: Some(at), interval, ..Default::default() };
        assert!(news.idle_now(at + interval * 3), "three intervals old is still fresh");
        assert!(!news.idle_now(at + interval * 3 + std::time::Duration::from_secs(1)));
        assert!(news.is_stale(at + interval * 4));
        assert!(!IdleNews { known: false, ..news.clone() }.idle_now(at), "no verdict yet is not idle");
    }
}
