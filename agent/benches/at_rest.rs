//! `cargo bench -p pool-agent --bench at_rest`: what the agent costs a VM at
//! rest, side by side with node_exporter (scraped every 15 s, as Prometheus
//! does) in the same window, and what each idle source's sample costs
//! against the tool a person would run for the same answer.
//!
//! Rows:
//! - CPU ticks of `pool-agentd` at rest (default `[idle]` and `[links]`, a
//!   local share) against node_exporter's over the same window; the same with
//!   10,000 users (root only: their homes belong to them);
//! - RSS of `pool-agentd` at the end of each window;
//! - one sample of the cpu source (a /proc pass) against `ps -e -o pid,uid,time,cgroup`,
//!   and of the connections source (sock_diag) against `ss -tin`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

#[path = "common/mod.rs"]
mod common;
use common::*;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
const USERS: u32 = 10_000;

/// utime + stime of a process, in clock ticks.
fn ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn scrape(port: u16) {
    if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
        let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nhost: localhost\r\n\r\n");
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A sandbox with the default `[idle]` and `[links]`: only the share is set.
fn sandbox(root: &Path, users: u32) {
    pool_agent::daemon::demo::prepare(root).unwrap();
    std::fs::write(
        root.join("etc/pool-agent/config.toml"),
        "[share]\nkind = \"local\"\npath = \"/srv/share\"\nmount_point = \"/data/notebooks\"\nunmount_on_stop = true\n",
    )
    .unwrap();
    if users > 0 {
        let mut passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
        for uid in 20_000..20_000 + users {
            let home = root.join(format!("home/u{uid}"));
            std::fs::create_dir_all(&home).unwrap();
            std::os::unix::fs::chown(&home, Some(uid), Some(uid)).unwrap();
            let _ = writeln!(passwd, "u{uid}:x:{uid}:{uid}::/home/u{uid}:/bin/bash");
        }
        std::fs::write(root.join("etc/passwd"), passwd).unwrap();
    }
}

struct Window {
    agent_ticks: u64,
    exporter_ticks: u64,
    agent_rss: u64,
    seconds: u64,
}

/// Settles, then counts both processes' ticks over `window` while node_exporter is scraped every 15 s.
fn at_rest(root: &Path, exporter: &Child, port: u16, settle: Duration, window: Duration) -> Window {
    let daemon = start_daemon(root);
    std::thread::sleep(settle);
    assert!(std::path::Path::new(&format!("/proc/{}/stat", exporter.id())).exists(), "node_exporter is not running");
    let (agent_before, exporter_before) = (ticks(daemon.id()), ticks(exporter.id()));
    let started = Instant::now();
    while started.elapsed() < window {
        scrape(port);
        std::thread::sleep(Duration::from_secs(15).min(window.saturating_sub(started.elapsed())));
    }
    let result = Window {
        agent_ticks: ticks(daemon.id()) - agent_before,
        exporter_ticks: ticks(exporter.id()) - exporter_before,
        agent_rss: rss_kib(daemon.id()),
        seconds: started.elapsed().as_secs(),
    };
    stop_daemon(daemon);
    result
}

fn time_runs(runs: usize, mut work: impl FnMut()) -> Duration {
    let samples = (0..runs)
        .map(|_| {
            let started = Instant::now();
            work();
            started.elapsed()
        })
        .collect();
    median(samples)
}

fn main() {
    let quick = quick();
    if !Path::new(NODE_EXPORTER).exists() {
        println!("SKIP at_rest bench: no {NODE_EXPORTER} (apt-get install prometheus-node-exporter)");
        return;
    }
    let (settle, window) = if quick {
        (Duration::from_secs(2), Duration::from_secs(5))
    } else {
        (Duration::from_secs(10), Duration::from_secs(120))
    };
    let port = free_port();
    let mut exporter = Command::new(NODE_EXPORTER)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    if let Ok(Some(status)) = exporter.try_wait() {
        println!("SKIP at_rest bench: node_exporter exited at start ({status})");
        return;
    }

    println!("| measure | pool-agent | baseline | ratio |");
    println!("| --- | --- | --- | --- |");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("default");
    sandbox(&root, 0);
    let rest = at_rest(&root, &exporter, port, settle, window);
    println!(
        "| CPU at rest, default config, {} s (ticks) | {} | {} (node_exporter, scraped every 15 s) | {:.1}x |",
        rest.seconds,
        rest.agent_ticks,
        rest.exporter_ticks,
        rest.agent_ticks as f64 / rest.exporter_ticks.max(1) as f64
    );
    println!("| RSS at rest, default config (KiB) | {} | | |", rest.agent_rss);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let root = dir.path().join("users");
        sandbox(&root, if quick { 500 } else { USERS });
        let rest = at_rest(&root, &exporter, port, settle + Duration::from_secs(5), window);
        println!(
            "| CPU at rest, {} users, {} s (ticks) | {} | {} (node_exporter, scraped every 15 s) | {:.1}x |",
            if quick { 500 } else { USERS },
            rest.seconds,
            rest.agent_ticks,
            rest.exporter_ticks,
            rest.agent_ticks as f64 / rest.exporter_ticks.max(1) as f64
        );
        println!(
            "| RSS at rest, {} users (KiB) | {} | 16384 (goal) | {:.2}x |",
            if quick { 500 } else { USERS },
            rest.agent_rss,
            rest.agent_rss as f64 / 16384.0
        );
    } else {
        println!("SKIP at_rest bench, 10,000 users: needs root to give homes to their uids");
    }
    let _ = exporter.kill();
    let _ = exporter.wait();

    // One sample of a source, against the command a person would run for the same answer.
    let runs = if quick { 3 } else { 50 };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let accounts = pool_agent::core::accounts::AccountsView::for_paths(&pool_agent::core::paths::SystemPaths::system());
    // The default [links] range.
    let users = pool_agent::core::user_uids::UserUids::new(1000, 60000);
    let mut cpu =
        pool_agent::idle::cpu::Cpu::new(users.clone(), vec![], 10.0, Duration::from_secs(60), accounts.clone());
    let mut connections = pool_agent::idle::connections::Connections::new(
        vec![22, 8000, 8888, 8787, 3389],
        16 * 1024,
        users,
        Default::default(),
        accounts,
    );
    use pool_agent::idle::signal::Source;
    let now = std::time::SystemTime::now();
    let cpu_sample = time_runs(runs, || {
        runtime.block_on(cpu.sample(now));
    });
    let ps = time_runs(runs, || {
        Command::new("ps").args(["-e", "-o", "pid,uid,time,cgroup"]).stdout(Stdio::null()).status().unwrap();
    });
    let connections_sample = time_runs(runs, || {
        runtime.block_on(connections.sample(now));
    });
    let ss = time_runs(runs, || {
        Command::new("ss").args(["-tin"]).stdout(Stdio::null()).status().unwrap();
    });
    let processes = std::fs::read_dir("/proc")
        .unwrap()
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok()))
        .count();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "| cpu source, one sample over {processes} processes, median of {runs} (us) | {:.0} | {:.0} (`ps -e -o pid,uid,time,cgroup`) | {:.2}x |",
        us(cpu_sample),
        us(ps),
        cpu_sample.as_secs_f64() / ps.as_secs_f64()
    );
    println!(
        "| connections source, one sample, median of {runs} (us) | {:.0} | {:.0} (`ss -tin`) | {:.2}x |",
        us(connections_sample),
        us(ss),
        connections_sample.as_secs_f64() / ss.as_secs_f64()
    );
}
