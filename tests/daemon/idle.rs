//! The idle verdict under `pool-agentd --root`: real TCP connections through
//! the kernel's socket diagnostics, a real process burning CPU in a user
//! slice, real holds from real uids, and a small HTTP server playing
//! JupyterHub and Jupyter.

// Black-box tests poll real processes from plain threads; sleeping is the point.
#![allow(clippy::disallowed_methods)]

use crate::harness::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CAROL_UID: u32 = 1003;

fn config(extra_idle: &str) -> String {
    LOCAL_SHARE_CONFIG.replace(
        "[idle]\ninterval = \"10s\"\ntimeout = \"30m\"\n",
        &format!("[idle]\ninterval = \"1s\"\ntimeout = \"30m\"\ncpu_window = \"2s\"\n{extra_idle}"),
    )
}

fn idle_json(sandbox: &Sandbox) -> serde_json::Value {
    sandbox.cli_json(&["idle", "--json"])
}

fn signal(sandbox: &Sandbox, name: &str) -> serde_json::Value {
    idle_json(sandbox)["signals"].as_array().unwrap().iter().find(|s| s["name"] == name).cloned().unwrap_or_default()
}

fn wait_signal(sandbox: &Sandbox, name: &str, state: &str, limit: Duration) -> serde_json::Value {
    eventually(limit, || Some(signal(sandbox, name)).filter(|s| s["state"] == state))
        .unwrap_or_else(|| panic!("signal {name} never {state}: {:#}", idle_json(sandbox)))
}

