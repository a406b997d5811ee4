//! Setup scripts: the admin's scripts, run once per VM (per content) or on
//! every boot, as root or as a user, one after another in name order, after
//! the share and the links.
//!
//! [`plan`] finds and checks them, [`runner`] starts and stops their
//! processes (a transient systemd unit, or a child in its own process
//! group), [`record`] remembers what ran across restarts and reboots, and
//! [`log`] keeps each script's output, locally and on the share.

mod api;
pub mod log;
mod metrics;
mod output;
mod publish;
mod run;

use api::{run_now, script_log, scripts_report};
use metrics::ScriptsMetrics;
use output::{append_line, append_line_detached, pump_output, stamp, LOG_WRITE_DEADLINE};
use publish::{failure_detail, outcome_word};
pub mod plan;
pub mod record;
pub mod report;
pub mod runner;

use crate::config::{RunWhen, Settings};
use crate::core::capability::{Capability, SystemCheckInput, SystemFinding};
use crate::core::clock::rfc3339;
use crate::core::component::{ComponentId, ComponentState};
use crate::core::http::{Access, Route};
use crate::core::journal::{self, Journal};
use crate::core::share_write::{Fstat, ModesSeen, ShareWriteError};
use crate::core::shared::ShareNews;
use crate::core::task::{self, TaskContext, TaskResult};
use futures_util::future::BoxFuture;
use nix::sys::signal::Signal;
use plan::{Planned, Vetted};
use record::{Host, Outcome, Records, RunRecord};
use report::{ScriptReport, ScriptState, ScriptsReport};
use runner::{DirectRunner, Handle, Job, Launched, ProcessRunner, SystemdRunner};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// After a script exits, how long its output may still come (a daemon it
/// started may hold stdout open forever).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// Between SIGTERM and SIGKILL: a tenth of the timeout, 1 s to 10 s.
const MAX_GRACE: Duration = Duration::from_secs(10);
/// Planning (stat, hash) of every script.
const PLAN_DEADLINE: Duration = Duration::from_secs(60);
/// Starting one run (systemd-run's connection to PID 1 included).
const LAUNCH_DEADLINE: Duration = Duration::from_secs(30);
/// How long the first batch waits for the links' first pass.
const LINKS_WAIT: Duration = Duration::from_secs(60);
/// After a reload that moved the share, how long its news may take to change.
const SHARE_NEWS_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Scripts {
    report: Arc<Mutex<ScriptsReport>>,
    /// `scripts run NAME`: names queued for the task.
    runs: mpsc::Sender<String>,
    inbox: Arc<tokio::sync::Mutex<mpsc::Receiver<String>>>,
    /// Asked to run and not run yet: a log follower waits for the new run.
    queued: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Set by tests; else chosen at start from the system.
    runner: Option<Arc<dyn ProcessRunner>>,
    /// How a file's mode on the share is read back: set by tests (a share
    /// that fakes modes); else `fstat`.
    share_modes: Option<Arc<dyn ModesSeen + Send + Sync>>,
    clock: crate::core::clock::SharedClock,
}

impl Scripts {
    pub fn new(clock: crate::core::clock::SharedClock) -> Self {
        let (runs, inbox) = mpsc::channel(16);
        Self {
            report: Arc::new(Mutex::new(ScriptsReport { phase: "starting".into(), ..Default::default() })),
            runs,
            inbox: Arc::new(tokio::sync::Mutex::new(inbox)),
            queued: Default::default(),
            runner: None,
            share_modes: None,
            clock,
        }
    }

