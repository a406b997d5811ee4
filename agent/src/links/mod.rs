//! Links: every user's `$HOME/notebooks/remote` pointing at their folder on
//! the share, for every user, new ones within a second.
//!
//! A pass takes the users from the accounts view ([`select`]), makes each
//! user's folder on the share while the share is mounted, and each user's
//! link whether it is or not ([`reconcile`], safe against users who plant
//! symlinks). Passes run at start, within a second of a change to the passwd
//! file's directory or to a home's parent (inotify), when the users read
//! again every `links.resync_interval` changed (NSS-only changes), every 15
//! minutes at the latest (links changed by hand), when the share comes or
//! goes, on a config change, and on `pool-agent links sync`.

mod metrics;
pub mod reconcile;
pub mod report;
pub mod select;
mod watch;

use crate::config::{LinksSettings, Settings};
use crate::core::capability::Capability;
use crate::core::clock::{rfc3339, Stamp};
use crate::core::component::{ComponentId, ComponentState};
use crate::core::http::{Access, Route};
use crate::core::request::{Asked, Reply, Requests};
use crate::core::shared::{FolderNews, PrivateMountNews, ShareNews, UserFolder};
use crate::core::stuck::StuckWork;
use crate::core::task::{self, TaskContext, TaskError, TaskResult};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::future::BoxFuture;
use metrics::LinksMetrics;
use reconcile::{FolderPlan, Step, UserPlan};
use report::{LinkState, LinksReport, UserLink};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use watch::DirWatcher;

/// Events within this window make one pass.
const SETTLE: Duration = Duration::from_millis(100);
/// A pass over thousands of users on a slow share still ends.
const PASS_DEADLINE: Duration = Duration::from_secs(300);
/// How long the first pass waits for the share to say how it is.
const FIRST_SHARE_NEWS: Duration = Duration::from_secs(5);
/// `links sync` answers by then, inside the API's handler deadline.
const SYNC_ANSWER_WITHIN: Duration = Duration::from_secs(6);

#[derive(Clone)]
pub struct Links {
    report: Arc<Mutex<LinksReport>>,
    syncs: Requests<LinksReport>,
    /// Since when a pass has been running on its blocking thread; one stuck
    /// in the kernel (a home on a share that hangs) is not started again on
    /// every restart, each of which would leave one more thread stuck.
    pass_running: StuckWork,
    /// The same for the watch on homes (it looks at each home's directory).
    watch_running: StuckWork,
}

impl Default for Links {
    fn default() -> Self {
        Self::new()
    }
}

impl Links {
    pub fn new() -> Self {
        Self {
            report: Arc::new(Mutex::new(LinksReport::default())),
            syncs: Requests::new(8),
            pass_running: StuckWork::new("links passes", 1),
            watch_running: StuckWork::new("looks at the homes' directories", 1),
        }
    }

    pub fn report(&self) -> LinksReport {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Capability for Links {
    fn id(&self) -> ComponentId {
        ComponentId::Links
    }

    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, TaskResult> {
        Box::pin(run(ctx, self.clone()))
    }

    fn routes(&self) -> Vec<Route> {
        vec![
            Route::get_with("/v1/links", Access::Read, self.clone(), links_report),
            Route::post_with("/v1/links/sync", Access::Admin, self.clone(), links_sync),
        ]
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(LinksMetrics(self.clone())));
    }

    fn config_section(&self) -> &'static str {
        "links"
    }
}

async fn links_report(State(links): State<Links>) -> Json<LinksReport> {
    Json(links.report())
}

async fn links_sync(State(links): State<Links>) -> Response {
    match links.syncs.ask(SYNC_ANSWER_WITHIN).await {
        Asked::Answered(report) => Json(report).into_response(),
        // Still going, or one queued already: the pass will come; say what is known.
        _ => (StatusCode::ACCEPTED, Json(links.report())).into_response(),
    }
}

