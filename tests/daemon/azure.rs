//! The Azure capability against `tests/fake/fake_azure.py`, a strict local
//! stand-in for IMDS and Azure Monitor that refuses what Azure refuses and
//! records every request.

// Black-box tests poll real processes from plain threads; sleeping is the point.
#![allow(clippy::disallowed_methods)]

use crate::harness::*;
use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FAKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fake/fake_azure.py");

pub(crate) struct FakeAzure {
    child: Child,
    port: u16,
}

impl FakeAzure {
    pub(crate) fn start() -> Option<Self> {
        let spawned = Command::new("python3").arg(FAKE).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn();
        let Ok(mut child) = spawned else {
            skip_note("SKIP: python3 is not installed (the fake Azure needs it)");
            return None;
        };
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("PORT ").and_then(|p| p.parse().ok()).expect("the fake's port");
        Some(Self { child, port })
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn call(&self, method: &str, path: &str, body: &str) -> String {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: fake\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
    }

    pub(crate) fn fault(&self, fault: serde_json::Value) {
        self.call("POST", "/_fake/fault", &fault.to_string());
    }

    pub(crate) fn configure(&self, config: serde_json::Value) {
        self.call("POST", "/_fake/config", &config.to_string());
    }

    pub(crate) fn read(&self, what: &str) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.call("GET", &format!("/_fake/{what}"), "")).unwrap_or_default()
    }

    pub(crate) fn requests_to(&self, path: &str) -> Vec<serde_json::Value> {
        self.read("requests").into_iter().filter(|r| r["path"] == path).collect()
    }
}

