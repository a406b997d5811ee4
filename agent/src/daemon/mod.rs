//! The daemon's boot flow: config → API socket (READY) → share → links →
//! setup scripts → idle → Azure reporting, each capability a supervised task.
//! SIGHUP reloads the config (a bad one is refused and the old one kept),
//! SIGTERM/SIGINT stop everything within [`STOP_DEADLINE`].

pub mod config_check;
pub mod demo;
pub mod prepare_image;
pub mod registry;
pub mod supervisor;
pub mod systemd;

use crate::api::{self, AppState};
use crate::config::{self, Settings};
use crate::core::accounts::AccountsView;
use crate::core::board::{BoardMetrics, StatusBoard};
use crate::core::clock::{self, SharedClock};
use crate::core::component::{ComponentId, ComponentState};
use crate::core::paths::SystemPaths;
use crate::core::shared::SharedState;
use crate::core::task::TaskContext;
use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use supervisor::Supervisor;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// From SIGTERM to exit; systemd's own stop timeout is longer.
pub const STOP_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    pub config: Option<PathBuf>,
    pub root: Option<PathBuf>,
    pub check_config: bool,
    pub demo: bool,
    pub prepare_image: bool,
}

/// The scale set's userData as the agent last saw it (for `--check-config`).
const USER_DATA_SEEN: &str = "user-data.toml";

/// Where the last config that was valid is kept, for a boot whose config is not.
const LAST_GOOD_CONFIG: &str = "last-good-config.toml";

/// Exit codes: 0 clean stop or a config that passes `--check-config`,
/// 1 runtime failure, 2 a config that fails `--check-config`. An invalid
/// config at start does not stop the daemon: it serves the API, reports the
/// error and runs on the last valid config (or the built-in defaults).
pub fn main(options: DaemonOptions) -> ExitCode {
    let root = match (options.demo, &options.root) {
        (true, root) => {
            let root = match root.clone().map(Ok).unwrap_or_else(demo::default_root) {
                Ok(root) => root,
                Err(err) => {
                    eprintln!("pool-agentd: cannot make the demo sandbox's directory: {err}");
                    return ExitCode::from(1);
                }
            };
            if let Err(err) = demo::prepare(&root) {
                eprintln!("pool-agentd: cannot build the demo sandbox in {}: {err}", root.display());
                return ExitCode::from(1);
            }
            Some(root)
        }
        (false, root) => root.clone(),
    };
    let paths = match &root {
        Some(root) => SystemPaths::under(root),
        None => SystemPaths::system(),
    };
    let config_file = options.config.clone().unwrap_or_else(|| paths.config_file());

    // The check reads the scale set's userData as the agent last saw it, so
    // it names what the agent refused of it too.
    let saved_user_data =
        options.check_config.then(|| std::fs::read_to_string(paths.state_dir().join(USER_DATA_SEEN)).ok()).flatten();
    if let Some(seen) = saved_user_data.as_ref().filter(|t| !t.trim().is_empty()) {
        eprintln!(
            "pool-agentd: also checking the scale set's userData as last seen ({}, {} bytes)",
            paths.state_dir().join(USER_DATA_SEEN).display(),
            seen.len()
        );
    }
    if options.check_config {
        return config_check::run(&config_file, saved_user_data.as_deref(), &paths);
    }
    let loaded = config::load_with(&config_file, saved_user_data.as_deref());
    if options.prepare_image {
        // A broken config still gets its state cleared; only the unmounts need it.
        return prepare_image::prepare(&paths, loaded.as_ref().ok());
    }
    let (settings, boot_error) = match loaded {
        Ok(settings) => {
            for skipped in &settings.skipped {
                eprintln!("<4>pool-agentd: warning: {skipped}");
            }
            save_last_good(&paths, &settings);
            (settings, None)
        }
        Err(err) => {
            let (fallback, in_force) = fallback_settings(&paths);
            eprintln!("pool-agentd: invalid config: {err}");
            eprintln!(
                "pool-agentd: serving the API on {in_force}; fix the config, then `systemctl reload pool-agentd`"
            );
            (fallback, Some((err, in_force)))
        }
    };
    if options.demo {
        demo::print_instructions(paths.root(), &paths.socket());
    }

    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("pool-agentd").enable_all().build();
    // Root's demo sandbox is a fresh directory each run: removed when the demo stops.
    let throwaway = (options.demo && options.root.is_none() && nix::unistd::geteuid().is_root())
        .then(|| paths.root().to_path_buf());
    let code = match runtime {
        Ok(runtime) => run_then_abandon_stuck_threads(runtime, run(paths.clone(), config_file, settings, boot_error)),
        Err(err) => {
            eprintln!("pool-agentd: cannot start the runtime: {err}");
            ExitCode::from(1)
        }
    };
    if let Some(root) = throwaway {
        demo::remove_sandbox(&root);
    }
    code
}

