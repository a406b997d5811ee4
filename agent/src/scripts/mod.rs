//! Setup scripts: the admin's scripts, run once per VM (per content) or on
//! every boot, as root or as a user, one after another in name order, after
//! the share and the links.
//!
//! [`plan`] finds and checks them, [`runner`] starts and stops their
//! processes (a transient systemd unit, or a child in its own process
//! group), [`record`] remembers what ran across restarts and reboots, and
//! [`log`] keeps each script's output, locally and on the share.

pub mod log;
pub mod plan;
pub mod record;
pub mod report;
pub mod runner;

use crate::config::{RunWhen, Settings};
use crate::core::capability::Capability;
use crate::core::clock::rfc3339;
use crate::core::component::{ComponentId, ComponentState};
use crate::core::http::{Access, ApiError, Caller, Route};
use crate::core::journal::{self, Journal};
use crate::core::shared::{ScriptsNews, ShareNews};
use crate::core::task::{self, TaskContext, TaskResult};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::future::BoxFuture;
use nix::sys::signal::Signal;
use plan::{Planned, Vetted};
use record::{boot_id, Outcome, Records, RunRecord};
use report::{LogChunk, ScriptReport, ScriptState, ScriptsReport};
use runner::{DirectRunner, Handle, Job, Launched, ProcessRunner, SystemdRunner};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
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
/// Reading a piece of a log for the API.
const LOG_CHUNK_BYTES: u64 = 256 * 1024;
/// How long the first batch waits for the links' first pass.
const LINKS_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Scripts {
    report: Arc<Mutex<ScriptsReport>>,
    /// `scripts run NAME`: names queued for the task.
    runs: mpsc::Sender<String>,
    inbox: Arc<tokio::sync::Mutex<mpsc::Receiver<String>>>,
    /// Set by tests; else chosen at start from the system.
    runner: Option<Arc<dyn ProcessRunner>>,
    clock: crate::core::clock::SharedClock,
}

impl Scripts {
    pub fn new(clock: crate::core::clock::SharedClock) -> Self {
        let (runs, inbox) = mpsc::channel(16);
        Self {
            report: Arc::new(Mutex::new(ScriptsReport { phase: "starting".into(), ..Default::default() })),
            runs,
            inbox: Arc::new(tokio::sync::Mutex::new(inbox)),
            runner: None,
            clock,
        }
    }

