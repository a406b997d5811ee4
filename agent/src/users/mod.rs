//! The pool's own registry of accounts, for teams without a directory
//! service: each `[[users.accounts]]` entry exists on every VM with the same
//! name, uid and gid, its shell and groups, its SSH keys; a disabled one is
//! locked. The plan is pure ([`plan`]); the system's tools make the changes
//! ([`tools`]); keys go in through symlink-safe descriptors ([`keys`]).
//!
//! Safe by default: `users.manage = false` (the default) changes nothing and
//! reports what it would do; a local account that disagrees with the
//! registry is a conflict, reported and never changed; nothing is deleted.
//! The registry is applied at start, on every config reload and every
//! minute (a local admin's useradd may have made a conflict since).

mod check;
pub mod keys;
mod metrics;
pub mod plan;
pub mod share_file;
pub mod tools;

use crate::config::users::{UserAccount, UsersSettings};
use crate::core::capability::Capability;
use crate::core::component::{ComponentId, ComponentState};
use crate::core::http::{Access, Route};
use crate::core::shared::ShareNews;
use crate::core::stuck::StuckWork;
use crate::core::task::{blocking, TaskContext, TaskResult};
use axum::extract::State;
use axum::Json;
use futures_util::future::BoxFuture;
use plan::{AccountPlan, Change, Standing};
use serde::{Deserialize, Serialize};
use share_file::Found;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

const RECHECK_EVERY: Duration = Duration::from_secs(60);
/// The share's registry is looked at (one stat) this often while the agent
/// manages accounts, so an edit reaches every VM within seconds; with
/// `manage` off only the report follows it, once a minute (a VM at rest
/// wakes for nothing).
const SHARE_POLL: Duration = Duration::from_secs(3);
/// Reading passwd/group (NSS on a VM) and a home below a user's control.
const READ_DEADLINE: Duration = Duration::from_secs(5);

/// `GET /v1/users`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UsersReport {
    pub manage: bool,
    pub accounts: Vec<AccountState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The share's registry: where it stands (`none on the share`, `N account(s) from ...`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub share_registry: String,
    /// Why the share's registry is not used (refused, unreadable, invalid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_error: Option<String>,
    /// Entries of the share's registry left out for the config's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub enabled: bool,
    /// `created`, `present`, `locked`, `missing`, `conflict: ...`, `error: ...`.
    pub state: String,
    /// `installed`, `refused: ...`, or empty (no keys, or not managed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub keys: String,
    /// What was done or would be done, and what could not be.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl AccountState {
    pub fn is_conflict(&self) -> bool {
        self.state.starts_with("conflict")
    }
    pub fn is_error(&self) -> bool {
        self.state.starts_with("error") || self.keys.starts_with("refused") || self.keys.starts_with("error")
    }
}

#[derive(Clone, Default)]
pub struct Users(Arc<Mutex<UsersReport>>);

impl Users {
    pub fn new() -> Self {
        Self::default()
    }

    fn report(&self) -> UsersReport {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn publish(&self, ctx: &TaskContext, report: UsersReport) {
        let total = report.accounts.len();
        let conflicts: Vec<&AccountState> = report.accounts.iter().filter(|a| a.is_conflict()).collect();
        let errors: Vec<&AccountState> = report.accounts.iter().filter(|a| a.is_error()).collect();
        if let Some(first) = conflicts.first() {
            ctx.set_error(
                ComponentState::Degraded,
                format!("{total} registry account(s); {} conflict(s)", conflicts.len()),
                format!("{}: {}", first.name, first.state),
            );
        } else if let Some(first) = errors.first() {
            let why = if first.is_error() && first.state.starts_with("error") { &first.state } else { &first.keys };
            ctx.set_error(
                ComponentState::Degraded,
                format!("{total} registry account(s); {} with errors", errors.len()),
                format!("{}: {why}", first.name),
            );
        } else if let Some(error) = report.error.as_ref().or(report.share_error.as_ref()) {
            ctx.set_error(ComponentState::Degraded, "the registry".to_string(), error.clone());
        } else if total == 0 {
            ctx.set(ComponentState::Skipped, "no [[users.accounts]] in the config".to_string());
        } else {
            let managed = if report.manage { "" } else { " (users.manage = false: nothing changed)" };
            ctx.set(ComponentState::Ready, format!("{total} registry account(s){managed}"));
        }
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = report;
    }
}

impl Capability for Users {
    fn id(&self) -> ComponentId {
        ComponentId::Users
    }

    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, TaskResult> {
        Box::pin(run(ctx, self.clone()))
    }

