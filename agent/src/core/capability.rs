//! The seam every capability plugs into. A capability hands the daemon, in
//! one place, its supervised task, its routes (each with its access level),
//! its metrics and the config section it reads; its status summary is what
//! its task publishes on the board. The daemon's registry lists capabilities
//! in boot order; nothing else names them.

use super::component::ComponentId;
use super::http::Route;
use super::task::{TaskContext, TaskResult};
use futures_util::future::BoxFuture;
use prometheus_client::registry::Registry;

pub trait Capability: Send + Sync + 'static {
    /// Its row on the status board.
    fn id(&self) -> ComponentId;

    /// The supervised task: runs until `ctx.shutdown`, restarted after a failure.
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, TaskResult>;

    /// Its API routes. Each declares who may call it.
    fn routes(&self) -> Vec<Route> {
        Vec::new()
    }

    /// Registers its metrics (read at scrape time) under the agent's prefix.
    fn register_metrics(&self, _registry: &mut Registry) {}

    /// The config section it reads (`[share]`, `[links]`, ...).
    fn config_section(&self) -> &'static str;

    /// Keys of its section that only admins may read in `GET /v1/config`
    /// (secret paths, script arguments, environment values). `*` stands for
    /// every element of a list: `scripts.*.args`.
    fn private_config_keys(&self) -> &'static [&'static str] {
        &[]
    }

    /// `--check-config`: what would fail at run time in what the config names
    /// on this system (files, users), as the daemon itself would find it.
    fn check_system(&self, _check: &SystemCheckInput<'_>) -> Vec<SystemFinding> {
        Vec::new()
    }
}

/// What a capability's `--check-config` checks see.
pub struct SystemCheckInput<'a> {
    pub settings: &'a crate::config::Settings,
    pub main_file: &'a std::path::Path,
    pub paths: &'a super::paths::SystemPaths,
    pub accounts: &'a super::accounts::AccountsView,
    /// The uid the check runs as: only root sees all that the daemon sees.
    pub euid: u32,
}

/// One thing a check found.
#[derive(Debug)]
pub enum SystemFinding {
    /// The config would fail at run time.
    Error(crate::config::ConfigError),
    /// Worth saying, not a failure: a share not mounted while checking.
    Warning(String),
    /// A check this uid could not make: it needs root.
    NeedsRoot(String),
}

/// Replaces each private key of `section` in a JSON rendering of the config
/// with `"<redacted>"`.
pub fn redact(config: &mut serde_json::Value, section: &str, keys: &[&str]) {
    let Some(section) = config.get_mut(section) else { return };
    for key in keys {
        let parts: Vec<&str> = key.split('.').collect();
        redact_path(section, &parts);
    }
}

fn redact_path(value: &mut serde_json::Value, parts: &[&str]) {
    let Some((first, rest)) = parts.split_first() else { return };
    match (value, *first) {
        (serde_json::Value::Array(items), "*") => items.iter_mut().for_each(|item| redact_path(item, rest)),
        (serde_json::Value::Object(map), name) => {
            if let Some(child) = map.get_mut(name) {
                if rest.is_empty() {
                    *child = serde_json::Value::String("<redacted>".to_string());
                } else {
                    redact_path(child, rest);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn private_keys_are_redacted_through_lists() {
        let mut config = json!({
            "share": {"key_file": "/etc/pool-agent/secrets/k", "kind": "azure-files"},
            "setup": {"scripts": [{"name": "a", "args": ["--token", "x"]}, {"name": "b"}]},
        });
        redact(&mut config, "share", &["key_file"]);
        redact(&mut config, "setup", &["scripts.*.args", "scripts.*.env"]);
        redact(&mut config, "absent", &["x"]);
        assert_eq!(config["share"]["key_file"], "<redacted>");
        assert_eq!(config["share"]["kind"], "azure-files");
        assert_eq!(config["setup"]["scripts"][0]["args"], "<redacted>");
        assert_eq!(config["setup"]["scripts"][0]["name"], "a");
        assert!(config["setup"]["scripts"][1].get("args").is_none());
    }
}