    pub fn report(&self) -> ScriptsReport {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
}

async fn scripts_report(State(scripts): State<Scripts>) -> Json<ScriptsReport> {
    Json(with_elapsed(scripts.report(), scripts.clock.now()))
}

/// A running script's duration is the time so far.
fn with_elapsed(mut report: ScriptsReport, now: std::time::SystemTime) -> ScriptsReport {
    for script in &mut report.scripts {
        if script.state == ScriptState::Running {
            if let Some(started) = script.started.as_deref().and_then(|s| humantime::parse_rfc3339(s).ok()) {
                let so_far = now.duration_since(started).unwrap_or_default();
                script.duration_seconds = Some((so_far.as_secs_f64() * 10.0).round() / 10.0);
            }
        }
    }
    report
}

async fn run_now(State(scripts): State<Scripts>, UrlPath(name): UrlPath<String>) -> Response {
    let report = scripts.report();
    let Some(script) = report.scripts.iter().find(|s| s.name == name) else {
        return ApiError::NotFound(format!("no setup script {name:?}; `pool-agent scripts` lists them"))
            .into_response();
    };
    if script.state == ScriptState::Running {
        return ApiError::Conflict(format!("{name} is running now")).into_response();
    }
    if scripts.runs.try_send(name.clone()).is_err() {
        return ApiError::Unavailable("too many runs are queued; try again later".into()).into_response();
    }
    let mut queued = script.clone();
    queued.reason = Some("queued: runs after the script running now, if any".into());
    (StatusCode::ACCEPTED, Json(queued)).into_response()
}

#[derive(serde::Deserialize)]
struct LogQuery {
    offset: Option<u64>,
}

async fn script_log(
    State(scripts): State<Scripts>,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<LogQuery>,
    caller: Option<Extension<Caller>>,
) -> Response {
    let report = scripts.report();
    let Some(script) = report.scripts.iter().find(|s| s.name == name) else {
        return ApiError::NotFound(format!("no setup script {name:?}; `pool-agent scripts` lists them"))
            .into_response();
    };
    // Output routinely holds tokens (`set -x`): admins and the user it ran as only.
    let allowed = caller.is_some_and(|Extension(c)| c.admin || script.run_as_uid == Some(c.peer.uid));
    if !allowed {
        return ApiError::Forbidden(format!(
            "the log of {name} is for admins and for {} (the user it runs as) only",
            script.run_as
        ))
        .into_response();
    }
    let path = PathBuf::from(&script.log);
    let running = script.state == ScriptState::Running;
    let read_path = path.clone();
    match task::blocking("reading the log", Duration::from_secs(5), move || {
        log::read_from(&read_path, query.offset, LOG_CHUNK_BYTES)
    })
    .await
    {
        Ok(Ok((offset, text, next_offset))) => {
            Json(LogChunk { name, path: path.display().to_string(), offset, next_offset, text, running })
                .into_response()
        }
        Ok(Err(err)) => ApiError::Unavailable(format!("cannot read {}: {err}", path.display())).into_response(),
        Err(err) => ApiError::Timeout(err.to_string()).into_response(),
    }
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
    boot: String,
    /// journald's socket on a real system: each script's lines under its own identifier.
    journal: Option<Arc<Journal>>,
}

async fn run(ctx: TaskContext, scripts: Scripts) -> TaskResult {
    let runner = scripts.runner.clone().unwrap_or_else(|| choose_runner(&ctx));
    let inbox = scripts.inbox.clone();
    let mut asked = inbox.lock().await;
    let batch = Batch {
        records: Arc::new(Records::new(ctx.paths.state_dir().join("scripts"))),
        boot: boot_id(),
        journal: script_journal(&ctx),
        runner,
        scripts,
        ctx,
    };
    batch.scripts.update(|r| r.runner = batch.runner.kind().to_string());
    batch.wait_for_share_and_links().await;
    let mut settings_rx = batch.ctx.settings.clone();
    let mut share_rx = batch.ctx.shared.watch_share();
    loop {
        let settings = settings_rx.borrow_and_update().clone();
        batch.run_batch(&settings, None).await;
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
                    break;
                }
                Some(name) = asked.recv() => {
                    let settings = settings_rx.borrow().clone();
                    batch.run_batch(&settings, Some(&name)).await;
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
    /// Scripts come after the share (bounded by `setup.share_wait`) and the
    /// links' first pass, so a script finds the VM as users will.
    async fn wait_for_share_and_links(&self) {
        let settings = self.ctx.settings.borrow().clone();
        if settings.share.is_some() {
            let bound = settings.setup.share_wait;
            self.set_phase(&format!("waiting for the share (up to {})", crate::config::duration::format(bound)));
            self.ctx.set(ComponentState::Starting, "waiting for the share before running setup scripts".to_string());
            let mut share_rx = self.ctx.shared.watch_share();
            let mounted = async {
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
                _ = self.ctx.shutdown.cancelled() => return,
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
        if record.content_hash != vetted.content_hash || record.outcome == Outcome::Running {
            return false;
        }
        (item.script.when == RunWhen::Once && record.outcome == Outcome::Succeeded) || record.boot_id == self.boot
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

    /// A script's row from its record (what ran before) and the last report.
    fn row(&self, item: &Planned, record: Option<&RunRecord>, previous: Option<&ScriptReport>) -> ScriptReport {
        let script = &item.script;
        let mut row = ScriptReport {
            name: script.name.clone(),
            path: script.path.display().to_string(),
            run_as: script.run_as.clone(),
            run_as_uid: item.verdict.as_ref().ok().map(|v| v.account.uid),
            when: match script.when {
                RunWhen::Once => "once".into(),
                RunWhen::EveryBoot => "every-boot".into(),
            },
            blocking: script.blocking,
            state: ScriptState::Pending,
            reason: None,
            pid: None,
            unit: None,
            started: None,
            finished: None,
            duration_seconds: None,
            timeout_seconds: script.timeout.as_secs(),
            exit_code: None,
            signal: None,
            log: self.log_path(&script.name).display().to_string(),
            shared_log: previous.and_then(|p| p.shared_log.clone()),
            content_hash: item.verdict.as_ref().map(|v| v.content_hash.clone()).unwrap_or_default(),
        };
        if let Some(record) = record {
            row.started = Some(record.started.clone());
            row.finished = record.finished.clone();
            row.duration_seconds = record.duration_seconds;
            row.exit_code = record.exit_code;
            row.signal = record.signal.clone();
            row.unit = record.unit.clone();
            let (state, when) = match record.outcome {
                Outcome::Succeeded => (ScriptState::Succeeded, "succeeded"),
                Outcome::Failed => (ScriptState::Failed, "failed"),
                Outcome::TimedOut => (ScriptState::TimedOut, "timed out"),
                Outcome::Running => (ScriptState::Interrupted, "was interrupted"),
            };
            row.state = state;
            let finished = record.finished.as_deref().unwrap_or(&record.started);
            let this_boot = if record.boot_id == self.boot { "in this boot" } else { "in an earlier boot" };
            row.reason = Some(match (&item.verdict, record.outcome) {
                (Ok(v), _) if v.content_hash != record.content_hash => {
                    format!("{when} at {finished}; changed since, runs again")
                }
                (_, Outcome::Succeeded) if script.when == RunWhen::Once => {
                    format!("ran once at {finished} ({this_boot}); unchanged since, not run again")
                }
                _ => format!("{when} at {finished} ({this_boot}){}", failure_detail(record)),
            });
        }
        row
    }

    /// Runs one script to its end: record first, then the processes, the
    /// log, the record of how it ended, the log on the share.
    async fn execute(&self, settings: &Arc<Settings>, item: &Planned) {
        let Ok(vetted) = &item.verdict else { return };
        let script = &item.script;
        let name = script.name.clone();
        let started_at = self.ctx.clock.now();
        let started = rfc3339(started_at);
        let began = Instant::now();
        let grace = (script.timeout / 10).clamp(Duration::from_secs(1), MAX_GRACE);
        // Where users reach the share (the mount point while it is down).
        let share_path = match self.ctx.shared.share() {
            ShareNews::Mounted { root, .. } => Some(root),
            _ => self.share_root(settings),
        };
        let instance = self.ctx.shared.instance_name();
        let lang = plan::system_lang(&self.ctx.paths);
        let facts = plan::EnvFacts { instance: &instance, share_path: share_path.as_deref(), settings, lang };
        let job = Job {
            name: name.clone(),
            program: vetted.program.clone(),
            args: script.args.clone(),
            workdir: vetted.workdir.clone(),
            env: plan::environment(script, &vetted.account, &facts),
            account: vetted.account.clone(),
            groups: vetted.groups.clone(),
            timeout: script.timeout,
            grace,
        };
        let mut record = RunRecord::running(&vetted.content_hash, &self.boot, &started);
        self.store(&name, &record).await;
        let log_path = self.log_path(&name);
        let header = format!(
            "[pool-agent] run of {} as {} ({} runner, timeout {}) started",
            script.path.display(),
            vetted.account.name,
            self.runner.kind(),
            crate::config::duration::format(script.timeout)
        );
        let opened = {
            let (path, started, header) = (log_path.clone(), stamp(self.ctx.clock.now()), header.clone());
            task::blocking("opening a script's log", LOG_WRITE_DEADLINE, move || {
                log::LogFile::open(&path).and_then(|mut log| log.line(&started, &header).map(|_| log))
            })
            .await
        };
        let log = match opened {
            Ok(Ok(log)) => Some(log),
            Ok(Err(err)) => {
                tracing::warn!(script = %name, "cannot write {}: {err}", log_path.display());
                None
            }
            Err(err) => {
                tracing::warn!(script = %name, "cannot write {}: {err}", log_path.display());
                None
            }
        };
        tracing::info!(script = %name, "{header}");
        let runner = self.runner.clone();
        let launch_job = job.clone();
        let launched = task::blocking("starting the script", LAUNCH_DEADLINE, move || runner.launch(&launch_job)).await;
        let launched = match launched {
            Ok(Ok(launched)) => launched,
            Ok(Err(err)) => return self.finish_unstarted(&name, record, format!("cannot start: {err}")).await,
            Err(err) => return self.finish_unstarted(&name, record, err.to_string()).await,
        };
        record.pid = launched.pid;
        record.pid_start = launched.pid_start;
        record.unit = match &launched.handle {
            Handle::Unit(unit) => Some(unit.clone()),
            Handle::ProcessGroup(_) => None,
        };
        self.store(&name, &record).await;
        self.scripts.update_script(&name, |row| {
            row.state = ScriptState::Running;
            row.reason = None;
            row.pid = launched.pid;
            row.unit = record.unit.clone();
            row.started = Some(started.clone());
            row.finished = None;
            row.exit_code = None;
            row.signal = None;
            row.duration_seconds = Some(0.0);
            row.content_hash = vetted.content_hash.clone();
        });
        self.publish_running(Some(&name));
        self.publish_board();
        let Launched { mut child, output, handle, .. } = launched;
        let pump = tokio::spawn(pump_output(output, log, name.clone(), self.ctx.clock.clone(), self.journal.clone()));
        if let Handle::Unit(unit) = &handle {
            let unit = unit.clone();
            let (scripts, name) = (self.scripts.clone(), name.clone());
            tokio::spawn(async move {
                // The main pid is known once systemd started the unit.
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(Some(pid)) =
                    task::blocking("asking systemd", Duration::from_secs(5), move || runner::unit_main_pid(&unit)).await
                {
                    scripts.update_script(&name, |row| {
                        if row.state == ScriptState::Running {
                            row.pid = Some(pid);
                        }
                    });
                }
            });
        }
        enum End {
            Exited(std::io::Result<std::process::ExitStatus>),
            TimedOut,
            Shutdown,
        }
        let end = tokio::select! {
            status = child.wait() => End::Exited(status),
            _ = tokio::time::sleep(script.timeout) => End::TimedOut,
            _ = self.ctx.shutdown.cancelled() => End::Shutdown,
        };
        let status = match end {
            End::Exited(status) => Some(status),
            End::TimedOut => {
                let note = format!(
                    "[pool-agent] timeout of {} reached: SIGTERM to every process of the script, SIGKILL after {}",
                    crate::config::duration::format(script.timeout),
                    crate::config::duration::format(grace)
                );
                tracing::warn!(script = %name, "{note}");
                append_line(&log_path, stamp(self.ctx.clock.now()), &note).await;
                self.stop_all(&handle, grace).await;
                let _ = tokio::time::timeout(grace, child.wait()).await;
                None
            }
            End::Shutdown => {
                // The record stays `running`: the next start reports it interrupted and runs it again.
                let runner = self.runner.clone();
                let stop = handle.clone();
                let _ = task::blocking("stopping the script", Duration::from_secs(2), move || {
                    runner.signal_all(&stop, Signal::SIGKILL)
                })
                .await;
                pump.abort();
                self.runner.finished(&job);
                return;
            }
        };
        // Output still coming after the exit is a leftover holding stdout:
        // stop what is left, so nothing outlives the run and the runner never hangs.
        let mut pump = pump;
        let drained = tokio::time::timeout(OUTPUT_DRAIN, &mut pump).await.is_ok();
        let leftovers = self.any_left(&handle).await;
        if leftovers {
            self.stop_all(&handle, grace).await;
        }
        if !drained {
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut pump).await;
            pump.abort();
        }
        self.runner.finished(&job);
        let duration = began.elapsed();
        let (outcome, exit_code, signal) = match status {
            None => (Outcome::TimedOut, None, Some("SIGTERM".to_string())),
            Some(Ok(status)) => exit_of(status),
            Some(Err(err)) => {
                tracing::warn!(script = %name, "cannot wait for the script: {err}");
                (Outcome::Failed, None, None)
            }
        };
        record.outcome = outcome;
        record.exit_code = exit_code;
        record.signal = signal.clone();
        record.finished = Some(rfc3339(self.ctx.clock.now()));
        record.duration_seconds = Some((duration.as_secs_f64() * 1000.0).round() / 1000.0);
        let mut ending = format!(
            "[pool-agent] run ended: {}{} after {:.1}s",
            outcome_word(outcome),
            failure_detail(&record),
            duration.as_secs_f64()
        );
        if leftovers {
            ending.push_str("; processes it left running were stopped");
        }
        append_line(&log_path, stamp(self.ctx.clock.now()), &ending).await;
        tracing::info!(script = %name, "{ending}");
        self.store(&name, &record).await;
        let state = match outcome {
            Outcome::Succeeded => ScriptState::Succeeded,
            Outcome::Failed => ScriptState::Failed,
            Outcome::TimedOut => ScriptState::TimedOut,
            Outcome::Running => ScriptState::Interrupted,
        };
        self.scripts.update_script(&name, |row| {
            row.state = state;
            row.reason = (state != ScriptState::Succeeded).then(|| {
                format!("{}{}; see `pool-agent scripts log {name}`", outcome_word(outcome), failure_detail(&record))
            });
            row.pid = None;
            row.finished = record.finished.clone();
            row.duration_seconds = record.duration_seconds;
            row.exit_code = exit_code;
            row.signal = signal;
        });
        self.publish_running(None);
        self.copy_log(&name).await;
    }

    async fn finish_unstarted(&self, name: &str, mut record: RunRecord, why: String) {
        tracing::error!(script = %name, "{why}");
        append_line(&self.log_path(name), stamp(self.ctx.clock.now()), &format!("[pool-agent] {why}")).await;
        record.outcome = Outcome::Failed;
        record.finished = Some(rfc3339(self.ctx.clock.now()));
        self.store(name, &record).await;
        self.scripts.update_script(name, |row| {
            row.state = ScriptState::Failed;
            row.reason = Some(why);
            row.finished = record.finished.clone();
        });
        self.publish_running(None);
    }

    async fn store(&self, name: &str, record: &RunRecord) {
        let (records, name, record) = (self.records.clone(), name.to_string(), record.clone());
        let what = format!("recording the run of {name}");
        match task::blocking(&what, Duration::from_secs(10), move || records.store(&name, &record)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!("{what}: {err}"),
            Err(err) => tracing::error!("{err}"),
        }
    }

    async fn any_left(&self, handle: &Handle) -> bool {
        let (runner, handle) = (self.runner.clone(), handle.clone());
        task::blocking("looking for leftovers", Duration::from_secs(5), move || runner.any_left(&handle))
            .await
            .unwrap_or(true)
    }

    /// SIGTERM to every process of the run; SIGKILL to what is left after `grace`.
    async fn stop_all(&self, handle: &Handle, grace: Duration) {
        let signal = |signal: Signal| {
            let (runner, handle) = (self.runner.clone(), handle.clone());
            task::blocking("signalling the script", Duration::from_secs(5), move || runner.signal_all(&handle, signal))
        };
        let _ = signal(Signal::SIGTERM).await;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.any_left(handle).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = signal(Signal::SIGKILL).await;
        // The kernel takes a moment to reap; wait so `any_left` is honest afterwards.
        for _ in 0..50 {
            if !self.any_left(handle).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn publish_running(&self, running: Option<&str>) {
        let news = match running {
            Some(name) => ScriptsNews { running: vec![name.to_string()] },
            None => ScriptsNews::default(),
        };
        self.ctx.shared.publish_scripts(news);
    }

    /// The board row: not ready while a blocking script runs or waits,
    /// failed (the VM unhealthy) when a blocking script did not succeed.
    fn publish_board(&self) {
        let report = self.scripts.report();
        let count = |state: ScriptState| report.scripts.iter().filter(|s| s.state == state).count();
        if let Some(running) = report.scripts.iter().find(|s| s.state == ScriptState::Running) {
            let detail = format!(
                "running {} (timeout {}){}",
                running.name,
                crate::config::duration::format(Duration::from_secs(running.timeout_seconds)),
                if running.blocking { "; the VM is not ready until it ends" } else { " in the background" }
            );
            let state = if running.blocking { ComponentState::Starting } else { ComponentState::Ready };
            self.ctx.set(state, detail);
            return;
        }
        let waiting = report
            .scripts
            .iter()
            .any(|s| s.blocking && matches!(s.state, ScriptState::Pending | ScriptState::Interrupted));
        if waiting && report.phase != "done" {
            self.ctx.set(ComponentState::Starting, format!("{} setup script(s) to run", report.scripts.len()));
            return;
        }
        if report.scripts.is_empty() {
            self.ctx.set(ComponentState::Ready, "no setup scripts".to_string());
            return;
        }
        let mut detail = format!("{} script(s): {} succeeded", report.scripts.len(), count(ScriptState::Succeeded));
        for state in [ScriptState::Failed, ScriptState::TimedOut, ScriptState::Refused, ScriptState::Interrupted] {
            if count(state) > 0 {
                detail.push_str(&format!(", {} {}", count(state), state.as_str()));
            }
        }
        match report.scripts.iter().find(|s| s.blocking && s.state.is_failure()) {
            Some(failed) => self.ctx.set_error(
                ComponentState::Failed,
                detail,
                format!(
                    "{}: {}",
                    failed.name,
                    failed.reason.clone().unwrap_or_else(|| failed.state.as_str().to_string())
                ),
            ),
            None => self.ctx.set(ComponentState::Ready, detail),
        }
    }

    /// Copies a script's log to `Logs/<instance>/<name>.log` on the share,
    /// if it is mounted; else it is copied when the share comes.
    async fn copy_log(&self, name: &str) {
        let ShareNews::Mounted { root, identity, .. } = self.ctx.shared.share() else { return };
        let local = self.log_path(name);
        if !local.exists() {
            return;
        }
        let instance = self.ctx.shared.instance_name();
        let who = name.to_string();
        let copied = task::blocking("copying a log to the share", Duration::from_secs(30), move || {
            log::copy_to_share(&local, &root, identity, &instance, &who)
        })
        .await;
        match copied {
            Ok(Ok(placed)) => {
                self.scripts.update_script(name, |row| row.shared_log = Some(placed.display().to_string()));
                if let Some(mut record) = self.records.load(name) {
                    if !record.log_on_share {
                        record.log_on_share = true;
                        self.store(name, &record).await;
                    }
                }
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

/// Reads the one pipe both stdout and stderr write to, line by line, into
/// the log (each line with its time) and the journal (under the script's own
/// identifier where journald is there, else in the agent's log).
async fn pump_output(
    output: std::os::fd::OwnedFd,
    mut log: Option<log::LogFile>,
    name: String,
    clock: crate::core::clock::SharedClock,
    journal: Option<Arc<Journal>>,
) {
    let identifier = format!("pool-agent-script-{name}");
    let Ok(receiver) = tokio::net::unix::pipe::Receiver::from_owned_fd(output) else { return };
    // The log file is written on a blocking thread fed by a bounded queue: a
    // disk that stalls loses lines (counted), never an async worker.
    let (lines, queued) = std::sync::mpsc::sync_channel::<(String, String)>(LOG_QUEUE);
    let writer = log.take().map(|mut log| {
        tokio::task::spawn_blocking(move || {
            for (at, text) in queued {
                let _ = log.line(&at, &text);
            }
        })
    });
    let mut dropped = 0u64;
    let mut reader = tokio::io::BufReader::new(receiver);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader).take(log::MAX_LINE_BYTES as u64).read_until(b'\n', &mut line).await;
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                if writer.is_some() && lines.try_send((stamp(clock.now()), text.to_string())).is_err() {
                    dropped += 1;
                }
                let fields = [
                    ("MESSAGE", text),
                    ("SYSLOG_IDENTIFIER", identifier.as_str()),
                    ("PRIORITY", journal::INFO),
                    ("POOL_AGENT_SCRIPT", name.as_str()),
                ];
                if journal.as_ref().is_none_or(|j| j.send(&fields).is_err()) {
                    tracing::info!(script = %name, "{text}");
                }
            }
        }
    }
    if dropped > 0 {
        tracing::warn!(script = %name, dropped, "the script's log file could not keep up; lines are in the journal only");
    }
    drop(lines);
    // Every line is in the file before the run's ending line is added.
    if let Some(writer) = writer {
        let _ = tokio::time::timeout(LOG_WRITE_DEADLINE, writer).await;
    }
}

/// Lines of output waiting for the log file's writer.
const LOG_QUEUE: usize = 4096;
/// A write to a script's log (local disk) takes no longer than this.
const LOG_WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// One line added to a script's log, on a blocking thread.
async fn append_line(path: &std::path::Path, stamp: String, text: &str) {
    let (path, text) = (path.to_path_buf(), text.to_string());
    let written = task::blocking("writing a script's log", LOG_WRITE_DEADLINE, move || {
        log::LogFile::open(&path).and_then(|mut log| log.line(&stamp, &text))
    });
    if let Err(err) = written.await {
        tracing::warn!("script log: {err}");
    }
}

/// The same where nothing can wait for it (inside a report update).
fn append_line_detached(path: std::path::PathBuf, stamp: String, text: String) {
    drop(tokio::task::spawn_blocking(move || {
        if let Ok(mut log) = log::LogFile::open(&path) {
            let _ = log.line(&stamp, &text);
        }
    }));
}

fn stamp(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn exit_of(status: std::process::ExitStatus) -> (Outcome, Option<i32>, Option<String>) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => (Outcome::Succeeded, Some(0), None),
        (Some(code), _) => (Outcome::Failed, Some(code), None),
        (None, Some(signal)) => (
            Outcome::Failed,
            None,
            Some(Signal::try_from(signal).map(|s| s.as_str().to_string()).unwrap_or_else(|_| signal.to_string())),
        ),
        (None, None) => (Outcome::Failed, None, None),
    }
}

fn outcome_word(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "failed",
        Outcome::TimedOut => "timed out",
        Outcome::Running => "interrupted",
    }
}

fn failure_detail(record: &RunRecord) -> String {
    match (record.outcome, record.exit_code, &record.signal) {
        (Outcome::Failed, Some(code), _) => format!(" (exit {code})"),
        (Outcome::Failed, None, Some(signal)) => format!(" (killed by {signal})"),
        _ => String::new(),
    }
}

struct ScriptsMetrics(Scripts);

impl std::fmt::Debug for ScriptsMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScriptsMetrics")
    }
}

impl prometheus_client::collector::Collector for ScriptsMetrics {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        let report = with_elapsed(self.0.report(), self.0.clock.now());
        let scripts = ConstGauge::new(0i64);
        let mut family =
            encoder.encode_descriptor("setup_scripts", "Setup scripts by their state.", None, scripts.metric_type())?;
        for state in ScriptState::ALL {
            let count = report.scripts.iter().filter(|s| s.state == state).count() as i64;
            ConstGauge::new(count).encode(family.encode_family(&[("state", state.as_str())])?)?;
        }
        let took = ConstGauge::new(0.0f64);
        let mut family = encoder.encode_descriptor(
            "setup_script_duration_seconds",
            "How long each script's last run took (so far, while it runs).",
            None,
            took.metric_type(),
        )?;
        for script in &report.scripts {
            if let Some(seconds) = script.duration_seconds {
                ConstGauge::new(seconds).encode(family.encode_family(&[("script", script.name.as_str())])?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