async fn run(ctx: TaskContext, links: Links) -> TaskResult {
    let inbox = links.syncs.inbox();
    let mut syncs = inbox.lock().await;
    let mut settings_rx = ctx.settings.clone();
    let mut share_rx = ctx.shared.watch_share();
    let mut private_rx = ctx.shared.watch_private_mounts();
    let (events_tx, mut events) = mpsc::channel::<()>(1);
    let mut watcher = DirWatcher::new(events_tx);
    let mut waiting: Vec<Reply<LinksReport>> = Vec::new();
    // The last mounted root, so links point at the share while it is down.
    let mut last_root: Option<PathBuf> = None;
    // At start, give the share a moment to say how it is, so the first pass
    // makes folders as well as links instead of a second pass doing it.
    if ctx.settings.borrow().share.is_some() && *share_rx.borrow() == ShareNews::NotYetKnown {
        let _ = tokio::time::timeout(FIRST_SHARE_NEWS, share_rx.changed()).await;
    }
    // Watch before the first pass: a user added while it runs (a second for
    // thousands of users) starts another pass instead of waiting for the
    // resync interval. After each pass the homes' parents are watched too.
    let first_settings = ctx.settings.borrow().clone();
    watcher.watch(&ctx, &first_settings, &links.report(), &links.watch_running).await;
    let mut scope = Scope::Everyone;
    let mut last_full_pass;
    let mut known_users;
    loop {
        let settings = settings_rx.borrow_and_update().clone();
        let share = share_rx.borrow_and_update().clone();
        private_rx.borrow_and_update();
        if let ShareNews::Mounted { root, .. } = &share {
            last_root = Some(root.clone());
        }
        if scope == Scope::NewUsers {
            // A user was added: link them first, then look at everyone.
            pass(&ctx, &settings, &share, last_root.clone(), &links, Scope::NewUsers).await?;
        }
        let report = pass(&ctx, &settings, &share, last_root.clone(), &links, Scope::Everyone).await?;
        scope = Scope::Everyone;
        watcher.watch(&ctx, &settings, &report, &links.watch_running).await;
        for reply in waiting.drain(..) {
            let _ = reply.send(report.clone());
        }
        // The report lives in `links`; this copy (a megabyte or two with
        // thousands of users) goes before the wait, and the fingerprint's
        // trim gives its memory back.
        drop(report);
        last_full_pass = ctx.clock.monotonic();
        known_users = users_fingerprint(&ctx).await;
        // Wait for a reason to pass again. The resync only re-reads the users
        // (NSS-only changes); when they are the same, no pass runs, except a
        // full one every FULL_PASS_EVERY to repair links changed by hand: a
        // pass over thousands of users costs a fraction of a second of CPU,
        // which every minute was most of what a VM at rest paid for the agent.
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return Ok(()),
                changed = settings_rx.changed() => {
                    if changed.is_err() {
                        ctx.idle_until_shutdown().await;
                        return Ok(());
                    }
                }
                _ = share_rx.changed() => {}
                // The share made (or failed) private mounts: show it per user.
                Ok(()) = private_rx.changed() => {}
                Some(()) = events.recv() => {
                    // Let a burst (useradd writes passwd, group, shadow, the home) settle.
                    tokio::time::sleep(SETTLE).await;
                    while events.try_recv().is_ok() {}
                    ctx.accounts.invalidate();
                    scope = Scope::NewUsers;
                }
                Some(reply) = syncs.recv() => {
                    ctx.accounts.invalidate();
                    waiting.push(reply);
                }
                _ = tokio::time::sleep(settings.links.resync_interval) => {
                    ctx.accounts.invalidate();
                    let repair_due = ctx.clock.monotonic().duration_since(last_full_pass) >= FULL_PASS_EVERY;
                    let users = users_fingerprint(&ctx).await;
                    if !repair_due && users.is_some() && users == known_users {
                        continue;
                    }
                }
            }
            break;
        }
    }
}

/// NSS may wait on a directory service; a resync that cannot read the users in time passes anyway.
const USERS_READ_WITHIN: Duration = Duration::from_secs(5);

/// Links changed by hand (a user removed theirs) are repaired this often at
/// the latest, when nothing else starts a pass.
const FULL_PASS_EVERY: Duration = Duration::from_secs(15 * 60);