impl Drop for FakeAzure {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn azure_config(fake: &FakeAzure, extra: &str) -> String {
    format!(
        "{LOCAL_SHARE_CONFIG}\n[azure]\nenabled = true\nimds_endpoint = \"{url}\"\nmonitoring_endpoint = \"{url}\"\narm_endpoint = \"{url}\"\nprotect = false\nmetrics_interval = \"2s\"\nhealth_listen = \"\"\n{extra}",
        url = fake.url()
    )
}

pub(crate) fn azure_json(sandbox: &Sandbox) -> serde_json::Value {
    sandbox.cli_json(&["azure", "--json"])
}

fn wait_on_azure(sandbox: &Sandbox, limit: Duration) -> serde_json::Value {
    eventually(limit, || Some(azure_json(sandbox)).filter(|a| a["state"] == "on-azure"))
        .unwrap_or_else(|| panic!("never on Azure: {:#}", azure_json(sandbox)))
}

#[test]
fn metadata_through_a_storm_of_410s_and_a_429_is_waited_out_within_imds_limits() {
    let Some(fake) = FakeAzure::start() else { return };
    // 60 s of "not ready yet", as IMDS answers early in a VM's life.
    fake.fault(serde_json::json!({"path": "/metadata/instance", "status": 410, "seconds": 60}));
    let sandbox = Sandbox::new();
    sandbox.write_config(&azure_config(&fake, ""));
    let started = Instant::now();
    let _daemon = sandbox.start();
    let azure = wait_on_azure(&sandbox, Duration::from_secs(90));
    let took = started.elapsed();
    let asked = fake.requests_to("/metadata/instance").len();
    println!("metadata after {took:?} and {asked} requests");
    assert!(took < Duration::from_secs(80), "{took:?}");
    assert!(asked <= 8, "{asked} metadata requests");
    assert_eq!(azure["compute"]["vmScaleSetName"], "pool", "{azure:#}");
    assert!(fake.read("violations").is_empty(), "more than 5 IMDS requests in a second: {:?}", fake.read("violations"));
}

#[test]
fn a_429_with_retry_after_is_not_asked_again_before_it() {
    let Some(fake) = FakeAzure::start() else { return };
    fake.fault(serde_json::json!({"path": "/metadata/instance", "status": 429, "count": 1, "retry_after": 3}));
    let sandbox = Sandbox::new();
    sandbox.write_config(&azure_config(&fake, ""));
    let _daemon = sandbox.start();
    wait_on_azure(&sandbox, Duration::from_secs(20));
    let asked = fake.requests_to("/metadata/instance");
    assert!(asked.len() >= 2, "{asked:?}");
    let gap = asked[1]["time"].as_f64().unwrap() - asked[0]["time"].as_f64().unwrap();
    assert!(gap >= 3.0, "asked again {gap:.2} s after a Retry-After of 3");
    assert_eq!(asked[0]["status"], 429);
}

#[test]
fn tokens_carry_the_exact_audience_and_client_id_and_are_renewed_before_they_expire() {
    let Some(fake) = FakeAzure::start() else { return };
    let client_id = "8d3a5e2c-1b4f-4e6a-9c7d-2f0e1a3b5c7d";
    // Tokens that live 10 s: the agent must renew each before the fake refuses it.
    fake.configure(serde_json::json!({"token_lifetime": 10, "client_id": client_id}));
    let sandbox = Sandbox::new();
    sandbox.write_config(&azure_config(&fake, &format!("client_id = \"{client_id}\"\n")));
    let daemon = sandbox.start();
    wait_on_azure(&sandbox, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(25));
    let tokens = fake.requests_to("/metadata/identity/oauth2/token");
    let monitoring = tokens.iter().filter(|t| t["query"]["resource"][0] == "https://monitoring.azure.com/").count();
    assert!(monitoring >= 3, "renewed within 25 s of 10 s tokens: {tokens:?}");
    for token in &tokens {
        // Metrics, and ARM for the one read of the scale set (its terminate notification profile).
        let audience = token["query"]["resource"][0].as_str().unwrap();
        assert!(["https://monitoring.azure.com/", "https://management.azure.com/"].contains(&audience), "{token}");
        assert_eq!(token["query"]["client_id"][0], client_id, "{token}");
        assert_eq!(token["status"], 200, "{token}");
    }
    let posts = fake
        .read("requests")
        .into_iter()
        .filter(|r| r["method"] == "POST" && r["path"].as_str().unwrap().ends_with("/metrics"))
        .collect::<Vec<_>>();
    assert!(posts.len() >= 8, "a post every 2 s: {}", posts.len());
    assert!(posts.iter().all(|p| p["status"] == 200), "a post went out with a dead token: {posts:?}");
    // The token never shows: not in status, config, metrics, the azure answer or the log.
    let shown = [
        stdout(&sandbox.cli(&["azure", "--json"])),
        stdout(&sandbox.cli(&["status", "--json"])),
        stdout(&sandbox.cli(&["metrics"])),
        daemon.log(),
    ]
    .concat();
    assert!(!shown.contains("fake."), "a token is shown somewhere");
}

#[test]
fn an_outage_of_azure_monitor_loses_no_bucket_and_the_verdict_arrives() {
    let Some(fake) = FakeAzure::start() else { return };
    let sandbox = Sandbox::new();
    sandbox.write_config(&azure_config(&fake, ""));
    let _daemon = sandbox.start();
    wait_on_azure(&sandbox, Duration::from_secs(20));
    let metrics_path = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-pool/providers/Microsoft.Compute/virtualMachineScaleSets/pool/metrics";
    eventually(Duration::from_secs(10), || Some(()).filter(|_| !fake.read("points").is_empty())).expect("first points");
    // 20 s of 503s (10 buckets at 2 s), then two connections dropped without an answer.
    let outage_start = std::time::SystemTime::now();
    fake.fault(serde_json::json!({"path": metrics_path, "status": 503, "seconds": 20, "retry_after": 1}));
    fake.fault(serde_json::json!({"path": metrics_path, "drop": true, "count": 2}));
    std::thread::sleep(Duration::from_secs(20));
    let outage_end = std::time::SystemTime::now();
    // Every interval of the outage, as Azure would have it.
    let mut expected = Vec::new();
    let mut at = outage_start + Duration::from_secs(2);
    while at + Duration::from_secs(2) < outage_end {
        let secs = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 2 * 2;
        expected.push(humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string());
        at += Duration::from_secs(2);
    }
    let idle_times = || -> std::collections::BTreeSet<String> {
        let points = fake.read("points");
        points.iter().filter(|p| p["metric"] == "Idle").map(|p| p["time"].as_str().unwrap().to_string()).collect()
    };
    // After the drops the agent backs off (up to a minute): the buckets wait, none is lost.
    let arrived = eventually(Duration::from_secs(150), || {
        let have = idle_times();
        (expected.iter().all(|t| have.contains(t)) && azure_json(&sandbox)["backlog"] == 0).then_some(())
    });
    let missing: Vec<&String> = expected.iter().filter(|t| !idle_times().contains(*t)).collect();
    assert!(arrived.is_some(), "buckets of the outage never arrived: {missing:?}");
    let points = fake.read("points");
    let azure = azure_json(&sandbox);
    assert_eq!(azure["dropped_too_old"], 0, "{azure:#}");
    assert_eq!(azure["backlog"], 0, "{azure:#}");
    let failed = fake.read("requests").into_iter().filter(|r| r["status"] == 503).count();
    assert!(failed >= 3, "the outage did not happen: {failed} posts failed");
    let refused = fake.read("requests").into_iter().filter(|r| r["status"] == 400 || r["status"] == 401).count();
    assert_eq!(refused, 0, "the fake refused a body or a token");
    // Every metric of a bucket, and Busy = 1 while the VM is in its boot grace.
    let busy: Vec<&serde_json::Value> = points.iter().filter(|p| p["metric"] == "Busy").collect();
    assert!(busy.iter().all(|p| p["max"] == 1.0), "{busy:?}");
    for metric in [
        "Idle",
        "Busy",
        "Removable",
        "ActiveUsers",
        "IdleMinutes",
        "CpuPercent",
        "GpuPercent",
        "ShareHealthy",
        "VerdictAgeSeconds",
    ] {
        assert!(points.iter().any(|p| p["metric"] == metric && p["namespace"] == "pool-agent"), "{metric} missing");
    }
}

#[test]
fn off_azure_the_capability_says_absent_and_the_vm_is_ready() {
    let sandbox = Sandbox::new();
    // A loopback port nothing listens on: IMDS is not there.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    sandbox.write_config(&format!(
        "{LOCAL_SHARE_CONFIG}\n[azure]\nimds_endpoint = \"http://127.0.0.1:{unused}\"\nhealth_listen = \"\"\n"
    ));
    let _daemon = sandbox.start();
    let ready = eventually(Duration::from_secs(15), || Some(()).filter(|_| sandbox.cli(&["status"]).status.success()));
    assert!(ready.is_some(), "{}", stdout(&sandbox.cli(&["status"])));
    let absent = eventually(Duration::from_secs(20), || Some(azure_json(&sandbox)).filter(|a| a["state"] == "absent"));
    assert!(absent.is_some(), "{:#}", azure_json(&sandbox));
}

