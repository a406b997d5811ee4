//! Share: the team's workspace, mounted and kept mounted.
//!
//! Kinds: `azure-files` (SMB 3.x through mount.cifs), `nfs` (mount.nfs) and
//! `local` (a directory, bind-mounted when running as root). The task adopts a
//! mount already in place, never stacks one, reports a foreign filesystem as a
//! conflict, probes the mount's health in a blocking thread under a deadline,
//! and after a failed probe remounts with capped, jittered backoff.
//! The storage key only ever travels through a 0600 credentials file.

mod metrics;
mod private;
pub mod probe;
pub mod report;
mod routes;
pub mod spec;

use crate::config::KeySourceKind;
use crate::config::{duration, ShareSettings, ShareSource};
use crate::core::backoff::Backoff;
use crate::core::capability::Capability;
use crate::core::clock::{rfc3339, SharedClock};
use crate::core::component::{ComponentId, ComponentState};
use crate::core::credentials;
use crate::core::http::Route;
use crate::core::mount::{self, MountCall, Mounter};
use crate::core::mountinfo;
use crate::core::request::{Asked, Requests};
use crate::core::shared::{KeyRef, ShareNews};
use crate::core::task::{self, TaskContext, TaskResult};
use futures_util::future::BoxFuture;
use probe::{ProbeOutcome, Prober};
pub use report::{ShareReport, ShareState};
use spec::{MountKind, MountPlan};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// A lazy unmount only detaches; it should never take long.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// Consecutive failed probes before the agent remounts; one marks the share degraded.
const FAILED_PROBES_BEFORE_REMOUNT: u32 = 2;
/// Filesystem work on or beside the mount point (stat, mkdir, read_dir, the
/// key file): a hung server makes these hang, so they run off the async
/// workers and give up after this long.
const DISK_DEADLINE: Duration = Duration::from_secs(10);

/// Shared between the share task and the API.
#[derive(Clone)]
pub struct ShareHandle {
    report: Arc<Mutex<ShareReport>>,
    remounts: Requests<ShareReport>,
    mounter: Arc<dyn Mounter>,
    prober: Arc<dyn Prober>,
}

impl ShareHandle {
    pub fn new(clock: SharedClock, mounter: Arc<dyn Mounter>, prober: Arc<dyn Prober>) -> Self {
        let report = ShareReport {
            state: ShareState::Mounting,
            since: rfc3339(clock.now()),
            kind: None,
            source: None,
            mount_point: None,
            fstype: None,
            options: Vec::new(),
            adopted: false,
            detail: None,
            last_error: None,
            last_error_at: None,
            last_good_probe: None,
            probe_latency_ms: None,
            probe_interval: None,
            next_attempt: None,
            mounts: 0,
            failed_probes: 0,
        };
        Self { report: Arc::new(Mutex::new(report)), remounts: Requests::new(4), mounter, prober }
    }

    pub fn system(clock: SharedClock) -> Self {
        Self::new(clock, Arc::new(mount::SystemMounter), Arc::new(probe::SystemProber::default()))
    }

    pub fn report(&self) -> ShareReport {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, change: impl FnOnce(&mut ShareReport)) {
        let mut report = self.report.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut report);
    }

    /// Asks the task to unmount and mount again; waits up to `wait` for the
    /// outcome. A remount still going on then carries on in the task.
    pub async fn request_remount(&self, wait: Duration) -> Result<RemountOutcome, String> {
        match self.remounts.ask(wait).await {
            Asked::Answered(report) => Ok(RemountOutcome::Finished(report)),
            Asked::StillRunning => Ok(RemountOutcome::StillRunning(self.report())),
            Asked::Busy => Err("a remount is already queued".to_string()),
            Asked::Gone => Err("the share task stopped before answering".to_string()),
        }
    }
}

/// What a remount request got to see.
#[derive(Debug)]
pub enum RemountOutcome {
    Finished(ShareReport),
    /// Still unmounting or mounting when the answer was due.
    StillRunning(ShareReport),
}

impl Capability for ShareHandle {
    fn id(&self) -> ComponentId {
        ComponentId::Share
    }

    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, TaskResult> {
        Box::pin(run(ctx, self.clone()))
    }