    fn routes(&self) -> Vec<Route> {
        vec![Route::get_with("/v1/users", Access::Read, self.clone(), users_report)]
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(metrics::UsersMetrics(self.clone())));
    }

    fn config_section(&self) -> &'static str {
        "users"
    }

    fn check_system(
        &self,
        check: &crate::core::capability::SystemCheckInput<'_>,
    ) -> Vec<crate::core::capability::SystemFinding> {
        check::check(check)
    }
}

async fn users_report(State(users): State<Users>) -> Json<UsersReport> {
    Json(users.report())
}

async fn run(ctx: TaskContext, users: Users) -> TaskResult {
    let mut settings_rx = ctx.settings.clone();
    let mut share_rx = ctx.shared.watch_share();
    // The share's file as last found; kept while the share is away (its
    // accounts stay on the VM anyway, nothing is ever deleted).
    let mut share_found: Option<Found> = None;
    let mut share_read_error: Option<String> = None;
    let mut dirty = true;
    let mut next_full = Instant::now();
    // A hung share keeps its reader in the kernel: at most one such thread,
    // never a new one every poll.
    let share_io = StuckWork::new("reads of the share's registry", 1);
    loop {
        let settings = ctx.settings.borrow().users.clone();
        if let ShareNews::Mounted { root, identity, .. } = ctx.shared.share() {
            let known = share_found.as_ref().and_then(Found::stamp);
            let trust = settings.trust_share;
            let read = share_io.run(READ_DEADLINE, move || share_file::read(&root, identity, trust, known));
            match read.await {
                Ok(found) => {
                    if let Some(found) = found.filter(|f| share_found.as_ref() != Some(f)) {
                        share_found = Some(found);
                        dirty = true;
                    }
                    dirty |= share_read_error.take().is_some();
                }
                // Said once, not re-planned every poll while the share hangs.
                Err(err) => {
                    let said = format!("the share's registry: {err}");
                    dirty |= share_read_error.as_ref() != Some(&said);
                    share_read_error = Some(said);
                }
            }
        }
        if dirty || Instant::now() >= next_full {
            let share_root = match ctx.shared.share() {
                ShareNews::Mounted { root, .. } => Some(root),
                _ => None,
            };
            let mut combined = settings.clone();
            let mut share = ShareRegistry::default();
            match &share_found {
                None if share_root.is_none() => share.state = "the share is not mounted".to_string(),
                None | Some(Found::Absent) => share.state = "none on the share".to_string(),
                Some(Found::Refused { why, .. }) => share.error = Some(why.clone()),
                Some(Found::Read { text, .. }) => {
                    let shown = share_file::shown(share_root.as_deref().unwrap_or(std::path::Path::new("<share>")));
                    match share_file::parse(&shown, text) {
                        Ok(accounts) => {
                            share.state = format!("{} account(s) from {}", accounts.len(), shown.display());
                            let (all, notes) = share_file::combine(&settings.accounts, accounts);
                            combined.accounts = all;
                            share.notes = notes;
                        }
                        Err(why) => share.error = Some(why),
                    }
                }
            }
            if share.error.is_none() {
                share.error = share_read_error.clone();
            }
            let mut report = reconcile(&ctx, &combined, settings.accounts.len()).await;
            report.share_registry = share.state;
            report.share_error = share.error;
            report.notes = share.notes;
            users.publish(&ctx, report);
            dirty = false;
            next_full = Instant::now() + RECHECK_EVERY;
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(if settings.manage { SHARE_POLL } else { RECHECK_EVERY }) => {}
            changed = settings_rx.changed() => {
                if changed.is_err() { ctx.idle_until_shutdown().await; return Ok(()) }
                // users.trust_share may have changed: judge the file again.
                share_found = None;
                dirty = true;
            }
            _ = share_rx.changed() => {}
        }
    }
}