fn config_source_files(sandbox: &Sandbox) -> Vec<String> {
    let status = sandbox.status_json();
    status["config"]["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect()
}

#[test]
fn user_data_that_could_run_code_or_widen_access_is_refused_key_by_key_and_the_rest_applies() {
    use base64::Engine;
    let Some(fake) = FakeAzure::start() else { return };
    let fragment = "[idle]\ntimeout = \"45m\"\n\n[[setup.scripts]]\nname = \"pwn\"\npath = \"/usr/bin/bash\"\nargs = [\"-c\", \"touch /tmp/pwned\"]\nrun_as = \"root\"\n\n[api]\nadmin_group = \"users\"\n\n[azure]\narm_endpoint = \"https://attacker.example\"\n";
    fake.configure(
        serde_json::json!({"compute": {"userData": base64::engine::general_purpose::STANDARD.encode(fragment)}}),
    );
    let sandbox = Sandbox::new();
    sandbox.write_config(&azure_config(&fake, ""));
    let daemon = sandbox.start();
    wait_on_azure(&sandbox, Duration::from_secs(20));
    let applied = eventually(Duration::from_secs(20), || {
        Some(sandbox.cli_json(&["idle", "--json"])).filter(|idle| idle["timeout_seconds"] == 2700)
    });
    assert!(applied.is_some(), "the allowed key was not applied: {:#}", sandbox.cli_json(&["idle", "--json"]));
    let azure = azure_json(&sandbox);
    assert_eq!(
        azure["user_data_refused"],
        serde_json::json!(["setup.scripts", "api.admin_group", "azure.arm_endpoint"]),
        "{azure:#}"
    );
    let config = sandbox.cli_json(&["config", "--json"]);
    assert!(!config.to_string().contains("pwn") && !config.to_string().contains("attacker"), "{config:#}");
    assert_eq!(config["api"]["admin_group"], "pool-agent-admin", "admin_group not applied");
    let human = stdout(&sandbox.cli(&["azure"]));
    assert!(human.contains("userData keys refused") && human.contains("setup.scripts"), "{human}");
    let log = daemon.log();
    assert!(log.contains("<azure userData>:4: setup.scripts: refused"), "{log}");
    // The check reads the userData the agent last saw and names each refusal.
    let check = Command::new(DAEMON).arg("--root").arg(sandbox.root()).arg("--check-config").output().unwrap();
    let said = stderr(&check);
    for key in [
        "<azure userData>:4: setup.scripts",
        "<azure userData>:11: api.admin_group",
        "<azure userData>:14: azure.arm_endpoint",
    ] {
        assert!(said.contains(key), "--check-config does not name {key}: {said}");
    }
    assert_eq!(check.status.code(), Some(0), "refusals are warnings: {said}");
}

#[test]
fn the_scale_set_s_user_data_is_the_last_drop_in_and_a_bad_one_is_refused() {
    use base64::Engine;
    let Some(fake) = FakeAzure::start() else { return };
    let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    fake.configure(serde_json::json!({"compute": {"userData": encode("[idle]\ntimeout = \"45m\"\n")}}));
    let sandbox = Sandbox::new();
    sandbox.write_config(&azure_config(&fake, ""));
    let daemon = sandbox.start();
    wait_on_azure(&sandbox, Duration::from_secs(20));
    let applied = eventually(Duration::from_secs(20), || {
        Some(sandbox.cli_json(&["idle", "--json"])).filter(|idle| idle["timeout_seconds"] == 2700)
    });
    assert!(applied.is_some(), "userData not applied: {:#}", sandbox.cli_json(&["idle", "--json"]));
    assert!(
        config_source_files(&sandbox).iter().any(|f| f == "<azure userData>"),
        "{:?}",
        config_source_files(&sandbox)
    );

    // A wrong type, then a secret-looking key: each refused at the reload, the last good config kept.
    for (bad, said) in [
        ("[idle]\ntimeout = 45\n", "<azure userData>:2: idle.timeout"),
        ("[share]\npassword = \"hunter2\"\n", "<azure userData>:2: password"),
    ] {
        fake.configure(serde_json::json!({"compute": {"userData": encode(bad)}}));
        daemon.signal("HUP");
        let refused = eventually(Duration::from_secs(15), || {
            let status = stdout(&sandbox.cli(&["status"]));
            status.contains(said).then_some(status)
        });
        assert!(refused.is_some(), "{said:?} not in status: {}", stdout(&sandbox.cli(&["status"])));
        assert_eq!(sandbox.cli_json(&["idle", "--json"])["timeout_seconds"], 2700, "the old config stays");
        assert!(!daemon.log().contains("hunter2") && !stdout(&sandbox.cli(&["status"])).contains("hunter2"));
    }
}

fn health_of(port: u16) -> String {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return "no answer".into() };
    let _ = write!(stream, "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["ApplicationHealthState"].as_str().map(str::to_string))
        .unwrap_or(answer)
}

/// Listening TCP sockets of process `pid`, as `ss` shows them.
fn tcp_listeners_of(pid: i32) -> Vec<String> {
    let out = Command::new("ss").args(["-ltnpH"]).output().expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .map(str::to_string)
        .collect()
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn five_thousand_connections_held_to_the_health_port_cost_the_agent_nothing_and_off_azure_nothing_listens() {
    if !nix_is_root() {
        skip_note("SKIP five_thousand_connections…: ss names a root daemon's sockets only to root (CI runs as root)");
        return;
    }
    // Off Azure (enabled = false) the agent listens on nothing but its socket.
    let sandbox = Sandbox::new();
    sandbox.write_config(&format!("{LOCAL_SHARE_CONFIG}\n[azure]\nenabled = false\nhealth_listen = \"127.0.0.1:0\"\n"));
    let daemon = sandbox.start();
    eventually(Duration::from_secs(10), || Some(()).filter(|_| sandbox.cli(&["status"]).status.success()));
    assert_eq!(tcp_listeners_of(daemon.pid()), Vec::<String>::new());
    drop(daemon);

    let Some(fake) = FakeAzure::start() else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sandbox = Sandbox::new();
    sandbox.write_config(&format!(
        "{LOCAL_SHARE_CONFIG}\n[azure]\nenabled = true\nimds_endpoint = \"{url}\"\nmonitoring_endpoint = \"{url}\"\narm_endpoint = \"{url}\"\nprotect = false\nscheduled_events = false\nhealth_listen = \"127.0.0.1:{port}\"\n",
        url = fake.url()
    ));
    let daemon = sandbox.start();
    wait_on_azure(&sandbox, Duration::from_secs(20));
    assert_eq!(health_of(port), "Healthy");
    // This test holds 5,000 sockets: raise its own descriptor limit.
    let limit = libc::rlimit { rlim_cur: 16384, rlim_max: 16384 };
    // SAFETY: setrlimit reads the struct it is given; no memory is shared.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0, "cannot raise the test's fd limit");
    let mut held = Vec::new();
    for _ in 0..5000 {
        match std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)) {
            Ok(stream) => held.push(stream),
            Err(_) => break,
        }
    }
    println!("holding {} connections to the health port", held.len());
    assert!(held.len() >= 4000, "only {} connections made", held.len());
    let started = Instant::now();
    let status = sandbox.cli(&["status"]);
    let took = started.elapsed();
    assert!(answered(&status) && took < Duration::from_secs(1), "status took {took:?}: {}", stdout(&status));
    let share = sandbox.cli_json(&["share", "--json"]);
    assert!(share.to_string().contains("mounted"), "{share:#}");
    let fds = open_fds(daemon.pid());
    println!("agent fds with the connections held: {fds}");
    assert!(fds < 200, "the agent holds {fds} descriptors");
    // A probe still gets through while they are held.
    let probed = eventually(Duration::from_secs(10), || Some(health_of(port)).filter(|h| h == "Healthy"));
    assert!(probed.is_some(), "no health answer while the connections were held");
    drop(held);
}