    fn routes(&self) -> Vec<Route> {
        routes::routes(self)
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(metrics::ShareMetrics(self.clone())));
    }

    fn config_section(&self) -> &'static str {
        "share"
    }

    fn private_config_keys(&self) -> &'static [&'static str] {
        &["key_file"]
    }
}

/// What the task does until something changes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Next {
    /// Nothing to do until the config changes.
    Wait,
    /// Try again after this long.
    Retry(Duration),
    /// Mounted: probe every interval.
    Watch,
    /// Just mounted or adopted: probe right away, then every interval.
    ProbeSoon,
}

/// The private mounts made in earlier runs (state directory).
const PRIVATE_MOUNTS_MADE: &str = "private-mounts.json";

/// `links.private`: each user's folder mounted on its own, from what links
/// says after each pass over everyone, while the share is mounted over SMB.
/// Private mode off: the private mounts the agent made are taken away.
async fn private_mounts(ctx: TaskContext, mounter: Arc<dyn Mounter>) {
    let mut folders = ctx.shared.watch_folders();
    let mut share_rx = ctx.shared.watch_share();
    let mut key_rx = ctx.shared.watch_storage_key();
    let credentials_dir = ctx.paths.resolve(credentials::PRIVATE_RUN_DIR);
    let made_file = ctx.paths.state_dir().join(PRIVATE_MOUNTS_MADE);
    loop {
        let news = folders.borrow_and_update().clone();
        let share = share_rx.borrow_and_update().clone();
        let settings = ctx.settings.borrow().clone();
        // In private mode, wait for links to say whose folders are there: acting
        // before its first pass would take every user's mount away at each start.
        let links_spoke = news.private || !settings.links.private;
        if let (ShareNews::Mounted { smb: Some(smb), .. }, true) = (&share, links_spoke) {
            let root = ctx.paths.resolve(&settings.links.private_root);
            // Private mode off: nobody is wanted, every mount the agent made goes.
            let on = settings.links.private && news.private;
            let wanted: Vec<private::Wanted> = news
                .ready
                .iter()
                .filter(|_| on)
                .map(|f| private::Wanted { user: f.user.clone(), uid: f.uid, gid: f.gid, relative: f.relative.clone() })
                .collect();
            let present: std::collections::HashSet<String> = news.present.iter().filter(|_| on).cloned().collect();
            let fetched_key = ctx.shared.storage_key().key;
            let outcome = private::reconcile(
                mounter.clone(),
                smb,
                &root,
                &credentials_dir,
                &wanted,
                &present,
                &made_file,
                fetched_key,
            )
            .await;
            let failed = outcome.into_iter().filter_map(|(user, result)| result.err().map(|why| (user, why))).collect();
            ctx.shared.publish_private_mounts(crate::core::shared::PrivateMountNews { failed });
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            Ok(()) = folders.changed() => {}
            Ok(()) = share_rx.changed() => {}
            // A key fetched again (rotated): mounts that failed may work now.
            Ok(()) = key_rx.changed() => {}
        }
    }
}

struct Worker {
    ctx: TaskContext,
    share: ShareHandle,
    backoff: Backoff,
    /// The mount this agent made or adopted, if any.
    current: Option<MountPlan>,
    /// Whether the share had been mounted and then went bad (shown as degraded until it is back).
    outage: bool,
    failed_in_a_row: u32,
    /// (device, inode) of the mounted root, published with the news.
    root_identity: Option<(u64, u64)>,
    /// How the SMB share is mounted, published with the news.
    smb: Option<crate::core::shared::SmbMount>,
}