#[derive(Default)]
struct ShareRegistry {
    state: String,
    error: Option<String>,
    notes: Vec<String>,
}

/// The local accounts, groups and shadow's locks, read fresh.
struct LocalRead {
    users: Vec<crate::core::accounts::Account>,
    groups: Vec<crate::core::accounts::Group>,
    shadow: String,
}

async fn read_local(ctx: &TaskContext) -> Result<LocalRead, String> {
    let accounts = ctx.accounts.clone();
    let shadow_path = ctx.paths.resolve("/etc/shadow");
    accounts.invalidate();
    blocking("reading the accounts", READ_DEADLINE, move || {
        let snapshot = accounts.snapshot();
        let shadow = match std::fs::read_to_string(&shadow_path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(err) => return Err(format!("cannot read {}: {err}", shadow_path.display())),
        };
        Ok(LocalRead { users: snapshot.users.clone(), groups: snapshot.groups.clone(), shadow })
    })
    .await
    .map_err(|err| err.to_string())?
}

/// `settings.accounts` past `from_config` came from the share's registry.
async fn reconcile(ctx: &TaskContext, settings: &UsersSettings, from_config: usize) -> UsersReport {
    let checked_at = Some(crate::core::clock::rfc3339(ctx.clock.now()));
    let mut report = UsersReport { manage: settings.manage, checked_at, ..UsersReport::default() };
    if settings.accounts.is_empty() {
        return report;
    }
    let local = match read_local(ctx).await {
        Ok(local) => local,
        Err(why) => {
            report.error = Some(why);
            return report;
        }
    };
    // The share may not hand out power on the VM: its accounts join no
    // system group and not the agent's admin group.
    let admin_group = ctx.settings.borrow().api.admin_group.clone();
    let mut accounts = settings.accounts.clone();
    let stripped: Vec<Vec<String>> = accounts
        .iter_mut()
        .enumerate()
        .map(|(at, account)| match at >= from_config {
            true => share_file::strip_privileged(account, &local.groups, &admin_group),
            false => Vec::new(),
        })
        .collect();
    let today = ctx.clock.now().duration_since(UNIX_EPOCH).map(|d| (d.as_secs() / 86_400) as i64).unwrap_or(0);
    let (plans, locks): (Vec<AccountPlan>, Vec<bool>) = {
        let locked = |name: &str| plan::expired_in_shadow(&local.shadow, name, today);
        let local = plan::Local { users: &local.users, groups: &local.groups, locked: &locked };
        let mut plans = plan::plan(&accounts, &local);
        // The share may only add accounts: one that exists already (the VM's
        // admin, say, or one made on an earlier pass) is left as it is —
        // whoever holds the storage key must not re-key, re-shell or lock it.
        for plan in plans.iter_mut().skip(from_config) {
            if plan.standing == plan::Standing::Present {
                plan.changes.clear();
                plan.install_keys = false;
            }
        }
        let locks = accounts.iter().map(|a| locked(&a.name)).collect();
        (plans, locks)
    };
    let prefix = ctx.paths.is_sandbox().then(|| ctx.paths.root().to_path_buf());
    let mut changed = false;
    let mut states = Vec::new();
    for (at, (((account, plan), locked), stripped)) in accounts.iter().zip(&plans).zip(locks).zip(stripped).enumerate()
    {
        let (mut state, did_change) = apply(account, plan, settings.manage, prefix.as_deref(), locked).await;
        state.notes.extend(stripped);
        if at >= from_config && plan.standing == plan::Standing::Present {
            state.notes.push(
                "from the share's registry, which only adds accounts: this one exists, so its keys, shell and lock are left as they are (move it into the config to manage it)".to_string(),
            );
        }
        changed |= did_change;
        states.push(state);
    }
    if changed {
        // Links (and everyone else) see the new users at once.
        ctx.accounts.invalidate();
    }
    if settings.manage {
        for (account, (plan, state)) in accounts.iter().zip(plans.iter().zip(states.iter_mut())) {
            if plan.install_keys && !account.ssh_keys.is_empty() && !state.state.starts_with("error") {
                state.keys = install_keys(ctx, account).await;
            }
        }
    }
    report.accounts = states;
    report
}

