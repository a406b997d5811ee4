//! Tests of the sessions signal (kept apart: the source file holds one concern).

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
    std::fs::write(records.join("5"), "UID=1001\nUSER=alice\nTTY=pts/0\nSERVICE=sshd\nCLASS=user\nTYPE=tty\n").unwrap();
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
    let mut source = Sessions::new(Arc::new(SystemPaths::under(tmp.path())), Some(cgroup), Duration::from_secs(1800));
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
    let mut source = Sessions::new(Arc::new(SystemPaths::under(tmp.path())), Some(cgroup), Duration::from_secs(1800));
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
