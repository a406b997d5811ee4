//! Reads for everyone, changes for admins, decided from the peer's real uid.

#![allow(clippy::disallowed_methods)] // black-box tests wait in real time
use crate::harness::*;
use std::io::{Read, Write};
use std::time::Duration;

#[test]
fn a_user_who_is_not_admin_is_refused_links_sync() {
    if !can_switch_uid("a_user_who_is_not_admin_is_refused_links_sync") {
        return;
    }
    let sandbox = Sandbox::new();
    let _daemon = sandbox.start();
    let out = sandbox.cli_as(USER_UID, &["links", "sync"]);
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.contains("only root and members of group `pool-agent-admin`"), "{message}");
    assert!(message.contains("[forbidden]"), "{message}");
    assert!(message.contains(&format!("uid {USER_UID}")), "{message}");
}

#[test]
fn the_same_user_may_read_status() {
    if !can_switch_uid("the_same_user_may_read_status") {
        return;
    }
    let sandbox = Sandbox::new();
    let _daemon = sandbox.start();
    let out = sandbox.cli_as(USER_UID, &["status", "--json"]);
    assert!(answered(&out), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["components"].as_array().unwrap().len(), pool_agent::daemon::registry::component_names().len());
}

#[test]
fn an_admin_group_member_gets_past_the_check() {
    if !can_switch_uid("an_admin_group_member_gets_past_the_check") {
        return;
    }
    let sandbox = Sandbox::new();
    let _daemon = sandbox.start();
    // alice is in the admin group by its member list, not by her primary gid.
    let out = sandbox.cli_as(ADMIN_UID, &["links", "sync", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["passes"].as_u64().unwrap() >= 1, "the sync ran a pass: {report}");
}

#[test]
fn a_user_may_ask_for_a_hold_for_themselves() {
    if !can_switch_uid("a_user_may_ask_for_a_hold_for_themselves") {
        return;
    }
    let sandbox = Sandbox::new();
    let _daemon = sandbox.start();
    let out = sandbox.cli_as(USER_UID, &["hold", "2h", "--reason", "training run", "--json"]);
    assert!(out.status.success(), "holds are self-service: {}", stderr(&out));
    let hold: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hold["owner"], "bob", "the owner comes from the socket's peer credentials");
    let out = sandbox.cli_as(USER_UID, &["share", "remount"]);
    assert!(stderr(&out).contains("[forbidden]"), "{}", stderr(&out));
}

/// Sends raw bytes on the socket and returns the whole answer.
fn raw_exchange(sandbox: &Sandbox, request: &[u8]) -> String {
    let mut stream = std::os::unix::net::UnixStream::connect(sandbox.socket()).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn browser_requests_are_refused_on_the_real_socket() {
    let sandbox = Sandbox::new();
    let _daemon = sandbox.start();
    let answer = raw_exchange(
        &sandbox,
        b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("\"error\":\"browser_request_refused\""), "{answer}");
}

#[test]
fn an_oversized_body_gets_a_json_error() {
    let sandbox = Sandbox::new();
    let _daemon = sandbox.start();
    let body = vec![b'x'; 100 * 1024];
    let mut request = format!(
        "POST /v1/holds HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let answer = raw_exchange(&sandbox, &request);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"error\":\"body_too_large\""), "{answer}");
}

#[test]
fn garbage_on_the_socket_does_not_hurt_the_daemon() {
    let sandbox = Sandbox::new();
    let _daemon = sandbox.start();
    let answer = raw_exchange(&sandbox, b"\x16\x03\x01 this is not http\r\n\r\n");
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answered(&sandbox.cli(&["status"])));
}

#[test]
fn a_chunked_body_over_the_limit_gets_a_json_error() {
    let sandbox = Sandbox::new();
    let _daemon = sandbox.start();
    let mut request =
        b"POST /v1/holds HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..100 {
        request.extend_from_slice(b"400\r\n");
        request.extend_from_slice(&[b'x'; 1024]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(&sandbox, &request);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"error\":\"body_too_large\""), "{answer}");
}

