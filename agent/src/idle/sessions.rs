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
        }
        .with_figure("sessions", sessions.len() as f64)
    }
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
    Sample { state, last_activity, reasons, figures: Default::default(), active_until: None }
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
mod tests {
    use super::*;
    use crate::idle::utmp::utmp_record;

    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // file times are real times
    async fn a_session_is_active_while_its_terminal_had_recent_input() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Arc::new(SystemPaths::under(tmp.path()));
        std::fs::create_dir_all(tmp.path().join("run")).unwrap();
        std::fs::create_dir_all(tmp.path().join("dev/pts")).unwrap();
        let me = std::process::id() as i32;
        let mut utmp = utmp_record("alice", "pts/3", "10.0.0.5", me);
        utmp.extend(utmp_record("bob", "pts/4", "", me));
        std::fs::write(tmp.path().join("run/utmp"), utmp).unwrap();
        let now = SystemTime::now();
        let set_atime = |line: &str, at: SystemTime| {
            let path = tmp.path().join("dev").join(line);
            std::fs::write(&path, "").unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_times(std::fs::FileTimes::new().set_accessed(at)).unwrap();
        };
        set_atime("pts/3", now - Duration::from_secs(10));
        set_atime("pts/4", now - Duration::from_secs(3600));
        let sample = Sessions::new(paths.clone(), None, Duration::from_secs(1800)).look(now).await;
        assert_eq!(sample.state, SignalState::Active);
        assert_eq!(sample.figures["sessions"], 2.0);
        assert!(sample.reasons[0].starts_with("ssh alice pts/3 from 10.0.0.5, input 10s ago"), "{:?}", sample.reasons);
        assert!(sample.reasons[1].contains("bob pts/4, no input for 60m"), "{:?}", sample.reasons);
        // A forgotten terminal: the session is there, but it is idle since its last input.
        set_atime("pts/3", now - Duration::from_secs(1800));
        let sample = Sessions::new(paths.clone(), None, Duration::from_secs(1800)).look(now).await;
        assert_eq!(sample.state, SignalState::Idle);
        assert_eq!(sample.last_activity.map(|t| now.duration_since(t).unwrap().as_secs()), Some(1800));
    }

    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // file times and CPU counters are real
    async fn logind_sessions_with_a_terminal_count_its_input_and_without_one_their_scope_s_cpu() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Arc::new(SystemPaths::under(tmp.path()));
        let sessions = tmp.path().join("run/systemd/sessions");
        std::fs::create_dir_all(&sessions).unwrap();
        std::fs::create_dir_all(tmp.path().join("dev/pts")).unwrap();
        std::fs::write(
            sessions.join("3"),
            "UID=1001\nUSER=alice\nTTY=pts/0\nREMOTE_HOST=10.0.0.5\nSERVICE=sshd\nCLASS=user\nSCOPE=session-3.scope\n",
        )
        .unwrap();
        std::fs::write(
            sessions.join("4"),
            "UID=1002\nUSER=bob\nREMOTE_HOST=10.0.0.6\nSERVICE=sshd\nCLASS=user\nSCOPE=session-4.scope\n",
        )
        .unwrap();
        std::fs::write(sessions.join("4.ref"), "").unwrap();
        let cgroup = tmp.path().join("cgroup");
        let scope = cgroup.join("user.slice/user-1002.slice/session-4.scope");
        std::fs::create_dir_all(&scope).unwrap();
        std::fs::write(scope.join("cpu.stat"), "usage_usec 1000\n").unwrap();
        let now = SystemTime::now();
        let tty = tmp.path().join("dev/pts/0");
        std::fs::write(&tty, "").unwrap();
        let old = now - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&tty)
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_accessed(old))
            .unwrap();
        let mut source = Sessions::new(paths, Some(cgroup), Duration::from_secs(1800));
        let first = source.look(now).await;
        assert_eq!(first.state, SignalState::Idle, "{first:?}");
        assert_eq!(first.figures["sessions"], 2.0);
        assert!(first.reasons[0].starts_with("sshd alice pts/0 from 10.0.0.5, no input for 60m"), "{first:?}");
        // bob's VS Code server works: its scope's CPU moves.
        std::thread::sleep(Duration::from_millis(100));
        std::fs::write(scope.join("cpu.stat"), "usage_usec 51000\n").unwrap();
        let second = source.look(now).await;
        assert_eq!(second.state, SignalState::Active, "{second:?}");
        assert!(second.reasons[1].starts_with("sshd bob (no terminal) from 10.0.0.6, working at"), "{second:?}");
    }

    #[test]
    fn a_desktop_session_follows_logind_s_idle_hint_and_greeters_do_not_count() {
        let tmp = tempfile::tempdir().unwrap();
        let mut source = Sessions::new(Arc::new(SystemPaths::under(tmp.path())), None, Duration::from_secs(1800));
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let desktop = |idle: bool| LogindSession {
            id: "9".into(),
            uid: 1003,
            user: "carol".into(),
            remote_host: "10.0.0.9".into(),
            service: "xrdp-sesman".into(),
            class: "user".into(),
            kind: "x11".into(),
            idle_hint: Some(idle),
            // IdleSinceHint: the hint's last change (it was set, so it is followed).
            idle_since: Some(now - Duration::from_secs(if idle { 600 } else { 3600 })),
            ..Default::default()
        };
        let greeter = LogindSession {
            id: "c1".into(),
            class: "greeter".into(),
            kind: "x11".into(),
            idle_hint: Some(false),
            ..Default::default()
        };
        let (sample, _) = source.judge_logind(vec![desktop(false), greeter.clone()], now);
        assert_eq!(sample.state, SignalState::Active, "{sample:?}");
        assert_eq!(sample.reasons, vec!["xrdp-sesman carol (x11) from 10.0.0.9, in use".to_string()]);
        assert_eq!(sample.figures["sessions"], 1.0, "the greeter is nobody's session");
        let (sample, _) = source.judge_logind(vec![desktop(true), greeter], now);
        assert_eq!(sample.state, SignalState::Idle, "{sample:?}");
        assert_eq!(sample.last_activity, Some(now - Duration::from_secs(600)), "idle since logind's hint");
        assert_eq!(sample.reasons, vec!["xrdp-sesman carol (x11) from 10.0.0.9, idle for 10m".to_string()]);
    }

    /// A tmp root with one logind session record (alice on pts/0, input just now).
    #[allow(clippy::disallowed_methods)] // file times are real times
    fn one_recorded_session() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let records = tmp.path().join("run/systemd/sessions");
        std::fs::create_dir_all(&records).unwrap();
        std::fs::create_dir_all(tmp.path().join("dev/pts")).unwrap();
        std::fs::write(records.join("5"), "UID=1001\nUSER=alice\nTTY=pts/0\nSERVICE=sshd\nCLASS=user\nTYPE=tty\n")
            .unwrap();
        std::fs::write(tmp.path().join("dev/pts/0"), "").unwrap();
        tmp
    }

    #[tokio::test]
    #[allow(clippy::disallowed_methods)]
    async fn a_bus_that_refuses_or_hangs_falls_back_to_logind_s_records() {
        let tmp = one_recorded_session();
        let now = SystemTime::now();
        // No bus at all (dbus not running): refused at once.
        let mut source = Sessions::new(Arc::new(SystemPaths::under(tmp.path())), None, Duration::from_secs(1800));
        source.bus =
            Some(LogindBus::at(&format!("unix:path={}", tmp.path().join("no-bus").display()), Duration::from_secs(5)));
        let started = std::time::Instant::now();
        let sample = source.look(now).await;
        assert_eq!(sample.state, SignalState::Active, "{sample:?}");
        assert!(sample.reasons[0].starts_with("sshd alice pts/0, input"), "{sample:?}");
        assert_eq!(source.read_from.as_deref(), Some("logind's session records"));
        let said = sample.reasons.last().unwrap();
        assert!(
            said.starts_with("logind over D-Bus: system bus: ") && said.ends_with("; read logind's session records"),
            "{said}"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "a refusal is not waited for");
        // A bus that accepts and never answers (a stopped dbus-daemon): given up on, then the records.
        let socket = tmp.path().join("stuck-bus");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        source.bus = Some(LogindBus::at(&format!("unix:path={}", socket.display()), Duration::from_secs(2)));
        source.read_from = None;
        let sample = tokio::time::timeout(Duration::from_secs(5), source.look(now)).await.expect("the sample ends");
        assert_eq!(sample.state, SignalState::Active, "{sample:?}");
        assert_eq!(source.read_from.as_deref(), Some("logind's session records"));
        assert_eq!(
            sample.reasons.last().unwrap(),
            "logind over D-Bus: no answer within 2.0s; read logind's session records"
        );
        // The next samples do not wait for it again.
        let started = std::time::Instant::now();
        let sample = source.look(now).await;
        assert!(started.elapsed() < Duration::from_secs(1), "waited {:?} again", started.elapsed());
        assert_eq!(sample.state, SignalState::Active, "{sample:?}");
    }

    #[test]
    fn a_desktop_that_never_set_its_idle_hint_is_judged_by_its_scope_s_cpu() {
        let tmp = tempfile::tempdir().unwrap();
        let cgroup = tmp.path().join("cgroup");
        let scope = cgroup.join("user.slice/user-1003.slice/session-9.scope");
        std::fs::create_dir_all(&scope).unwrap();
        std::fs::write(scope.join("cpu.stat"), "usage_usec 1000\n").unwrap();
        let mut source =
            Sessions::new(Arc::new(SystemPaths::under(tmp.path())), Some(cgroup), Duration::from_secs(1800));
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        // IdleHint false and IdleSinceHint 0: this desktop never says when it is idle.
        let silent = LogindSession {
            id: "9".into(),
            uid: 1003,
            user: "carol".into(),
            service: "xrdp-sesman".into(),
            class: "user".into(),
            kind: "x11".into(),
            scope: "session-9.scope".into(),
            idle_hint: Some(false),
            idle_since: None,
            ..Default::default()
        };
        let (first, _) = source.judge_logind(vec![silent.clone()], now);
        assert_eq!(first.state, SignalState::Idle, "not 'in use' for ever: {first:?}");
        assert!(first.reasons[0].contains("(no terminal)"), "{first:?}");
        std::fs::write(scope.join("cpu.stat"), "usage_usec 9000000\n").unwrap();
        let (second, _) = source.judge_logind(vec![silent], now);
        assert_eq!(second.state, SignalState::Active, "its processes work: {second:?}");
    }

    #[test]
    fn a_terminal_that_cannot_be_looked_at_is_unknown_not_idle() {
        let tmp = tempfile::tempdir().unwrap();
        let mut source = Sessions::new(Arc::new(SystemPaths::under(tmp.path())), None, Duration::from_secs(1800));
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let session = LogindSession {
            id: "3".into(),
            uid: 1001,
            user: "alice".into(),
            tty: "pts/7".into(),
            service: "sshd".into(),
            class: "user".into(),
            ..Default::default()
        };
        let (sample, _) = source.judge_logind(vec![session], now);
        assert_eq!(sample.state, SignalState::Unknown, "{sample:?}");
        assert!(sample.reasons[0].contains("terminal unreadable"), "{sample:?}");
    }

    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // file times are real times
    async fn terminal_input_counts_as_now_for_the_shorter_of_two_minutes_and_the_timeout() {
        let tmp = one_recorded_session();
        let now = SystemTime::now();
        let tty = tmp.path().join("dev/pts/0");
        let file = std::fs::File::options().write(true).open(&tty).unwrap();
        file.set_times(std::fs::FileTimes::new().set_accessed(now - Duration::from_secs(90))).unwrap();
        let paths = Arc::new(SystemPaths::under(tmp.path()));
        let mut long = Sessions::new(paths.clone(), None, Duration::from_secs(1800));
        assert_eq!(long.look(now).await.state, SignalState::Active, "90 s ago is within 2 minutes");
        let mut short = Sessions::new(paths, None, Duration::from_secs(60));
        let sample = short.look(now).await;
        assert_eq!(sample.state, SignalState::Idle, "with a 1m timeout, 90 s ago is not now: {sample:?}");
        assert_eq!(sample.last_activity.map(|at| now.duration_since(at).unwrap().as_secs()), Some(90));
    }

    #[test]
    fn a_closing_session_whose_terminal_is_gone_is_judged_by_its_work_idle_one_timeout_after_it() {
        use crate::core::clock::{fake::FakeClock, Clock};
        use crate::idle::verdict::{Limits, VerdictMachine};
        let tmp = tempfile::tempdir().unwrap();
        let cgroup = tmp.path().join("cgroup");
        let scope = cgroup.join("user.slice/user-1001.slice/session-5.scope");
        std::fs::create_dir_all(&scope).unwrap();
        std::fs::create_dir_all(tmp.path().join("dev/pts")).unwrap();
        let mut used = 1000u64;
        std::fs::write(scope.join("cpu.stat"), format!("usage_usec {used}\n")).unwrap();
        let mut source =
            Sessions::new(Arc::new(SystemPaths::under(tmp.path())), Some(cgroup), Duration::from_secs(1800));
        // alice ran tmux over ssh and disconnected: logind keeps the session, closing; pts/0 is gone.
        let tmux = LogindSession {
            id: "5".into(),
            uid: 1001,
            user: "alice".into(),
            tty: "pts/0".into(),
            remote_host: "10.0.0.5".into(),
            service: "sshd".into(),
            class: "user".into(),
            scope: "session-5.scope".into(),
            kind: "tty".into(),
            state: "closing".into(),
            ..Default::default()
        };
        // The same missing terminal on a session still logged in stays unknown (safe side).
        let open = LogindSession { state: "active".into(), ..tmux.clone() };
        let clock = FakeClock::at(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let timeout = Duration::from_secs(1800);
        let limits = Limits { timeout, max_unknown: Duration::from_secs(12 * 3600) };
        let (sample, _) = source.judge_logind(vec![open], clock.now());
        assert_eq!(sample.state, SignalState::Unknown, "{sample:?}");
        let mut machine = VerdictMachine::new(clock.monotonic(), clock.monotonic(), timeout);
        let mut step = |source: &mut Sessions, job_running: bool| {
            clock.advance(Duration::from_secs(10));
            if job_running {
                used += 5_000_000;
                std::fs::write(scope.join("cpu.stat"), format!("usage_usec {used}\n")).unwrap();
            }
            let (sample, _) = source.judge_logind(vec![tmux.clone()], clock.now());
            assert_ne!(sample.state, SignalState::Unknown, "a gone terminal is not unreadable: {sample:?}");
            let verdict = machine.step(clock.monotonic(), clock.now(), limits, &[("sessions", &sample)]);
            (sample, verdict.idle)
        };
        // The first look has no CPU to compare with; then a job burns CPU in the tmux for an hour.
        step(&mut source, false);
        for _ in 0..360 {
            let (sample, idle) = step(&mut source, true);
            assert_eq!(sample.state, SignalState::Active, "{sample:?}");
            assert!(sample.reasons[0].starts_with("sshd alice (pts/0 gone) from 10.0.0.5, working at"), "{sample:?}");
            assert!(!idle);
        }
        // The job ends; tmux sits at an idle shell: idle one timeout after the last work, not 12 h.
        let last_work = clock.now();
        loop {
            let (sample, idle) = step(&mut source, false);
            assert_eq!(sample.state, SignalState::Idle, "{sample:?}");
            assert_eq!(sample.reasons, vec!["sshd alice (pts/0 gone) from 10.0.0.5, quiet".to_string()]);
            let quiet = clock.now().duration_since(last_work).unwrap();
            assert_eq!(idle, quiet >= timeout, "after {quiet:?} of quiet");
            if idle {
                break;
            }
        }
    }
}
