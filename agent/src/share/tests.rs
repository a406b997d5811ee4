//! The share task against a fake mount system: mount, adopt, conflict,
//! outage, recovery and the key's path, without touching the real kernel.

use super::probe::{ProbeOutcome, Prober};
use super::*;
use crate::config;
use crate::core::board::StatusBoard;
use crate::core::mount::{MountCall, MountError, Mounter};
use crate::core::mountinfo::MountEntry;
use futures_util::future::BoxFuture;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct FakeMounts {
    table: Mutex<Vec<MountEntry>>,
    calls: Mutex<Vec<Vec<String>>>,
    /// What the credentials file held while mount ran.
    credentials_seen: Mutex<Vec<String>>,
    unmounts: Mutex<Vec<PathBuf>>,
    fail_with: Mutex<Option<String>>,
}

struct FakeMounter(Arc<FakeMounts>);

impl Mounter for FakeMounter {
    fn mount(&self, call: MountCall, _timeout: Duration) -> BoxFuture<'static, Result<(), MountError>> {
        let mounts = self.0.clone();
        Box::pin(async move {
            mounts.calls.lock().unwrap().push(call.argv());
            for option in &call.options {
                if let Some(path) = option.strip_prefix("credentials=") {
                    mounts.credentials_seen.lock().unwrap().push(std::fs::read_to_string(path).unwrap_or_default());
                }
            }
            if let Some(error) = mounts.fail_with.lock().unwrap().clone() {
                return Err(MountError::Failed {
                    command: "mount".into(),
                    status: "exit status: 32".into(),
                    output: error,
                });
            }
            let fstype = match call.fstype.as_deref() {
                Some("nfs") => "nfs4".to_string(),
                Some(other) => other.to_string(),
                None => "ext4".to_string(),
            };
            mounts.table.lock().unwrap().push(MountEntry {
                root: "/".into(),
                mount_point: call.target.clone(),
                fstype,
                source: call.source.clone(),
                super_options: String::new(),
            });
            Ok(())
        })
    }

    fn unmount_lazy(&self, target: PathBuf, _timeout: Duration) -> BoxFuture<'static, Result<(), MountError>> {
        let mounts = self.0.clone();
        Box::pin(async move {
            mounts.unmounts.lock().unwrap().push(target.clone());
            let mut table = mounts.table.lock().unwrap();
            if let Some(at) = table.iter().rposition(|e| e.mount_point == target) {
                table.remove(at);
            }
            Ok(())
        })
    }

    fn table(&self) -> std::io::Result<Vec<MountEntry>> {
        Ok(self.0.table.lock().unwrap().clone())
    }
}

struct FakeProber(Arc<AtomicBool>);

impl Prober for FakeProber {
    fn probe(&self, _root: PathBuf, _deadline: Duration) -> BoxFuture<'static, ProbeOutcome> {
        let healthy = self.0.load(Ordering::SeqCst);
        Box::pin(async move {
            if healthy {
                ProbeOutcome::Healthy { latency: Duration::from_millis(2) }
            } else {
                ProbeOutcome::Failed { error: "Host is down (os error 112)".into() }
            }
        })
    }
}

struct Rig {
    dir: tempfile::TempDir,
    mounts: Arc<FakeMounts>,
    healthy: Arc<AtomicBool>,
    handle: ShareHandle,
    board: Arc<StatusBoard>,
    shutdown: CancellationToken,
    settings: watch::Sender<Arc<crate::config::Settings>>,
    shared: crate::core::shared::SharedState,
    task: Option<tokio::task::JoinHandle<TaskResult>>,
}

const KEY: &str = "c2VjcmV0LWtleS1kby1ub3QtbGVhaw==";

impl Rig {
    fn new(config_text: &str) -> Self {
        Self::build(config_text, |_| Vec::new())
    }