#[test]
fn one_user_cannot_take_every_connection() {
    if !can_switch_uid("one_user_cannot_take_every_connection") {
        return;
    }
    let sandbox = Sandbox::new();
    let _daemon = sandbox.start();
    // The user holds connections open (as bob, for real, through setpriv).
    let Some(mut holder) = hold_connections(&sandbox, USER_UID, 40, false) else {
        skip_note("SKIP one_user_cannot_take_every_connection: /usr/bin/python3 is not installed");
        return;
    };
    // Another user and root still get answers while bob holds 40 connections.
    let alice = sandbox.cli_as(ADMIN_UID, &["status", "--json"]);
    let root = sandbox.cli(&["status", "--json"]);
    // bob's own next request is refused with a JSON error, not left hanging.
    let bob = sandbox.cli_as(USER_UID, &["status"]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(answered(&alice), "{}", stderr(&alice));
    assert!(answered(&root), "{}", stderr(&root));
    assert_eq!(bob.status.code(), Some(1), "{}", stderr(&bob));
    assert!(stderr(&bob).contains("[too_many_connections]"), "{}", stderr(&bob));
}

/// Holds `count` connections open as `uid` (for real, through setpriv) until
/// killed; `loop_connects` then connects and closes as fast as it can.
fn hold_connections(sandbox: &Sandbox, uid: u32, count: usize, loop_connects: bool) -> Option<std::process::Child> {
    let script = format!(
        "import socket,time\nss=[]\nfor i in range({count}):\n  s=socket.socket(socket.AF_UNIX); s.connect({socket:?}); ss.append(s)\nprint('held', flush=True)\nend=time.time()+30\nwhile time.time()<end:\n  if {looping}:\n    try:\n      s=socket.socket(socket.AF_UNIX); s.connect({socket:?}); s.close()\n    except OSError:\n      pass\n  else:\n    time.sleep(1)\n",
        socket = sandbox.socket().display().to_string(),
        looping = if loop_connects { "True" } else { "False" },
    );
    let mut child = std::process::Command::new("setpriv")
        .args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups", "/usr/bin/python3", "-c"])
        .arg(script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "held", "uid {uid} holds its connections");
    Some(child)
}

#[test]
fn users_holding_every_slot_and_a_connect_loop_leave_root_its_answer() {
    if !can_switch_uid("users_holding_every_slot_and_a_connect_loop_leave_root_its_answer") {
        return;
    }
    let sandbox = Sandbox::new();
    let daemon = sandbox.start();
    // Eight users with eight connections each: every ordinary slot.
    let mut holders = Vec::new();
    for uid in 3001..=3008 {
        let Some(holder) = hold_connections(&sandbox, uid, 8, uid == 3008) else {
            skip_note("SKIP users_holding_every_slot…: /usr/bin/python3 is not installed");
            return;
        };
        holders.push(holder);
    }
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", daemon.pid())).unwrap().count();
    let mut slowest = Duration::ZERO;
    let mut most_fds = 0;
    for _ in 0..10 {
        let started = std::time::Instant::now();
        let root = sandbox.cli(&["status", "--json"]);
        slowest = slowest.max(started.elapsed());
        assert!(answered(&root), "{}", stderr(&root));
        most_fds = most_fds.max(fds());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Another user is refused at once with a JSON error, not left hanging.
    let started = std::time::Instant::now();
    let bob = sandbox.cli_as(USER_UID, &["status"]);
    let bob_took = started.elapsed();
    for mut holder in holders {
        let _ = holder.kill();
        let _ = holder.wait();
    }
    println!("root status under load: slowest {slowest:?}, daemon fds at most {most_fds}, bob refused in {bob_took:?}");
    assert!(slowest < Duration::from_secs(1), "root waited {slowest:?}");
    assert!(stderr(&bob).contains("[too_many_connections]"), "{}", stderr(&bob));
    assert!(bob_took < Duration::from_secs(2), "bob waited {bob_took:?}");
    // 64 ordinary + 16 reserve + 32 lingering refusals + the daemon's own files.
    assert!(most_fds < 160, "the daemon held {most_fds} descriptors");
}

#[test]
fn a_socket_the_user_may_not_reach_names_the_admin_group() {
    if !can_switch_uid("a_socket_the_user_may_not_reach_names_the_admin_group") {
        return;
    }
    let sandbox = Sandbox::new();
    let _daemon = sandbox.start();
    let run_dir = sandbox.socket().parent().unwrap().to_path_buf();
    std::fs::set_permissions(&run_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let out = sandbox.cli_as(USER_UID, &["status"]);
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(said.contains("permission denied") && said.contains("pool-agent-admin"), "{said}");
    assert!(!said.contains("os error"), "{said}");
}
