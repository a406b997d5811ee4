//! Jupyter: a busy kernel, a kernel that executed recently, or a terminal
//! with recent input is activity, with or without a browser connected. Asked
//! of each single-user server in `idle.jupyter_urls` (`/api/kernels`,
//! `/api/terminals`), and of every user server a JupyterHub lists
//! (`/hub/api/users`, then each server through the hub). A server's or the
//! hub's own `last_activity` is not used: an open browser tab's polling
//! moves it, and such a tab must not keep the VM billed.

use super::signal::{Sample, SignalState, Source};
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

pub struct Jupyter {
    servers: Vec<String>,
    token_file: Option<PathBuf>,
    hub: String,
    hub_token_file: Option<PathBuf>,
    client: reqwest::Client,
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

impl Jupyter {
    pub fn new(
        servers: Vec<String>,
        token_file: Option<PathBuf>,
        hub: String,
        hub_token_file: Option<PathBuf>,
    ) -> Self {
        let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).no_proxy().build().unwrap_or_default();
        Self { servers, token_file, hub, hub_token_file, client }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, url: &str, token: &Option<String>) -> Result<T, String> {
        let mut request = self.client.get(url);
        if let Some(token) = token {
            request = request.header("Authorization", format!("token {token}"));
        }
        let response = request.send().await.map_err(|err| format!("cannot reach {url}: {}", short(&err)))?;
        if !response.status().is_success() {
            return Err(format!("{url} answered {}", response.status()));
        }
        response.json::<T>().await.map_err(|err| format!("{url}: unexpected answer: {}", short(&err)))
    }

    /// Kernels and terminals of one server; `who` names it in reasons.
    async fn server(
        &self,
        base: &str,
        who: &str,
        token: &Option<String>,
        now: SystemTime,
        out: &mut Findings,
    ) -> Result<(), String> {
        let kernels: Vec<Kernel> = self.get(&format!("{base}/api/kernels"), token).await?;
        let terminals: Vec<Terminal> = self.get(&format!("{base}/api/terminals"), token).await.unwrap_or_default();
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
        Ok(())
    }

    async fn look(&self, now: SystemTime) -> Sample {
        if self.servers.is_empty() && self.hub.is_empty() {
            return Sample::absent("no Jupyter configured (idle.jupyter_urls, idle.jupyterhub_url)");
        }
        let mut findings = Findings::default();
        let mut problems = Vec::new();
        match read_token(&self.token_file) {
            Ok(token) => {
                for base in &self.servers {
                    if let Err(why) = self.server(base, base, &token, now, &mut findings).await {
                        problems.push(why);
                    }
                }
            }
            Err(why) => problems.push(why),
        }
        if !self.hub.is_empty() {
            match read_token(&self.hub_token_file) {
                Ok(token) => match self.get::<Vec<HubUser>>(&format!("{}/hub/api/users", self.hub), &token).await {
                    Ok(users) => {
                        for user in &users {
                            for server in user.servers.values().filter(|s| s.ready && !s.url.is_empty()) {
                                let base = format!("{}{}", self.hub, server.url.trim_end_matches('/'));
                                if let Err(why) = self.server(&base, &user.name, &token, now, &mut findings).await {
                                    problems.push(why);
                                }
                            }
                        }
                    }
                    Err(why) => problems.push(why),
                },
                Err(why) => problems.push(why),
            }
        }
        let sample = if !findings.active.is_empty() {
            Sample::active(findings.active)
        } else if !problems.is_empty() {
            // A server that does not answer may be running someone's work.
            Sample::unknown(problems.join("; "))
        } else {
            Sample::idle(format!("{} kernel(s), none busy or recent", findings.kernels))
        };
        let state = sample.state;
        let sample = sample.with_figure("kernels", findings.kernels as f64);
        if state == SignalState::Idle {
            sample.at(findings.latest)
        } else {
            sample
        }
    }
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