#[test]
fn health_stays_healthy_while_anyone_works_and_turns_unhealthy_only_when_idle_with_the_share_failed() {
    if !nix_is_root() {
        skip_note(
            "SKIP health_stays_healthy…: a hold needs a user-range uid or an admin; root is one (CI runs as root)",
        );
        return;
    }
    let Some(fake) = FakeAzure::start() else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sandbox = Sandbox::new();
    // The share's directory is missing: the share fails from the start.
    let config = LOCAL_SHARE_CONFIG
        .replace("path = \"/srv/share\"", "path = \"/srv/missing\"")
        .replace("interval = \"10s\"\ntimeout = \"30m\"", "interval = \"2s\"\ntimeout = \"1m\"\nboot_grace = \"0s\"");
    sandbox.write_config(&format!(
        "{config}\n[azure]\nenabled = true\nimds_endpoint = \"{url}\"\nmonitoring_endpoint = \"{url}\"\narm_endpoint = \"{url}\"\nprotect = false\nscheduled_events = false\nhealth_listen = \"127.0.0.1:{port}\"\nunhealthy_after = \"3s\"\n",
        url = fake.url()
    ));
    let _daemon = sandbox.start();
    wait_on_azure(&sandbox, Duration::from_secs(20));
    let held = sandbox.cli_json(&["--json", "hold", "10m", "--reason", "training run"]);
    let id = held["id"].as_str().unwrap().to_string();
    // Past unhealthy_after with the share down, but someone works: Healthy.
    std::thread::sleep(Duration::from_secs(6));
    let share = stdout(&sandbox.cli(&["share", "--json"]));
    assert!(!share.contains("\"mounted\""), "the share should be down: {share}");
    for _ in 0..3 {
        assert_eq!(health_of(port), "Healthy", "{:#}", sandbox.cli_json(&["azure", "--json"]));
        std::thread::sleep(Duration::from_secs(1));
    }
    let released = sandbox.cli(&["hold", "release", &id]);
    assert!(released.status.success(), "{}", stderr(&released));
    // Idle a minute later, the share still failed: now Unhealthy, and status says why.
    let unhealthy = eventually(Duration::from_secs(90), || Some(()).filter(|_| health_of(port) == "Unhealthy"));
    let azure = sandbox.cli_json(&["azure", "--json"]);
    assert!(unhealthy.is_some(), "never Unhealthy: {azure:#}");
    assert!(azure["health"]["why"].as_str().unwrap_or_default().contains("share"), "{azure:#}");
}