#[test]
fn a_connection_counts_while_it_carries_traffic_and_not_while_it_is_merely_open() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sandbox = Sandbox::new();
    sandbox.write_config(&config(&format!("watch_ports = [{port}]\n")));
    let _daemon = sandbox.start();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let sending = Arc::new(AtomicBool::new(true));
    let (flag, mut writer) = (sending.clone(), client.try_clone().unwrap());
    let sender = std::thread::spawn(move || {
        while flag.load(Ordering::Relaxed) {
            let _ = writer.write_all(&[1u8; 8192]);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let reader = std::thread::spawn(move || {
        let mut buffer = [0u8; 65536];
        while let Ok(n) = server.read(&mut buffer) {
            if n == 0 {
                break;
            }
        }
    });
    let active = wait_signal(&sandbox, "connections", "active", Duration::from_secs(10));
    let reason = active["reasons"][0].as_str().unwrap();
    assert!(reason.contains(&format!("-> :{port}")) && reason.contains("KiB in the last minute"), "{active:#}");
    // The same connection, open but silent: not activity once its minute has passed.
    sending.store(false, Ordering::Relaxed);
    sender.join().unwrap();
    let quiet = wait_signal(&sandbox, "connections", "idle", Duration::from_secs(75));
    assert!(quiet["reasons"][0].as_str().unwrap().contains("1 connection(s) open, none moving"), "{quiet:#}");
    drop(client.shutdown(std::net::Shutdown::Both));
    reader.join().unwrap();
}

/// A cgroup made by the test, as systemd makes one for a unit.
struct Unit {
    dir: PathBuf,
    burner: std::process::Child,
}

impl Drop for Unit {
    fn drop(&mut self) {
        let _ = self.burner.kill();
        let _ = self.burner.wait();
        std::thread::sleep(Duration::from_millis(100));
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn a_user_s_process_burning_cpu_outside_user_slice_keeps_the_vm_active_and_the_agent_s_own_cpu_does_not() {
    let test = "a_user_s_process_burning_cpu_outside_user_slice_keeps_the_vm_active_and_the_agent_s_own_cpu_does_not";
    if !nix_is_root() {
        skip_note(&format!(
            "SKIP {test}: needs root to make a cgroup and run a process as another uid (CI runs as root)"
        ));
        return;
    }
    let Some(root) = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
    else {
        skip_note(&format!("SKIP {test}: no cgroup v2 hierarchy on this machine"));
        return;
    };
    let sandbox = Sandbox::new();
    sandbox.write_config(&config("cpu_percent = 20\n"));
    let _daemon = sandbox.start();
    // The agent works (API calls) while no user burns CPU: the signal stays idle.
    for _ in 0..20 {
        let _ = sandbox.cli(&["status"]);
    }
    wait_signal(&sandbox, "cpu", "idle", Duration::from_secs(10));
    // carol's job in a system unit's cgroup (a `systemd-run --uid` job, a JupyterHub-spawned server).
    let system = root.join("system.slice");
    let made_system = !system.exists();
    let unit = format!("pool-agent-test-{}.service", std::process::id());
    let dir = system.join(&unit);
    std::fs::create_dir_all(&dir).unwrap();
    let burner = std::os::unix::process::CommandExt::uid(
        std::process::Command::new("sh").args(["-c", "while :; do :; done"]),
        CAROL_UID,
    )
    .spawn()
    .unwrap();
    let job = Unit { dir: dir.clone(), burner };
    std::fs::write(dir.join("cgroup.procs"), job.burner.id().to_string()).unwrap();
    let active = wait_signal(&sandbox, "cpu", "active", Duration::from_secs(15));
    let reason = active["reasons"][0].as_str().unwrap();
    assert!(reason.starts_with(&format!("uid {CAROL_UID} in {unit} at")), "{active:#}");
    assert_eq!(idle_json(&sandbox)["verdict"], "active");
    drop(job);
    wait_signal(&sandbox, "cpu", "idle", Duration::from_secs(15));
    if made_system {
        let _ = std::fs::remove_dir(&system);
    }
}

#[test]
fn a_hold_keeps_the_vm_active_until_released_or_expired_and_only_its_owner_or_an_admin_releases_it() {
    if !can_switch_uid(
        "a_hold_keeps_the_vm_active_until_released_or_expired_and_only_its_owner_or_an_admin_releases_it",
    ) {
        return;
    }
    let sandbox = Sandbox::new();
    let passwd = sandbox.root().join("etc/passwd");
    let mut users = std::fs::read_to_string(&passwd).unwrap();
    users.push_str(&format!("carol:x:{CAROL_UID}:{CAROL_UID}::/home/carol:/bin/bash\n"));
    std::fs::write(&passwd, users).unwrap();
    sandbox.write_config(&config("max_hold = \"4h\"\n"));
    let mut daemon = sandbox.start();
    wait_signal(&sandbox, "holds", "idle", Duration::from_secs(10));
    let too_long = sandbox.cli_as(USER_UID, &["hold", "5h"]);
    assert!(stderr(&too_long).contains("at most 4h"), "{}", stderr(&too_long));
    let out = sandbox.cli_as(USER_UID, &["hold", "2h", "--reason", "training run", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let hold: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = hold["id"].as_str().unwrap().to_string();
    let active = wait_signal(&sandbox, "holds", "active", Duration::from_secs(10));
    assert!(
        active["reasons"][0].as_str().unwrap().contains("by bob")
            && active["reasons"][0].as_str().unwrap().contains("training run")
    );
    // Holds survive a restart of the agent.
    daemon.signal("TERM");
    daemon.wait_exit(Duration::from_secs(10));
    let _daemon = sandbox.start();
    wait_signal(&sandbox, "holds", "active", Duration::from_secs(10));
    let listed = stdout(&sandbox.cli_as(USER_UID, &["hold", "list"]));
    assert!(listed.contains(&id) && listed.contains("bob"), "{listed}");
    let not_yours = sandbox.cli_as(CAROL_UID, &["hold", "release", &id]);
    assert!(
        stderr(&not_yours).contains("[forbidden]") && stderr(&not_yours).contains("belongs to bob"),
        "{}",
        stderr(&not_yours)
    );
    assert!(
        stdout(&sandbox.cli_as(CAROL_UID, &["hold", "list"])).contains("no holds"),
        "carol sees her own holds only"
    );
    // The verdict says the VM is held, but whose hold and why only to its owner and admins.
    let carol_sees = stdout(&sandbox.cli_as(CAROL_UID, &["idle", "--json"]));
    assert!(carol_sees.contains("a hold by another user until"), "{carol_sees}");
    assert!(!carol_sees.contains("training run") && !carol_sees.contains("by bob"), "{carol_sees}");
    let status = stdout(&sandbox.cli_as(CAROL_UID, &["status"]));
    assert!(status.contains("not idle yet: holds: a user's hold"), "status is for everyone too: {status}");
    assert!(!status.contains("training run") && !status.contains("by bob"), "{status}");
    let bob_sees = stdout(&sandbox.cli_as(USER_UID, &["idle", "--json"]));
    assert!(bob_sees.contains("by bob") && bob_sees.contains("training run"), "{bob_sees}");
    let released = sandbox.cli_as(USER_UID, &["hold", "release", &id]);
    assert!(released.status.success(), "{}", stderr(&released));
    wait_signal(&sandbox, "holds", "idle", Duration::from_secs(10));
    // Released, it is still what last moved the count: named, but its words stay bob's.
    let carol_sees = stdout(&sandbox.cli_as(CAROL_UID, &["idle", "--json"]));
    let by: serde_json::Value =
        serde_json::from_str::<serde_json::Value>(&carol_sees).unwrap()["last_activity_by"].clone();
    assert_eq!((&by["signal"], &by["reason"]), (&"holds".into(), &"a hold by another user".into()), "{carol_sees}");
    assert!(!carol_sees.contains("training run") && !carol_sees.contains("by bob"), "{carol_sees}");
    // An admin releases anyone's.
    let out = sandbox.cli_as(USER_UID, &["hold", "1h", "--json"]);
    let id: String = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"].as_str().unwrap().into();
    assert!(sandbox.cli_as(ADMIN_UID, &["hold", "release", &id]).status.success());
    wait_signal(&sandbox, "holds", "idle", Duration::from_secs(10));
    // A hold ends by itself when it expires.
    let out = sandbox.cli_as(USER_UID, &["hold", "3s", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let held = Instant::now();
    wait_signal(&sandbox, "holds", "active", Duration::from_secs(5));
    wait_signal(&sandbox, "holds", "idle", Duration::from_secs(10));
    assert!(held.elapsed() >= Duration::from_secs(2), "idle again only once the hold expired");
}

/// Plays JupyterHub (`/hub/api/users`) and alice's server behind it
/// (`/user/alice/api/kernels`, `/api/terminals`), answering only with the token.
fn fake_jupyter(kernels: Arc<std::sync::Mutex<String>>) -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stopping.load(Ordering::Relaxed) {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let text = String::from_utf8_lossy(&request).to_string();
            let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
            let authorized = text.lines().any(|l| l.eq_ignore_ascii_case("authorization: token hub-secret"));
            let user_token = text.lines().any(|l| l.eq_ignore_ascii_case("authorization: token user-secret"));
            let (status, body) = if path == "/api/kernels" && user_token {
                ("200 OK", kernels.lock().unwrap().clone())
            } else if path == "/api/terminals" && user_token {
                ("200 OK", "[]".to_string())
            } else if !authorized {
                ("403 Forbidden", "{\"message\":\"no token\"}".to_string())
            } else if path == "/hub/api/users" {
                ("200 OK", r#"[{"name":"alice","servers":{"":{"name":"","url":"/user/alice/","ready":true,"last_activity":"2026-01-01T00:00:00Z"}}}]"#.to_string())
            } else if path == "/user/alice/api/kernels" {
                ("200 OK", kernels.lock().unwrap().clone())
            } else if path == "/user/alice/api/terminals" {
                ("200 OK", "[]".to_string())
            } else {
                ("404 Not Found", "{}".to_string())
            };
            let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    (port, stop)
}

#[test]
fn a_busy_kernel_without_a_connection_keeps_the_vm_active_and_idle_kernels_do_not() {
    let kernels = Arc::new(std::sync::Mutex::new(
        r#"[{"id":"k1","name":"python3","last_activity":"2026-01-01T00:00:00.000000Z","execution_state":"busy","connections":0}]"#.to_string(),
    ));
    let (port, stop) = fake_jupyter(kernels.clone());
    let sandbox = Sandbox::new();
    std::fs::write(sandbox.root().join("etc/pool-agent/hub-token"), "hub-secret\n").unwrap();
    sandbox.write_config(&config(&format!(
        "jupyterhub_url = \"http://127.0.0.1:{port}\"\njupyterhub_token_file = \"/etc/pool-agent/hub-token\"\n"
    )));
    let _daemon = sandbox.start();
    let active = wait_signal(&sandbox, "jupyter", "active", Duration::from_secs(10));
    assert_eq!(active["reasons"][0], "kernel busy python3 (alice)", "{active:#}");
    *kernels.lock().unwrap() =
        r#"[{"id":"k1","name":"python3","last_activity":"2026-01-01T00:00:00.000000Z","execution_state":"idle","connections":1}]"#.to_string();
    let quiet = wait_signal(&sandbox, "jupyter", "idle", Duration::from_secs(10));
    assert_eq!(quiet["last_activity"], "2026-01-01T00:00:00Z", "the kernel's own last execution: {quiet:#}");
    // The verdict's last activity is when the kernel was last seen busy, and it says so,
    // though the quiet kernel's own row now shows an older time. (Parallel tests run
    // processes as user uids, which the cpu signal may see: then cpu moved it later.)
    let verdict = idle_json(&sandbox);
    let by = &verdict["last_activity_by"];
    assert_eq!(by["at"], verdict["idle_since"], "{verdict:#}");
    if by["signal"] != "cpu" {
        assert_eq!(
            (&by["signal"], &by["reason"]),
            (&"jupyter".into(), &"kernel busy python3 (alice)".into()),
            "{verdict:#}"
        );
    }
    let human = stdout(&sandbox.cli(&["idle"]));
    let line = format!(
        "last activity: {}, {}: {}",
        by["at"].as_str().unwrap(),
        by["signal"].as_str().unwrap(),
        by["reason"].as_str().unwrap()
    );
    assert!(human.contains(&line) || human.contains(", cpu: "), "{human}");
    assert!(human.starts_with("verdict: not idle yet") || human.starts_with("verdict: stale"), "{human}");
    // A rotated token: the hub may run someone's work, so unknown (counted as
    // active), and a config error an admin sees in status.
    std::fs::write(sandbox.root().join("etc/pool-agent/hub-token"), "wrong\n").unwrap();
    let unknown =
        eventually(Duration::from_secs(10), || Some(signal(&sandbox, "jupyter")).filter(|s| s["state"] == "unknown"))
            .unwrap_or_else(|| panic!("never unknown: {:#}", idle_json(&sandbox)));
    let why = unknown["reasons"][0].as_str().unwrap();
    assert!(why.starts_with("config error: ") && why.contains(&port.to_string()) && why.contains("403"), "{unknown:#}");
    assert!(idle_json(&sandbox)["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r.as_str().unwrap().contains("unknown, counts as active")));
    let human = stdout(&sandbox.cli(&["idle"]));
    assert!(
        (human.starts_with("verdict: not idle yet") || human.starts_with("verdict: stale"))
            && human.contains("jupyter"),
        "{human}"
    );
    let status = sandbox.status_json();
    let row = status["components"].as_array().unwrap().iter().find(|c| c["name"] == "idle").cloned().unwrap();
    assert_eq!(row["state"], "degraded", "{row:#}");
    // The hub stops: nothing listens there any more, so no server, not unknown.
    stop.store(true, Ordering::Relaxed);
    let gone = wait_signal(&sandbox, "jupyter", "idle", Duration::from_secs(10));
    assert!(gone["reasons"].to_string().contains("not running"), "{gone:#}");
}

#[test]
fn a_jupyter_server_is_found_from_its_runtime_file_and_is_no_server_once_its_process_is_gone() {
    let test = "a_jupyter_server_is_found_from_its_runtime_file_and_is_no_server_once_its_process_is_gone";
    if !can_switch_uid(test) {
        return;
    }
    let kernels = Arc::new(std::sync::Mutex::new(
        r#"[{"id":"k1","name":"python3","last_activity":"2026-01-01T00:00:00.000000Z","execution_state":"busy","connections":0}]"#.to_string(),
    ));
    let (port, _stop) = fake_jupyter(kernels);
    let sandbox = Sandbox::new();
    sandbox.write_config(&config(""));
    // bob's JupyterLab: a process of his, and the runtime file it wrote in his home.
    let mut server = std::os::unix::process::CommandExt::uid(std::process::Command::new("sleep").arg("600"), USER_UID)
        .spawn()
        .unwrap();
    let runtime = sandbox.root().join("home/bob/.local/share/jupyter/runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    let file = runtime.join(format!("jpserver-{}.json", server.id()));
    std::fs::write(
        &file,
        format!(
            r#"{{"base_url": "/", "hostname": "localhost", "password": false, "pid": {}, "port": {port}, "root_dir": "/home/bob", "secure": false, "sock": "", "token": "user-secret", "url": "http://localhost:{port}/", "version": "2.14.2"}}"#,
            server.id()
        ),
    )
    .unwrap();
    for dir in [".local", ".local/share", ".local/share/jupyter", ".local/share/jupyter/runtime"] {
        std::os::unix::fs::chown(sandbox.root().join("home/bob").join(dir), Some(USER_UID), Some(USER_UID)).unwrap();
    }
    std::os::unix::fs::chown(&file, Some(USER_UID), Some(USER_UID)).unwrap();
    let _daemon = sandbox.start();
    let active = wait_signal(&sandbox, "jupyter", "active", Duration::from_secs(10));
    assert_eq!(active["reasons"][0], "kernel busy python3 (bob)", "{active:#}");
    let log_and_answers = format!("{active}{}", sandbox.cli_json(&["idle", "--json"]));
    assert!(!log_and_answers.contains("user-secret"), "the token is never shown");
    // The server dies and leaves its file behind: no server (not unknown).
    server.kill().unwrap();
    server.wait().unwrap();
    let gone = wait_signal(&sandbox, "jupyter", "absent", Duration::from_secs(10));
    assert!(gone["reasons"][0].as_str().unwrap().starts_with("no Jupyter server found"), "{gone:#}");
}

#[test]
fn a_source_stuck_in_the_kernel_leaves_the_api_answering_and_the_verdict_fresh_and_never_idle() {
    let sandbox = Sandbox::new();
    // utmp as a FIFO nobody writes: reading it blocks in open(2) for as long as it stays so.
    let utmp = sandbox.root().join("run/utmp");
    std::fs::create_dir_all(utmp.parent().unwrap()).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&utmp).status().unwrap();
    assert!(made.success());
    // A one-minute timeout: without the stuck source the VM would be idle by the end.
    sandbox.write_config(
        &config("")
            .replace("timeout = \"30m\"", "timeout = \"1m\"")
            .replace("[idle]\n", "[idle]\nboot_grace = \"0s\"\n"),
    );
    let _daemon = sandbox.start();
    let stuck = wait_signal(&sandbox, "sessions", "unknown", Duration::from_secs(15));
    let why = stuck["reasons"][0].as_str().unwrap();
    assert!(why.starts_with("no answer within 5s") || why.contains("has not returned"), "{stuck:#}");
    // The round that met the stuck read took its 5 s deadline, so its verdict was born
    // 5 s old; the rounds after it do not wait for that read again.
    eventually(Duration::from_secs(10), || {
        Some(idle_json(&sandbox)).filter(|v| v["verdict_age_seconds"].as_f64().is_some_and(|age| age <= 3.0))
    })
    .expect("a fresh verdict after the first stuck round");
    let until = Instant::now() + Duration::from_secs(75);
    let mut named_in_status = false;
    while Instant::now() < until {
        let asked = Instant::now();
        let out = sandbox.cli(&["status"]);
        assert!(answered(&out), "status did not answer: {}", stderr(&out));
        assert!(asked.elapsed() < Duration::from_secs(1), "status took {:?}", asked.elapsed());
        // Status names the hung read and since when, once it is past its 5 s deadline.
        let text = String::from_utf8_lossy(&out.stdout);
        named_in_status |=
            text.contains("! stuck in the kernel: idle reads (sessions), 1 of at most 1, the oldest since");
        let verdict = idle_json(&sandbox);
        assert_ne!(verdict["verdict"], "idle", "{verdict:#}");
        assert_ne!(verdict["verdict"], "stale", "sampling goes on around the stuck source: {verdict:#}");
        assert!(verdict["verdict_age_seconds"].as_f64().unwrap_or(99.0) <= 3.0, "{verdict:#}");
        std::thread::sleep(Duration::from_secs(5));
    }
    assert!(named_in_status, "status never named the stuck read");
    let status = sandbox.status_json();
    let stuck = status["stuck"].as_array().unwrap();
    let read = stuck.iter().find(|s| s["name"] == "idle reads (sessions)").expect("in /v1/status too");
    assert_eq!((read["count"].as_u64(), read["limit"].as_u64()), (Some(1), Some(1)), "{status:#}");
    assert!(read["since"].as_str().is_some_and(|since| since.ends_with('Z')), "{status:#}");
    // Freed (a writer comes and goes): the signal answers again, and status lists nothing stuck.
    let writer = std::fs::OpenOptions::new().write(true).open(&utmp).unwrap();
    drop(writer);
    std::fs::remove_file(&utmp).unwrap();
    wait_signal(&sandbox, "sessions", "idle", Duration::from_secs(15));
    let status = sandbox.status_json();
    assert_eq!(status["stuck"], serde_json::json!([]), "{status:#}");
}

#[test]
fn only_users_and_admins_hold_the_vm_and_a_corrupt_holds_file_keeps_holds_unknown_until_an_admin_clears_it() {
    if !can_switch_uid(
        "only_users_and_admins_hold_the_vm_and_a_corrupt_holds_file_keeps_holds_unknown_until_an_admin_clears_it",
    ) {
        return;
    }
    let sandbox = Sandbox::new();
    let state = sandbox.root().join("var/lib/pool-agent");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("holds.json"), "[{\"id\": \"0badc0de\", \"owner_u").unwrap();
    sandbox.write_config(&config(""));
    let daemon = sandbox.start();
    let lost = wait_signal(&sandbox, "holds", "unknown", Duration::from_secs(10));
    assert!(lost["reasons"][0].as_str().unwrap().contains("holds.json.bad-"), "{lost:#}");
    let status = sandbox.status_json();
    let row = status["components"].as_array().unwrap().iter().find(|c| c["name"] == "idle").cloned().unwrap();
    assert_eq!(row["state"], "degraded", "named in status: {row:#}");
    assert!(daemon.log().contains("is corrupt"), "and in the journal: {}", daemon.log());
    let refused = sandbox.cli_as(65534, &["hold", "1h"]);
    assert!(stderr(&refused).contains("[forbidden]"), "nobody holds no VM: {}", stderr(&refused));
    let not_admin = sandbox.cli_as(USER_UID, &["hold", "release", "lost"]);
    assert!(stderr(&not_admin).contains("[forbidden]"), "{}", stderr(&not_admin));
    let cleared = sandbox.cli_as(ADMIN_UID, &["hold", "release", "lost"]);
    assert!(cleared.status.success(), "{}", stderr(&cleared));
    wait_signal(&sandbox, "holds", "idle", Duration::from_secs(10));
    assert!(sandbox.cli_as(USER_UID, &["hold", "1h"]).status.success(), "a user still holds");
}

#[test]
fn every_signal_is_reported_and_a_machine_without_a_gpu_driver_has_the_gpu_signal_absent() {
    let sandbox = Sandbox::new();
    sandbox.write_config(&config(""));
    let _daemon = sandbox.start();
    let verdict = eventually(Duration::from_secs(10), || {
        Some(idle_json(&sandbox)).filter(|v| v["signals"].as_array().is_some_and(|s| !s.is_empty()))
    })
    .expect("a first sample");
    let names: Vec<&str> = verdict["signals"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["sessions", "connections", "jupyter", "cpu", "gpu", "writes", "scripts", "holds"],
        "{verdict:#}"
    );
    if std::path::Path::new("/dev/nvidiactl").exists() {
        skip_note("SKIP gpu half of every_signal_is_reported...: this machine has an NVIDIA driver");
        return;
    }
    let gpu = signal(&sandbox, "gpu");
    assert_eq!(gpu["state"], "absent", "{gpu:#}");
    assert!(gpu["reasons"][0].as_str().unwrap().starts_with("no NVIDIA driver"), "{gpu:#}");
    // Absent is not activity: the gpu is not among the reasons.
    let reasons = verdict["reasons"].as_array().unwrap();
    assert!(reasons.iter().all(|r| !r.as_str().unwrap().starts_with("gpu")), "{verdict:#}");
}

#[test]
fn a_hold_shows_in_the_verdict_at_once_not_an_interval_later() {
    if !nix_is_root() {
        skip_note("SKIP a_hold_shows_in_the_verdict_at_once_not_an_interval_later: a hold needs a user-range uid or an admin; root is one (CI runs as root)");
        return;
    }
    let sandbox = Sandbox::new();
    // One sample a minute: without a fresh sample the hold would wait for the next.
    sandbox.write_config(&LOCAL_SHARE_CONFIG.replace("interval = \"10s\"", "interval = \"1m\""));
    let _daemon = sandbox.start();
    wait_signal(&sandbox, "holds", "idle", Duration::from_secs(10));
    let out = sandbox.cli(&["hold", "1h", "--reason", "demo at 3pm"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let started = std::time::Instant::now();
    let held = wait_signal(&sandbox, "holds", "active", Duration::from_secs(3));
    println!("hold in the verdict after {:?}", started.elapsed());
    assert!(held["reasons"][0].as_str().unwrap().contains("demo at 3pm"), "{held}");
    // "idle at" counts the hold: not before it ends plus the 30 minute timeout.
    let idle = idle_json(&sandbox);
    let idle_at = humantime::parse_rfc3339(idle["idle_at"].as_str().unwrap()).unwrap();
    let earliest = std::time::SystemTime::now() + Duration::from_secs(90 * 60 - 30);
    assert!(idle_at >= earliest, "idle at {:?} is before the hold's end plus the timeout: {idle:#}", idle["idle_at"]);
    let human = stdout(&sandbox.cli(&["idle"]));
    assert!(human.contains(&format!("idle at: {}", idle["idle_at"].as_str().unwrap())), "{human}");
}

/// What a user does: take a hold and ask for the verdict at once, with the
/// default `idle.interval`; then release it and ask again. Each answer must
/// already say so, every time (it once waited for the next sample).
#[test]
fn a_hold_taken_or_released_shows_in_the_very_next_idle_answer_twenty_times_in_a_row() {
    if !nix_is_root() {
        skip_note("SKIP a_hold_taken_or_released_shows_in_the_very_next_idle_answer_twenty_times_in_a_row: a hold needs a user-range uid or an admin; root is one (CI runs as root)");
        return;
    }
    let sandbox = Sandbox::new();
    sandbox.write_config(&LOCAL_SHARE_CONFIG.replace("interval = \"10s\"\n", ""));
    let _daemon = sandbox.start();
    wait_signal(&sandbox, "holds", "idle", Duration::from_secs(15));
    let names = |verdict: &serde_json::Value, id: &str| {
        let top = verdict["reasons"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().contains(id));
        let holds = verdict["signals"].as_array().unwrap().iter().find(|s| s["name"] == "holds").cloned().unwrap();
        let row = holds["reasons"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().contains(id));
        (top, row, holds["state"].as_str().unwrap().to_string())
    };
    for round in 0..20 {
        let reason = format!("x{round}");
        let out = sandbox.cli(&["hold", "1h", "--reason", &reason, "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"].as_str().unwrap().to_string();
        let held = idle_json(&sandbox);
        assert_eq!(names(&held, &id), (true, true, "active".into()), "round {round}: {held:#}");
        assert_eq!(held["verdict"], "active", "round {round}: {held:#}");
        let out = sandbox.cli(&["hold", "release", &id]);
        assert!(out.status.success(), "{}", stderr(&out));
        let released = idle_json(&sandbox);
        assert_eq!(names(&released, &id), (false, false, "idle".into()), "round {round}: {released:#}");
    }
}

/// A sandbox sampling once a minute, its first sample taken: only a watch
/// can show a session sooner.
fn sampling_once_a_minute() -> (Sandbox, Daemon) {
    let sandbox = Sandbox::new();
    sandbox.write_config(&LOCAL_SHARE_CONFIG.replace("interval = \"10s\"", "interval = \"1m\""));
    let daemon = sandbox.start();
    wait_sessions(&sandbox, 0.0, Duration::from_secs(10), "no first sample");
    (sandbox, daemon)
}

/// Waits until the sessions signal counts `count`; the time it took.
fn wait_sessions(sandbox: &Sandbox, count: f64, limit: Duration, what: &str) -> Duration {
    let started = Instant::now();
    let sessions = || signal(sandbox, "sessions")["figures"]["sessions"].as_f64();
    eventually(limit, || sessions().filter(|n| *n == count))
        .unwrap_or_else(|| panic!("{what} ({count} sessions) {limit:?} on: {:#}", idle_json(sandbox)));
    started.elapsed()
}

/// A login reaches the verdict at once, not at the next sample: on a VM whose
/// protection was released, that is the time a scale-in has to take it
/// before the agent protects it again. One sample a minute here, so only the
/// watch on utmp can be that quick; the logout too.
#[test]
fn a_login_and_a_logout_show_in_the_verdict_at_once_not_an_interval_later() {
    let (sandbox, _daemon) = sampling_once_a_minute();
    let reasons = signal(&sandbox, "sessions")["reasons"].to_string();
    assert!(!reasons.contains("not at once"), "the watch did not start: {reasons}");
    // sshd's record of a login: this test's own pid keeps it a live session.
    let record = pool_agent::idle::utmp::utmp_record("bob", "pts/7", "10.1.2.3", std::process::id() as i32);
    std::fs::write(sandbox.root().join("run/utmp"), &record).unwrap();
    let took = wait_sessions(&sandbox, 1.0, Duration::from_secs(3), "the login is not in the verdict");
    println!("login in the verdict after {took:?} (one sample a minute)");
    std::fs::write(sandbox.root().join("run/utmp"), b"").unwrap();
    let took = wait_sessions(&sandbox, 0.0, Duration::from_secs(3), "the logout is not in the verdict");
    println!("logout in the verdict after {took:?}");
}

/// The same for a session only logind knows (VS Code Remote-SSH, sftp: sshd
/// writes no utmp record), with logind's records appearing after the agent
/// started (the agent does not wait for logind): its record renamed into
/// place as logind does, then removed.
#[test]
fn a_logind_session_shows_in_the_verdict_at_once_even_when_logind_started_after_the_agent() {
    let (sandbox, _daemon) = sampling_once_a_minute();
    let records = sandbox.root().join("run/systemd/sessions");
    std::fs::create_dir_all(&records).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let temporary = records.join(".#c7abc");
    std::fs::write(&temporary, "UID=1002\nUSER=bob\nREMOTE_HOST=10.0.0.9\nSERVICE=sshd\nCLASS=user\nSTATE=active\n")
        .unwrap();
    std::fs::rename(&temporary, records.join("c7")).unwrap();
    let took = wait_sessions(&sandbox, 1.0, Duration::from_secs(3), "the session is not in the verdict");
    println!("logind session in the verdict after {took:?} (one sample a minute)");
    std::fs::remove_file(records.join("c7")).unwrap();
    wait_sessions(&sandbox, 0.0, Duration::from_secs(3), "the ended session is still in the verdict");
}
