//! Reads for everyone, changes for admins, decided from the peer's real uid.

use crate::harness::*;
use std::io::{Read, Write};

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
    let holder = std::process::Command::new("setpriv")
        .args(["--reuid", &USER_UID.to_string(), "--regid", &USER_UID.to_string(), "--clear-groups", "/usr/bin/python3", "-c"])
        .arg(format!(
            "import socket,sys,time\nss=[]\nfor i in range(40):\n  s=socket.socket(socket.AF_UNIX); s.connect({:?}); ss.append(s)\nprint('held', flush=True)\ntime.sleep(30)\n",
            sandbox.socket().display().to_string()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn();
    let Ok(mut holder) = holder else {
        skip_note("SKIP one_user_cannot_take_every_connection: /usr/bin/python3 is not installed");
        return;
    };
    let mut line = String::new();
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "held");
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