/// Keeps the config just applied, so a later boot with a broken file (a bad
/// drop-in from the scale set, say) still runs what last worked. Root only:
/// it holds script arguments and environment values, which may carry tokens.
fn save_last_good(paths: &SystemPaths, settings: &Settings) {
    let dir = paths.state_dir();
    let text = config::render_effective_toml(settings);
    let written = crate::core::atomic::replace_file(&dir.join(LAST_GOOD_CONFIG), text.as_bytes(), 0o600);
    if let Err(err) = written {
        tracing::warn!("cannot keep the last good config in {}: {err}", dir.display());
    }
}

/// The last valid config if one was kept, else the built-in defaults; and
/// how to name it in status.
fn fallback_settings(paths: &SystemPaths) -> (Settings, String) {
    let kept = paths.state_dir().join(LAST_GOOD_CONFIG);
    if let Ok(text) = std::fs::read_to_string(&kept) {
        match config::load_str(&kept, &text) {
            Ok(settings) => return (settings, format!("the last valid config ({})", kept.display())),
            Err(err) => tracing::warn!("the kept config {} no longer loads: {err}", kept.display()),
        }
    }
    match config::load_str(std::path::Path::new("<built-in defaults>"), "") {
        Ok(settings) => {
            (Settings { stand_in: true, ..settings }, "the built-in defaults (no share, no setup scripts)".to_string())
        }
        // The empty config is valid by construction; a test guards it.
        Err(err) => unreachable_defaults(err),
    }
}

#[allow(clippy::panic)]
fn unreachable_defaults(err: config::ConfigError) -> (Settings, String) {
    panic!("the built-in defaults do not validate: {err}")
}

/// How long the runtime waits for its blocking threads once the tasks stopped.
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(300);

/// Runs the daemon to its end, then shuts the runtime down with a deadline.
/// A probe stuck on a hung server (a stopped SMB server, a hard NFS mount)
/// holds its blocking thread until the server answers; dropping the runtime
/// would wait for it, so such threads are abandoned instead.
fn run_then_abandon_stuck_threads(
    runtime: tokio::runtime::Runtime,
    daemon: impl std::future::Future<Output = ExitCode>,
) -> ExitCode {
    let code = runtime.block_on(daemon);
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    code
}

fn instance_name(settings: &Settings) -> String {
    if !settings.instance.name.is_empty() {
        return settings.instance.name.clone();
    }
    // IMDS compute.name comes with the Azure work; the hostname is the fallback.
    nix::unistd::gethostname().ok().and_then(|name| name.into_string().ok()).unwrap_or_else(|| "unknown".to_string())
}