    /// `before_start` prepares the sandbox and returns the mounts already in place.
    fn build(config_text: &str, before_start: impl FnOnce(&Path) -> Vec<MountEntry>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/pool-agent/secrets")).unwrap();
        std::fs::create_dir_all(dir.path().join("run/pool-agent")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/bash\n").unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nusers:x:100:\n").unwrap();
        let key_file = dir.path().join("etc/pool-agent/secrets/storage-key");
        std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();

        let mounts = Arc::new(FakeMounts::default());
        *mounts.table.lock().unwrap() = before_start(dir.path());
        let healthy = Arc::new(AtomicBool::new(true));
        let clock = crate::core::clock::system();
        let handle = ShareHandle::new(
            clock.clone(),
            Arc::new(FakeMounter(mounts.clone())),
            Arc::new(FakeProber(healthy.clone())),
        );
        let settings = Arc::new(config::load_str(Path::new("c.toml"), config_text).unwrap());
        let (ctx, settings_tx) = TaskContext::for_test(ComponentId::Share, dir.path(), settings);
        let (board, shutdown, shared) = (ctx.board.clone(), ctx.shutdown.clone(), ctx.shared.clone());
        let task = Some(tokio::spawn(run(ctx, handle.clone())));
        Rig { dir, mounts, healthy, handle, board, shutdown, settings: settings_tx, shared, task }
    }

    fn target(&self) -> PathBuf {
        self.dir.path().join("data/notebooks")
    }