pub async fn run(ctx: TaskContext, share: ShareHandle) -> TaskResult {
    // Private mounts go on beside the main mount's loop, and end with it.
    let _private =
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(private_mounts(ctx.clone(), share.mounter.clone())));
    let inbox = share.remounts.inbox();
    let mut remounts = inbox.lock().await;
    let mut settings_rx = ctx.settings.clone();
    let mut worker = Worker {
        ctx: ctx.clone(),
        share,
        backoff: Backoff::new(FIRST_RETRY, MAX_RETRY),
        current: None,
        outage: false,
        failed_in_a_row: 0,
        root_identity: None,
        smb: None,
    };
    let mut config_live = true;
    let mut key_rx = ctx.shared.watch_storage_key();
    loop {
        let settings = settings_rx.borrow_and_update().clone();
        let config = settings.share.clone();
        let mut next = worker.ensure(config.as_ref()).await;
        loop {
            let pause = match (next, &config) {
                (Next::Retry(delay), _) => Some(delay),
                (Next::Watch, Some(share)) => Some(share.probe_interval),
                (Next::ProbeSoon, Some(_)) => Some(Duration::ZERO),
                _ => None,
            };
            worker.share.update(|r| {
                r.next_attempt = match next {
                    Next::Retry(delay) => Some(rfc3339(worker.ctx.clock.now() + delay)),
                    _ => None,
                }
            });
            tokio::select! {
                _ = ctx.shutdown.cancelled() => {
                    worker.stop(config.as_ref()).await;
                    return Ok(());
                }
                changed = settings_rx.changed(), if config_live => {
                    if changed.is_err() {
                        // The daemon is going away; keep the share as it is until shutdown.
                        config_live = false;
                        continue;
                    }
                    break;
                }
                // A key fetched from Azure (first, or again after a refusal): try it now.
                Ok(()) = key_rx.changed() => {
                    if matches!(next, Next::Retry(_)) {
                        next = worker.ensure(config.as_ref()).await;
                    }
                }
                Some(reply) = remounts.recv() => {
                    worker.remount().await;
                    next = worker.ensure(config.as_ref()).await;
                    let _ = reply.send(worker.share.report());
                }
                _ = sleep_or_forever(pause) => {
                    next = match next {
                        Next::Watch | Next::ProbeSoon => match &config {
                            Some(share) => worker.watch(share).await,
                            None => Next::Wait,
                        },
                        _ => worker.ensure(config.as_ref()).await,
                    };
                }
            }
        }
    }
}

/// The key a mount call uses, gathered before the blocking part.
enum KeyInHand {
    None,
    /// A key file and the uid that must own it.
    File(PathBuf, u32),
    Fetched(credentials::StorageKey),
}

