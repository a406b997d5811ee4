//! Every system path the agent touches, resolved under an optional root.
//!
//! `pool-agentd --root DIR` runs the whole daemon in a sandbox: `/etc/passwd`
//! becomes `DIR/etc/passwd`, `/run/pool-agent` becomes `DIR/run/pool-agent`,
//! and paths named in the config (share path, homes, scripts) resolve the same
//! way, so one config file works on a VM and in a test.

use std::path::{Component, Path, PathBuf};

pub const DEFAULT_CONFIG_FILE: &str = "/etc/pool-agent/config.toml";
pub const SOCKET_FILE: &str = "/run/pool-agent/agent.sock";
pub const STATE_DIR: &str = "/var/lib/pool-agent";
pub const SCRIPT_LOG_DIR: &str = "/var/log/pool-agent/scripts";
pub const PASSWD_FILE: &str = "/etc/passwd";
pub const GROUP_FILE: &str = "/etc/group";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemPaths {
    root: PathBuf,
}

impl SystemPaths {
    /// The real system: every path is used as written.
    pub fn system() -> Self {
        Self { root: PathBuf::from("/") }
    }

    /// A sandbox: every absolute path is taken relative to `root`.
    pub fn under(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn is_sandbox(&self) -> bool {
        self.root != Path::new("/")
    }

    /// Maps a system path (as written in the config or in this module's
    /// constants) to where it lives under the root. `..` components are
    /// dropped so a path can never climb out of the sandbox.
    pub fn resolve(&self, system_path: impl AsRef<Path>) -> PathBuf {
        let mut out = self.root.clone();
        for part in system_path.as_ref().components() {
            if let Component::Normal(name) = part {
                out.push(name);
            }
        }
        out
    }

    pub fn config_file(&self) -> PathBuf {
        self.resolve(DEFAULT_CONFIG_FILE)
    }
    pub fn socket(&self) -> PathBuf {
        self.resolve(SOCKET_FILE)
    }
    pub fn state_dir(&self) -> PathBuf {
        self.resolve(STATE_DIR)
    }
    pub fn script_log_dir(&self) -> PathBuf {
        self.resolve(SCRIPT_LOG_DIR)
    }
    pub fn passwd(&self) -> PathBuf {
        self.resolve(PASSWD_FILE)
    }
    pub fn group(&self) -> PathBuf {
        self.resolve(GROUP_FILE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_paths_are_used_as_written() {
        let paths = SystemPaths::system();
        assert_eq!(paths.socket(), PathBuf::from("/run/pool-agent/agent.sock"));
        assert!(!paths.is_sandbox());
    }

    #[test]
    fn sandbox_paths_stay_under_the_root() {
        let paths = SystemPaths::under("/tmp/sb");
        assert_eq!(paths.passwd(), PathBuf::from("/tmp/sb/etc/passwd"));
        assert_eq!(paths.resolve("/srv/../../etc/shadow"), PathBuf::from("/tmp/sb/srv/etc/shadow"));
        assert_eq!(paths.resolve("relative/x"), PathBuf::from("/tmp/sb/relative/x"));
        assert!(paths.is_sandbox());
    }
}