async fn run(
    paths: SystemPaths,
    config_file: PathBuf,
    settings: Settings,
    boot_error: Option<(config::ConfigError, String)>,
) -> ExitCode {
    // Signals first, so a SIGTERM during boot is a clean stop, not a kill.
    let mut signals = match signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(signals) => signals,
        Err(err) => {
            tracing::error!("cannot install signal handlers: {err}");
            return ExitCode::from(1);
        }
    };
    let clock: SharedClock = clock::system();
    let capabilities = registry::capabilities(&clock);
    let ids = registry::component_ids(&capabilities);
    let board = Arc::new(StatusBoard::new(clock.clone(), &settings.sources, &ids).with_change_hook(systemd::status));
    match &boot_error {
        None => board.set(
            ComponentId::Config,
            ComponentState::Ready,
            Some(format!("{} file(s) in force", settings.sources.len())),
        ),
        Some((error, in_force)) => board.config_failed(error, in_force),
    }
    let instance = instance_name(&settings);
    let paths = Arc::new(paths);
    let accounts = AccountsView::for_paths(&paths);
    let shared = SharedState::new();
    shared.publish_instance_name(&instance);
    let (settings_tx, settings_rx) = watch::channel(Arc::new(settings));

    let socket = match api::server::bind(&paths.socket()) {
        Ok(socket) => socket,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("pool-agentd: {err}");
            return ExitCode::from(1);
        }
    };
    let shutdown = CancellationToken::new();

    // Everything the capabilities hand in, gathered in one place.
    let mut metrics = prometheus_client::registry::Registry::with_prefix("pool_agent");
    metrics.register_collector(Box::new(BoardMetrics(board.clone())));
    let mut routes = Vec::new();
    let mut private_config = Vec::new();
    for capability in &capabilities {
        capability.register_metrics(&mut metrics);
        routes.extend(capability.routes());
        private_config.push((capability.config_section(), capability.private_config_keys()));
    }
    let state = AppState {
        board: board.clone(),
        settings: settings_rx.clone(),
        paths: paths.clone(),
        clock: clock.clone(),
        accounts: accounts.clone(),
        metrics: Arc::new(metrics),
        private_config: Arc::new(private_config),
        started_at: clock.now(),
        instance: instance.clone(),
        admins: api::server::KnownAdmins::default(),
    };
    let admins = state.admins.clone();
    let app = api::routes::router(state, routes);
    let api_shutdown = shutdown.child_token();
    let api_task = tokio::spawn(async move {
        api::server::serve(&socket.listener, app, api_shutdown, admins).await;
        socket
    });
    board.set(ComponentId::Api, ComponentState::Ready, Some(format!("listening on {}", paths.socket().display())));
    tracing::info!(instance = %instance, socket = %paths.socket().display(), "pool-agentd {} ready", crate::VERSION);
    systemd::ready("API ready; starting capabilities");

    let mut supervisor = Supervisor::new(shutdown.clone());
    for capability in capabilities {
        let ctx = TaskContext {
            id: capability.id(),
            board: board.clone(),
            settings: settings_rx.clone(),
            paths: paths.clone(),
            clock: clock.clone(),
            accounts: accounts.clone(),
            shared: shared.clone(),
            shutdown: shutdown.clone(),
        };
        supervisor.spawn(capability, ctx);
    }
    let watchdog = tokio::spawn(systemd::watchdog(shutdown.clone()));

    // The scale set's userData fragment (from the Azure capability) is the
    // last drop-in: a new one is applied like a reload.
    let mut user_data = shared.watch_user_data();
    loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Some(SIGHUP) => {
                    accounts.invalidate();
                    shared.publish_reload_asked();
                    reload(&paths, &config_file, &shared.user_data(), &settings_tx, &board)
                }
                Some(signal) => {
                    tracing::info!("signal {signal}: stopping");
                    break;
                }
                None => break,
            },
            Ok(()) = user_data.changed() => {
                let text = user_data.borrow_and_update().clone();
                tracing::info!("the scale set's userData config changed; reloading");
                // Anyone on the VM can read userData from IMDS; kept for --check-config.
                let seen = paths.state_dir().join(USER_DATA_SEEN);
                if let Err(err) = crate::core::atomic::replace_file(&seen, text.as_bytes(), 0o644) {
                    tracing::warn!("cannot keep the userData in {}: {err}", seen.display());
                }
                reload(&paths, &config_file, &text, &settings_tx, &board)
            }
        }
    }

    systemd::stopping();
    let stop_started = clock.monotonic();
    supervisor.shutdown(STOP_DEADLINE - Duration::from_secs(2)).await;
    watchdog.abort();
    let remaining =
        STOP_DEADLINE.saturating_sub(clock.monotonic() - stop_started).saturating_sub(Duration::from_millis(500));
    match tokio::time::timeout(remaining, api_task).await {
        Ok(Ok(socket)) => socket.remove(),
        _ => {
            tracing::warn!("API did not stop in time; removing its socket anyway");
            let _ = std::fs::remove_file(paths.socket());
        }
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Reads the config again; applies it only if it is valid.
fn reload(
    paths: &SystemPaths,
    config_file: &std::path::Path,
    user_data: &str,
    settings_tx: &watch::Sender<Arc<Settings>>,
    board: &StatusBoard,
) {
    match config::load_with(config_file, Some(user_data)) {
        Ok(settings) => {
            for skipped in &settings.skipped {
                tracing::warn!("{skipped}");
            }
            tracing::info!(files = settings.sources.len(), "config reloaded");
            save_last_good(paths, &settings);
            board.config_applied(&settings.sources);
            settings_tx.send_replace(Arc::new(settings));
        }
        Err(err) => {
            tracing::error!("config reload rejected, keeping the previous config: {err}");
            board.config_rejected(&err);
        }
    }
}

/// Logs to stderr; under journald (JOURNAL_STREAM set) without timestamps,
/// since the journal adds its own.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POOL_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let colors = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        let format = tracing_subscriber::fmt::format().without_time().with_ansi(false).with_target(false);
        builder.with_ansi(false).event_format(WithPriority(format)).init();
    } else {
        builder.with_ansi(colors).init();
    }
}