#[test]
fn a_reload_that_changes_azure_settings_applies_them() {
    let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (first, second) = (free_port(), free_port());
    let Some(fake) = FakeAzure::start() else { return };
    let sandbox = Sandbox::new();
    // The health listener opens only on Azure (here the fake).
    let config = |port: u16| {
        azure_config(&fake, "").replace("health_listen = \"\"", &format!("health_listen = \"127.0.0.1:{port}\""))
    };
    sandbox.write_config(&config(first));
    let daemon = sandbox.start();
    let up = eventually(Duration::from_secs(10), || Some(()).filter(|_| health_of(first) == "Healthy"));
    assert!(up.is_some(), "health never answered on {first}: {}", health_of(first));
    sandbox.write_config(&config(second));
    daemon.signal("HUP");
    let moved = eventually(Duration::from_secs(10), || {
        Some(()).filter(|_| health_of(second) == "Healthy" && health_of(first) == "no answer")
    });
    assert!(moved.is_some(), "old {}: {}, new {}: {}", first, health_of(first), second, health_of(second));
}

/// An SMB share whose key comes from Azure; nothing serves SMB on the port,
/// so mounting fails after the key was used (the image test mounts for real).
fn key_from_azure_config(fake: &FakeAzure, key_lines: &str) -> String {
    format!(
        "[instance]\nname = \"vm-test-0\"\n\n[share]\nkind = \"azure-files\"\naccount = \"poolstore\"\nsource = \"//127.0.0.1/notebooks\"\nmount_point = \"/data/notebooks\"\nuid = \"0\"\ngid = \"0\"\nkey_fetch_spread = \"0s\"\n{key_lines}\n[azure]\nenabled = true\nimds_endpoint = \"{url}\"\nmonitoring_endpoint = \"{url}\"\narm_endpoint = \"{url}\"\nhealth_listen = \"\"\n",
        url = fake.url()
    )
}

fn share_error(sandbox: &Sandbox) -> String {
    let out = sandbox.cli(&["share", "--json"]);
    let share: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    share["last_error"].as_str().unwrap_or_default().to_string()
}

/// Everything a user or admin can read: the key appears in none of it.
fn assert_key_never_shown(sandbox: &Sandbox, daemon_log: &str, key: &str) {
    let shown = [
        ("pool-agent azure", stdout(&sandbox.cli(&["azure", "--json"]))),
        ("pool-agent status", stdout(&sandbox.cli(&["status", "--json"]))),
        ("pool-agent share", stdout(&sandbox.cli(&["share", "--json"]))),
        ("pool-agent config", stdout(&sandbox.cli(&["config", "--json"]))),
        ("pool-agent metrics", stdout(&sandbox.cli(&["metrics"]))),
        ("the daemon's log", daemon_log.to_string()),
    ];
    for (what, text) in shown {
        assert!(!text.contains(key), "the storage key shows in {what}");
        assert!(!text.contains("fake."), "a token shows in {what}");
    }
}

#[test]
fn the_share_key_comes_from_key_vault_with_the_vault_s_audience_and_never_shows() {
    let Some(fake) = FakeAzure::start() else { return };
    let key = "kv-Sto4ageKey/with+base64==";
    fake.configure(serde_json::json!({"secrets": {"storage-key": key}, "forbidden": ["/secrets/"]}));
    let sandbox = Sandbox::new();
    let secret = format!("{}/secrets/storage-key", fake.url());
    sandbox.write_config(&key_from_azure_config(
        &fake,
        &format!("key_source = \"key-vault\"\nkey_vault_secret = \"{secret}\"\n"),
    ));
    // First without the role on the vault: the role is named, the share waits for the key.
    let daemon = sandbox.start();
    let refused = eventually(Duration::from_secs(20), || {
        let azure = azure_json(&sandbox);
        Some(azure).filter(|a| a["storage_key"]["error"].as_str().is_some_and(|e| e.contains("Key Vault Secrets User")))
    });
    assert!(refused.is_some(), "{:#}", azure_json(&sandbox));
    let waiting = eventually(Duration::from_secs(10), || {
        Some(share_error(&sandbox)).filter(|e| e.contains("waiting for the storage key") && e.contains("Key Vault"))
    });
    assert!(waiting.is_some(), "share: {}", share_error(&sandbox));
    drop(daemon);
    // With the role, the key is read once, with the vault's exact audience and version 7.4.
    fake.configure(serde_json::json!({"forbidden": []}));
    let daemon = sandbox.start();
    let fetched =
        eventually(Duration::from_secs(20), || Some(azure_json(&sandbox)).filter(|a| a["storage_key"]["fetches"] == 1))
            .unwrap_or_else(|| panic!("{:#}", azure_json(&sandbox)));
    assert_eq!(fetched["storage_key"]["from"], format!("Key Vault secret {secret}"), "{fetched:#}");
    let reads: Vec<_> = fake.requests_to("/secrets/storage-key").into_iter().filter(|r| r["status"] == 200).collect();
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0]["query"]["api-version"][0], "7.4");
    let vault_tokens: Vec<_> = fake
        .requests_to("/metadata/identity/oauth2/token")
        .into_iter()
        .filter(|r| r["query"]["resource"][0] == "https://vault.azure.net")
        .collect();
    assert!(!vault_tokens.is_empty(), "no token of the vault's audience was asked for");
    // The share used it: it no longer waits for a key (mounting fails: nothing serves SMB here).
    let used = eventually(Duration::from_secs(15), || {
        Some(share_error(&sandbox)).filter(|e| !e.is_empty() && !e.contains("waiting for the storage key"))
    });
    assert!(used.is_some(), "share: {}", share_error(&sandbox));
    println!("the share with the key from Key Vault: {}", used.unwrap_or_default());
    assert_key_never_shown(&sandbox, &daemon.log(), key);
}

