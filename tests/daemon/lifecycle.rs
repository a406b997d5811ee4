//! Start, READY, reload, stop: what systemd and an admin see.

use crate::harness::*;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::time::Duration;

#[test]
fn status_json_names_every_component_with_its_state() {
    let sandbox = Sandbox::new();
    let _daemon = sandbox.start();
    let status = sandbox.status_json();
    assert_eq!(status["agent"]["instance"], "vm-test-0");
    assert_eq!(status["agent"]["root"], sandbox.root().display().to_string());
    let components = status["components"].as_array().unwrap();
    let names: Vec<&str> = components.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, pool_agent::daemon::registry::component_names());
    for component in components {
        assert!(component["state"].is_string(), "{component}");
        assert!(component["since"].as_str().unwrap().ends_with('Z'), "{component}");
    }
    // The local share exists, so it is ready as soon as the task has looked.
    let share_ready = eventually(Duration::from_secs(5), || {
        let status = sandbox.status_json();
        let share = status["components"].as_array().unwrap().iter().find(|c| c["name"] == "share").cloned().unwrap();
        (share["state"] == "ready").then_some(share)
    });
    assert!(share_ready.is_some(), "share never became ready: {}", sandbox.status_json());
}

#[test]
fn socket_and_directory_modes_let_every_local_user_connect() {
    let sandbox = Sandbox::new();
    let _daemon = sandbox.start();
    let socket_meta = std::fs::metadata(sandbox.socket()).unwrap();
    assert!(socket_meta.file_type().is_socket());
    assert_eq!(socket_meta.permissions().mode() & 0o777, 0o666);
    let dir_meta = std::fs::metadata(sandbox.socket().parent().unwrap()).unwrap();
    assert_eq!(dir_meta.permissions().mode() & 0o777, 0o755);
}

