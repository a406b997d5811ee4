//! What the benches share: starting the daemon in a sandbox, medians.
#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_pool-agentd");
pub const CLI: &str = env!("CARGO_BIN_EXE_pool-agent");

/// A short run: `cargo test --benches` runs each bench once with `--test`,
/// and `POOL_AGENT_BENCH_QUICK` asks for it by hand.
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--test") || std::env::var_os("POOL_AGENT_BENCH_QUICK").is_some()
}

pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Resident memory of a process (KiB).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `pool-agentd --root ROOT`, quiet, not talking to systemd.
pub fn spawn_daemon(root: &Path) -> Child {
    Command::new(DAEMON)
        .arg("--root")
        .arg(root)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Starts the daemon and waits until its socket answers.
pub fn start_daemon(root: &Path) -> Child {
    let daemon = spawn_daemon(root);
    let socket = root.join("run/pool-agent/agent.sock");
    let deadline = Instant::now() + Duration::from_secs(15);
    while UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon
}

/// A clean stop (SIGTERM), so mounts made in the sandbox go with it.
pub fn stop_daemon(mut daemon: Child) {
    let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = daemon.wait();
}
