//! A sandbox root with its own passwd/group files and config, and a daemon
//! started in it that is killed when the test ends.

#![allow(dead_code)]
// Black-box tests poll real processes from plain threads; sleeping is the point.
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Says why a test is skipped where the developer sees it: libtest captures
/// `println!` of passing tests, but not a direct write to stderr. The test is
/// also counted: libtest calls it passed, so the run ends with one line
/// naming every test that skipped (printed at the process's exit, after
/// libtest's own summary, however the binary was started).
pub fn skip_note(message: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{message}");
    // libtest runs each test on a thread named after it; else the name the note gives.
    let thread = std::thread::current();
    let name = match thread.name() {
        Some(name) if name != "main" => name.to_string(),
        _ => message.trim_start_matches("SKIP ").split(':').next().unwrap_or(message).trim().to_string(),
    };
    let mut skipped = SKIPPED.lock().unwrap_or_else(|p| p.into_inner());
    if !skipped.contains(&name) {
        skipped.push(name);
    }
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    // SAFETY: atexit only stores the pointer of a plain function that lives for the whole program.
    AT_EXIT.call_once(|| unsafe {
        libc::atexit(say_skipped);
    });
}

static SKIPPED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The run's last line: how many tests skipped, and which.
extern "C" fn say_skipped() {
    use std::io::Write as _;
    let mut skipped = SKIPPED.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if skipped.is_empty() {
        return;
    }
    skipped.sort();
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {} test(s), counted as passed above but not run (see the SKIP lines for why): {}",
        skipped.len(),
        skipped.join(", ")
    );
}

pub const DAEMON: &str = env!("CARGO_BIN_EXE_pool-agentd");
pub const CLI: &str = env!("CARGO_BIN_EXE_pool-agent");

/// uid 1001 is in the admin group, 1002 is not.
pub const ADMIN_UID: u32 = 1001;
pub const USER_UID: u32 = 1002;

pub const LOCAL_SHARE_CONFIG: &str = r#"[instance]
name = "vm-test-0"

[share]
kind = "local"
path = "/srv/share"
mount_point = "/data/notebooks"

[idle]
interval = "10s"
timeout = "30m"
"#;

pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Other uids (setpriv tests) must be able to reach the socket.
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["etc/pool-agent/config.d", "srv/share", "home/alice", "home/bob", "run"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        fs::write(
            root.join("etc/passwd"),
            format!(
                "root:x:0:0:root:/root:/bin/bash\nalice:x:{ADMIN_UID}:{ADMIN_UID}::/home/alice:/bin/bash\nbob:x:{USER_UID}:{USER_UID}::/home/bob:/bin/bash\n"
            ),
        )
        .unwrap();
        fs::write(root.join("etc/group"), "root:x:0:\npool-agent-admin:x:990:alice\nalice:x:1001:\nbob:x:1002:\n")
            .unwrap();
        // Homes belong to their users, as on a VM (only root can arrange that).
        if nix_is_root() {
            for (home, uid) in [("home/alice", ADMIN_UID), ("home/bob", USER_UID)] {
                std::os::unix::fs::chown(root.join(home), Some(uid), Some(uid)).unwrap();
            }
        }
        let sandbox = Self { dir };
        sandbox.write_config(LOCAL_SHARE_CONFIG);
        sandbox
    }

    /// The sandbox's name for whoever runs the tests: `root`, or `me`, added
    /// to its passwd (an agent that is not root runs scripts only as itself).
    pub fn caller_name(&self) -> String {
        if nix_is_root() {
            return "root".to_string();
        }
        let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
        let passwd = self.root().join("etc/passwd");
        let mut users = fs::read_to_string(&passwd).unwrap();
        if !users.contains("\nme:") {
            users.push_str(&format!("me:x:{uid}:{gid}::/tmp:/bin/sh\n"));
            fs::write(&passwd, users).unwrap();
        }
        "me".to_string()
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_file(&self) -> PathBuf {
        self.root().join("etc/pool-agent/config.toml")
    }

    pub fn write_config(&self, text: &str) {
        fs::write(self.config_file(), text).unwrap();
    }

    pub fn socket(&self) -> PathBuf {
        self.root().join("run/pool-agent/agent.sock")
    }

    pub fn daemon_command(&self) -> Command {
        let mut command = Command::new(DAEMON);
        command.arg("--root").arg(self.root());
        command.env_remove("NOTIFY_SOCKET").env_remove("WATCHDOG_USEC").env("POOL_AGENT_LOG", "debug");
        command
    }

    /// Starts the daemon and waits until its socket answers.
    pub fn start(&self) -> Daemon {
        self.start_with(self.daemon_command())
    }

    pub fn start_with(&self, mut command: Command) -> Daemon {
        let log_path = self.root().join("daemon.log");
        let log = fs::File::create(&log_path).unwrap();
        let child = command.stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        let mut daemon = Daemon { child, log_path, socket: self.socket() };
        daemon.wait_until_answering();
        daemon
    }

    /// Runs `pool-agent --socket <sandbox socket> ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(CLI)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .env_remove("POOL_AGENT_SOCKET")
            .output()
            .unwrap()
    }

    /// Runs the CLI as another uid, for real (CI runs as root).
    pub fn cli_as(&self, uid: u32, args: &[&str]) -> Output {
        Command::new("setpriv")
            .args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups", CLI, "--socket"])
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap()
    }

    /// `pool-agent ARGS` that must succeed, its JSON answer parsed.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(out.status.success(), "pool-agent {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(answered(&out), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// `pool-agent status` answered: 0 (all ready) or 1 (something is not), with
/// its report on stdout; 3 would be an unreachable daemon.
pub fn answered(out: &Output) -> bool {
    matches!(out.status.code(), Some(0) | Some(1)) && !out.stdout.is_empty()
}

impl Drop for Sandbox {
    /// Mounts the daemon made under the sandbox go with it (deepest first).
    fn drop(&mut self) {
        let mut mounted = mounts_under(self.root());
        mounted.sort_by_key(|path| std::cmp::Reverse(path.len()));
        for path in mounted {
            let _ = Command::new("umount").arg("-l").arg(&path).status();
        }
    }
}

/// Mount points at or below `dir`, from the kernel's table.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.display().to_string();
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

pub struct Daemon {
    pub child: Child,
    pub log_path: PathBuf,
    pub socket: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn wait_until_answering(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("pool-agentd exited early with {status}:\n{}", self.log());
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("pool-agentd did not open {} in time:\n{}", self.socket.display(), self.log());
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the daemon to exit and returns (exit code, time taken).
    pub fn wait_exit(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("pool-agentd still running after {limit:?}:\n{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it returns Some, for at most `limit`.
pub fn eventually<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        if started.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// True when the test may switch uids; otherwise prints why it is skipped.
pub fn can_switch_uid(test: &str) -> bool {
    if !nix_is_root() {
        skip_note(&format!("SKIP {test}: needs root to switch uid with setpriv (CI runs as root)"));
        return false;
    }
    if Command::new("setpriv").arg("--version").stdout(Stdio::null()).status().is_err() {
        skip_note(&format!("SKIP {test}: setpriv (util-linux) is not installed"));
        return false;
    }
    true
}

pub fn nix_is_root() -> bool {
    let mut status = String::new();
    fs::File::open("/proc/self/status").unwrap().read_to_string(&mut status).unwrap();
    status.lines().find(|l| l.starts_with("Uid:")).is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