async fn sleep_or_forever(pause: Option<Duration>) {
    match pause {
        Some(pause) => tokio::time::sleep(pause).await,
        None => std::future::pending().await,
    }
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl Worker {
    fn set_state(&self, state: ShareState, detail: Option<String>) {
        self.publish(state, detail, None);
    }

    fn record_error(&self, state: ShareState, error: String) {
        tracing::warn!(component = "share", state = state.as_str(), "{error}");
        self.publish(state, None, Some(error));
    }

    /// The share's state into its report, onto the status board (once) and
    /// into the news other capabilities read.
    fn publish(&self, state: ShareState, detail: Option<String>, error: Option<String>) {
        let now = rfc3339(self.ctx.clock.now());
        self.share.update(|r| {
            if r.state != state {
                r.since = now.clone();
            }
            r.state = state;
            r.detail = detail.clone();
            if let Some(error) = &error {
                r.last_error = Some(error.clone());
                r.last_error_at = Some(now);
            }
        });
        // The board's row speaks the share's own words first (`mounted: ...`,
        // `unmounted: ...`), so `status` and `share` say the same thing.
        let summary = match detail {
            Some(detail) if !detail.starts_with(state.as_str()) => format!("{}: {detail}", state.as_str()),
            Some(detail) => detail,
            None => state.as_str().to_string(),
        };
        let news = match state {
            ShareState::Mounted => match (self.reachable_root(), self.root_identity) {
                (Some(root), Some(identity)) => ShareNews::Mounted { root, identity, smb: self.smb.clone() },
                _ => ShareNews::Down { why: "mounted, but its root could not be looked at".to_string() },
            },
            ShareState::NotConfigured => ShareNews::NotConfigured,
            _ => ShareNews::Down { why: format!("the share is {}: {summary}", state.as_str()) },
        };
        self.ctx.shared.publish_share(news);
        match error {
            Some(error) => self.ctx.set_error(component_for(state), summary, error),
            None => self.ctx.set(component_for(state), summary),
        }
    }

    /// Where users reach the share: the local directory itself when used in
    /// place, the mount point otherwise.
    fn reachable_root(&self) -> Option<PathBuf> {
        let plan = self.current.as_ref()?;
        Some(if used_in_place(plan) { PathBuf::from(&plan.source) } else { plan.target.clone() })
    }

    /// Unmounted after an outage stays 'degraded' until it is back.
    fn failure_state(&self) -> ShareState {
        if self.outage {
            ShareState::Degraded
        } else {
            ShareState::Unmounted
        }
    }

    fn retry(&mut self) -> Next {
        Next::Retry(self.backoff.next_delay())
    }

    fn describe(&self, share: &ShareSettings, plan: &MountPlan, options: &[String]) {
        self.share.update(|r| {
            r.kind = Some(share.kind.as_str().to_string());
            r.source = Some(plan.source.clone());
            r.mount_point = Some(share.mount_point.display().to_string());
            r.fstype = Some(plan.fstype().to_string());
            r.options = options.to_vec();
            r.probe_interval = Some(duration::format(share.probe_interval));
        });
    }

    /// Makes sure the configured share is mounted; says what to do next.
    async fn ensure(&mut self, config: Option<&ShareSettings>) -> Next {
        let Some(share) = config else {
            if let Some(previous) = self.current.take() {
                self.unmount(&previous).await;
            }
            self.share.update(|r| {
                r.kind = None;
                r.source = None;
                r.mount_point = None;
                r.fstype = None;
                r.options.clear();
            });
            self.set_state(ShareState::NotConfigured, Some("no [share] in the config".to_string()));
            return Next::Wait;
        };
        // The accounts view may ask NSS and the parent of the mount point is
        // resolved on disk: both off the async workers.
        let (accounts, paths, config) = (self.ctx.accounts.clone(), self.ctx.paths.clone(), share.clone());
        // Private links: users reach only their own mounts, never the main one.
        let private = self.ctx.settings.borrow().links.private;
        let planned = task::blocking("planning the mount", DISK_DEADLINE, move || {
            let snapshot = accounts.snapshot();
            spec::plan(&config, &paths, &snapshot.users, &snapshot.groups, private).map(|mut plan| {
                // The mount table lists real paths: a symlink among the parents would
                // hide an existing mount from the lookup and lead to stacking.
                plan.target = real_mount_point(&plan.target);
                plan
            })
        })
        .await;
        let plan = match planned {
            Ok(Ok(plan)) => plan,
            Ok(Err(error)) => {
                self.record_error(self.failure_state(), error);
                return self.retry();
            }
            Err(error) => {
                self.record_error(self.failure_state(), error.to_string());
                return self.retry();
            }
        };
        // A changed config that moves the share: let go of the old mount first.
        if let Some(previous) = self.current.clone() {
            if previous != plan {
                self.unmount(&previous).await;
                self.current = None;
            }
        }
        let shown_options: Vec<String> = plan
            .options
            .iter()
            .cloned()
            .chain(plan.username.as_ref().map(|_| {
                format!("credentials={}", credentials::CredentialsFile::path_in(&self.credentials_dir()).display())
            }))
            .collect();
        self.describe(share, &plan, &shown_options);
        self.smb = match (&plan.username, &share.source) {
            (Some(username), ShareSource::AzureFiles { key_file, key_source, .. }) => {
                let key = match (key_source, key_file) {
                    (KeySourceKind::File, Some(key_file)) => Some(KeyRef::File {
                        path: self.ctx.paths.resolve(key_file),
                        owner: if self.ctx.paths.is_sandbox() { nix::unistd::geteuid().as_raw() } else { 0 },
                    }),
                    (KeySourceKind::File, None) => None,
                    _ => Some(KeyRef::Fetched),
                };
                key.map(|key| crate::core::shared::SmbMount {
                    source: plan.source.clone(),
                    options: plan.options.clone(),
                    username: username.clone(),
                    key,
                })
            }
            _ => None,
        };

        if plan.kind == MountKind::Bind {
            let source = PathBuf::from(&plan.source);
            let probe_source = source.clone();
            let is_dir =
                task::blocking("looking at the local share", DISK_DEADLINE, move || probe_source.is_dir()).await;
            if !matches!(is_dir, Ok(true)) {
                self.record_error(self.failure_state(), format!("local share {} is not a directory", source.display()));
                return self.retry();
            }
            if used_in_place(&plan) {
                let why = if running_as_root() { "it is the mount point itself" } else { "not root, so no bind mount" };
                self.current = Some(plan.clone());
                self.share.update(|r| r.fstype = Some("none (in place)".to_string()));
                self.mounted(false, Some(format!("local share {} used in place ({why})", source.display()))).await;
                return Next::ProbeSoon;
            }
        }

        match self.existing_mount(&plan).await {
            Existing::Ours => {
                let adopted = self.current.as_ref() != Some(&plan);
                self.current = Some(plan.clone());
                self.mounted(adopted, None).await;
                return Next::ProbeSoon;
            }
            Existing::Foreign(what) => {
                self.record_error(
                    ShareState::Conflict,
                    format!(
                        "{what} is already mounted at {}; the agent will not mount on top of it",
                        plan.target.display()
                    ),
                );
                return self.retry();
            }
            Existing::None => {}
        }

        let (target, force) = (plan.target.clone(), share.force);
        let prepared =
            task::blocking("preparing the mount point", DISK_DEADLINE, move || prepare_mount_point(&target, force))
                .await
                .unwrap_or_else(|err| Err(err.to_string()));
        if let Err(error) = prepared {
            self.record_error(self.failure_state(), error);
            return self.retry();
        }
        // Retries keep showing why the share is down; only a first attempt shows 'mounting'.
        let retrying =
            matches!(self.share.report().state, ShareState::Unmounted | ShareState::Conflict | ShareState::Degraded);
        if !retrying {
            self.set_state(
                ShareState::Mounting,
                Some(format!("mounting {} at {}", plan.source, plan.target.display())),
            );
        }
        match self.mount(share, &plan).await {
            Ok(()) => match self.existing_mount(&plan).await {
                Existing::Ours => {
                    self.current = Some(plan.clone());
                    self.share.update(|r| {
                        r.mounts += 1;
                        r.adopted = false;
                    });
                    tracing::info!(source = %plan.source, target = %plan.target.display(), "share mounted");
                    self.mounted(false, None).await;
                    Next::ProbeSoon
                }
                _ => {
                    self.record_error(
                        self.failure_state(),
                        "mount reported success but the share is not in the mount table".to_string(),
                    );
                    self.retry()
                }
            },
            Err(error) => {
                self.record_error(self.failure_state(), error);
                self.retry()
            }
        }
    }

    async fn mounted(&mut self, adopted: bool, detail: Option<String>) {
        // Who the share's root is (device and inode), so others can tell it from
        // the empty directory under it should the mount go away unseen.
        self.root_identity = match self.reachable_root() {
            Some(root) => task::blocking("identifying the share root", DISK_DEADLINE, move || {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(&root).ok().map(|m| (m.dev(), m.ino()))
            })
            .await
            .ok()
            .flatten(),
            None => None,
        };
        self.backoff.reset();
        self.outage = false;
        self.failed_in_a_row = 0;
        if adopted {
            self.share.update(|r| r.adopted = true);
        }
        let detail = detail.or_else(|| {
            let report = self.share.report();
            Some(format!(
                "{} {} at {}{}",
                report.fstype.unwrap_or_default(),
                report.source.unwrap_or_default(),
                report.mount_point.unwrap_or_default(),
                if adopted { " (adopted)" } else { "" }
            ))
        });
        self.set_state(ShareState::Mounted, detail);
    }

    fn credentials_dir(&self) -> PathBuf {
        self.ctx.paths.resolve(credentials::PRIVATE_RUN_DIR)
    }

    async fn existing_mount(&self, plan: &MountPlan) -> Existing {
        let table = match mount::table_off_workers(self.share.mounter.clone()).await {
            Ok(table) => table,
            Err(err) => return Existing::Foreign(format!("(cannot read the mount table: {err})")),
        };
        let Some(top) = mountinfo::top_mount_at(&table, &plan.target) else {
            return Existing::None;
        };
        let ours = match plan.kind {
            // Comparing inodes stats the mount point: off the async workers.
            MountKind::Bind => {
                let (target, source) = (plan.target.clone(), PathBuf::from(&plan.source));
                task::blocking("comparing the bind mount", DISK_DEADLINE, move || {
                    mount::same_directory(&target, &source)
                })
                .await
                .unwrap_or(false)
            }
            _ => plan.matches(&top.fstype, &top.source),
        };
        if ours {
            Existing::Ours
        } else {
            Existing::Foreign(format!("{} {}", top.fstype, top.source))
        }
    }

    async fn mount(&self, share: &ShareSettings, plan: &MountPlan) -> Result<(), String> {
        let mut options = plan.options.clone();
        // Held until the mount call returns, then removed.
        let mut _credentials = None;
        let mut fetched_generation = None;
        if let (Some(username), ShareSource::AzureFiles { key_file, key_source, .. }) = (&plan.username, &share.source)
        {
            let (dir, username) = (self.credentials_dir(), username.clone());
            let key = match (key_source, key_file) {
                (KeySourceKind::File, Some(key_file)) => {
                    let expected_owner = if self.ctx.paths.is_sandbox() { nix::unistd::geteuid().as_raw() } else { 0 };
                    KeyInHand::File(self.ctx.paths.resolve(key_file), expected_owner)
                }
                (KeySourceKind::File, None) => KeyInHand::None,
                (source, _) => {
                    let news = self.ctx.shared.storage_key();
                    match news.key {
                        Some(key) => {
                            fetched_generation = Some(news.generation);
                            KeyInHand::Fetched(key)
                        }
                        None => {
                            return Err(format!(
                                "waiting for the storage key from Azure (share.key_source = \"{}\"): {}",
                                source.as_str(),
                                news.error.unwrap_or_else(|| "not fetched yet".to_string())
                            ))
                        }
                    }
                }
            };
            if !matches!(key, KeyInHand::None) {
                let file = task::blocking("writing the credentials file", DISK_DEADLINE, move || {
                    let key = match key {
                        KeyInHand::File(path, owner) => {
                            credentials::read_key_file(&path, owner).map_err(|err| err.to_string())?
                        }
                        KeyInHand::Fetched(key) => key,
                        KeyInHand::None => return Err("no key".to_string()),
                    };
                    credentials::CredentialsFile::write(&dir, &username, &key)
                        .map_err(|err| format!("cannot write the credentials file in {}: {err}", dir.display()))
                })
                .await
                .map_err(|err| err.to_string())??;
                options.push(format!("credentials={}", file.path().display()));
                _credentials = Some(file);
            }
        }
        let call = MountCall {
            fstype: match plan.kind {
                MountKind::Bind => None,
                _ => Some(plan.fstype().to_string()),
            },
            source: plan.source.clone(),
            target: plan.target.clone(),
            options,
        };
        match self.share.mounter.mount(call, share.mount_timeout).await {
            Ok(()) => Ok(()),
            // Keys get rotated: a fetched key the server refuses is fetched again.
            Err(err) => match fetched_generation {
                Some(generation) if err.is_authentication_failure() => {
                    self.ctx.shared.ask_fresh_key(generation);
                    Err(format!("{err}; the key from Azure was refused, so it is fetched again"))
                }
                _ => Err(err.to_string()),
            },
        }
    }

    async fn unmount(&self, plan: &MountPlan) {
        if used_in_place(plan) {
            return;
        }
        if let Err(err) = self.share.mounter.unmount_lazy(plan.target.clone(), UNMOUNT_TIMEOUT).await {
            tracing::warn!(component = "share", "lazy unmount of {} failed: {err}", plan.target.display());
        }
    }

    /// One probe; on the second failure in a row, let go of the mount and mount again.
    async fn watch(&mut self, share: &ShareSettings) -> Next {
        let Some(plan) = self.current.clone() else {
            return self.ensure(Some(share)).await;
        };
        let in_place = used_in_place(&plan);
        // A share used in place is probed where it is; a mounted one at its mount point.
        let probed = if in_place { std::path::PathBuf::from(&plan.source) } else { plan.target.clone() };
        let outcome = self.share.prober.probe(probed.clone(), share.probe_timeout).await;
        let error = match outcome {
            ProbeOutcome::Healthy { latency } => {
                let now = rfc3339(self.ctx.clock.now());
                self.share.update(|r| {
                    r.last_good_probe = Some(now);
                    r.probe_latency_ms = Some((latency.as_secs_f64() * 1e6).round() / 1e3);
                });
                let still_there = in_place || matches!(self.existing_mount(&plan).await, Existing::Ours);
                if still_there {
                    if self.failed_in_a_row > 0 {
                        self.mounted(false, None).await;
                    }
                    return Next::Watch;
                }
                // Someone unmounted it from under us: mount again right away.
                self.current = None;
                self.record_error(
                    ShareState::Unmounted,
                    format!("the share was unmounted from {} behind the agent's back", plan.target.display()),
                );
                return self.ensure(Some(share)).await;
            }
            ProbeOutcome::Failed { error } => {
                format!("probe of {} failed: {error}", probed.display())
            }
            ProbeOutcome::TimedOut { after } => {
                format!(
                    "probe of {} hung for more than {}",
                    probed.display(),
                    crate::config::duration::format_rounded(after)
                )
            }
        };
        self.failed_in_a_row += 1;
        self.share.update(|r| r.failed_probes += 1);
        self.outage = true;
        self.record_error(ShareState::Degraded, error);
        if self.failed_in_a_row < FAILED_PROBES_BEFORE_REMOUNT {
            return Next::Watch;
        }
        tracing::warn!(component = "share", "share unhealthy {} probes in a row: remounting", self.failed_in_a_row);
        self.unmount(&plan).await;
        self.current = None;
        self.failed_in_a_row = 0;
        self.ensure(Some(share)).await
    }

    async fn remount(&mut self) {
        tracing::info!(component = "share", "remount requested");
        if let Some(plan) = self.current.take() {
            self.unmount(&plan).await;
        }
        self.backoff.reset();
    }

    async fn stop(&mut self, config: Option<&ShareSettings>) {
        let Some(share) = config else { return };
        if !share.unmount_on_stop {
            return; // users may have files open: the mount outlives the agent
        }
        if let Some(plan) = self.current.take() {
            self.unmount(&plan).await;
            self.set_state(ShareState::Stopped, Some("unmounted at stop (unmount_on_stop = true)".to_string()));
        }
    }
}

/// Makes sure the mount point is a real, empty directory (or `force` is set).
/// Blocking: run it off the async workers.
fn prepare_mount_point(target: &Path, force: bool) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if std::fs::symlink_metadata(target).is_ok_and(|meta| meta.file_type().is_symlink()) {
        return Err(format!(
            "mount point {} is a symlink; point share.mount_point at a real directory",
            target.display()
        ));
    }
    if !target.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(target)
            .map_err(|err| format!("cannot create mount point {}: {err}", target.display()))?;
    }
    if !target.is_dir() {
        return Err(format!("mount point {} is not a directory", target.display()));
    }
    let entries = std::fs::read_dir(target)
        .map_err(|err| format!("cannot read mount point {}: {err}", target.display()))?
        .count();
    if entries > 0 && !force {
        return Err(format!(
            "mount point {} is not empty ({entries} entries) and mounting would hide them; move them away or set share.force = true",
            target.display()
        ));
    }
    Ok(())
}