    async fn wait_for(&self, state: ShareState, limit: Duration) -> ShareReport {
        let started = tokio::time::Instant::now();
        loop {
            let report = self.handle.report();
            if report.state == state {
                return report;
            }
            assert!(started.elapsed() < limit, "never reached {state:?}: {report:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

const NFS: &str =
    "[share]\nkind = \"nfs\"\nsource = \"10.0.0.4:/export\"\nprobe_interval = \"5s\"\nprobe_timeout = \"2s\"\n";
const CIFS: &str =
    "[share]\nkind = \"azure-files\"\naccount = \"poolstore\"\nshare = \"notebooks\"\nprobe_interval = \"5s\"\n";

#[tokio::test(start_paused = true)]
async fn mounts_nfs_4_1_and_reports_it() {
    let rig = Rig::new(NFS);
    let report = rig.wait_for(ShareState::Mounted, Duration::from_secs(5)).await;
    assert_eq!(report.fstype.as_deref(), Some("nfs"));
    assert!(!report.adopted);
    assert_eq!(report.mounts, 1);
    let calls = rig.mounts.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0][..4], ["-t", "nfs", "-o", "vers=4.1,sec=sys,hard,timeo=600,retrans=2"]);
    assert_eq!(rig.board.state_of(ComponentId::Share), Some(ComponentState::Ready));
    // A fresh mount is probed at once, not one interval later.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let probed = rig.handle.report();
    assert!(probed.last_good_probe.is_some() && probed.probe_latency_ms.is_some(), "{probed:#?}");
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_key_travels_only_through_a_credentials_file() {
    let rig = Rig::new(CIFS);
    let report = rig.wait_for(ShareState::Mounted, Duration::from_secs(5)).await;
    let calls = rig.mounts.calls.lock().unwrap().clone();
    let argv = calls[0].join(" ");
    assert!(!argv.contains(KEY), "key in argv: {argv}");
    assert!(argv.contains("credentials=") && argv.contains("//poolstore.file.core.windows.net/notebooks"), "{argv}");
    assert_eq!(rig.mounts.credentials_seen.lock().unwrap()[0], format!("username=poolstore\npassword={KEY}\n"));
    assert!(!rig.dir.path().join("run/pool-agent/private/share.credentials").exists(), "credentials file left behind");
    assert!(rig.dir.path().join("run/pool-agent/private").is_dir(), "the private directory was used");
    let shown = serde_json::to_string(&report).unwrap();
    assert!(!shown.contains(KEY));
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_open_key_file_is_refused_and_retried_without_mounting() {
    let rig = Rig::build(CIFS, |root| {
        let key_file = root.join("etc/pool-agent/secrets/storage-key");
        std::fs::set_permissions(key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        Vec::new()
    });
    // Several retries later the file is still refused and nothing was mounted.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let report = rig.handle.report();
    assert_eq!(report.state, ShareState::Unmounted);
    let error = report.last_error.clone().unwrap_or_default();
    assert!(error.contains("chmod 600") && !error.contains(KEY), "{error}");
    assert!(report.next_attempt.is_some());
    assert!(rig.mounts.calls.lock().unwrap().is_empty(), "mounted with a refused key file");
    rig.stop().await;
}

fn nfs_entry(root: &Path) -> MountEntry {
    MountEntry {
        root: "/".into(),
        mount_point: root.join("data/notebooks"),
        fstype: "nfs4".into(),
        source: "10.0.0.4:/export".into(),
        super_options: String::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn an_existing_mount_of_the_same_share_is_adopted_not_stacked() {
    let rig = Rig::build(NFS, |root| vec![nfs_entry(root)]);
    let report = rig.wait_for(ShareState::Mounted, Duration::from_secs(5)).await;
    assert!(report.adopted);
    assert_eq!(report.mounts, 0);
    assert!(rig.mounts.calls.lock().unwrap().is_empty(), "adopted, so never mounted again");
    assert!(report.detail.unwrap().contains("(adopted)"));
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_remount_replaces_the_mount_and_never_stacks() {
    let rig = Rig::build(NFS, |root| vec![nfs_entry(root)]);
    rig.wait_for(ShareState::Mounted, Duration::from_secs(5)).await;
    let RemountOutcome::Finished(report) = rig.handle.request_remount(Duration::from_secs(30)).await.unwrap() else {
        panic!("the fake remount is instant");
    };
    assert_eq!(report.state, ShareState::Mounted);
    assert!(!report.adopted);
    assert_eq!(report.mounts, 1);
    assert_eq!(rig.mounts.unmounts.lock().unwrap().len(), 1);
    let target = rig.target();
    assert_eq!(rig.mounts.table.lock().unwrap().iter().filter(|e| e.mount_point == target).count(), 1);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn another_filesystem_at_the_mount_point_is_a_conflict() {
    let dir_config = NFS;
    let rig = Rig::new(dir_config);
    rig.wait_for(ShareState::Mounted, Duration::from_secs(5)).await;
    // Replace the share with a tmpfs behind the agent's back.
    {
        let mut table = rig.mounts.table.lock().unwrap();
        table.clear();
        table.push(MountEntry {
            root: "/".into(),
            mount_point: rig.target(),
            fstype: "tmpfs".into(),
            source: "none".into(),
            super_options: String::new(),
        });
    }
    let report = rig.wait_for(ShareState::Conflict, Duration::from_secs(30)).await;
    assert!(report.last_error.unwrap().contains("tmpfs none is already mounted"));
    assert_eq!(rig.mounts.calls.lock().unwrap().len(), 1, "never mounts on top");
    assert_eq!(rig.board.state_of(ComponentId::Share), Some(ComponentState::Failed));
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_outage_degrades_then_remounts_with_backoff_and_recovers_by_itself() {
    let rig = Rig::new(NFS);
    rig.wait_for(ShareState::Mounted, Duration::from_secs(5)).await;

    rig.healthy.store(false, Ordering::SeqCst);
    *rig.mounts.fail_with.lock().unwrap() = Some("mount.nfs: Connection refused".into());
    // Degraded at the first failed probe: within one probe interval.
    let degraded = rig.wait_for(ShareState::Degraded, Duration::from_secs(6)).await;
    assert!(degraded.last_error.unwrap().contains("Host is down"));
    assert_eq!(rig.board.state_of(ComponentId::Share), Some(ComponentState::Degraded));

    // The second failure lets go of the mount and retries; it stays degraded meanwhile.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(rig.mounts.unmounts.lock().unwrap().len(), 1);
    let attempts = rig.mounts.calls.lock().unwrap().len();
    assert!(attempts >= 3, "retries with backoff: {attempts}");
    let report = rig.handle.report();
    assert_eq!(report.state, ShareState::Degraded);
    assert!(report.last_error.unwrap().contains("Connection refused"));

    // The server comes back: mounted again, nobody asked.
    rig.healthy.store(true, Ordering::SeqCst);
    *rig.mounts.fail_with.lock().unwrap() = None;
    let back = rig.wait_for(ShareState::Mounted, Duration::from_secs(120)).await;
    assert_eq!(back.mounts, 2);
    assert!(back.failed_probes >= 2);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn no_share_section_means_not_configured() {
    let rig = Rig::new("");
    rig.wait_for(ShareState::NotConfigured, Duration::from_secs(5)).await;
    assert_eq!(rig.board.state_of(ComponentId::Share), Some(ComponentState::Skipped));
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_non_empty_mount_point_is_refused_unless_forced() {
    let seed_stray_file = |root: &Path| {
        std::fs::create_dir_all(root.join("data/notebooks")).unwrap();
        std::fs::write(root.join("data/notebooks/stray.ipynb"), "{}").unwrap();
        Vec::new()
    };
    let blocked = Rig::build(NFS, seed_stray_file);
    let report = blocked.wait_for(ShareState::Unmounted, Duration::from_secs(5)).await;
    assert!(report.last_error.unwrap().contains("is not empty (1 entries)"));
    assert!(blocked.mounts.calls.lock().unwrap().is_empty());
    blocked.stop().await;

    let forced = Rig::build(&format!("{NFS}force = true\n"), seed_stray_file);
    forced.wait_for(ShareState::Mounted, Duration::from_secs(5)).await;
    forced.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_moves_the_share_lets_go_of_the_old_mount() {
    let rig = Rig::new(NFS);
    rig.wait_for(ShareState::Mounted, Duration::from_secs(5)).await;
    let moved = "[share]\nkind = \"nfs\"\nsource = \"10.0.0.5:/other\"\nmount_point = \"/data/team\"\n";
    rig.settings.send_replace(Arc::new(config::load_str(Path::new("c.toml"), moved).unwrap()));
    let started = tokio::time::Instant::now();
    loop {
        let report = rig.handle.report();
        if report.state == ShareState::Mounted && report.source.as_deref() == Some("10.0.0.5:/other") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{report:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rig.mounts.unmounts.lock().unwrap().clone(), [rig.target()]);
    let table = rig.mounts.table.lock().unwrap().clone();
    assert_eq!(table.len(), 1);
    assert_eq!(table[0].mount_point, rig.dir.path().join("data/team"));
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_changes_nothing_keeps_the_mount() {
    let rig = Rig::new(NFS);
    rig.wait_for(ShareState::Mounted, Duration::from_secs(5)).await;
    rig.settings.send_replace(Arc::new(config::load_str(Path::new("c.toml"), NFS).unwrap()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(rig.mounts.unmounts.lock().unwrap().is_empty());
    assert_eq!(rig.mounts.calls.lock().unwrap().len(), 1);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_symlinked_parent_is_resolved_so_the_mount_is_found_again() {
    let rig = Rig::build(
        "[share]\nkind = \"nfs\"\nsource = \"10.0.0.4:/export\"\nmount_point = \"/data/link/nb\"\n",
        |root| {
            std::fs::create_dir_all(root.join("disk")).unwrap();
            std::fs::create_dir_all(root.join("data")).unwrap();
            std::os::unix::fs::symlink(root.join("disk"), root.join("data/link")).unwrap();
            Vec::new()
        },
    );
    rig.wait_for(ShareState::Mounted, Duration::from_secs(5)).await;
    let real = std::fs::canonicalize(rig.dir.path().join("disk")).unwrap().join("nb");
    assert_eq!(rig.mounts.table.lock().unwrap()[0].mount_point, real);
    // A remount finds it through the real path: replaced, not stacked.
    rig.handle.request_remount(Duration::from_secs(30)).await.unwrap();
    assert_eq!(rig.mounts.table.lock().unwrap().len(), 1);
    assert_eq!(rig.mounts.unmounts.lock().unwrap().clone(), [real]);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_symlink_as_mount_point_is_refused() {
    let rig = Rig::build(NFS, |root| {
        std::fs::create_dir_all(root.join("elsewhere")).unwrap();
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::os::unix::fs::symlink(root.join("elsewhere"), root.join("data/notebooks")).unwrap();
        Vec::new()
    });
    let report = rig.wait_for(ShareState::Unmounted, Duration::from_secs(5)).await;
    assert!(report.last_error.unwrap().contains("is a symlink"));
    assert!(rig.mounts.calls.lock().unwrap().is_empty());
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn private_mounts_follow_what_links_says_and_go_when_private_mode_ends() {
    use crate::core::shared::{FolderNews, UserFolder};
    let rig = Rig::new(&format!("{CIFS}[links]\nprivate = true\n"));
    rig.wait_for(ShareState::Mounted, Duration::from_secs(5)).await;
    let calls = || rig.mounts.calls.lock().unwrap().clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(calls().len(), 1, "before links' first pass nothing else is mounted");
    assert!(calls()[0].join(" ").contains("uid=0,gid=0,dir_mode=0700,file_mode=0600"), "{:?}", calls()[0]);
    let alice = UserFolder { user: "alice".into(), uid: 1001, gid: 1001, relative: "notebooks/alice".into() };
    rig.shared.publish_folders(FolderNews { private: true, ready: vec![alice], present: ["alice".to_string()].into() });
    let started = tokio::time::Instant::now();
    while calls().len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(10), "alice's mount never came: {:?}", calls());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let argv = calls()[1].join(" ");
    assert!(argv.contains("//poolstore.file.core.windows.net/notebooks/notebooks/alice"), "{argv}");
    assert!(argv.contains("uid=1001") && argv.ends_with("data/notebooks-private/alice"), "{argv}");
    assert!(rig.shared.private_mounts().failed.is_empty());
    // Private mode off (a reload, then links' next pass says nothing): her mount goes.
    rig.settings.send(Arc::new(config::load_str(Path::new("c.toml"), CIFS).unwrap())).unwrap();
    rig.shared.publish_folders(FolderNews::default());
    let private_alice = rig.dir.path().join("data/notebooks-private/alice");
    let started = tokio::time::Instant::now();
    while !rig.mounts.unmounts.lock().unwrap().contains(&private_alice) {
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", rig.mounts.unmounts.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_key_from_azure_is_awaited_used_and_asked_for_again_when_the_server_refuses_it() {
    use crate::core::credentials::StorageKey;
    use crate::core::shared::KeyNews;
    let config =
        format!("{CIFS}key_source = \"key-vault\"\nkey_vault_secret = \"https://kv.vault.azure.net/secrets/k\"\n");
    let rig = Rig::new(&config);
    // No key yet: no mount call, and status says what it waits for.
    let waiting = rig.wait_for(ShareState::Unmounted, Duration::from_secs(5)).await;
    assert!(
        waiting.last_error.as_deref().unwrap_or_default().contains("waiting for the storage key from Azure"),
        "{waiting:#?}"
    );
    assert!(rig.mounts.calls.lock().unwrap().is_empty());
    let news = |generation: u64, key: &str| KeyNews {
        generation,
        key: Some(StorageKey::fetched(zeroize::Zeroizing::new(key.to_string())).unwrap()),
        from: "Key Vault secret https://kv.vault.azure.net/secrets/k".into(),
        fetched_at: None,
        error: None,
    };
    // The server knows only the rotated key: the first one is refused.
    *rig.mounts.fail_with.lock().unwrap() = Some("mount error(13): Permission denied".into());
    let mut wanted = rig.shared.watch_fresh_key_wanted();
    rig.shared.publish_storage_key(news(1, "old-key"));
    tokio::time::timeout(Duration::from_secs(5), wanted.changed()).await.unwrap().unwrap();
    assert_eq!(*wanted.borrow(), 1, "the refused generation is asked to be fetched again");
    assert_eq!(rig.mounts.credentials_seen.lock().unwrap()[0], "username=poolstore\npassword=old-key\n");
    let refused = rig.handle.report();
    assert!(refused.last_error.as_deref().unwrap_or_default().contains("fetched again"), "{refused:#?}");
    // The fresh key is tried at once, not after the backoff.
    *rig.mounts.fail_with.lock().unwrap() = None;
    rig.shared.publish_storage_key(news(2, "rotated-key"));
    rig.wait_for(ShareState::Mounted, Duration::from_millis(500)).await;
    let seen = rig.mounts.credentials_seen.lock().unwrap().clone();
    assert_eq!(seen.last().unwrap(), "username=poolstore\npassword=rotated-key\n");
    rig.stop().await;
}
