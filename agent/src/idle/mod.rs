//! Idle: activity signals sampled every `idle.interval` into a verdict with
//! its reasons, and users' keep-awake holds.
//!
//! Each signal is a [`signal::Source`]: [`sessions`] (utmp, terminal input),
//! [`connections`] (inbound TCP traffic on the watched ports), [`jupyter`]
//! (kernels and terminals), [`cpu`] (users' slices), [`gpu`] (NVML), [`writes`]
//! (users' writes under homes and the share, by fanotify), running setup scripts
//! (from the core's shared state) and [`holds`]. [`verdict`] turns the
//! samples into active or idle, failing safe: a signal that cannot tell
//! counts as active. The verdict goes to the core's shared state for Azure
//! reporting; with `idle.action = "report"` nothing else is done with it.

pub mod connections;
pub mod cpu;
pub mod fanotify;
pub mod gpu;
pub mod holds;
pub mod jupyter;
mod login_watch;
pub mod logind;
mod metrics;
mod own;
pub mod report;
mod routes;
pub mod sampler;
pub mod sessions;
pub mod signal;
pub mod utmp;
pub mod verdict;
pub mod write_ledger;
pub mod writes;

use crate::config::{IdleAction, Settings};
use crate::core::capability::Capability;
use crate::core::clock::rfc3339;
use crate::core::component::{ComponentId, ComponentState};
use crate::core::http::{Access, Route};
use crate::core::shared::{IdleNews, STALE_AFTER_INTERVALS};
use crate::core::task::{TaskContext, TaskResult};
use crate::core::user_uids::UserUids;
use futures_util::future::BoxFuture;
use holds::Holds;
use report::{IdleReport, SignalReport};
use signal::{Sample, SignalState, Source};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};
use verdict::VerdictMachine;

#[derive(Clone)]
pub struct Idle {
    report: Arc<Mutex<IdleReport>>,
    /// Set at the task's start: what the hold routes need of the task's context.
    started: Arc<OnceLock<Started>>,
    clock: crate::core::clock::SharedClock,
    /// A hold taken or released: sample now, so `pool-agent idle` shows it at
    /// once instead of up to an interval later.
    resample: Arc<tokio::sync::Notify>,
}

/// The holds (their file is under the state directory the context names),
/// the accounts view (owners' names) and the settings in force (max_hold).
struct Started {
    holds: Holds,
    accounts: crate::core::accounts::AccountsView,
    settings: tokio::sync::watch::Receiver<Arc<Settings>>,
}

impl Idle {
    pub fn new(clock: crate::core::clock::SharedClock) -> Self {
        Self {
            report: Arc::new(Mutex::new(IdleReport {
                verdict: "starting".into(),
                action: "report".into(),
                ..Default::default()
            })),
            started: Arc::new(OnceLock::new()),
            clock,
            resample: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The last verdict as it stands now: one older than three sampling
    /// intervals is `stale` (never idle), with why.
    pub fn report(&self) -> IdleReport {
        let mut report = self.report.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let now = self.clock.now();
        if let Some(started) = self.started.get() {
            let timeout = started.settings.borrow().idle.timeout;
            // Before the first sample the timeout in force is known all the same.
            if report.sampled_at.is_none() {
                report.timeout_seconds = timeout.as_secs();
            }
            own::show_holds_now(&mut report, &own::holds_sample(started, now), timeout, now);
        }
        if let Some(at) = report.sampled_at {
            let age = now.duration_since(at).unwrap_or_default();
            report.verdict_age_seconds = Some(age.as_secs_f64().round());
            if crate::core::shared::verdict_is_stale(at, report.interval, now) {
                report.reasons.insert(
                    0,
                    format!(
                        "verdict stale since {}: no sample for {}s (sampling stalled?); not idle",
                        rfc3339(at),
                        age.as_secs()
                    ),
                );
                report.verdict = "stale".into();
            }
        }
        report
    }
}

impl Capability for Idle {
    fn id(&self) -> ComponentId {
        ComponentId::Idle
    }

    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, TaskResult> {
        Box::pin(run(ctx, self.clone()))
    }

    fn routes(&self) -> Vec<Route> {
        vec![
            Route::get_with("/v1/idle", Access::Read, self.clone(), routes::idle_report),
            Route::get_with("/v1/holds", Access::Read, self.clone(), routes::list_holds),
            // Any user holds the VM for themselves; the handler checks ownership.
            Route::post_with("/v1/holds", Access::SelfService, self.clone(), routes::add_hold),
            Route::delete_with("/v1/holds/{id}", Access::SelfService, self.clone(), routes::release_hold),
        ]
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(metrics::IdleMetrics(self.clone())));
    }

    fn config_section(&self) -> &'static str {
        "idle"
    }

    fn private_config_keys(&self) -> &'static [&'static str] {
        &["jupyter_token_file", "jupyterhub_token_file"]
    }
}

/// Sources start a reason with this for what only an admin can mend.
pub const CONFIG_ERROR: &str = "config error: ";