/// The mount point with its parent resolved (the parent is on a local disk, so
/// this should not hang, yet it runs off the async workers); the last component
/// is left alone, it may be a dead mount.
fn real_mount_point(target: &Path) -> std::path::PathBuf {
    match (target.parent(), target.file_name()) {
        (Some(parent), Some(name)) => {
            std::fs::canonicalize(parent).map(|p| p.join(name)).unwrap_or_else(|_| target.to_path_buf())
        }
        _ => target.to_path_buf(),
    }
}

/// A local share that is not bind-mounted: not root, or it is the mount point itself.
fn used_in_place(plan: &MountPlan) -> bool {
    plan.kind == MountKind::Bind && (!running_as_root() || Path::new(&plan.source) == plan.target)
}

enum Existing {
    None,
    Ours,
    Foreign(String),
}

fn component_for(state: ShareState) -> ComponentState {
    match state {
        ShareState::Mounted => ComponentState::Ready,
        ShareState::Degraded => ComponentState::Degraded,
        ShareState::Mounting => ComponentState::Starting,
        ShareState::NotConfigured => ComponentState::Skipped,
        ShareState::NotImplemented => ComponentState::NotImplemented,
        ShareState::Stopped => ComponentState::Stopped,
        ShareState::Unmounted | ShareState::Conflict => ComponentState::Failed,
    }
}

#[cfg(test)]
mod tests;