    pub fn report(&self) -> ScriptsReport {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_queued(&self, name: &str, queued: bool) {
        let mut names = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        if queued {
            names.insert(name.to_string());
        } else {
            names.remove(name);
        }
    }

    fn is_queued(&self, name: &str) -> bool {
        self.queued.lock().unwrap_or_else(|p| p.into_inner()).contains(name)
    }

    fn update(&self, change: impl FnOnce(&mut ScriptsReport)) {
        change(&mut self.report.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn update_script(&self, name: &str, change: impl FnOnce(&mut ScriptReport)) {
        self.update(|report| {
            if let Some(script) = report.scripts.iter_mut().find(|s| s.name == name) {
                change(script);
            }
        });
    }
}

impl Capability for Scripts {
    fn id(&self) -> ComponentId {
        ComponentId::Scripts
    }

    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, TaskResult> {
        Box::pin(run(ctx, self.clone()))
    }

    fn routes(&self) -> Vec<Route> {
        vec![
            Route::get_with("/v1/scripts", Access::Read, self.clone(), scripts_report),
            Route::post_with("/v1/scripts/{name}/run", Access::Admin, self.clone(), run_now),
            Route::get_with("/v1/scripts/{name}/log", Access::Read, self.clone(), script_log),
        ]
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(ScriptsMetrics(self.clone())));
    }

    fn config_section(&self) -> &'static str {
        "setup"
    }

    /// Arguments and environment values may carry tokens.
    fn private_config_keys(&self) -> &'static [&'static str] {
        &["scripts.*.args", "scripts.*.env"]
    }

    fn check_system(&self, check: &SystemCheckInput<'_>) -> Vec<SystemFinding> {
        check_scripts(check)
    }
}

/// Every script vetted as the daemon would at boot: a missing file, one not
/// executable, Windows line endings, an unknown `run_as`, unsafe owners.
fn check_scripts(check: &SystemCheckInput<'_>) -> Vec<SystemFinding> {
    let settings = check.settings;
    let share_root = settings.share.as_ref().map(|share| check.paths.resolve(&share.mount_point));
    // In a sandbox the daemon runs as the caller; on the system, as root.
    let runner = plan::Runner { euid: if check.paths.is_sandbox() { check.euid } else { 0 } };
    let mut findings = Vec::new();
    for (script, found) in plan::scripts(settings, check.paths) {
        let verdict = found.and_then(|()| {
            plan::vet(&script, check.paths, check.accounts, share_root.as_deref(), settings.setup.trust_share, runner)
                .map(|_| ())
        });
        let Err(why) = verdict else { continue };
        if why.contains("not mounted?") {
            findings.push(SystemFinding::Warning(format!(
                "{}: not checked: it is on the share, which is not mounted now",
                script.path.display()
            )));
            continue;
        }
        if check.euid != 0 && why.contains("Permission denied") {
            findings.push(SystemFinding::NeedsRoot(format!(
                "{}: not checked: reading it needs root (run the check with sudo)",
                script.path.display()
            )));
            continue;
        }
        let run_as_error = why.starts_with("run_as:");
        let error = match &script.entry {
            // A defaulted run_as is instance.local_user, which is checked on its own.
            Some(entry) if run_as_error && entry.run_as.is_none() => continue,
            None if run_as_error => continue,
            Some(entry) => {
                let (field, origin) = match (&entry.run_as, run_as_error) {
                    (Some(origin), true) => ("run_as", origin),
                    _ => ("path", &entry.path),
                };
                let message = why.strip_prefix("run_as: ").unwrap_or(&why).to_string();
                crate::config::ConfigError::at(origin, &format!("setup.scripts[{}].{field}", entry.index), message)
            }
            None => settings.origins.error(
                check.main_file,
                "setup.dir",
                format!("{} (found in the directory): {why}", script.name),
            ),
        };
        findings.push(SystemFinding::Error(error));
    }
    findings
}

/// Transient units when systemd can make them; else direct children (and say why).
fn choose_runner(ctx: &TaskContext) -> Arc<dyn ProcessRunner> {
    if ctx.paths.is_sandbox() {
        return Arc::new(DirectRunner);
    }
    match runner::systemd_can_run_units() {
        Ok(()) => Arc::new(SystemdRunner::default()),
        Err(why) => {
            tracing::warn!("setup scripts run as children of the agent, not as systemd units: {why}");
            Arc::new(DirectRunner)
        }
    }
}

/// journald where there is one and this is not a sandbox (a test's scripts
/// do not belong in the machine's journal); else lines go to the agent's log.
fn script_journal(ctx: &TaskContext) -> Option<Arc<Journal>> {
    if ctx.paths.is_sandbox() {
        return None;
    }
    match Journal::connect(Path::new(journal::SOCKET)) {
        Ok(journal) => Some(Arc::new(journal)),
        Err(err) => {
            tracing::info!("scripts' lines go to the agent's log: no journal ({err})");
            None
        }
    }
}