/// What the accounts view lists now, as one number: a resync passes again
/// only when it changed. None when the view could not be read in time.
async fn users_fingerprint(ctx: &TaskContext) -> Option<u64> {
    let accounts = ctx.accounts.clone();
    let read = task::blocking("reading the users", USERS_READ_WITHIN, move || {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for user in &accounts.snapshot().users {
            (&user.name, user.uid, user.gid, &user.home, &user.shell).hash(&mut hasher);
        }
        // After a pass or a reload of the users: what they freed goes back.
        crate::core::memory::give_back_freed();
        hasher.finish()
    });
    read.await.ok()
}

/// Whom a pass looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Everyone,
    /// Only users the last report does not list yet.
    NewUsers,
}

/// One pass; publishes the report and the board row.
async fn pass(
    ctx: &TaskContext,
    settings: &Arc<Settings>,
    share: &ShareNews,
    last_root: Option<PathBuf>,
    links: &Links,
    scope: Scope,
) -> Result<LinksReport, TaskError> {
    let started = ctx.clock.monotonic();
    let (accounts, paths, config) = (ctx.accounts.clone(), ctx.paths.clone(), settings.links.clone());
    let mount_point = settings.share.as_ref().map(|s| paths.resolve(&s.mount_point));
    let share_news = share.clone();
    let share = share.clone();
    // Only what the pass carries over: who was there, and when they last changed.
    let previous: HashMap<String, (Option<Stamp>, LinkState)> = {
        let report = links.report.lock().unwrap_or_else(|p| p.into_inner());
        report.users.iter().map(|u| (u.user.clone(), (u.last_change, u.state))).collect()
    };
    let changed_at = Stamp(ctx.clock.now());
    let now = rfc3339(changed_at.0);
    let stamp: String = now.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let known: std::collections::HashSet<String> = previous.keys().cloned().collect();
    let running = match links.pass_running.try_start() {
        Ok(running) => running,
        Err(_) => {
            let stuck_for = links.pass_running.in_flight().oldest.unwrap_or_default();
            let why = format!(
                "the pass started {}s ago has not returned (a home or the share does not answer); no other pass starts until it does",
                stuck_for.as_secs()
            );
            ctx.set_error(ComponentState::Degraded, "links pass stuck in the kernel".to_string(), why);
            return Ok(links.report());
        }
    };
    let users = task::blocking("linking users", PASS_DEADLINE, move || {
        let _running = running;
        let mut chosen = select::users_to_link(&config, &accounts, &paths);
        if scope == Scope::NewUsers {
            chosen.retain(|account| !known.contains(&account.name));
        }
        let root = match &share {
            ShareNews::Mounted { root, .. } => Some(root.clone()),
            _ => last_root.or(mount_point),
        };
        let one = |account: &crate::core::accounts::Account| {
            let plan = UserPlan {
                name: account.name.clone(),
                uid: account.uid,
                gid: account.gid,
                home: paths.resolve(&account.home),
            };
            link_one(&plan, &config, &paths, &share, root.as_deref(), &stamp)
        };
        // Thousands of users: spread over the cores (each step is a few syscalls).
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
        let chunk = chosen.len().div_ceil(workers).max(64);
        std::thread::scope(|threads| {
            let handles: Vec<_> =
                chosen.chunks(chunk).map(|part| threads.spawn(|| part.iter().map(&one).collect::<Vec<_>>())).collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect::<Vec<_>>()
        })
    })
    .await?;
    let mut users = users;
    // Only a pass over everyone knows which private mounts are no longer wanted.
    if let (Scope::Everyone, ShareNews::Mounted { smb: Some(_), .. }) = (scope, &share_news) {
        ctx.shared.publish_folders(folder_news(&settings.links, &users));
    }
    mark_private_failures(&mut users, &ctx.shared.private_mounts());
    let users: Vec<UserLink> = users
        .into_iter()
        .map(|(mut user, changed, _)| {
            let before = previous.get(&user.user);
            user.last_change = if changed { Some(changed_at) } else { before.and_then(|(at, _)| *at) };
            user
        })
        .collect();
    warn_new_conflicts(&users, &previous);
    drop(previous);
    let elapsed = ctx.clock.monotonic().duration_since(started);
    let report = {
        let mut report = links.report.lock().unwrap_or_else(|p| p.into_inner());
        match scope {
            Scope::Everyone => report.users = users,
            Scope::NewUsers => {
                report.users.extend(users);
                report.users.sort_by(|a, b| a.user.cmp(&b.user));
            }
        }
        report.last_sync = Some(now);
        report.last_sync_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
        report.passes += 1;
        report.clone()
    };
    publish(ctx, &report, settings.share.is_some());
    ctx.shared.publish_links_pass();
    Ok(report)
}

