//! `cargo bench -p pool-agent`: the daemon's footprint and the local API's
//! round trip, each next to a baseline measured in the same run so the
//! figures travel between machines as ratios.
//!
//! Rows:
//! - daemon RSS after start, against `sleep` (the smallest process there is);
//! - `GET /v1/status` over the socket, in-process client, against a bare
//!   unix-socket server that answers a fixed HTTP reply (the transport floor);
//! - `pool-agent status --json` end to end, against `pool-agent --version`
//!   (process start-up, no request).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

#[path = "common/mod.rs"]
mod common;
use common::*;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One HTTP/1.1 request on a fresh connection; returns the time to the full answer.
fn round_trip(socket: &Path, request: &[u8]) -> Duration {
    let started = Instant::now();
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::with_capacity(4096);
    stream.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    started.elapsed()
}

/// The floor: a server that reads a request and writes a fixed answer.
fn spawn_fixed_server(socket: &Path) {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let body = br#"{"ok":true}"#;
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 1024];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            stream.write_all(reply.as_bytes()).unwrap();
            stream.write_all(body).unwrap();
        }
    });
}

fn time_command(runs: usize, mut command: impl FnMut() -> Command) -> Duration {
    let samples = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let status = command().stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
            assert!(status.success());
            started.elapsed()
        })
        .collect();
    median(samples)
}

fn main() {
    let quick = quick();
    let (http_runs, cli_runs) = if quick { (20, 5) } else { (2000, 200) };

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    pool_agent::daemon::demo::prepare(&root).unwrap();
    let socket = root.join("run/pool-agent/agent.sock");
    let daemon = start_daemon(&root);
    std::thread::sleep(Duration::from_millis(500));
    let daemon_rss = rss_kib(daemon.id());
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let sleep_rss = rss_kib(sleeper.id());
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    let request = b"GET /v1/status HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";
    let floor_socket = dir.path().join("floor.sock");
    spawn_fixed_server(&floor_socket);
    // Warm both up so the first connection's page faults are not measured.
    for _ in 0..20 {
        round_trip(&socket, request);
        round_trip(&floor_socket, request);
    }
    let api = median((0..http_runs).map(|_| round_trip(&socket, request)).collect());
    let floor = median((0..http_runs).map(|_| round_trip(&floor_socket, request)).collect());

    let cli_status = time_command(cli_runs, || {
        let mut c = Command::new(CLI);
        c.arg("--socket").arg(&socket).args(["status", "--json"]);
        c
    });
    let cli_version = time_command(cli_runs, || {
        let mut c = Command::new(CLI);
        c.arg("--version");
        c
    });
    let rss_after = rss_kib(daemon.id());
    // A clean stop, so the demo's bind mount (as root) goes with it.
    stop_daemon(daemon);

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("| measure | pool-agent | baseline | ratio |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| RSS after start (KiB) | {daemon_rss} | {sleep_rss} (`sleep`) | {:.1}x |",
        daemon_rss as f64 / sleep_rss as f64
    );
    println!(
        "| RSS after {} API requests (KiB) | {rss_after} | {daemon_rss} (after start) | {:.2}x |",
        http_runs + cli_runs + 20,
        rss_after as f64 / daemon_rss as f64
    );
    println!(
        "| `GET /v1/status` round trip, median of {http_runs} (us) | {:.0} | {:.0} (fixed-reply socket server) | {:.1}x |",
        us(api),
        us(floor),
        api.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "| `pool-agent status --json`, median of {cli_runs} (us) | {:.0} | {:.0} (`pool-agent --version`) | {:.2}x |",
        us(cli_status),
        us(cli_version),
        cli_status.as_secs_f64() / cli_version.as_secs_f64()
    );
}