/// What one task run keeps between batches.
struct Batch {
    ctx: TaskContext,
    scripts: Scripts,
    runner: Arc<dyn ProcessRunner>,
    records: Arc<Records>,
    /// This boot and this machine, to read the records against.
    host: Host,
    /// journald's socket on a real system: each script's lines under its own identifier.
    journal: Option<Arc<Journal>>,
}

async fn run(ctx: TaskContext, scripts: Scripts) -> TaskResult {
    let runner = scripts.runner.clone().unwrap_or_else(|| choose_runner(&ctx));
    let inbox = scripts.inbox.clone();
    let mut asked = inbox.lock().await;
    let batch = Batch {
        records: Arc::new(Records::new(ctx.paths.state_dir().join("scripts"))),
        host: Host::this(&ctx.paths),
        journal: script_journal(&ctx),
        runner,
        scripts,
        ctx,
    };
    batch.scripts.update(|r| r.runner = batch.runner.kind().to_string());
    batch.wait_for_share(false).await;
    batch.wait_for_links().await;
    let mut settings_rx = batch.ctx.settings.clone();
    let mut share_rx = batch.ctx.shared.watch_share();
    loop {
        let settings = settings_rx.borrow_and_update().clone();
        if settings.stand_in {
            batch.hold_off_on_stand_in();
        } else {
            batch.run_batch(&settings, None).await;
        }
        if batch.ctx.shutdown.is_cancelled() {
            return Ok(());
        }
        loop {
            tokio::select! {
                _ = batch.ctx.shutdown.cancelled() => return Ok(()),
                changed = settings_rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    // A changed or new script runs now; the rest stay as they ran.
                    // As at boot, it finds the share of the new config mounted.
                    let mounted_where = |s: &Settings| s.share.as_ref().map(|share| (share.source.clone(), share.mount_point.clone()));
                    let share_changed = mounted_where(&settings_rx.borrow()) != mounted_where(&settings);
                    batch.wait_for_share(share_changed).await;
                    break;
                }
                Some(name) = asked.recv() => {
                    let settings = settings_rx.borrow().clone();
                    if settings.stand_in {
                        tracing::warn!(script = %name, "not run: the agent runs on the built-in defaults until the config is fixed");
                    } else {
                        batch.run_batch(&settings, Some(&name)).await;
                    }
                    batch.scripts.set_queued(&name, false);
                }
                changed = share_rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    batch.copy_pending_logs().await;
                }
            }
        }
    }
}

