//! The scripts task with the direct runner in a sandbox, as the user the
//! tests run as: order, records across restarts, timeouts, leftovers, logs.
//! Running as another user with its groups is shown by the daemon tests as root.

use super::api::{script_log, LogQuery};
use super::*;
use crate::config;
use crate::core::board::StatusBoard;
use crate::core::http::Caller;
use crate::core::shared::SharedState;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::Extension;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

struct Rig {
    scripts: Scripts,
    board: Arc<StatusBoard>,
    shared: SharedState,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<TaskResult>,
    /// Kept so the task's settings channel stays open.
    _settings: watch::Sender<Arc<crate::config::Settings>>,
}

fn sandbox() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let me = nix::unistd::geteuid().as_raw();
    fs::create_dir_all(dir.path().join("etc/pool-agent/setup.d")).unwrap();
    fs::create_dir_all(dir.path().join("home/tester")).unwrap();
    fs::write(dir.path().join("etc/passwd"), format!("tester:x:{me}:{me}::/home/tester:/bin/sh\n")).unwrap();
    fs::write(dir.path().join("etc/group"), format!("tester:x:{me}:\n")).unwrap();
    for d in ["", "etc", "etc/pool-agent", "etc/pool-agent/setup.d"] {
        fs::set_permissions(dir.path().join(d), fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

fn script(dir: &Path, name: &str, body: &str) {
    let file = dir.join("etc/pool-agent/setup.d").join(name);
    fs::write(&file, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).unwrap();
}

fn start(dir: &Path, extra: &str) -> Rig {
    start_seen(dir, extra, None)
}

/// With the share's modes read through `modes` (a share that fakes them).
fn start_seen(
    dir: &Path,
    extra: &str,
    modes: Option<Arc<dyn crate::core::share_write::ModesSeen + Send + Sync>>,
) -> Rig {
    let text = format!("[instance]\nlocal_user = \"tester\"\nname = \"vm-test\"\nworkspace = \"ws\"\n{extra}");
    let settings = Arc::new(config::load_str(Path::new("c.toml"), &text).unwrap());
    let (ctx, settings_tx) = TaskContext::for_test(ComponentId::Scripts, dir, settings);
    let (board, shared, shutdown) = (ctx.board.clone(), ctx.shared.clone(), ctx.shutdown.clone());
    shared.publish_instance_name("vm-test");
    let mut scripts = Scripts::new(crate::core::clock::system());
    scripts.runner = Some(Arc::new(DirectRunner));
    scripts.share_modes = modes;
    let task = tokio::spawn(run(ctx, scripts.clone()));
    Rig { scripts, board, shared, shutdown, task, _settings: settings_tx }
}

impl Rig {
    async fn until(&self, what: &str, limit: Duration, done: impl Fn(&ScriptsReport) -> bool) -> ScriptsReport {
        let started = Instant::now();
        loop {
            let report = self.scripts.report();
            if done(&report) {
                return report;
            }
            assert!(started.elapsed() < limit, "never {what}: {report:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn settled(&self, limit: Duration) -> ScriptsReport {
        self.until("settled", limit, |r| {
            r.phase == "done"
                && r.scripts.iter().all(|s| !matches!(s.state, ScriptState::Pending | ScriptState::Running))
        })
        .await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn state(report: &ScriptsReport, name: &str) -> ScriptState {
    report.scripts.iter().find(|s| s.name == name).unwrap().state
}

fn row_of(board: &StatusBoard) -> crate::core::component::ComponentStatus {
    board.components().into_iter().find(|c| c.name == "scripts").unwrap()
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for our purpose.
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[tokio::test(flavor = "multi_thread")]
async fn scripts_run_in_name_order_with_a_clean_environment_and_a_stamped_log() {
    let dir = sandbox();
    let out = dir.path().join("out");
    script(dir.path(), "20-second", &format!("echo second >> {}", out.display()));
    script(
        dir.path(),
        "10-first",
        &format!("echo first >> {o}; env | sort > {o}.env; pwd > {o}.pwd; echo to-stderr >&2", o = out.display()),
    );
    std::env::set_var("POOL_AGENT_TEST_SECRET_OF_THE_AGENT", "leak");
    let rig = start(dir.path(), "");
    let report = rig.settled(Duration::from_secs(20)).await;
    assert_eq!(state(&report, "10-first"), ScriptState::Succeeded, "{report:#?}");
    assert_eq!(fs::read_to_string(&out).unwrap(), "first\nsecond\n");
    let env = fs::read_to_string(dir.path().join("out.env")).unwrap();
    for wanted in ["CI_NAME=vm-test", "CI_WORKSPACE=ws", "CI_LOCAL_UBUNTU_USER=tester", "USER=tester", "LOGNAME=tester"]
    {
        assert!(env.lines().any(|l| l == wanted), "{wanted} missing from\n{env}");
    }
    assert!(env.lines().any(|l| l.starts_with("HOME=/home/tester")), "{env}");
    assert!(!env.contains("POOL_AGENT_TEST_SECRET_OF_THE_AGENT"), "the agent's environment leaked:\n{env}");
    assert!(!env.contains("CARGO_"), "{env}");
    assert_eq!(
        fs::read_to_string(dir.path().join("out.pwd")).unwrap().trim(),
        dir.path().join("etc/pool-agent/setup.d").to_str().unwrap()
    );
    let log = fs::read_to_string(dir.path().join("var/log/pool-agent/scripts/10-first.log")).unwrap();
    let stderr_line = log.lines().find(|l| l.ends_with(" to-stderr")).expect(&log);
    assert!(humantime::parse_rfc3339(stderr_line.split(' ').next().unwrap()).is_ok(), "{stderr_line}");
    assert_eq!(row_of(&rig.board).state, ComponentState::Ready);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_past_its_timeout_is_killed_with_its_background_grandchild() {
    let dir = sandbox();
    let pid_file = dir.path().join("grandchild.pid");
    script(dir.path(), "10-slow", &format!("sleep 300 &\necho $! > {}\nsleep 300", pid_file.display()));
    let rig = start(
        dir.path(),
        "[[setup.scripts]]\nname = \"10-slow\"\npath = \"/etc/pool-agent/setup.d/10-slow\"\ntimeout = \"2s\"\n",
    );
    let running = rig
        .until("running", Duration::from_secs(10), |r| {
            r.scripts.first().is_some_and(|s| s.state == ScriptState::Running)
        })
        .await;
    assert!(running.scripts[0].pid.is_some());
    assert_eq!(row_of(&rig.board).state, ComponentState::Starting, "not ready while it runs");
    let report = rig.settled(Duration::from_secs(20)).await;
    assert_eq!(state(&report, "10-slow"), ScriptState::TimedOut, "{report:#?}");
    let grandchild: i32 = fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(!alive(grandchild), "the background sleep {grandchild} outlived the timeout");
    let row = row_of(&rig.board);
    assert_eq!(row.state, ComponentState::Failed, "a timed-out blocking script leaves the VM unhealthy");
    assert!(row.last_error.unwrap_or_default().contains("10-slow: timed out"));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_left_holding_stdout_does_not_hang_the_runner_and_is_stopped() {
    let dir = sandbox();
    let pid_file = dir.path().join("daemon.pid");
    script(dir.path(), "10-daemon", &format!("sleep 300 &\necho $! > {}\necho started\nexit 0", pid_file.display()));
    let rig = start(dir.path(), "");
    let started = Instant::now();
    let report = rig.settled(Duration::from_secs(15)).await;
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    assert_eq!(state(&report, "10-daemon"), ScriptState::Succeeded, "{report:#?}");
    let daemon: i32 = fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(!alive(daemon), "the leftover {daemon} was not stopped");
    let log = fs::read_to_string(dir.path().join("var/log/pool-agent/scripts/10-daemon.log")).unwrap();
    assert!(log.contains(" started\n") && log.contains("processes it left running were stopped"), "{log}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn once_runs_once_per_content_every_boot_once_per_boot_and_failures_say_why() {
    let dir = sandbox();
    let count = dir.path().join("count");
    script(dir.path(), "10-once", &format!("echo x >> {}", count.display()));
    script(dir.path(), "20-fails", "exit 3");
    let each = dir.path().join("each");
    script(dir.path(), "30-each", &format!("echo e >> {}", each.display()));
    let every_boot =
        "[[setup.scripts]]\nname = \"30-each\"\npath = \"/etc/pool-agent/setup.d/30-each\"\nwhen = \"every-boot\"\n";
    let rig = start(dir.path(), every_boot);
    let report = rig.settled(Duration::from_secs(20)).await;
    let failed = report.scripts.iter().find(|s| s.name == "20-fails").unwrap();
    assert_eq!((failed.state, failed.exit_code), (ScriptState::Failed, Some(3)), "{report:#?}");
    assert!(row_of(&rig.board).last_error.unwrap_or_default().contains("20-fails: failed (exit 3)"));
    rig.stop().await;
    // A restart of the agent: nothing runs again in this boot.
    let rig = start(dir.path(), every_boot);
    let report = rig.settled(Duration::from_secs(20)).await;
    assert_eq!(fs::read_to_string(&count).unwrap(), "x\n");
    assert_eq!(fs::read_to_string(&each).unwrap(), "e\n", "every-boot: once in a boot");
    assert_eq!(state(&report, "20-fails"), ScriptState::Failed, "a failure is remembered, not retried, in this boot");
    let once = report.scripts.iter().find(|s| s.name == "10-once").unwrap();
    assert!(once.reason.as_deref().unwrap_or_default().contains("not run again"), "{once:#?}");
    rig.stop().await;
    // A changed script runs again.
    script(dir.path(), "10-once", &format!("echo y >> {}", count.display()));
    let rig = start(dir.path(), "");
    rig.settled(Duration::from_secs(20)).await;
    assert_eq!(fs::read_to_string(&count).unwrap(), "x\ny\n");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_the_agent_lost_is_reported_interrupted_its_leftover_stopped_and_it_runs_again() {
    let dir = sandbox();
    let count = dir.path().join("count");
    script(dir.path(), "10-a", &format!("echo x >> {}", count.display()));
    // What a crash mid-run leaves: a `running` record and the script's process group.
    let mut leftover = std::process::Command::new("setsid").args(["sleep", "300"]).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = leftover.id();
    let records = Records::new(dir.path().join("var/lib/pool-agent/scripts"));
    records
        .store(
            "10-a",
            &RunRecord {
                pid: Some(pid),
                pid_start: record::process_start(pid),
                ..RunRecord::running(
                    "old",
                    &record::Host::this(&crate::core::paths::SystemPaths::under(dir.path())),
                    "2026-11-23T10:00:00Z",
                )
            },
        )
        .unwrap();
    let rig = start(dir.path(), "");
    rig.settled(Duration::from_secs(20)).await;
    assert_eq!(fs::read_to_string(&count).unwrap(), "x\n", "it ran again");
    let status = leftover.wait().unwrap();
    assert!(!status.success(), "the lost run's process was stopped");
    let record = records.load("10-a").unwrap();
    assert_eq!(record.outcome, Outcome::Succeeded);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_reach_logs_instance_on_the_share_once_it_is_mounted() {
    let dir = sandbox();
    script(dir.path(), "10-a", "echo hello");
    let share = dir.path().join("share");
    fs::create_dir_all(&share).unwrap();
    let rig = start(dir.path(), "");
    let report = rig.settled(Duration::from_secs(20)).await;
    assert_eq!(report.scripts[0].shared_log, None, "no share yet");
    let meta = fs::metadata(&share).unwrap();
    rig.shared.publish_share(ShareNews::Mounted { root: share.clone(), identity: (meta.dev(), meta.ino()), smb: None });
    rig.until("log on the share", Duration::from_secs(10), |r| r.scripts[0].shared_log.is_some()).await;
    let copied = fs::read_to_string(share.join("Logs/vm-test/10-a.log")).unwrap();
    assert!(copied.lines().any(|l| l.ends_with(" hello")), "{copied}");
    // Output may hold tokens: the tightest modes the share keeps.
    assert_eq!(fs::metadata(share.join("Logs/vm-test/10-a.log")).unwrap().mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(share.join("Logs/vm-test")).unwrap().mode() & 0o777, 0o700);
    rig.stop().await;
}

/// An SMB mount without cifsacl/modefromsid: every file shows 0664.
struct FakedModes;
impl crate::core::share_write::ModesSeen for FakedModes {
    fn mode(&self, _fd: &std::os::fd::OwnedFd) -> nix::Result<u32> {
        Ok(0o664)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_share_that_fakes_modes_a_root_script_s_log_stays_on_the_vm_and_the_report_says_why() {
    let dir = sandbox();
    script(dir.path(), "10-a", "echo token=abc");
    let share = dir.path().join("share");
    // A readable copy left by an earlier agent goes too.
    fs::create_dir_all(share.join("Logs/vm-test")).unwrap();
    fs::write(share.join("Logs/vm-test/10-a.log"), "t token=old\n").unwrap();
    let rig = start_seen(dir.path(), "", Some(Arc::new(FakedModes)));
    let meta = fs::metadata(&share).unwrap();
    rig.shared.publish_share(ShareNews::Mounted { root: share.clone(), identity: (meta.dev(), meta.ino()), smb: None });
    let report = rig.settled(Duration::from_secs(20)).await;
    assert_eq!(report.scripts[0].state, ScriptState::Succeeded);
    // The local user "tester" is whoever runs the tests: root in CI.
    if nix::unistd::geteuid().is_root() {
        let report = rig.until("the note", Duration::from_secs(10), |r| r.log_to_share_note.is_some()).await;
        let note = report.log_to_share_note.unwrap();
        assert!(note.contains("does not keep file modes") && note.contains("var/log/pool-agent/scripts"), "{note}");
        assert_eq!(report.scripts[0].shared_log, None);
        assert!(!share.join("Logs/vm-test/10-a.log").exists(), "a root script's log is not on the share");
        let left: Vec<_> = fs::read_dir(share.join("Logs/vm-test")).unwrap().flatten().collect();
        assert!(left.is_empty(), "no probe or temporary file left: {left:?}");
    } else {
        rig.until("log on the share", Duration::from_secs(10), |r| r.scripts[0].shared_log.is_some()).await;
        assert!(fs::read_to_string(share.join("Logs/vm-test/10-a.log")).unwrap().contains("token=abc"));
        assert!(rig.scripts.report().log_to_share_note.is_none());
    }
    assert!(fs::read_to_string(dir.path().join("var/log/pool-agent/scripts/10-a.log")).unwrap().contains("token=abc"));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_log_to_share_off_logs_stay_on_the_vm() {
    let dir = sandbox();
    script(dir.path(), "10-a", "echo hello");
    let share = dir.path().join("share");
    fs::create_dir_all(&share).unwrap();
    let rig = start(dir.path(), "[setup]\nlog_to_share = false\n");
    let meta = fs::metadata(&share).unwrap();
    rig.shared.publish_share(ShareNews::Mounted { root: share.clone(), identity: (meta.dev(), meta.ino()), smb: None });
    let report = rig.settled(Duration::from_secs(20)).await;
    assert_eq!(report.scripts[0].state, ScriptState::Succeeded);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!share.join("Logs").exists(), "nothing copied to the share");
    assert!(fs::read_to_string(dir.path().join("var/log/pool-agent/scripts/10-a.log")).unwrap().contains("hello"));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_script_is_listed_with_its_reason_and_fails_the_vm() {
    let dir = sandbox();
    script(dir.path(), "10-root", "true");
    fs::set_permissions(dir.path().join("etc/pool-agent/setup.d/10-root"), fs::Permissions::from_mode(0o775)).unwrap();
    let rig = start(
        dir.path(),
        "[[setup.scripts]]\nname = \"10-root\"\npath = \"/etc/pool-agent/setup.d/10-root\"\nrun_as = \"root\"\n",
    );
    let report = rig.settled(Duration::from_secs(20)).await;
    let row = &report.scripts[0];
    assert_eq!(row.state, ScriptState::Refused);
    assert!(row.reason.as_deref().unwrap().contains("writable by its group or others"), "{row:#?}");
    assert_eq!(row_of(&rig.board).state, ComponentState::Failed);
    rig.stop().await;
}

#[tokio::test]
async fn each_output_line_reaches_the_journal_under_the_script_s_own_identifier() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("journal");
    let journald = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    let journal = Arc::new(Journal::connect(&socket).unwrap());
    let (reader, writer) = nix::unistd::pipe().unwrap();
    let log_path = dir.path().join("conda.log");
    let log = log::LogFile::open(&log_path).ok();
    let pump = tokio::spawn(pump_output(reader, log, "conda".into(), crate::core::clock::system(), Some(journal)));
    nix::unistd::write(&writer, b"Solving environment: done\nerror: no space left\n").unwrap();
    drop(writer);
    pump.await.unwrap();
    let mut entries = Vec::new();
    let mut buffer = vec![0u8; 65536];
    journald.set_nonblocking(true).unwrap();
    while let Ok(n) = journald.recv(&mut buffer) {
        entries.push(String::from_utf8(buffer[..n].to_vec()).unwrap());
    }
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(
        entries[0],
        "MESSAGE=Solving environment: done\nSYSLOG_IDENTIFIER=pool-agent-script-conda\nPRIORITY=6\nPOOL_AGENT_SCRIPT=conda\n"
    );
    assert!(entries[1].starts_with("MESSAGE=error: no space left\n"), "{entries:?}");
    // The log file has them too, each with its time.
    let text = fs::read_to_string(&log_path).unwrap();
    assert!(text.contains(" Solving environment: done\n") && text.contains(" error: no space left\n"), "{text}");
}

#[tokio::test]
async fn a_script_log_is_for_admins_and_the_user_it_ran_as() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("conda.log");
    fs::write(&log_path, "t token=abc\n").unwrap();
    let scripts = Scripts::new(crate::core::clock::system());
    scripts.update(|report| {
        report.scripts.push(ScriptReport {
            name: "conda".into(),
            path: "/opt/setup/conda.sh".into(),
            run_as: "bob".into(),
            run_as_uid: Some(1002),
            when: "once".into(),
            blocking: false,
            state: ScriptState::Succeeded,
            reason: None,
            pid: None,
            unit: None,
            started: None,
            finished: None,
            duration_seconds: None,
            timeout_seconds: 60,
            exit_code: Some(0),
            signal: None,
            log: log_path.display().to_string(),
            shared_log: None,
            content_hash: String::new(),
        })
    });
    let ask = |uid: u32, admin: bool| {
        let caller = Caller { peer: crate::core::http::Peer { uid, gid: uid, pid: None }, admin };
        script_log(
            State(scripts.clone()),
            UrlPath("conda".to_string()),
            Query(LogQuery { offset: None }),
            Some(Extension(caller)),
        )
    };
    assert_eq!(ask(1002, false).await.status(), StatusCode::OK, "bob, whom it ran as");
    assert_eq!(ask(1001, true).await.status(), StatusCode::OK, "an admin");
    assert_eq!(ask(1003, false).await.status(), StatusCode::FORBIDDEN, "carol");
    let anonymous = script_log(State(scripts.clone()), UrlPath("conda".into()), Query(LogQuery { offset: None }), None);
    assert_eq!(anonymous.await.status(), StatusCode::FORBIDDEN, "no credentials");
}