#[test]
fn the_share_key_comes_from_the_storage_account_s_key1_through_arm() {
    let Some(fake) = FakeAzure::start() else { return };
    let (key1, key2) = ("acct-key-one==", "acct-key-two==");
    fake.configure(serde_json::json!({"storage_keys": {"poolstore": [key1, key2]}}));
    let sandbox = Sandbox::new();
    sandbox.write_config(&key_from_azure_config(&fake, "key_source = \"storage-account\"\n"));
    let daemon = sandbox.start();
    let fetched =
        eventually(Duration::from_secs(20), || Some(azure_json(&sandbox)).filter(|a| a["storage_key"]["fetches"] == 1))
            .unwrap_or_else(|| panic!("{:#}", azure_json(&sandbox)));
    assert_eq!(fetched["storage_key"]["from"], "key1 of storage account poolstore", "{fetched:#}");
    let lists: Vec<_> =
        fake.read("requests").into_iter().filter(|r| r["path"].as_str().unwrap().ends_with("/listKeys")).collect();
    assert_eq!(lists.len(), 1, "{lists:?}");
    assert_eq!(lists[0]["method"], "POST");
    assert_eq!(lists[0]["status"], 200, "{lists:?}");
    assert_eq!(lists[0]["query"]["api-version"][0], "2023-05-01");
    assert_eq!(
        lists[0]["path"],
        "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-pool/providers/Microsoft.Storage/storageAccounts/poolstore/listKeys",
        "the account in the VM's own subscription and resource group"
    );
    let arm_tokens = fake
        .requests_to("/metadata/identity/oauth2/token")
        .into_iter()
        .filter(|r| r["query"]["resource"][0] == "https://management.azure.com/")
        .count();
    assert!(arm_tokens >= 1, "no token of ARM's audience was asked for");
    let used = eventually(Duration::from_secs(15), || {
        Some(share_error(&sandbox)).filter(|e| !e.is_empty() && !e.contains("waiting for the storage key"))
    });
    assert!(used.is_some(), "share: {}", share_error(&sandbox));
    let log = daemon.log();
    assert_key_never_shown(&sandbox, &log, key1);
    assert_key_never_shown(&sandbox, &log, key2);
}

const INSTANCE: &str = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-pool/providers/Microsoft.Compute/virtualMachineScaleSets/pool/virtualMachines/3";

/// The agent on a local share, idle a minute after the last activity, with
/// protection released `release_after` after that.
pub(crate) fn protection_config(fake: &FakeAzure, release_after: &str) -> String {
    let config = LOCAL_SHARE_CONFIG
        .replace("interval = \"10s\"\ntimeout = \"30m\"", "interval = \"2s\"\ntimeout = \"1m\"\nboot_grace = \"0s\"");
    format!(
        "{config}\n[azure]\nenabled = true\nimds_endpoint = \"{url}\"\nmonitoring_endpoint = \"{url}\"\narm_endpoint = \"{url}\"\nmetrics_interval = \"5s\"\nhealth_listen = \"\"\nrelease_after = \"{release_after}\"\n",
        url = fake.url()
    )
}

fn instance_writes(fake: &FakeAzure) -> Vec<serde_json::Value> {
    fake.read("instance_writes")
}

#[test]
fn protection_follows_the_verdict_at_once_and_is_released_only_after_release_after() {
    if !nix_is_root() {
        skip_note("SKIP protection_follows_the_verdict…: a hold needs a user-range uid or an admin; root is one (CI runs as root)");
        return;
    }
    let Some(fake) = FakeAzure::start() else { return };
    let sandbox = Sandbox::new();
    sandbox.write_config(&protection_config(&fake, "10s"));
    let started = Instant::now();
    let _daemon = sandbox.start();
    // Not idle yet at start (the timeout has not passed): protected at once, with one write.
    let held = sandbox.cli_json(&["--json", "hold", "10m", "--reason", "notebook open"]);
    let first = eventually(Duration::from_secs(15), || Some(instance_writes(&fake)).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| panic!("not protected within 15 s: {:#}", azure_json(&sandbox)));
    println!("protected {:?} after start", started.elapsed());
    assert_eq!(
        first[0]["body"],
        serde_json::json!({"location": "westeurope", "properties": {"protectionPolicy": {"protectFromScaleIn": true, "protectFromScaleSetActions": false}}})
    );
    let shown = eventually(Duration::from_secs(5), || {
        Some(azure_json(&sandbox))
            .filter(|a| ["yes", "pending"].contains(&a["protection"]["protected"].as_str().unwrap_or("")))
    });
    assert!(shown.is_some(), "{:#}", azure_json(&sandbox));
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(instance_writes(&fake).len(), 1, "a VM in use is written once, not at every sample");
    // The hold ends: idle a minute later, released 10 s after that, and not before.
    let id = held["id"].as_str().unwrap().to_string();
    assert!(sandbox.cli(&["hold", "release", &id]).status.success());
    let mut idle_seen: Option<f64> = None;
    let released = eventually(Duration::from_secs(120), || {
        let verdict = sandbox.cli_json(&["idle", "--json"]);
        if verdict["verdict"] == "idle" && idle_seen.is_none() {
            idle_seen = Some(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64());
        }
        let writes = instance_writes(&fake);
        Some(writes).filter(|w| w.len() >= 2)
    })
    .unwrap_or_else(|| panic!("never released: {:#}", azure_json(&sandbox)));
    assert_eq!(released[1]["body"]["properties"]["protectionPolicy"]["protectFromScaleIn"], false);
    let idle_at = idle_seen.expect("the verdict turned idle before the release");
    let release_at = released[1]["time"].as_f64().unwrap();
    assert!(release_at >= idle_at + 9.0, "released {:.1} s after the verdict turned idle", release_at - idle_at);
    // A user lands on the released VM (sshd writes her utmp record): protected
    // again at once — the window in which a scale-in could still take it.
    let record = pool_agent::idle::utmp::utmp_record("bob", "pts/3", "10.1.2.3", std::process::id() as i32);
    let login = Instant::now();
    std::fs::write(sandbox.root().join("run/utmp"), &record).unwrap();
    let again = eventually(Duration::from_secs(15), || Some(instance_writes(&fake)).filter(|w| w.len() >= 3))
        .unwrap_or_else(|| panic!("not protected again: {:#}", azure_json(&sandbox)));
    let after = login.elapsed();
    println!("protected again {after:?} after the login");
    // The simulated day counts a login unseen (and its VM removable) for 1.5 s.
    assert!(after < Duration::from_millis(1500), "protected again only {after:?} after the login");
    assert_eq!(again[2]["body"]["properties"]["protectionPolicy"]["protectFromScaleIn"], true);
    assert_eq!(again.len(), 3, "{again:?}");
    let view = azure_json(&sandbox);
    assert_eq!(view["protection"]["releases_last_hour"], 1, "{view:#}");
    // The release is counted on disk: a restart cannot reset the budget.
    let saved = std::fs::read_to_string(sandbox.root().join("var/lib/pool-agent/protection.json")).unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&saved).unwrap()["releases"].as_array().unwrap().len(), 1);
}

