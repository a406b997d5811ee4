//! Jupyter: a busy kernel, a kernel that executed recently, or a terminal
//! with recent input is activity, with or without a browser connected. Asked
//! (`/api/kernels`, `/api/terminals`) of every server found without
//! configuration from its runtime file (`jpserver-<pid>.json` in each user's
//! Jupyter runtime directory: JupyterLab started by a user, servers a
//! JupyterHub spawned), of each server in `idle.jupyter_urls`, and of every
//! user server a JupyterHub lists (`/hub/api/users`, then each server
//! through the hub); all at once, each under its own deadline. A local
//! server that refuses connections is not running (no server); a 401/403 is
//! a config error shown in status; a token is never shown (URLs lose their
//! query in reasons and logs). https on loopback accepts the server's own
//! self-signed certificate. A server's or the
//! hub's own `last_activity` is not used: an open browser tab's polling
//! moves it, and such a tab must not keep the VM billed.

use super::signal::{Sample, Source};
use crate::core::accounts::AccountsView;
use crate::core::beneath;
use crate::core::paths::SystemPaths;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Work that is this recent makes the signal active now.
const RECENT: Duration = Duration::from_secs(120);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Debug, Deserialize)]
struct Kernel {
    #[serde(default)]
    name: String,
    #[serde(default)]
    execution_state: String,
    #[serde(default)]
    last_activity: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Terminal {
    #[serde(default)]
    name: String,
    #[serde(default)]
    last_activity: Option<String>,
}

#[derive(Debug, Deserialize)]
struct HubUser {
    name: String,
    #[serde(default)]
    servers: BTreeMap<String, HubServer>,
}

#[derive(Debug, Deserialize)]
struct HubServer {
    #[serde(default)]
    url: String,
    #[serde(default)]
    ready: bool,
}

/// A server's runtime file (`jpserver-<pid>.json`), as jupyter_server writes it.
#[derive(Debug, Deserialize)]
struct RuntimeFile {
    #[serde(default)]
    url: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    pid: u32,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    base_url: String,
}

/// One server to ask: where, as whom, with which token.
#[derive(Clone)]
struct Server {
    base: String,
    who: String,
    token: Option<String>,
    /// Found from a runtime file (its process checked alive) rather than configured.
    discovered: bool,
}

/// Where Jupyter writes its runtime files, under a user's home and under
/// `/run/user/<uid>` (jupyter_core's data dir, or platformdirs' runtime dir).
const RUNTIME_DIRS: [&str; 2] = [".local/share/jupyter/runtime", "jupyter/runtime"];
const RUNTIME_FILE_MAX: u64 = 64 * 1024;

/// Ports of the Jupyter servers and hub the signal reads: the connections
/// signal leaves their traffic to it (a browser tab's polling is not work).
pub type JudgedPorts = std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<u16>>>;

pub struct Jupyter {
    servers: Vec<String>,
    token_file: Option<PathBuf>,
    hub: String,
    hub_token_file: Option<PathBuf>,
    client: reqwest::Client,
    /// For https on loopback: servers there serve their own self-signed certificate.
    loopback_client: reqwest::Client,
    accounts: AccountsView,
    paths: std::sync::Arc<SystemPaths>,
    uids: crate::core::user_uids::UserUids,
    judged_ports: JudgedPorts,
}

/// A token from a root-only file (trailing newline dropped).
fn read_token(file: &Option<PathBuf>) -> Result<Option<String>, String> {
    let Some(file) = file else { return Ok(None) };
    let text =
        std::fs::read_to_string(file).map_err(|err| format!("cannot read the token file {}: {err}", file.display()))?;
    Ok(Some(text.trim().to_string()))
}

fn parse_time(text: &Option<String>) -> Option<SystemTime> {
    text.as_deref().and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
}

pub use crate::config::shown_url;

fn is_loopback(url: &str) -> bool {
    let Some(rest) = url.split_once("://").map(|(_, rest)| rest) else { return false };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.trim_start_matches('[').split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn port_of(url: &str) -> Option<u16> {
    let rest = url.split_once("://")?.1;
    let host = rest.split('/').next()?;
    let port = host.rsplit_once(':')?.1;
    port.parse().ok()
}

/// How one server answered.
enum Asked {
    Read,
    /// Nothing listens there: no server, not unknown.
    NotRunning(String),
    /// The server cannot be read: unknown (it may run someone's work).
    Problem(String),
}

impl Jupyter {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        servers: Vec<String>,
        token_file: Option<PathBuf>,
        hub: String,
        hub_token_file: Option<PathBuf>,
        accounts: AccountsView,
        paths: std::sync::Arc<SystemPaths>,
        uids: crate::core::user_uids::UserUids,
        judged_ports: JudgedPorts,
    ) -> Self {
        let build = |loopback: bool| {
            reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .connect_timeout(Duration::from_secs(2))
                .no_proxy()
                .danger_accept_invalid_certs(loopback)
                .build()
                .unwrap_or_default()
        };
        Self {
            servers,
            token_file,
            hub,
            hub_token_file,
            client: build(false),
            loopback_client: build(true),
            accounts,
            paths,
            uids,
            judged_ports,
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, url: &str, token: &Option<String>) -> Result<T, Asked> {
        let client = if url.starts_with("https://") && is_loopback(url) { &self.loopback_client } else { &self.client };
        let mut request = client.get(url);
        if let Some(token) = token {
            request = request.header("Authorization", format!("token {token}"));
        }
        let shown = shown_url(url);
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) if err.is_connect() && is_loopback(url) && !err.is_timeout() => {
                return Err(Asked::NotRunning(format!("{shown}: not running ({})", short(&err))))
            }
            Err(err) => return Err(Asked::Problem(format!("cannot reach {shown}: {}", short(&err)))),
        };
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(Asked::Problem(format!(
                "{}{shown} answered {status}: the token is wrong or lacks access (rotated?)",
                super::CONFIG_ERROR
            )));
        }
        if !status.is_success() {
            return Err(Asked::Problem(format!("{shown} answered {status}")));
        }
        response.json::<T>().await.map_err(|err| Asked::Problem(format!("{shown}: unexpected answer: {}", short(&err))))
    }

    /// Kernels and terminals of one server.
    async fn server(&self, server: &Server, now: SystemTime) -> (Findings, Asked) {
        let mut out = Findings::default();
        let base = &server.base;
        let who = &server.who;
        let kernels: Vec<Kernel> = match self.get(&format!("{base}/api/kernels"), &server.token).await {
            Ok(kernels) => kernels,
            Err(asked) => return (out, asked),
        };
        // A server without the terminals extension answers 404: no terminals.
        let terminals: Vec<Terminal> = match self.get(&format!("{base}/api/terminals"), &server.token).await {
            Ok(terminals) => terminals,
            Err(Asked::Problem(why)) if why.ends_with("answered 404 Not Found") => Vec::new(),
            Err(asked) => return (out, asked),
        };
        out.kernels += kernels.len();
        for kernel in &kernels {
            if kernel.execution_state == "busy" {
                out.active.push(format!("kernel busy {} ({who})", kernel.name));
            }
            if let Some(at) = parse_time(&kernel.last_activity) {
                out.note(at);
                if kernel.execution_state != "busy" && now.duration_since(at).unwrap_or_default() < RECENT {
                    out.active.push(format!(
                        "kernel {} ({who}) ran {}s ago",
                        kernel.name,
                        now.duration_since(at).unwrap_or_default().as_secs()
                    ));
                }
            }
        }
        for terminal in &terminals {
            if let Some(at) = parse_time(&terminal.last_activity) {
                out.note(at);
                if now.duration_since(at).unwrap_or_default() < RECENT {
                    out.active.push(format!(
                        "terminal {} ({who}) had input {}s ago",
                        terminal.name,
                        now.duration_since(at).unwrap_or_default().as_secs()
                    ));
                }
            }
        }
        (out, Asked::Read)
    }

    /// Servers whose runtime files say they run, for every user: a file whose
    /// process is gone (or is not its writer's) is no server.
    fn discover(&self) -> (Vec<Server>, Vec<String>) {
        let mut found = Vec::new();
        let mut problems = Vec::new();
        // A server is a process of its user's: only users with a process now are looked at
        // (a pool of thousands of accounts has a handful logged in).
        let running = uids_with_processes();
        let snapshot = self.accounts.snapshot();
        for user in snapshot.users.iter().filter(|u| self.uids.contains(&u.uid) && running.contains(&u.uid)) {
            let bases = [
                (self.paths.resolve(&user.home), RUNTIME_DIRS[0]),
                (self.paths.resolve(format!("/run/user/{}", user.uid)), RUNTIME_DIRS[1]),
            ];
            for (base, relative) in bases {
                let files = match beneath::read_small_files_beneath(
                    &base,
                    std::path::Path::new(relative),
                    "jpserver-",
                    ".json",
                    RUNTIME_FILE_MAX,
                ) {
                    Ok(files) => files,
                    Err(why) => {
                        problems.push(format!("{}: {why}", user.name));
                        continue;
                    }
                };
                for file in files.into_iter().filter(|f| f.owner == user.uid) {
                    let Ok(info) = serde_json::from_slice::<RuntimeFile>(&file.bytes) else { continue };
                    if !process_of(info.pid, user.uid) || info.port == 0 {
                        continue;
                    }
                    // Asked on loopback whatever host the file names: never elsewhere.
                    let scheme = if info.url.starts_with("https://") { "https" } else { "http" };
                    let base = format!("{scheme}://127.0.0.1:{}{}", info.port, info.base_url.trim_end_matches('/'));
                    let token = (!info.token.is_empty()).then(|| info.token.clone());
                    found.push(Server { base, who: user.name.clone(), token, discovered: true });
                }
            }
        }
        (found, problems)
    }

    async fn look(&self, now: SystemTime) -> Sample {
        let mut problems = Vec::new();
        let mut not_running = Vec::new();
        let (mut servers, discovery_problems) = self.discover();
        problems.extend(discovery_problems);
        match read_token(&self.token_file) {
            Ok(token) => servers.extend(self.servers.iter().map(|base| Server {
                base: base.clone(),
                who: shown_url(base),
                token: token.clone(),
                discovered: false,
            })),
            Err(why) => problems.push(why),
        }
        if !self.hub.is_empty() {
            match read_token(&self.hub_token_file) {
                Ok(token) => match self.get::<Vec<HubUser>>(&format!("{}/hub/api/users", self.hub), &token).await {
                    Ok(users) => {
                        for user in &users {
                            for server in user.servers.values().filter(|s| s.ready && !s.url.is_empty()) {
                                let base = format!("{}{}", self.hub, server.url.trim_end_matches('/'));
                                servers.push(Server {
                                    base,
                                    who: user.name.clone(),
                                    token: token.clone(),
                                    discovered: false,
                                });
                            }
                        }
                    }
                    Err(Asked::NotRunning(why)) => not_running.push(why),
                    Err(Asked::Problem(why)) => problems.push(why),
                    Err(Asked::Read) => {}
                },
                Err(why) => problems.push(why),
            }
        }
        // The same server found twice (a runtime file and the config): asked once.
        servers.sort_by(|a, b| a.base.cmp(&b.base).then(b.discovered.cmp(&a.discovered)));
        servers.dedup_by(|a, b| a.base == b.base);
        if servers.is_empty() && problems.is_empty() && self.hub.is_empty() && self.servers.is_empty() {
            return Sample::absent(
                "no Jupyter server found (runtime files) or configured (idle.jupyter_urls, idle.jupyterhub_url)",
            );
        }
        let asked = futures_util::future::join_all(servers.iter().map(|server| async move {
            let answer = tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), self.server(server, now)).await;
            (server, answer)
        }))
        .await;
        let mut findings = Findings::default();
        let mut read_ports = std::collections::BTreeSet::new();
        if !self.hub.is_empty() {
            read_ports.extend(port_of(&self.hub));
        }
        for (server, answer) in asked {
            match answer {
                Ok((found, Asked::Read)) => {
                    read_ports.extend(port_of(&server.base));
                    findings.merge(found);
                }
                Ok((_, Asked::NotRunning(why))) => not_running.push(why),
                Ok((found, Asked::Problem(why))) => {
                    findings.merge(found);
                    problems.push(why);
                }
                Err(_) => problems.push(format!(
                    "{}: no answer within {}s",
                    shown_url(&server.base),
                    REQUEST_TIMEOUT.as_secs() + 1
                )),
            }
        }
        *self.judged_ports.lock().unwrap_or_else(|p| p.into_inner()) = read_ports;
        let sample = if !findings.active.is_empty() {
            let mut sample = Sample::active(findings.active);
            sample.reasons.extend(problems);
            sample
        } else if !problems.is_empty() {
            // A server that does not answer may be running someone's work.
            Sample::unknown(problems.join("; "))
        } else {
            let mut sample = Sample::idle(format!("{} kernel(s), none busy or recent", findings.kernels));
            sample.reasons.extend(not_running);
            sample.at(findings.latest)
        };
        sample.with_figure("kernels", findings.kernels as f64).with_figure("jupyter_servers", servers.len() as f64)
    }
}