impl Batch {
    /// Scripts come after the share (bounded by `setup.share_wait`), so a
    /// script finds the VM as users will. After a reload that changed the
    /// share, the share's news must change first: the old mount's news does
    /// not stand for the new share.
    async fn wait_for_share(&self, share_changed: bool) {
        let settings = self.ctx.settings.borrow().clone();
        if settings.share.is_none() || settings.stand_in {
            return;
        }
        let bound = settings.setup.share_wait;
        self.set_phase(&format!("waiting for the share (up to {})", crate::config::duration::format(bound)));
        self.ctx.set(ComponentState::Starting, "waiting for the share before running setup scripts".to_string());
        self.preview(&settings).await;
        let mut share_rx = self.ctx.shared.watch_share();
        if share_changed {
            share_rx.borrow_and_update();
        }
        let mounted = async {
            // The share task may have told of the new share already (then no
            // change comes): a short wait for its news, then its state decides.
            if share_changed {
                let _ = tokio::time::timeout(SHARE_NEWS_WAIT, share_rx.changed()).await;
            }
            loop {
                if matches!(*share_rx.borrow_and_update(), ShareNews::Mounted { .. } | ShareNews::NotConfigured) {
                    return;
                }
                if share_rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(bound, mounted) => {}
            _ = self.ctx.shutdown.cancelled() => {}
        }
    }

    /// At boot, after the share: the links' first pass, so users' links exist.
    async fn wait_for_links(&self) {
        if self.ctx.settings.borrow().share.is_none() {
            return;
        }
        self.set_phase("waiting for the links' first pass");
        let mut passes = self.ctx.shared.watch_links_passes();
        let first_pass = async {
            while *passes.borrow_and_update() == 0 {
                if passes.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(LINKS_WAIT, first_pass) => {}
            _ = self.ctx.shutdown.cancelled() => {}
        }
    }

    /// A broken first config leaves the agent on its built-in defaults: no
    /// share, and a setup.dir of the default's. Nothing runs until a valid
    /// config is reloaded.
    fn hold_off_on_stand_in(&self) {
        let why = "not running setup scripts: the config is invalid and the agent runs on its built-in defaults; fix it and reload";
        self.set_phase(why);
        self.ctx.set(ComponentState::Starting, why.to_string());
    }

    fn set_phase(&self, phase: &str) {
        self.scripts.update(|r| r.phase = phase.to_string());
    }

    fn share_root(&self, settings: &Settings) -> Option<PathBuf> {
        settings.share.as_ref().map(|s| self.ctx.paths.resolve(&s.mount_point))
    }

    /// Plans every script and runs those due (or only `forced`, whatever its record says).
    async fn run_batch(&self, settings: &Arc<Settings>, forced: Option<&str>) {
        let planned = match self.plan(settings).await {
            Ok(planned) => planned,
            Err(why) => {
                self.ctx.set_error(ComponentState::Failed, "cannot look at the setup scripts".to_string(), why);
                return;
            }
        };
        let mut due = Vec::new();
        let previous = self.scripts.report();
        let mut rows = Vec::new();
        for item in &planned {
            let record = self.records.load(&item.script.name);
            let mut row = self.row(item, record.as_ref(), previous.scripts.iter().find(|s| s.name == item.script.name));
            let is_forced = forced == Some(item.script.name.as_str());
            match (&item.verdict, &record) {
                (Err(why), _) => {
                    // Said in the journal once per reason, not at every batch.
                    let before = previous.scripts.iter().find(|s| s.name == item.script.name);
                    if before.is_none_or(|b| b.state != ScriptState::Refused || b.reason.as_ref() != Some(why)) {
                        tracing::warn!(script = %item.script.name, "refused: {why}");
                    }
                    row.state = ScriptState::Refused;
                    row.reason = Some(why.clone());
                }
                (Ok(_), Some(record)) if record.outcome == Outcome::Running => {
                    // The agent or the VM died while it ran: stop what is left, run it again.
                    let runner = self.runner.clone();
                    let lost = record.clone();
                    let _ = task::blocking("stopping an interrupted script", LAUNCH_DEADLINE, move || {
                        runner.stop_leftover(&lost)
                    })
                    .await;
                    row.state = ScriptState::Interrupted;
                    let why = format!(
                        "interrupted: was running (since {}) when the agent or the VM stopped; runs again",
                        record.started
                    );
                    tracing::warn!(script = %item.script.name, "{why}");
                    append_line_detached(
                        self.log_path(&item.script.name),
                        stamp(self.ctx.clock.now()),
                        format!("[pool-agent] {why}"),
                    );
                    row.reason = Some(why);
                    if forced.is_none() || is_forced {
                        due.push(item.clone());
                    }
                }
                (Ok(vetted), record)
                    if is_forced || (forced.is_none() && !self.done(item, vetted, record.as_ref())) =>
                {
                    if row.state != ScriptState::Interrupted {
                        row.state = ScriptState::Pending;
                        row.reason = None;
                    }
                    due.push(item.clone());
                }
                _ => {}
            }
            rows.push(row);
        }
        self.scripts.update(|r| {
            r.scripts = rows;
            r.phase = if due.is_empty() { "done".into() } else { "running".into() };
        });
        self.publish_board();
        for item in due {
            if self.ctx.shutdown.is_cancelled() {
                return;
            }
            self.execute(settings, &item).await;
            self.publish_board();
        }
        self.set_phase("done");
        self.publish_board();
        self.copy_pending_logs().await;
    }

    /// Whether the record says this script needs no run now: a `once`
    /// script that succeeded with this content, or any script that already
    /// ran to its end in this boot with this content.
    fn done(&self, item: &Planned, vetted: &Vetted, record: Option<&RunRecord>) -> bool {
        let Some(record) = record else { return false };
        if record.content_hash != vetted.content_hash
            || record.outcome == Outcome::Running
            || self.host.is_other_machine(record)
        {
            return false;
        }
        (item.script.when == RunWhen::Once && record.outcome == Outcome::Succeeded)
            || record.boot_id == self.host.boot_id
    }

    async fn plan(&self, settings: &Arc<Settings>) -> Result<Vec<Planned>, String> {
        let (settings, paths, accounts) = (settings.clone(), self.ctx.paths.clone(), self.ctx.accounts.clone());
        let share_root = self.share_root(&settings);
        let runner = plan::Runner { euid: nix::unistd::geteuid().as_raw() };
        let trust_share = settings.setup.trust_share;
        task::blocking("checking the setup scripts", PLAN_DEADLINE, move || {
            plan::scripts(&settings, &paths)
                .into_iter()
                .map(|(script, found)| {
                    let verdict = found.and_then(|()| {
                        plan::vet(&script, &paths, &accounts, share_root.as_deref(), trust_share, runner)
                    });
                    Planned { file: paths.resolve(&script.path), script, verdict }
                })
                .collect()
        })
        .await
        .map_err(|err| err.to_string())
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.ctx.paths.script_log_dir().join(format!("{name}.log"))
    }

    /// Copies a script's log to `Logs/<instance>/<name>.log` on the share,
    /// if it is mounted; else it is copied when the share comes. A root
    /// script's log (or one whose user is unknown) is private: on a share
    /// that does not keep file modes it stays on the VM, and the report says
    /// why. A local user's script's log is theirs anyway and is copied.
    async fn copy_log(&self, name: &str) {
        if !self.ctx.settings.borrow().setup.log_to_share {
            return;
        }
        let ShareNews::Mounted { root, identity, .. } = self.ctx.shared.share() else { return };
        let local = self.log_path(name);
        let instance = self.ctx.shared.instance_name();
        let who = name.to_string();
        let private = log::is_private(self.scripts.report().scripts.iter().find(|s| s.name == name));
        let modes = self.scripts.share_modes.clone();
        let copied = task::blocking("copying a log to the share", Duration::from_secs(30), move || {
            if !local.exists() {
                return Err(ShareWriteError::Refused(format!("{} is not there", local.display())));
            }
            let modes: &dyn ModesSeen = match &modes {
                Some(modes) => modes.as_ref(),
                None => &Fstat,
            };
            let copied = log::copy_to_share(&local, &root, identity, &instance, &who, private, modes);
            if matches!(copied, Err(ShareWriteError::ModesNotKept { .. })) {
                // An earlier copy readable by every user must not stay either.
                if let Err(why) = log::remove_from_share(&root, identity, &instance, &who) {
                    tracing::warn!(script = %who, "an earlier copy of the log stays on the share: {why}");
                }
            }
            copied
        })
        .await;
        match copied {
            Ok(Ok(placed)) => {
                self.scripts.update(|r| {
                    if private {
                        r.log_to_share_note = None;
                    }
                });
                self.scripts.update_script(name, |row| row.shared_log = Some(placed.display().to_string()));
                if let Some(mut record) = self.records.load(name) {
                    if !record.log_on_share {
                        record.log_on_share = true;
                        self.store(name, &record).await;
                    }
                }
            }
            Ok(Err(ShareWriteError::ModesNotKept { asked, shown })) => {
                let note = log::modes_not_kept_note(&self.ctx.paths.script_log_dir());
                tracing::warn!(script = %name, "log not copied to the share (a file made {asked:04o} shows {shown:04o}): {note}");
                self.scripts.update(|r| r.log_to_share_note = Some(note));
            }
            Ok(Err(why)) => tracing::warn!(script = %name, "log not copied to the share: {why}"),
            Err(err) => tracing::warn!(script = %name, "log not copied to the share: {err}"),
        }
    }

    /// Logs of runs not yet on the share (it was down, or came later).
    async fn copy_pending_logs(&self) {
        if !matches!(self.ctx.shared.share(), ShareNews::Mounted { .. }) {
            return;
        }
        let names: Vec<String> = self
            .scripts
            .report()
            .scripts
            .iter()
            .filter(|s| s.shared_log.is_none() && s.state != ScriptState::Running)
            .map(|s| s.name.clone())
            .collect();
        for name in names {
            if self.records.load(&name).is_some_and(|r| !r.log_on_share) {
                self.copy_log(&name).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