fn sources(ctx: &TaskContext, idle: &Idle, settings: &Settings) -> Vec<sampler::Slot> {
    let config = &settings.idle;
    let judged_ports = jupyter::JudgedPorts::default();
    let sources: Vec<Box<dyn Source>> = vec![
        Box::new(sessions::Sessions::new(ctx.paths.clone(), cpu::cgroup2_root(), config.timeout)),
        Box::new(connections::Connections::new(
            config.watch_ports.clone(),
            config.connection_bytes_per_minute,
            UserUids::of(&settings.links),
            judged_ports.clone(),
            ctx.accounts.clone(),
        )),
        Box::new(jupyter::Jupyter::new(
            config.jupyter_urls.clone(),
            config.jupyter_token_file.as_ref().map(|f| ctx.paths.resolve(f)),
            config.jupyterhub_url.clone(),
            config.jupyterhub_token_file.as_ref().map(|f| ctx.paths.resolve(f)),
            ctx.accounts.clone(),
            ctx.paths.clone(),
            UserUids::of(&settings.links),
            judged_ports,
        )),
        Box::new(cpu::Cpu::new(
            UserUids::of(&settings.links),
            config.cpu_services.clone(),
            config.cpu_percent,
            config.cpu_window,
            ctx.accounts.clone(),
        )),
        Box::new(gpu::Gpu::new(ctx.accounts.clone(), config.gpu_memory_grace)),
        Box::new(writes::Writes::new(
            config.writes,
            write_roots(ctx, settings),
            UserUids::of(&settings.links),
            writes::Bounds { gap: config.timeout, max: config.writes_max },
            ctx.accounts.clone(),
        )),
        Box::new(own::ScriptsSource(ctx.shared.clone())),
        Box::new(own::HoldsSource(idle.clone())),
    ];
    sources.into_iter().map(sampler::Slot::new).collect()
}

/// Where users' writes count: the share (its mount point, and a local
/// share's directory) and the homes of users in the user range.
fn write_roots(ctx: &TaskContext, settings: &Settings) -> fanotify::Roots {
    let (paths, accounts) = (ctx.paths.clone(), ctx.accounts.clone());
    let users = UserUids::of(&settings.links);
    let mut share = Vec::new();
    if let Some(config) = &settings.share {
        share.push(paths.resolve(&config.mount_point));
        if let crate::config::ShareSource::Local { path } = &config.source {
            share.push(paths.resolve(path));
        }
    }
    Arc::new(move || {
        let homes = accounts.snapshot();
        let homes = homes.users.iter().filter(|a| users.contains(&a.uid) && a.home.parent().is_some());
        share.iter().cloned().chain(homes.map(|a| paths.resolve(&a.home))).collect()
    })
}

/// When the machine booted, on the monotonic clock (from /proc/uptime).
fn booted_at(now: std::time::Instant) -> std::time::Instant {
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|s| s.parse::<f64>().ok()))
        .unwrap_or(0.0);
    now.checked_sub(Duration::from_secs_f64(uptime.max(0.0))).unwrap_or(now)
}

async fn run(ctx: TaskContext, idle: Idle) -> TaskResult {
    let holds_file = ctx.paths.state_dir().join("holds.json");
    let now = ctx.clock.now();
    let holds =
        crate::core::task::blocking("loading the holds", routes::HOLD_DEADLINE, move || Holds::load(holds_file, now))
            .await?;
    let _ = idle.started.set(Started { holds, accounts: ctx.accounts.clone(), settings: ctx.settings.clone() });
    let mut settings_rx = ctx.settings.clone();
    let mut settings = settings_rx.borrow_and_update().clone();
    let mut sources = sources(&ctx, &idle, &settings);
    let start = ctx.clock.monotonic();
    let booted = booted_at(start);
    let mut machine = VerdictMachine::new(start, booted + settings.idle.boot_grace, settings.idle.timeout);
    let mut ticker = tokio::time::interval(settings.idle.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Kept for the task's life; without it a login waits for the next tick.
    let login_watch = login_watch::start(&ctx.paths, idle.resample.clone());
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            changed = settings_rx.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let next = settings_rx.borrow_and_update().clone();
                if next.idle != settings.idle
                    || next.links.min_uid != settings.links.min_uid
                    || next.links.max_uid != settings.links.max_uid
                {
                    sources = self::sources(&ctx, &idle, &next);
                    machine.set_grace_until(booted + next.idle.boot_grace);
                    if next.idle.interval != settings.idle.interval {
                        ticker = tokio::time::interval(next.idle.interval);
                        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                }
                settings = next;
                continue;
            }
            _ = ticker.tick() => {}
            _ = idle.resample.notified() => {}
        }
        let wall = ctx.clock.now();
        let mut samples = sampler::sample_all(&sources, wall, sampler::SOURCE_DEADLINE).await;
        if let (Some(note), Some((_, sessions))) =
            (login_watch.trouble(), samples.iter_mut().find(|(n, _)| *n == "sessions"))
        {
            sessions.reasons.push(note);
        }
        let now = ctx.clock.monotonic();
        let named: Vec<(&str, &Sample)> = samples.iter().map(|(n, s)| (*n, s)).collect();
        let limits = verdict::Limits { timeout: settings.idle.timeout, max_unknown: settings.idle.max_unknown };
        let verdict = machine.step(now, wall, limits, &named);
        publish(&ctx, &idle, &settings, &verdict, &samples, wall);
    }
}

