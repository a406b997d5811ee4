//! Logged-in sessions, from systemd-logind over the D-Bus system bus (its
//! session records in `/run/systemd/sessions/`, what sd-login(3) reads, when
//! the bus does not answer and under `--root`), and from utmp for terminals
//! logind does not know or where it does not run. A session with a terminal
//! is active while the terminal had input recently (its access time, as `w`
//! shows it); a graphical one (xrdp) while logind's idle hint says so; one
//! without either (VS Code Remote-SSH, scp, sftp) while the processes of its
//! scope work (CPU of the session's cgroup) — its connection's traffic counts
//! in the connections signal. A session logind calls `closing` whose terminal
//! no longer exists (tmux or nohup kept its scope after ssh disconnected) is
//! judged like one without a terminal: by its work, not as unreadable.

use super::logind::{parse_logind, LogindBus, LogindSession};
use super::signal::{Sample, SignalState, Source};
use super::utmp::{parse_utmp, Session};
use crate::core::paths::SystemPaths;
use futures_util::future::BoxFuture;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Input this recent makes the session active now (older input still counts
/// from when it happened); shorter when `idle.timeout` is.
const RECENT_INPUT: Duration = Duration::from_secs(120);

/// What a terminal says of its session.
enum Terminal {
    Recent(String),
    Quiet(String),
    /// The terminal cannot be looked at: the session counts as unknown.
    Unreadable(String),
}

impl Terminal {
    /// Adds its reason; the (active, unknown) flags with it counted.
    fn tally(self, active: bool, unknown: bool, reasons: &mut Vec<String>) -> (bool, bool) {
        let (flags, reason) = match self {
            Terminal::Recent(reason) => ((true, unknown), reason),
            Terminal::Quiet(reason) => ((active, unknown), reason),
            Terminal::Unreadable(reason) => ((active, true), reason),
        };
        reasons.push(reason);
        (flags.0 || active, flags.1)
    }
}

/// A signal's state from what its parts said: any active wins, then any unknown.
fn state_of(active: bool, unknown: bool) -> SignalState {
    if active {
        SignalState::Active
    } else if unknown {
        SignalState::Unknown
    } else {
        SignalState::Idle
    }
}

/// A session without a terminal works while its scope uses this much CPU (percent of a core).
const WORKING_PERCENT: f64 = 1.0;
/// Session types whose input logind's idle hint follows.
const GRAPHICAL: [&str; 3] = ["x11", "wayland", "mir"];

pub struct Sessions {
    paths: Arc<SystemPaths>,
    cgroup_root: Option<PathBuf>,
    /// Per session: CPU used by its scope (µs) at the last sample, and when.
    scope_cpu: std::collections::HashMap<String, (u64, std::time::Instant)>,
    /// logind over D-Bus on a real system; under `--root` its records are read.
    bus: Option<LogindBus>,
    /// How sessions were read last time: logged when it changes.
    read_from: Option<String>,
    /// Input this recent is activity now: the shorter of 2 minutes and `idle.timeout`.
    recent_input: Duration,
}

impl Sessions {
    pub fn new(paths: Arc<SystemPaths>, cgroup_root: Option<PathBuf>, timeout: Duration) -> Self {
        let bus = (!paths.is_sandbox()).then(LogindBus::default);
        Self {
            paths,
            cgroup_root,
            scope_cpu: Default::default(),
            bus,
            read_from: None,
            recent_input: RECENT_INPUT.min(timeout),
        }
    }

    fn reading_from(&mut self, way: &str, why: Option<String>) {
        if self.read_from.as_deref() == Some(way) {
            return;
        }
        match why {
            Some(why) => tracing::warn!(component = "idle", "sessions: logind over D-Bus: {why}; reading {way}"),
            None => tracing::info!(component = "idle", "sessions: reading {way}"),
        }
        self.read_from = Some(way.to_string());
    }

    /// logind's sessions: over D-Bus, else from its session records; None
    /// where logind does not run.
    async fn logind_sessions(&mut self) -> Option<Vec<LogindSession>> {
        if let Some(bus) = &mut self.bus {
            match bus.sessions().await {
                Ok(sessions) => {
                    self.reading_from("logind over D-Bus", None);
                    return Some(sessions);
                }
                Err(err) => {
                    let records = self.session_records();
                    let way = if records.is_some() { "logind's session records" } else { "utmp" };
                    self.reading_from(way, Some(err));
                    return records;
                }
            }
        }
        self.session_records()
    }

    fn session_records(&self) -> Option<Vec<LogindSession>> {
        let dir = self.paths.resolve("/run/systemd/sessions");
        let entries = std::fs::read_dir(&dir).ok()?;
        Some(
            entries
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().contains('.'))
                .filter_map(|e| {
                    let text = std::fs::read_to_string(e.path()).ok()?;
                    Some(parse_logind(&e.file_name().to_string_lossy(), &text))
                })
                .collect(),
        )
    }

    fn tty_input(&self, line: &str) -> std::io::Result<SystemTime> {
        let tty = self.paths.resolve(format!("/dev/{line}"));
        std::fs::metadata(tty).map(|m| {
            UNIX_EPOCH
                + Duration::from_secs(m.atime().max(0) as u64)
                + Duration::from_nanos(m.atime_nsec().max(0) as u64)
        })
    }

    /// logind still lists the session as closing, and its terminal no longer
    /// exists: not an unreadable terminal, a session without one. Any other
    /// failure to look at a terminal stays unknown.
    fn terminal_gone(&self, session: &LogindSession) -> bool {
        session.state == "closing"
            && !session.tty.is_empty()
            && matches!(self.tty_input(&session.tty), Err(err) if err.kind() == std::io::ErrorKind::NotFound)
    }

    /// A session on a terminal: its reason and how it stands; its last
    /// input goes into `latest`.
    fn terminal(
        &self,
        what: &str,
        user: &str,
        tty: &str,
        from: &str,
        now: SystemTime,
        latest: &mut Option<SystemTime>,
    ) -> Terminal {
        let at = match self.tty_input(tty) {
            Ok(at) => at,
            Err(err) => return Terminal::Unreadable(format!("{what} {user} {tty}{from}, terminal unreadable: {err}")),
        };
        *latest = Some(latest.map_or(at, |l| l.max(at)));
        let ago = now.duration_since(at).unwrap_or_default();
        if ago < self.recent_input {
            Terminal::Recent(format!("{what} {user} {tty}{from}, input {}s ago", ago.as_secs()))
        } else {
            Terminal::Quiet(format!("{what} {user} {tty}{from}, no input for {}m", ago.as_secs() / 60))
        }
    }

    /// logind's user sessions judged (greeters, lock screens, services'
    /// background sessions left out), and the terminals they hold.
    fn judge_logind(
        &mut self,
        sessions: Vec<LogindSession>,
        now: SystemTime,
    ) -> (Sample, std::collections::HashSet<String>) {
        let mut sessions: Vec<LogindSession> =
            sessions.into_iter().filter(|s| s.class.is_empty() || s.class.starts_with("user")).collect();
        sessions.sort_by(|a, b| a.id.cmp(&b.id));
        let mut latest: Option<SystemTime> = None;
        let mut reasons = Vec::new();
        let mut active = false;
        let mut unknown = false;
        let mut seen = std::collections::HashMap::new();
        for session in &sessions {
            let from =
                if session.remote_host.is_empty() { String::new() } else { format!(" from {}", session.remote_host) };
            let what = if session.service.is_empty() { "session".to_string() } else { session.service.clone() };
            // A closing session whose terminal is gone (tmux kept its scope
            // after ssh disconnected) has no input to read: its work tells.
            let gone = self.terminal_gone(session);
            if !session.tty.is_empty() && !gone {
                let said = self.terminal(&what, &session.user, &session.tty, &from, now, &mut latest);
                (active, unknown) = said.tally(active, unknown, &mut reasons);
                continue;
            }
            let label = if gone { format!("{} gone", session.tty) } else { "no terminal".to_string() };
            // A desktop (xrdp): logind's idle hint follows its input, once the
            // desktop has ever set it (IdleSinceHint is its last change); one
            // that never did is judged by its scope's CPU like a session
            // without a terminal, not taken as in use for ever.
            let hint_ever_set = session.idle_since.is_some();
            if let (Some(idle), true, true) =
                (session.idle_hint, hint_ever_set, GRAPHICAL.contains(&session.kind.as_str()))
            {
                let kind = &session.kind;
                if idle {
                    let since = session.idle_since;
                    if let Some(since) = since {
                        latest = Some(latest.map_or(since, |l| l.max(since)));
                    }
                    let ago = since.and_then(|s| now.duration_since(s).ok()).unwrap_or_default();
                    reasons.push(format!("{what} {} ({kind}){from}, idle for {}m", session.user, ago.as_secs() / 60));
                } else {
                    active = true;
                    reasons.push(format!("{what} {} ({kind}){from}, in use", session.user));
                }
                continue;
            }
            // No terminal: working while the session's processes use CPU.
            let used = self.cgroup_root.as_ref().and_then(|root| {
                let stat = root
                    .join("user.slice")
                    .join(format!("user-{}.slice", session.uid))
                    .join(&session.scope)
                    .join("cpu.stat");
                let text = std::fs::read_to_string(stat).ok()?;
                text.lines().find_map(|l| l.strip_prefix("usage_usec "))?.trim().parse::<u64>().ok()
            });
            let Some(used) = used else {
                reasons.push(format!("{what} {} ({label}){from}", session.user));
                continue;
            };
            let at = std::time::Instant::now();
            let percent = self.scope_cpu.get(&session.id).map(|(before, then)| {
                let span = at.duration_since(*then).as_micros().max(1) as f64;
                used.saturating_sub(*before) as f64 / span * 100.0
            });
            seen.insert(session.id.clone(), (used, at));
            match percent {
                Some(percent) if percent >= WORKING_PERCENT => {
                    active = true;
                    reasons
                        .push(format!("{what} {} ({label}){from}, working at {percent:.0}% of a core", session.user));
                }
                _ => reasons.push(format!("{what} {} ({label}){from}, quiet", session.user)),
            }
        }
        self.scope_cpu = seen;
        let sample = if sessions.is_empty() {
            Sample::idle("no sessions (logind)")
        } else {
            Sample {
                state: state_of(active, unknown),
                last_activity: latest,
                reasons,
                figures: Default::default(),
                active_until: None,
                users: count_users(sessions.iter().map(|s| s.user.as_str())),
            }
        };
        let ttys = sessions.iter().filter(|s| !s.tty.is_empty()).map(|s| s.tty.clone()).collect();
        (sample.with_figure("sessions", sessions.len() as f64), ttys)
    }

    fn utmp(&self) -> PathBuf {
        self.paths.resolve("/run/utmp")
    }

    /// logind's sessions, and utmp's for terminals logind does not know
    /// (a login without pam_systemd); utmp alone where logind does not run.
    async fn look(&mut self, now: SystemTime) -> Sample {
        let logind = self.logind_sessions().await.map(|sessions| self.judge_logind(sessions, now));
        let mut sample = match logind {
            Some((logind, ttys)) => {
                let utmp = self.utmp_sessions(now, &ttys);
                if utmp.figures.get("sessions").copied().unwrap_or(0.0) == 0.0 || utmp.state == SignalState::Unknown {
                    logind
                } else {
                    merge(logind, utmp)
                }
            }
            None => self.utmp_sessions(now, &Default::default()),
        };
        // Said last: the sessions above are still right, but read another way.
        if let Some(why) = self.bus.as_ref().and_then(LogindBus::failure) {
            let way = self.read_from.as_deref().unwrap_or("utmp");
            sample.reasons.push(format!("logind over D-Bus: {why}; read {way}"));
        }
        sample
    }

    fn utmp_sessions(&self, now: SystemTime, known_ttys: &std::collections::HashSet<String>) -> Sample {
        let bytes = match std::fs::read(self.utmp()) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Sample::idle("no utmp: nobody logged in").with_figure("sessions", 0.0)
            }
            Err(err) => return Sample::unknown(format!("cannot read {}: {err}", self.utmp().display())),
        };
        // A record whose process is gone is a session that ended without logout.
        let sessions: Vec<Session> = parse_utmp(&bytes)
            .into_iter()
            .filter(|s| s.pid <= 0 || std::path::Path::new(&format!("/proc/{}", s.pid)).exists())
            .filter(|s| !known_ttys.contains(&s.line))
            .collect();
        if sessions.is_empty() {
            return Sample::idle("no sessions").with_figure("sessions", 0.0);
        }
        let mut latest: Option<SystemTime> = None;
        let mut reasons = Vec::new();
        let (mut active, mut unknown) = (false, false);
        for session in &sessions {
            let kind = if session.host.is_empty() { "local" } else { "ssh" };
            let from = if session.host.is_empty() { String::new() } else { format!(" from {}", session.host) };
            let said = self.terminal(kind, &session.user, &session.line, &from, now, &mut latest);
            (active, unknown) = said.tally(active, unknown, &mut reasons);
        }
        Sample {
            state: state_of(active, unknown),
            last_activity: latest,
            reasons,
            figures: Default::default(),
            active_until: None,
            users: count_users(sessions.iter().map(|s| s.user.as_str())),
        }
        .with_figure("sessions", sessions.len() as f64)
    }
}

