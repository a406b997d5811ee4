//! The load balancer's probe, "can this VM take a new session?", against the
//! real agent: it says no for each reason a new user must go elsewhere and
//! yes again when the reason clears, and it only ever answers probes.

// Black-box tests poll real processes from plain threads; sleeping is the point.
#![allow(clippy::disallowed_methods)]

use crate::azure::FakeAzure;
use crate::harness::*;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

/// `GET path` on the readiness port: (status code, body), or (0, why).
fn probe(port: u16, path: &str) -> (u16, String) {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return (0, "no answer".into()) };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(stream, "GET {path} HTTP/1.1\r\nHost: 10.0.0.4\r\nUser-Agent: Load Balancer Agent\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let code = answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or(answer))
}

fn why_not(sandbox: &Sandbox) -> String {
    sandbox.cli_json(&["azure", "--json"])["readiness"].as_str().unwrap_or_default().to_string()
}

/// Waits for the probe to answer `code`; the agent's own words on failure.
fn wait_for(sandbox: &Sandbox, port: u16, code: u16, what: &str) {
    let seen = eventually(Duration::from_secs(40), || Some(()).filter(|_| probe(port, "/ready").0 == code));
    assert!(
        seen.is_some(),
        "{what}: the probe answers {:?}; the agent says {:?}",
        probe(port, "/ready"),
        why_not(sandbox)
    );
}

#[test]
fn the_probe_says_no_for_each_reason_a_new_session_must_go_elsewhere_and_yes_when_it_clears() {
    let test = "the_probe_says_no_for_each_reason_a_new_session_must_go_elsewhere_and_yes_when_it_clears";
    if !nix_is_root() {
        skip_note(&format!("SKIP {test}: setup scripts run as root here (CI runs as root)"));
        return;
    }
    let Some(fake) = FakeAzure::start() else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sandbox = Sandbox::new();
    let root = sandbox.root().to_path_buf();
    // A blocking setup script that fails until the admin fixes what it checks.
    let scripts = root.join("etc/pool-agent/scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    for dir in [root.join("etc"), root.join("etc/pool-agent"), scripts.clone()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let fixed = root.join("fixed");
    std::fs::write(scripts.join("10-check"), format!("#!/bin/sh\ntest -e '{}'\n", fixed.display())).unwrap();
    std::fs::set_permissions(scripts.join("10-check"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The share's directory is missing at first: the share is down.
    let config = LOCAL_SHARE_CONFIG
        .replace("path = \"/srv/share\"", "path = \"/srv/late\"")
        .replace("interval = \"10s\"\ntimeout = \"30m\"", "interval = \"2s\"\ntimeout = \"30m\"\nboot_grace = \"0s\"");
    sandbox.write_config(&format!(
        "{config}\n[setup]\nshare_wait = \"10m\"\n[[setup.scripts]]\nname = \"10-check\"\npath = \"/etc/pool-agent/scripts/10-check\"\nrun_as = \"root\"\nblocking = true\n\n[pool]\nmax_sessions = 1\n\n[azure]\nenabled = true\nimds_endpoint = \"{url}\"\nmonitoring_endpoint = \"{url}\"\narm_endpoint = \"{url}\"\nprotect = false\nmetrics_interval = \"2s\"\nhealth_listen = \"\"\nreadiness_listen = \"127.0.0.1:{port}\"\n",
        url = fake.url()
    ));
    let _daemon = sandbox.start();

    // 1. The share is not mounted: no.
    wait_for(&sandbox, port, 503, "share missing");
    assert_eq!(probe(port, "/ready").1, "not ready\n", "no detail to the prober");
    assert!(why_not(&sandbox).contains("share"), "{}", why_not(&sandbox));
    assert_eq!(probe(port, "/v1/status").0, 404, "the probe port serves nothing else");

    // 2. The share comes; the blocking script then fails: still no, for that.
    std::fs::create_dir_all(root.join("srv/late")).unwrap();
    let failed =
        eventually(Duration::from_secs(60), || Some(why_not(&sandbox)).filter(|why| why.contains("did not succeed")));
    assert!(failed.is_some(), "the failed script is not the reason: {}", why_not(&sandbox));
    assert_eq!(probe(port, "/ready").0, 503);

    // 3. Fixed and run again by the admin: yes.
    std::fs::write(&fixed, "").unwrap();
    let rerun = sandbox.cli(&["scripts", "run", "10-check"]);
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    wait_for(&sandbox, port, 200, "script fixed");
    assert_eq!(probe(port, "/ready").1, "ready\n");

    // 4. A session at pool.max_sessions: no; the session itself is left alone.
    let sessions = root.join("run/systemd/sessions");
    std::fs::create_dir_all(&sessions).unwrap();
    std::fs::create_dir_all(root.join("dev/pts")).unwrap();
    let tty = root.join("dev/pts/7");
    std::fs::write(&tty, "").unwrap();
    let mut shell = std::process::Command::new("sleep").arg("600").spawn().unwrap();
    std::fs::write(
        sessions.join("7"),
        "UID=0\nUSER=root\nTTY=pts/7\nREMOTE_HOST=10.0.0.9\nSERVICE=sshd\nCLASS=user\nSTATE=active\n",
    )
    .unwrap();
    let typing = std::thread::spawn({
        let tty = tty.clone();
        move || {
            // Input on the terminal (its access time) for a while.
            for _ in 0..40 {
                let file = std::fs::File::options().write(true).open(&tty);
                if let Ok(file) = file {
                    let _ = file.set_times(std::fs::FileTimes::new().set_accessed(SystemTime::now()));
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    });
    wait_for(&sandbox, port, 503, "one session, max_sessions 1");
    assert!(why_not(&sandbox).contains("pool.max_sessions is 1"), "{}", why_not(&sandbox));
    assert!(shell.try_wait().unwrap().is_none(), "the session's process was touched");
    assert!(sessions.join("7").exists());
    std::fs::remove_file(sessions.join("7")).unwrap();
    wait_for(&sandbox, port, 200, "the session ended");
    let _ = shell.kill();
    let _ = shell.wait();
    let _ = typing.join();

    // 5. A Terminate for this VM: no while it is pending; yes when it leaves.
    let not_before = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(600));
    fake.configure(serde_json::json!({"scheduled_events": {"DocumentIncarnation": 1, "Events": [
        {"EventId": "T-1", "EventType": "Terminate", "ResourceType": "VirtualMachine", "Resources": ["pool_3"],
         "EventStatus": "Scheduled", "NotBefore": not_before, "Description": "", "EventSource": "Platform",
         "DurationInSeconds": -1}]}}));
    wait_for(&sandbox, port, 503, "Terminate pending");
    assert!(why_not(&sandbox).contains("Terminate"), "{}", why_not(&sandbox));
    fake.configure(serde_json::json!({"scheduled_events": {"DocumentIncarnation": 2, "Events": []}}));
    wait_for(&sandbox, port, 200, "the event left");
    // The demand view agrees: nobody here, ready: free.
    let offer = &sandbox.cli_json(&["azure", "--json"])["offer"];
    assert_eq!(offer["in_use"], false, "{offer}");
}