fn publish(
    ctx: &TaskContext,
    idle: &Idle,
    settings: &Settings,
    verdict: &verdict::Verdict,
    samples: &[(&'static str, Sample)],
    wall: SystemTime,
) {
    let mut figures = BTreeMap::new();
    let mut session_users = BTreeMap::new();
    for (_, sample) in samples {
        figures.extend(sample.figures.iter().map(|(k, v)| (k.clone(), *v)));
        session_users.extend(sample.users.iter().map(|(k, v)| (k.clone(), *v)));
    }
    ctx.shared.publish_idle(IdleNews {
        known: true,
        idle: verdict.idle,
        idle_since: Some(verdict.idle_since),
        idle_at: Some(verdict.idle_at),
        reasons: verdict.reasons.clone(),
        figures,
        sampled_at: Some(wall),
        interval: settings.idle.interval,
        in_use: verdict.in_use,
        in_grace: verdict.in_grace,
        unknown: verdict.unknown,
        session_users,
    });
    for name in &verdict.gave_up {
        tracing::warn!(
            component = "idle",
            "{name}: unknown for longer than idle.max_unknown ({}); it no longer keeps the VM awake",
            crate::config::duration::format(settings.idle.max_unknown)
        );
    }
    let action = match settings.idle.action {
        IdleAction::Report => "report",
        IdleAction::DeleteSelf => "delete-self",
    };
    if verdict.turned_idle {
        // Shadow mode: say what would have happened, do nothing else.
        tracing::info!(
            "idle: nothing active since {} (timeout {}); would have scaled in at {}",
            rfc3339(verdict.idle_since),
            crate::config::duration::format(settings.idle.timeout),
            rfc3339(wall)
        );
    }
    let report = {
        let mut report = idle.report.lock().unwrap_or_else(|p| p.into_inner());
        report.verdict = if verdict.idle { "idle" } else { "active" }.to_string();
        report.idle_since = Some(rfc3339(verdict.idle_since));
        report.idle_at = Some(rfc3339(verdict.idle_at));
        report.timeout_seconds = settings.idle.timeout.as_secs();
        report.action = action.to_string();
        if verdict.turned_idle {
            report.would_have_scaled_in_at = Some(rfc3339(wall));
        }
        report.last_sample = Some(rfc3339(wall));
        report.sampled_at = Some(wall);
        report.interval = settings.idle.interval;
        report.stale_after_seconds = (settings.idle.interval * STALE_AFTER_INTERVALS).as_secs_f64();
        report.reasons = verdict.reasons.clone();
        report.signals = samples.iter().map(|(name, sample)| SignalReport::of(name, sample, wall)).collect();
        report.last_activity_by =
            report::last_activity_by(report.last_activity_by.as_ref(), verdict.idle_since, samples, wall);
        report.clone()
    };
    let detail = if verdict.idle {
        let mut detail = format!("idle since {}", rfc3339(verdict.idle_since));
        if let Some(at) = &report.would_have_scaled_in_at {
            detail.push_str(&format!("; would have scaled in at {at} (action = report)"));
        }
        detail
    } else {
        // Status is for everyone: whose hold and why stay with `pool-agent idle`'s rules.
        let first = verdict.reasons.first().cloned().unwrap_or_default();
        let first = if first.starts_with("holds: hold ") { "holds: a user's hold".to_string() } else { first };
        format!("not idle yet: {first}")
    };
    // What an admin must mend: lost or unreadable holds, a Jupyter token refused.
    let problems: Vec<String> = samples
        .iter()
        .flat_map(|(name, sample)| {
            let holds_lost = *name == "holds" && sample.state == SignalState::Unknown;
            sample
                .reasons
                .iter()
                .filter(move |r| holds_lost || r.starts_with(CONFIG_ERROR))
                .map(move |r| format!("{name}: {r}"))
        })
        .collect();
    if problems.is_empty() {
        ctx.set(ComponentState::Ready, detail);
    } else {
        ctx.set_error(ComponentState::Degraded, detail, problems.join("; "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::fake::FakeClock;

    #[test]
    fn a_verdict_older_than_three_intervals_is_reported_stale_never_idle() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = FakeClock::at(at);
        let idle = Idle::new(clock.clone());
        {
            let mut report = idle.report.lock().unwrap();
            report.verdict = "idle".into();
            report.sampled_at = Some(at);
            report.interval = Duration::from_secs(10);
        }
        clock.advance(Duration::from_secs(30));
        let fresh = idle.report();
        assert_eq!((fresh.verdict.as_str(), fresh.verdict_age_seconds), ("idle", Some(30.0)));
        clock.advance(Duration::from_secs(1));
        let stale = idle.report();
        assert_eq!(stale.verdict, "stale");
        assert!(
            stale.reasons[0].starts_with("verdict stale since 2027-01-15T08:00:00Z: no sample for 31s"),
            "{stale:?}"
        );
    }
}