#[test]
fn ready_is_sent_only_once_the_socket_is_bound_and_watchdog_pings_follow() {
    let sandbox = Sandbox::new();
    let notify_path = sandbox.root().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut command = sandbox.daemon_command();
    command.env("NOTIFY_SOCKET", &notify_path).env("WATCHDOG_USEC", "1000000");
    // Started without waiting for the socket: the first thing this test sees
    // is the daemon's notifications, so a READY sent before the socket is
    // bound finds no socket to connect to here.
    let log = std::fs::File::create(sandbox.root().join("daemon.log")).unwrap();
    let mut child = command.stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();

    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let mut socket_at_ready = None;
    while !seen.iter().any(|m: &String| m.contains("WATCHDOG=1")) {
        let n = match notify.recv(&mut buf) {
            Ok(n) => n,
            Err(err) => {
                let _ = child.kill();
                panic!("no notification from pool-agentd ({err}); got {seen:?}");
            }
        };
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        if message.contains("READY=1") && socket_at_ready.is_none() {
            // At READY the socket must already answer, with its final mode: no retry.
            let mode = std::fs::metadata(sandbox.socket()).map(|m| m.permissions().mode() & 0o777).ok();
            let connects = std::os::unix::net::UnixStream::connect(sandbox.socket()).is_ok();
            socket_at_ready = Some((mode, connects));
        }
        seen.push(message);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(socket_at_ready, Some((Some(0o666), true)), "socket (mode, connects) when READY arrived; {seen:?}");
    let ready_at = seen.iter().position(|m| m.contains("READY=1")).expect("READY=1 was never sent");
    assert!(seen[ready_at].contains("STATUS="), "READY comes with a STATUS line: {seen:?}");
    assert!(seen.iter().any(|m| m.contains("STATUS=share: ")), "component changes update STATUS: {seen:?}");
}

#[test]
fn sighup_with_an_unknown_key_keeps_the_daemon_and_the_old_config() {
    let sandbox = Sandbox::new();
    let daemon = sandbox.start();
    sandbox.write_config(&format!("{LOCAL_SHARE_CONFIG}\n[api]\nadmin_group = \"pool-agent-admin\"\nbogus_key = 1\n"));
    daemon.signal("HUP");

    let rejected = eventually(Duration::from_secs(5), || {
        let status = sandbox.status_json();
        status["config"].get("rejected_reload").cloned()
    })
    .expect("the rejected reload never showed in status");
    assert_eq!(rejected["key"], "api.bogus_key");
    // The appended text starts with a blank line, then [api], admin_group, bogus_key.
    let bogus_line = LOCAL_SHARE_CONFIG.lines().count() + 4;
    assert_eq!(rejected["line"], bogus_line);
    assert!(rejected["file"].as_str().unwrap().ends_with("config.toml"));

    let human = sandbox.cli(&["status"]);
    assert_eq!(human.status.code(), Some(1), "a rejected reload leaves the config degraded");
    let text = stdout(&human);
    assert!(
        text.contains("rejected") && text.contains(&format!("config.toml:{bogus_line}: api.bogus_key: unknown key")),
        "{text}"
    );

    // The old config is still in force and the daemon still answers.
    let config: serde_json::Value = serde_json::from_slice(&sandbox.cli(&["config", "--json"]).stdout).unwrap();
    assert_eq!(config["idle"]["timeout"], "30m");
    assert_eq!(config["share"]["path"], "/srv/share");
}

#[test]
fn sighup_with_a_valid_config_applies_it_and_clears_the_rejection() {
    let sandbox = Sandbox::new();
    let daemon = sandbox.start();
    sandbox.write_config("[share]\nkind = \"local\"\n");
    daemon.signal("HUP");
    eventually(Duration::from_secs(5), || sandbox.status_json()["config"].get("rejected_reload").cloned())
        .expect("the incomplete share config should be rejected");

    std::fs::write(sandbox.root().join("etc/pool-agent/config.d/50-idle.toml"), "[idle]\ntimeout = \"2h\"\n").unwrap();
    sandbox.write_config(LOCAL_SHARE_CONFIG);
    daemon.signal("HUP");
    let applied = eventually(Duration::from_secs(5), || {
        let config: serde_json::Value = serde_json::from_slice(&sandbox.cli(&["config", "--json"]).stdout).ok()?;
        (config["idle"]["timeout"] == "2h").then_some(config)
    });
    assert!(applied.is_some(), "drop-in was not applied");
    let status = sandbox.status_json();
    assert!(status["config"].get("rejected_reload").is_none());
    assert_eq!(status["config"]["reloads_applied"], 1);
    assert_eq!(status["config"]["reloads_rejected"], 1);
}

#[test]
fn sigterm_stops_within_five_seconds_with_exit_zero_and_removes_the_socket() {
    for signal in ["TERM", "INT"] {
        let sandbox = Sandbox::new();
        let mut daemon = sandbox.start();
        // An idle client connection must not hold the stop up.
        let _idle_client = std::os::unix::net::UnixStream::connect(sandbox.socket()).unwrap();
        daemon.signal(signal);
        let (code, took) = daemon.wait_exit(Duration::from_secs(10));
        assert_eq!(code, Some(0), "SIG{signal}:\n{}", daemon.log());
        assert!(took < Duration::from_secs(5), "SIG{signal} took {took:?}");
        assert!(!sandbox.socket().exists(), "socket left behind after SIG{signal}");
    }
}

#[test]
fn a_second_daemon_refuses_a_live_socket() {
    let sandbox = Sandbox::new();
    let _first = sandbox.start();
    let second = sandbox.daemon_command().output().unwrap();
    assert!(!second.status.success());
    let message = stderr(&second);
    assert!(message.contains("already serving") && message.contains("agent.sock"), "{message}");
    // The first one is unharmed.
    assert!(answered(&sandbox.cli(&["status"])));
}

#[test]
fn a_stale_socket_from_a_crash_is_replaced() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.socket().parent().unwrap()).unwrap();
    drop(UnixListener::bind(sandbox.socket()).unwrap()); // leaves the file, nobody listening
    assert!(sandbox.socket().exists());
    let _daemon = sandbox.start();
    assert!(answered(&sandbox.cli(&["status"])));
}

#[test]
fn a_crashed_daemon_is_followed_by_a_clean_start() {
    let sandbox = Sandbox::new();
    let mut first = sandbox.start();
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(5));
    assert!(sandbox.socket().exists(), "SIGKILL leaves the socket behind");
    let _second = sandbox.start();
    assert!(answered(&sandbox.cli(&["status"])));
}

#[test]
fn demo_mode_builds_a_sandbox_and_says_how_to_query_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("demo");
    let sandbox_socket = root.join("run/pool-agent/agent.sock");
    let log_path = dir.path().join("demo.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = std::process::Command::new(DAEMON)
        .args(["--demo", "--root"])
        .arg(&root)
        .env_remove("NOTIFY_SOCKET")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let up = eventually(Duration::from_secs(15), || std::os::unix::net::UnixStream::connect(&sandbox_socket).ok());
    let output = std::fs::read_to_string(&log_path).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    for mount_point in mounts_under(&root) {
        let _ = std::process::Command::new("umount").arg("-l").arg(mount_point).status();
    }
    assert!(up.is_some(), "demo never opened its socket:\n{output}");
    assert!(output.contains(&format!("POOL_AGENT_SOCKET={}", sandbox_socket.display())), "{output}");
    assert!(output.contains("pool-agent status"), "{output}");
    assert!(root.join("etc/passwd").exists() && root.join("srv/share").is_dir());
}