/// Runs (or, unmanaged, only names) one account's changes.
async fn apply(
    account: &UserAccount,
    plan: &AccountPlan,
    manage: bool,
    prefix: Option<&std::path::Path>,
    locked: bool,
) -> (AccountState, bool) {
    let mut state = AccountState {
        name: account.name.clone(),
        uid: account.uid,
        gid: account.gid,
        enabled: account.enabled,
        ..AccountState::default()
    };
    state.notes.extend(plan.missing_groups.iter().map(|g| format!("group {g} does not exist here; not joined")));
    if let Standing::Conflict(why) = &plan.standing {
        state.state = format!("conflict: {why}");
        return (state, false);
    }
    let mut changed = false;
    let mut created = false;
    let mut now_locked = locked;
    for change in &plan.changes {
        if !manage {
            state.notes.push(format!("would {} (users.manage = false)", describe(change)));
            continue;
        }
        for call in tools::calls_for(change, prefix) {
            match tools::run(&call).await {
                Ok(()) => changed = true,
                // No session to end is no failure.
                Err(why) if call.program == "loginctl" => state.notes.push(format!("sessions: {why}")),
                Err(why) => {
                    state.state = format!("error: {why}");
                    return (state, changed);
                }
            }
        }
        if prefix.is_some() && matches!(change, Change::Lock { .. }) {
            state.notes.push("sessions not ended: under --root there is no logind of the sandbox's".to_string());
        }
        match change {
            Change::AddUser { .. } => created = true,
            Change::Lock { .. } => now_locked = true,
            Change::Unlock { .. } => now_locked = false,
            _ => {}
        }
        state.notes.push(describe(change));
    }
    state.state = match (&plan.standing, manage) {
        _ if !account.enabled && now_locked => "locked",
        (Standing::Missing, false) => "missing",
        _ if created => "created",
        _ => "present",
    }
    .to_string();
    (state, changed)
}

fn describe(change: &Change) -> String {
    match change {
        Change::AddGroup { name, gid } => format!("add group {name} ({gid})"),
        Change::AddUser { name, uid, gid, .. } => format!("add user {name} ({uid}:{gid})"),
        Change::SetShell { shell, .. } => format!("set shell {shell}"),
        Change::JoinGroups { groups, .. } => format!("join {}", groups.join(", ")),
        Change::Lock { .. } => "lock".to_string(),
        Change::Unlock { .. } => "unlock".to_string(),
    }
}

/// The account's keys, written as it into its home; the outcome as shown.
async fn install_keys(ctx: &TaskContext, account: &UserAccount) -> String {
    let accounts = ctx.accounts.clone();
    let paths = ctx.paths.clone();
    let (name, uid, gid, keys) = (account.name.clone(), account.uid, account.gid, account.ssh_keys.clone());
    let done = blocking("installing SSH keys", READ_DEADLINE, move || {
        let Some(found) = accounts.user_by_name(&name) else {
            return Err(format!("{name} is not known here"));
        };
        if found.uid != uid {
            return Err(format!("{name} has uid {} here; keys not written", found.uid));
        }
        keys::install(&paths.resolve(&found.home), uid, gid, &keys)
    })
    .await;
    match done {
        Ok(Ok(_)) => "installed".to_string(),
        Ok(Err(why)) => format!("refused: {why}"),
        Err(err) => format!("error: {err}"),
    }
}