/// For the share's private mounts: every user whose folder is there, and
/// everyone still a user (who keeps their mount through a passing folder
/// error). Nothing when private mode is off, which tells the share to take
/// its private mounts away.
fn folder_news(config: &LinksSettings, users: &[(UserLink, bool, bool)]) -> FolderNews {
    if !config.private {
        return FolderNews::default();
    }
    FolderNews {
        private: true,
        ready: users
            .iter()
            .filter(|(_, _, folder_ok)| *folder_ok)
            .map(|(u, _, _)| UserFolder {
                user: u.user.clone(),
                uid: u.uid,
                gid: u.gid,
                relative: PathBuf::from(config.target.replace("{user}", &u.user)),
            })
            .collect(),
        present: users.iter().map(|(u, _, _)| u.user.clone()).collect(),
    }
}

/// A user whose private mount the share could not make is in error here too.
fn mark_private_failures(users: &mut [(UserLink, bool, bool)], news: &PrivateMountNews) {
    if news.failed.is_empty() {
        return;
    }
    for (user, _, _) in users {
        if let Some(why) = news.failed.get(&user.user) {
            user.state = LinkState::Error;
            user.reason = Some(format!("private mount: {why}"));
        }
    }
}

/// The link and, on a mounted share, the folder of one user; whether anything
/// was changed for them, and whether their folder is there on the share.
fn link_one(
    user: &UserPlan,
    config: &LinksSettings,
    paths: &crate::core::paths::SystemPaths,
    share: &ShareNews,
    root: Option<&Path>,
    stamp: &str,
) -> (UserLink, bool, bool) {
    let relative = PathBuf::from(config.target.replace("{user}", &user.name));
    let link_path = user.home.join(&config.link);
    let mut entry = UserLink {
        user: user.name.clone(),
        uid: user.uid,
        gid: user.gid,
        state: LinkState::Ok,
        link: link_path.display().to_string().into(),
        target: Box::default(),
        reason: None,
        last_change: None,
    };
    let Some(root) = root else {
        entry.state = LinkState::WaitingForShare;
        entry.reason = Some("no [share] in the config: nothing to link to".to_string());
        return (entry, false, false);
    };
    // Where the core says the user reaches their folder (their own mount in private mode).
    let target = crate::core::shared::user_folder(config, paths, root, &user.name);
    entry.target = target.display().to_string().into();
    let mode = u32::from_str_radix(&config.folder_mode, 8).unwrap_or(0o700);
    // Only on a mounted share: never a folder on the local disk under the mount point.
    let folder = match share {
        ShareNews::Mounted { root, identity, .. } => reconcile::ensure_folder(
            user,
            &FolderPlan { root: root.clone(), identity: *identity, relative: relative.clone(), mode },
        ),
        _ => Step::Unchanged,
    };
    let folder_ok = matches!(share, ShareNews::Mounted { .. }) && matches!(folder, Step::Unchanged | Step::Changed);
    let link = reconcile::ensure_link(user, &config.link, &target, config.move_conflicts, stamp);
    let step = folder.combine(link);
    let changed = step != Step::Unchanged;
    let (state, reason) = match (step, share) {
        (Step::ShareGone(why), _) => {
            (LinkState::WaitingForShare, Some(format!("link made; the folder waits for the share ({why})")))
        }
        (Step::Failed(why), _) => (LinkState::Error, Some(why)),
        (Step::Conflict(why), _) => (LinkState::Conflict, Some(why)),
        (_, ShareNews::Down { why }) => {
            (LinkState::WaitingForShare, Some(format!("link made; the folder waits for the share ({why})")))
        }
        (_, ShareNews::NotYetKnown) => {
            (LinkState::WaitingForShare, Some("link made; the folder waits for the share to be looked at".to_string()))
        }
        (Step::Changed, _) => (LinkState::Created, None),
        (Step::Unchanged, _) => (LinkState::Ok, None),
    };
    entry.state = state;
    entry.reason = reason;
    (entry, changed, folder_ok)
}