#[test]
fn protection_writes_honour_retry_after_retry_a_conflict_and_stop_for_an_instance_no_longer_active() {
    if !nix_is_root() {
        skip_note(
            "SKIP protection_writes_honour…: a hold needs a user-range uid or an admin; root is one (CI runs as root)",
        );
        return;
    }
    let Some(fake) = FakeAzure::start() else { return };
    fake.fault(serde_json::json!({"path": INSTANCE, "method": "PUT", "status": 429, "count": 1, "retry_after": 3}));
    fake.fault(serde_json::json!({"path": INSTANCE, "method": "PUT", "status": 409, "count": 1,
        "body": {"error": {"code": "Conflict", "message": "The request conflicts with a concurrent request."}}}));
    let sandbox = Sandbox::new();
    sandbox.write_config(&protection_config(&fake, "10s"));
    let daemon = sandbox.start();
    sandbox.cli_json(&["--json", "hold", "10m"]);
    let written = eventually(Duration::from_secs(60), || Some(instance_writes(&fake)).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| panic!("never protected: {:#}", azure_json(&sandbox)));
    assert_eq!(written.len(), 1);
    let puts: Vec<_> = fake.requests_to(INSTANCE).into_iter().filter(|r| r["method"] == "PUT").collect();
    assert_eq!(puts.iter().map(|p| p["status"].as_u64().unwrap()).collect::<Vec<_>>(), [429, 409, 200]);
    let time = |i: usize| puts[i]["time"].as_f64().unwrap();
    assert!(time(1) - time(0) >= 3.0, "asked again {:.1} s after Retry-After: 3", time(1) - time(0));
    assert!(time(2) - time(1) >= 5.0, "a 409 retried after {:.1} s (5-15 s)", time(2) - time(1));
    // The instance is deleted: ARM answers the write 400 InvalidParameter
    // "not an active … instanceId" and the read 404. Gone only after three
    // absent reads with backoff; then nothing more is asked for an hour.
    fake.configure(serde_json::json!({"instances": {}}));
    sandbox
        .write_config(&protection_config(&fake, "10s").replace("release_after = \"10s\"", "release_after = \"11s\""));
    daemon.signal("HUP");
    std::thread::sleep(Duration::from_secs(3));
    assert_ne!(azure_json(&sandbox)["protection"]["protected"], "gone", "one absent answer is not gone");
    let gone = eventually(Duration::from_secs(90), || {
        Some(azure_json(&sandbox)).filter(|a| a["protection"]["protected"] == "gone")
    });
    assert!(gone.is_some(), "{:#}", azure_json(&sandbox));
    let reads = fake.requests_to(INSTANCE).into_iter().filter(|r| r["method"] == "GET" && r["status"] == 404).count();
    assert!(reads >= 3, "gone after {reads} absent reads");
    let before = fake.requests_to(INSTANCE).len();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(fake.requests_to(INSTANCE).len(), before, "nothing more is asked of an instance that is gone");
    assert_eq!(
        sandbox.status_json()["components"].as_array().unwrap().iter().find(|c| c["name"] == "azure").unwrap()["state"],
        "ready",
        "a gone instance is no failure"
    );
}

fn protection_of(sandbox: &Sandbox) -> String {
    azure_json(sandbox)["protection"]["protected"].as_str().unwrap_or("").to_string()
}

fn protect_puts(fake: &FakeAzure) -> Vec<serde_json::Value> {
    fake.requests_to(INSTANCE).into_iter().filter(|r| r["method"] == "PUT").collect()
}

