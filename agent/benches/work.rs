//! `cargo bench -p pool-agent --bench work`: what a setup-script run and an
//! idle sample cost, each next to a baseline measured in the same run.
//!
//! Rows:
//! - `pool-agent scripts run` of a trivial script, request to recorded
//!   success (queue, environment, process group, stamped log, atomic record),
//!   against starting the same script directly;
//! - the daemon's CPU per second (all its tasks) while idle samples every
//!   second (sessions, sock_diag, cgroups, /proc, holds), against one run of
//!   `ss -tin` and `who`, what hand-made idle scripts run each time they look.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

#[path = "common/mod.rs"]
mod common;
use common::*;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn children_cpu() -> Duration {
    let mut usage = unsafe { std::mem::zeroed::<libc::rusage>() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The pid of the script's last recorded success (each run has its own pid).
fn last_success(root: &Path) -> Option<u64> {
    let record = std::fs::read(root.join("var/lib/pool-agent/scripts/hello.json")).ok()?;
    let record: serde_json::Value = serde_json::from_slice(&record).ok()?;
    (record["outcome"] == "succeeded").then(|| record["pid"].as_u64()).flatten()
}

fn main() {
    let quick = quick();
    let (script_runs, idle_seconds) = if quick { (2, 3) } else { (15, 30) };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    pool_agent::daemon::demo::prepare(&root).unwrap();
    let config = root.join("etc/pool-agent/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let script = root.join("etc/pool-agent/setup.d/10-hello.sh");
    std::fs::write(&script, "#!/bin/sh\ntrue\n").unwrap();
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().unwrap().name;
    let text = text
        .replace("run_as = \"azureuser\"", &format!("run_as = \"{me}\""))
        .replace("interval = \"5s\"", "interval = \"1s\"");
    std::fs::write(&config, text).unwrap();
    // The sandbox's passwd must know who runs the script.
    let passwd = root.join("etc/passwd");
    let mut users = std::fs::read_to_string(&passwd).unwrap();
    let uid = nix::unistd::geteuid().as_raw();
    if !users.lines().any(|l| l.starts_with(&format!("{me}:"))) {
        users.push_str(&format!("{me}:x:{uid}:{uid}::/tmp:/bin/sh\n"));
        std::fs::write(&passwd, users).unwrap();
    }
    let socket = root.join("run/pool-agent/agent.sock");
    let daemon = start_daemon(&root);
    let deadline = Instant::now() + Duration::from_secs(20);
    while last_success(&root).is_none() {
        assert!(Instant::now() < deadline, "the demo script never succeeded");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Idle sampling: the daemon's CPU over a quiet stretch, per sample (1 s interval).
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before = cpu_ticks(daemon.id());
    std::thread::sleep(Duration::from_secs(idle_seconds));
    let per_sample_ms = (cpu_ticks(daemon.id()) - before) as f64 / ticks * 1000.0 / idle_seconds as f64;
    let looked_before = children_cpu();
    for _ in 0..idle_seconds {
        Command::new("sh").args(["-c", "ss -tin >/dev/null; who >/dev/null"]).status().unwrap();
    }
    let look_ms = (children_cpu() - looked_before).as_secs_f64() * 1000.0 / idle_seconds as f64;

    // A script run on request, to its recorded success.
    let mut runs = Vec::new();
    for _ in 0..script_runs {
        let last = last_success(&root);
        let started = Instant::now();
        let out = Command::new(CLI).arg("--socket").arg(&socket).args(["scripts", "run", "hello"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        while last_success(&root).is_none() || last_success(&root) == last {
            assert!(started.elapsed() < Duration::from_secs(30), "run {} never succeeded", runs.len() + 1);
            std::thread::sleep(Duration::from_millis(1));
        }
        runs.push(started.elapsed());
    }
    let direct = median(
        (0..script_runs)
            .map(|_| {
                let started = Instant::now();
                Command::new(&script).status().unwrap();
                started.elapsed()
            })
            .collect(),
    );
    let via_agent = median(runs);
    stop_daemon(daemon);

    println!("| measure | pool-agent | baseline | ratio |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| `scripts run` of a trivial script to its recorded success, median of {script_runs} (ms) | {:.1} | {:.1} (the script started directly) | {:.0}x |",
        via_agent.as_secs_f64() * 1000.0,
        direct.as_secs_f64() * 1000.0,
        via_agent.as_secs_f64() / direct.as_secs_f64()
    );
    println!(
        "| daemon CPU per second, idle sampling every 1 s, over {idle_seconds} s (ms) | {per_sample_ms:.2} | {look_ms:.2} (`ss -tin` and `who` once) | {:.2}x |",
        per_sample_ms / look_ms
    );
}