/// Under journald each line starts with its syslog priority (`<4>` for a
/// warning). journald reads the prefix (`SyslogLevelPrefix=`, on by default)
/// and drops it, so `journalctl -u pool-agentd -p warning` finds the agent's
/// warnings instead of every line landing at info.
struct WithPriority<F>(F);

fn syslog_priority(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithPriority<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_journald_each_line_carries_its_priority() {
        #[derive(Clone, Default)]
        struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let sink = lines.clone();
        let format = tracing_subscriber::fmt::format().without_time().with_ansi(false).with_target(false);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .event_format(WithPriority(format))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(component = "share", "the share went away");
            tracing::error!("cannot bind");
            tracing::info!("ready");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let firsts: Vec<&str> = text.lines().map(|l| &l[..3]).collect();
        assert_eq!(firsts, ["<4>", "<3>", "<6>"], "{text}");
        assert!(text.lines().next().unwrap().contains("the share went away"), "{text}");
    }

    #[test]
    fn the_built_in_defaults_validate_and_a_kept_config_is_preferred() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SystemPaths::under(dir.path());
        let (defaults, named) = fallback_settings(&paths);
        assert!(defaults.share.is_none());
        assert!(named.contains("built-in defaults"), "{named}");
        let kept = config::load_str(
            std::path::Path::new("c.toml"),
            "[share]\nkind = \"local\"\npath = \"/srv/share\"\n[idle]\ntimeout = \"2h\"\n",
        )
        .unwrap();
        save_last_good(&paths, &kept);
        let text = std::fs::read_to_string(paths.state_dir().join(LAST_GOOD_CONFIG)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(paths.state_dir().join(LAST_GOOD_CONFIG)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "script arguments may carry tokens: root only");
        config::load_str(std::path::Path::new("kept.toml"), &text).unwrap_or_else(|err| panic!("{err}\n{text}"));
        let (fallback, named) = fallback_settings(&paths);
        assert_eq!(fallback.share, kept.share);
        assert_eq!(fallback.idle, kept.idle);
        assert!(named.contains("last valid config"), "{named}");
    }

    #[test]
    fn a_thread_stuck_in_the_kernel_does_not_hold_the_stop() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let started = std::time::Instant::now();
        let code = run_then_abandon_stuck_threads(runtime, async {
            // Stands in for stat() on a dead hard mount: a blocking thread that does not come back.
            #[allow(clippy::disallowed_methods)]
            let stuck = tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_secs(30)));
            let _ = tokio::time::timeout(Duration::from_millis(50), stuck).await;
            ExitCode::SUCCESS
        });
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(started.elapsed() < Duration::from_secs(2), "stop waited {:?} for a stuck thread", started.elapsed());
    }
}