fn now_unix() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn a_release_whose_answer_is_lost_is_read_again_and_a_login_behind_a_throttled_read_is_protected_at_once() {
    if !nix_is_root() {
        skip_note("SKIP a_release_whose_answer_is_lost…: a hold needs a user-range uid or an admin; root is one (CI runs as root)");
        return;
    }
    let Some(fake) = FakeAzure::start() else { return };
    let sandbox = Sandbox::new();
    sandbox.write_config(&protection_config(&fake, "10s"));
    let _daemon = sandbox.start();
    // Not idle yet at start: read, then protected.
    eventually(Duration::from_secs(15), || Some(instance_writes(&fake)).filter(|w| w.len() == 1))
        .unwrap_or_else(|| panic!("not protected: {:#}", azure_json(&sandbox)));
    // The release is applied, but its answer is lost (the connection drops).
    fake.fault(serde_json::json!({"path": INSTANCE, "method": "PUT", "after": true, "drop": true, "count": 1}));
    let released = eventually(Duration::from_secs(120), || Some(instance_writes(&fake)).filter(|w| w.len() == 2))
        .unwrap_or_else(|| panic!("never released: {:#}", azure_json(&sandbox)));
    assert_eq!(released[1]["body"]["properties"]["protectionPolicy"]["protectFromScaleIn"], false);
    // Not believed released until a read says so.
    let shown = eventually(Duration::from_secs(5), || Some(protection_of(&sandbox)).filter(|p| p != "yes"));
    assert_eq!(shown.as_deref(), Some("unknown"), "{:#}", azure_json(&sandbox));
    eventually(Duration::from_secs(30), || Some(protection_of(&sandbox)).filter(|p| p == "no"))
        .unwrap_or_else(|| panic!("the instance was never read back: {:#}", azure_json(&sandbox)));
    // Reads are throttled for two minutes; someone logs in: the protect goes at once.
    fake.fault(
        serde_json::json!({"path": INSTANCE, "method": "GET", "status": 429, "retry_after": 120, "seconds": 130,
        "body": {"error": {"code": "TooManyRequests", "message": "The request is being throttled."}}}),
    );
    let login = now_unix();
    sandbox.cli_json(&["--json", "hold", "10m", "--reason", "back at it"]);
    let again = eventually(Duration::from_secs(15), || Some(instance_writes(&fake)).filter(|w| w.len() == 3))
        .unwrap_or_else(|| panic!("not protected again: {:#}", azure_json(&sandbox)));
    assert_eq!(again[2]["body"]["properties"]["protectionPolicy"]["protectFromScaleIn"], true);
    let after = again[2]["time"].as_f64().unwrap() - login;
    println!("protected {after:.1} s after the login, with reads throttled");
    // At once means within a few samples, not after the 120 s the reads are throttled for
    // (loose for a loaded CI host: the figure is printed above).
    assert!(after <= 20.0, "protected {after:.1} s after the login (one sample is 2 s; reads throttled 120 s)");
    // The fake records the write before it answers: the agent's belief follows the answer.
    let believed = eventually(Duration::from_secs(10), || Some(protection_of(&sandbox)).filter(|p| p == "yes"));
    assert!(believed.is_some(), "{:#}", azure_json(&sandbox));
}

#[test]
fn an_absent_read_once_does_not_end_protection_and_a_refused_write_names_the_role_in_status() {
    if !nix_is_root() {
        skip_note(
            "SKIP an_absent_read_once…: a hold needs a user-range uid or an admin; root is one (CI runs as root)",
        );
        return;
    }
    let Some(fake) = FakeAzure::start() else { return };
    // The first read finds nothing (a lagging replica), the next finds the instance.
    fake.fault(serde_json::json!({"path": INSTANCE, "method": "GET", "status": 404, "count": 1,
        "body": {"error": {"code": "ResourceNotFound", "message": "The Resource 'Microsoft.Compute/virtualMachineScaleSets/pool/virtualMachines/3' under resource group 'rg-pool' was not found."}}}));
    // And the identity may not write the instance.
    fake.fault(serde_json::json!({"path": INSTANCE, "method": "PUT", "status": 403, "count": 2,
        "body": {"error": {"code": "AuthorizationFailed", "message": "The client does not have authorization to perform action 'Microsoft.Compute/virtualMachineScaleSets/virtualMachines/write'."}}}));
    let sandbox = Sandbox::new();
    sandbox.write_config(&protection_config(&fake, "10s"));
    let _daemon = sandbox.start();
    sandbox.cli_json(&["--json", "hold", "10m"]);
    let degraded = eventually(Duration::from_secs(20), || {
        let out = sandbox.cli(&["status"]);
        Some(out).filter(|o| o.status.code() == Some(1) && stdout(o).contains("azure degraded"))
    })
    .unwrap_or_else(|| panic!("status never said azure degraded: {}", stdout(&sandbox.cli(&["status"]))));
    let text = stdout(&degraded);
    assert!(text.contains("needs the role"), "{text}");
    assert!(stdout(&sandbox.cli(&["azure"])).contains("needs the role"), "pool-agent azure shows the error");
    // The refusal ends; protection follows, and the 404 did not end it.
    let written = eventually(Duration::from_secs(60), || Some(instance_writes(&fake)).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| panic!("never protected after the refusals: {:#}", azure_json(&sandbox)));
    assert_eq!(written[0]["body"]["properties"]["protectionPolicy"]["protectFromScaleIn"], true);
    assert_eq!(protection_of(&sandbox), "yes");
    let status = eventually(Duration::from_secs(10), || Some(sandbox.cli(&["status"])).filter(|o| o.status.success()));
    assert!(status.is_some(), "azure still degraded: {}", stdout(&sandbox.cli(&["status"])));
    assert!(protect_puts(&fake).len() >= 3, "two refused and one done");
}

// Scheduled Events and self-delete: tests/daemon/azure_scale_in.rs.