/// The owners of the processes running now.
fn uids_with_processes() -> std::collections::HashSet<u32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Default::default() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter_map(|e| e.metadata().ok().map(|m| m.uid()))
        .collect()
}

/// Whether `pid` runs and belongs to `uid` (a runtime file left by a server
/// that died, or naming someone else's process, is no server).
fn process_of(pid: u32, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    pid > 0 && std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == uid)
}

#[derive(Default)]
struct Findings {
    kernels: usize,
    active: Vec<String>,
    latest: Option<SystemTime>,
}

impl Findings {
    fn note(&mut self, at: SystemTime) {
        self.latest = Some(self.latest.map_or(at, |l| l.max(at)));
    }

    fn merge(&mut self, other: Findings) {
        self.kernels += other.kernels;
        self.active.extend(other.active);
        if let Some(at) = other.latest {
            self.note(at);
        }
    }
}

/// reqwest's error with its causes (the URL is said once, by the caller).
fn short(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() { "timed out".to_string() } else { "request failed".to_string() };
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        text = format!("{text}: {inner}");
        source = inner.source();
    }
    text
}

impl Source for Jupyter {
    fn name(&self) -> &'static str {
        "jupyter"
    }

    fn sample(&mut self, now: SystemTime) -> BoxFuture<'_, Sample> {
        Box::pin(self.look(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::user_uids::UserUids;
    use crate::idle::signal::SignalState;
    use std::io::{Read, Write};

    /// A server answering `/api/kernels` with one idle kernel and `/api/terminals` with `terminals`.
    fn server(terminals: &'static str) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request).to_string();
                let (status, body) = if text.starts_with("GET /api/kernels ") {
                    ("200 OK", r#"[{"name":"python3","execution_state":"idle"}]"#)
                } else {
                    (terminals, "[]")
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        port
    }

    fn source(url: String, root: &std::path::Path) -> Jupyter {
        let paths = std::sync::Arc::new(SystemPaths::under(root));
        Jupyter::new(
            vec![url],
            None,
            String::new(),
            None,
            AccountsView::for_paths(&paths),
            paths,
            UserUids::new(1000, 60000),
            JudgedPorts::default(),
        )
    }

    #[tokio::test]
    async fn a_failed_terminals_call_is_unknown_and_a_missing_terminals_extension_is_no_terminals() {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let broken = source(format!("http://127.0.0.1:{}", server("500 Internal Server Error")), tmp.path());
        let sample = broken.look(now).await;
        assert_eq!(sample.state, SignalState::Unknown, "{sample:?}");
        assert!(sample.reasons[0].contains("/api/terminals answered 500"), "{sample:?}");
        let without = source(format!("http://127.0.0.1:{}", server("404 Not Found")), tmp.path());
        let sample = without.look(now).await;
        assert_eq!(sample.state, SignalState::Idle, "{sample:?}");
        assert_eq!(sample.reasons[0], "1 kernel(s), none busy or recent");
    }

    #[test]
    fn urls_are_shown_without_their_query_or_user_info() {
        assert_eq!(shown_url("https://127.0.0.1:8000/lab?token=s3cret"), "https://127.0.0.1:8000/lab");
        assert_eq!(shown_url("http://user:pw@hub:8000/hub/api"), "http://hub:8000/hub/api");
        assert!(is_loopback("https://[::1]:8888/") && is_loopback("http://localhost:8888"));
        assert!(!is_loopback("https://jupyter.example:8888"));
    }
}
