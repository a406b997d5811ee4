//! Share: the team's workspace, mounted and kept mounted.
//!
//! Kinds: `azure-files` (SMB 3.x through mount.cifs), `nfs` (mount.nfs) and
//! `local` (a directory, bind-mounted when running as root). The task adopts a
//! mount already in place, never stacks one, reports a foreign filesystem as a
//! conflict, probes the mount's health in a blocking thread under a deadline,
//! and after a failed probe remounts with capped, jittered backoff.
//! The storage key only ever travels through a 0600 credentials file.

mod metrics;
mod mounting;
mod private;
pub mod probe;
pub mod report;
mod routes;
pub mod spec;

use crate::config::{duration, ShareSettings};
use crate::core::backoff::Backoff;
use crate::core::capability::Capability;
use crate::core::clock::{rfc3339, SharedClock};
use crate::core::component::{ComponentId, ComponentState};
use crate::core::credentials;
use crate::core::http::Route;
use crate::core::mount::{self, Mounter};
use crate::core::request::{Asked, Requests};
use crate::core::shared::ShareNews;
use crate::core::task::{TaskContext, TaskResult};
use futures_util::future::BoxFuture;
use mounting::{used_in_place, Existing};
use probe::{ProbeOutcome, Prober};
pub use report::{ShareReport, ShareState};
use spec::MountPlan;
use std::path::PathBuf;
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

async fn sleep_or_forever(pause: Option<Duration>) {
    match pause {
        Some(pause) => tokio::time::sleep(pause).await,
        None => std::future::pending().await,
    }
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