/// Sessions per user name (a name logind or utmp could not give is left out).
fn count_users<'a>(names: impl Iterator<Item = &'a str>) -> std::collections::BTreeMap<String, u32> {
    let mut users = std::collections::BTreeMap::new();
    for name in names.filter(|n| !n.is_empty()) {
        *users.entry(name.to_string()).or_insert(0) += 1;
    }
    users
}

/// Two answers of this signal as one: active if either is, the later activity.
fn merge(first: Sample, second: Sample) -> Sample {
    let either = |state| first.state == state || second.state == state;
    let state = if either(SignalState::Active) {
        SignalState::Active
    } else if either(SignalState::Unknown) {
        SignalState::Unknown
    } else {
        SignalState::Idle
    };
    let last_activity = match (first.last_activity, second.last_activity) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let count =
        first.figures.get("sessions").copied().unwrap_or(0.0) + second.figures.get("sessions").copied().unwrap_or(0.0);
    // The reasons that make it active come first (status shows the first).
    let (lead, rest) = if second.state == SignalState::Active && first.state != SignalState::Active {
        (second.reasons, first.reasons)
    } else {
        (first.reasons, second.reasons)
    };
    let mut reasons = lead;
    reasons.extend(rest);
    let mut users = first.users;
    for (name, count) in second.users {
        *users.entry(name).or_insert(0) += count;
    }
    Sample { state, last_activity, reasons, figures: Default::default(), active_until: None, users }
        .with_figure("sessions", count)
}

impl Source for Sessions {
    fn name(&self) -> &'static str {
        "sessions"
    }

    fn sample(&mut self, now: SystemTime) -> BoxFuture<'_, Sample> {
        Box::pin(self.look(now))
    }
}

#[cfg(test)]
#[path = "sessions_tests.rs"]
mod tests;