#[test]
fn the_root_demo_s_export_line_works_from_another_shell_and_its_sandbox_goes_with_it() {
    if !nix_is_root() {
        skip_note("SKIP the_root_demo_s_export_line…: only root's demo makes a fresh sandbox each run");
        return;
    }
    let mut child = std::process::Command::new(DAEMON)
        .arg("--demo")
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let mut printed = Vec::new();
    // What README tells people to copy: the line the demo prints.
    let export = loop {
        let Some(Ok(line)) = lines.next() else { panic!("no export line in {printed:?}") };
        printed.push(line.clone());
        if let Some(socket) = line.trim().strip_prefix("export POOL_AGENT_SOCKET=") {
            break socket.to_string();
        }
    };
    let shell = format!("export POOL_AGENT_SOCKET={export}; {CLI} status");
    let answered = eventually(Duration::from_secs(20), || {
        let out = std::process::Command::new("sh").args(["-c", &shell]).output().unwrap();
        Some(out).filter(|o| o.status.success())
    });
    let root = std::path::PathBuf::from(&export).ancestors().nth(3).unwrap().to_path_buf();
    let _ = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let _ = child.wait();
    assert!(answered.is_some(), "the printed export line did not reach the demo: {printed:?}");
    let gone = eventually(Duration::from_secs(5), || Some(()).filter(|_| !root.exists()));
    if gone.is_none() {
        for mount_point in mounts_under(&root) {
            let _ = std::process::Command::new("umount").arg("-l").arg(mount_point).status();
        }
    }
    assert!(gone.is_some(), "the demo left {} behind", root.display());
}

/// Runs the demo as `uid` (None: as this process), checks what README
/// promises of it, and stops it.
fn demo_shows_everything_working(uid: Option<u32>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let root = dir.path().join("demo");
    std::fs::create_dir(&root).unwrap();
    if let Some(uid) = uid {
        std::os::unix::fs::chown(&root, Some(uid), Some(uid)).unwrap();
    }
    let socket = root.join("run/pool-agent/agent.sock");
    let mut command = match uid {
        Some(uid) => {
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups", DAEMON]);
            c
        }
        None => std::process::Command::new(DAEMON),
    };
    let mut child = command
        .args(["--demo", "--root"])
        .arg(&root)
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cli =
        |args: &[&str]| std::process::Command::new(CLI).args(args).env("POOL_AGENT_SOCKET", &socket).output().unwrap();
    let ready = eventually(Duration::from_secs(20), || Some(()).filter(|_| cli(&["status"]).status.success()));
    let links: serde_json::Value = serde_json::from_slice(&cli(&["links", "--json"]).stdout).unwrap_or_default();
    let scripts: serde_json::Value = serde_json::from_slice(&cli(&["scripts", "--json"]).stdout).unwrap_or_default();
    let status = String::from_utf8_lossy(&cli(&["status"]).stdout).into_owned();
    let _ = std::process::Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    for mount_point in mounts_under(&root) {
        let _ = std::process::Command::new("umount").arg("-l").arg(mount_point).status();
    }
    let who = uid.map_or("this user".to_string(), |uid| format!("uid {uid}"));
    assert!(ready.is_some(), "as {who}, status never exited 0:\n{status}");
    let users = links["users"].as_array().cloned().unwrap_or_default();
    assert!(!users.is_empty(), "as {who}, no user linked: {links:#}");
    for user in &users {
        assert!(matches!(user["state"].as_str(), Some("ok" | "created")), "as {who}: {user:#}");
    }
    let hello = scripts["scripts"].as_array().and_then(|s| s.iter().find(|s| s["name"] == "hello").cloned());
    assert_eq!(hello.as_ref().map(|h| h["state"].clone()), Some("succeeded".into()), "as {who}: {scripts:#}");
}

#[test]
fn the_demo_works_as_its_caller() {
    demo_shows_everything_working(None);
}

#[test]
fn the_demo_works_as_an_unprivileged_user_too() {
    if !can_switch_uid("the_demo_works_as_an_unprivileged_user_too") {
        return;
    }
    demo_shows_everything_working(Some(65534));
}
