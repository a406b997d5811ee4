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

struct FakeAzure {
    child: Child,
    port: u16,
}

impl FakeAzure {
    fn start() -> Option<Self> {
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

    fn url(&self) -> String {
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

    fn fault(&self, fault: serde_json::Value) {
        self.call("POST", "/_fake/fault", &fault.to_string());
    }

    fn configure(&self, config: serde_json::Value) {
        self.call("POST", "/_fake/config", &config.to_string());
    }

    fn read(&self, what: &str) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.call("GET", &format!("/_fake/{what}"), "")).unwrap_or_default()
    }

    fn requests_to(&self, path: &str) -> Vec<serde_json::Value> {
        self.read("requests").into_iter().filter(|r| r["path"] == path).collect()
    }
}

impl Drop for FakeAzure {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn azure_config(fake: &FakeAzure, extra: &str) -> String {
    format!(
        "{LOCAL_SHARE_CONFIG}\n[azure]\nenabled = true\nimds_endpoint = \"{url}\"\nmonitoring_endpoint = \"{url}\"\nmetrics_interval = \"2s\"\nhealth_listen = \"\"\n{extra}",
        url = fake.url()
    )
}

fn azure_json(sandbox: &Sandbox) -> serde_json::Value {
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
    assert!(tokens.len() >= 3, "renewed within 25 s of 10 s tokens: {tokens:?}");
    for token in &tokens {
        assert_eq!(token["query"]["resource"][0], "https://monitoring.azure.com/", "{token}");
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
    // 20 s of 503s and connections that hang past the client's timeout: 10 buckets at 2 s.
    let outage_start = std::time::SystemTime::now();
    fake.fault(serde_json::json!({"path": metrics_path, "status": 503, "seconds": 20, "retry_after": 1}));
    std::thread::sleep(Duration::from_secs(20));
    let outage_end = std::time::SystemTime::now();
    std::thread::sleep(Duration::from_secs(12));
    let points = fake.read("points");
    let idle_times: std::collections::BTreeSet<String> =
        points.iter().filter(|p| p["metric"] == "Idle").map(|p| p["time"].as_str().unwrap().to_string()).collect();
    let mut at = outage_start + Duration::from_secs(2);
    while at + Duration::from_secs(2) < outage_end {
        let secs = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 2 * 2;
        let stamp = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string();
        assert!(idle_times.contains(&stamp), "bucket {stamp} of the outage never arrived; have {idle_times:?}");
        at += Duration::from_secs(2);
    }
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
fn the_scale_set_s_user_data_is_the_last_drop_in_and_a_bad_one_is_refused() {
    use base64::Engine;
    let Some(fake) = FakeAzure::start() else { return };
    let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    fake.configure(serde_json::json!({"compute": {"userData": encode("[idle]\ntimeout = \"45m\"\n")}}));
    let sandbox = Sandbox::new();
    sandbox.write_config(&azure_config(&fake, ""));
    let daemon = sandbox.start();
    wait_on_azure(&sandbox, Duration::from_secs(20));
    let applied = eventually(Duration::from_secs(10), || {
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