/// Conflicts and errors reach the journal as warnings when a user comes to
/// have one, not at every pass; a few by name, the rest counted.
fn warn_new_conflicts(users: &[UserLink], previous: &HashMap<String, (Option<Stamp>, LinkState)>) {
    const NAMED: usize = 5;
    let new: Vec<&UserLink> = users
        .iter()
        .filter(|u| matches!(u.state, LinkState::Conflict | LinkState::Error))
        .filter(|u| previous.get(&u.user).is_none_or(|(_, before)| *before != u.state))
        .collect();
    for user in new.iter().take(NAMED) {
        let what = if user.state == LinkState::Conflict { "conflict" } else { "error" };
        tracing::warn!(component = "links", user = %user.user, "{what}: {}", user.reason.as_deref().unwrap_or_default());
    }
    if new.len() > NAMED {
        tracing::warn!(
            component = "links",
            "{} more users have a new conflict or error; see `pool-agent links`",
            new.len() - NAMED
        );
    }
}

fn publish(ctx: &TaskContext, report: &LinksReport, share_configured: bool) {
    let count = |state| report.count(state);
    let mut detail =
        format!("{} user(s): {} linked", report.users.len(), count(LinkState::Ok) + count(LinkState::Created));
    for (state, what) in [
        (LinkState::WaitingForShare, "wait for the share"),
        (LinkState::Conflict, "conflict"),
        (LinkState::Error, "error"),
    ] {
        if count(state) > 0 {
            detail.push_str(&format!(", {} {what}", count(state)));
        }
    }
    // An error, or something of a user's own where their link belongs: an
    // admin has to look (`pool-agent links`), so the VM says so in status.
    // An agent that is not root (a sandbox, a demo) cannot give users their
    // homes' folders at all: its conflicts are the sandbox's, not the users'.
    let first_of = |state| {
        report
            .users
            .iter()
            .find(|u| u.state == state)
            .map(|u| format!("{}: {}", u.user, u.reason.clone().unwrap_or_default()))
    };
    let as_root = nix::unistd::geteuid().is_root();
    let conflict = if as_root { first_of(LinkState::Conflict) } else { None };
    if !as_root && count(LinkState::Conflict) > 0 {
        detail.push_str(" (the agent is not root: it cannot give users their folders)");
    }
    if !share_configured {
        ctx.set(ComponentState::Skipped, "no [share] in the config: nothing to link to".to_string());
    } else if let Some(why) = first_of(LinkState::Error).or(conflict) {
        ctx.set_error(ComponentState::Degraded, detail, why);
    } else {
        ctx.set(ComponentState::Ready, detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_stuck_in_the_kernel_is_not_started_again_until_it_returns() {
        let links = Links::default();
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let guard = links.pass_running.try_start().unwrap();
        // The deadline passes; the thread stays (a stat on a hung share).
        let late = task::blocking("linking users", Duration::from_millis(50), move || {
            let _running = guard;
            let _ = stuck.recv();
        });
        assert!(late.await.is_err(), "the caller is not held");
        assert!(links.pass_running.try_start().is_err(), "no second thread while the first is stuck");
        assert_eq!(links.pass_running.in_flight().count, 1, "status can tell one is stuck");
        release.send(()).unwrap();
        let mut freed = false;
        for _ in 0..200 {
            if links.pass_running.try_start().is_ok() {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(freed, "once it returns, the next pass may start");
    }
}
