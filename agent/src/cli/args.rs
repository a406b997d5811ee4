//! The command lines of both binaries, as clap definitions. Man pages and
//! shell completions are generated from these (`pool-agent generate-assets`).

use super::idle::HoldArgs;
use super::links::LinksAction;
use super::scripts::ScriptsAction;
use super::share::ShareAction;
use crate::core::paths::SOCKET_FILE;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

fn parse_timeout(text: &str) -> Result<Duration, String> {
    crate::config::duration::parse(text)
}

const CLI_DESCRIPTION: &str = "pool-agent talks to pool-agentd, the agent that makes every VM of a pool of \
data-science VMs look the same: the team's share mounted, each user's notebooks/remote linked to their \
folder on it, the admin's setup scripts run, and an honest idle verdict kept so the pool can shrink \
without stopping anyone's work.\n\n\
Every command asks the daemon over its unix socket (/run/pool-agent/agent.sock) and prints a summary, \
or the API's JSON with --json. Any user may read; changing the VM (share remount, scripts run, links \
sync, another user's hold) takes root or the pool-agent-admin group.\n\n\
Exit status: 0 done (status: all ready; share: mounted), 1 not ready or refused, 2 a usage error, \
3 the daemon did not answer.";

const DAEMON_DESCRIPTION: &str = "pool-agentd runs on every VM of a pool, started by systemd at boot \
(pool-agentd.service, Type=notify). It mounts the share named in /etc/pool-agent/config.toml and \
config.d/*.toml (Azure Files over SMB, NFS, or a local directory) and keeps it mounted, links each \
user's notebooks/remote to their folder on it, runs the admin's setup scripts (once or every boot, as \
their users, under a timeout), and keeps the idle verdict from sessions, CPU, GPU, connections, Jupyter \
kernels and holds. pool-agent(1) queries it over the socket.\n\n\
SIGHUP reloads the config (a bad one is refused and the old one kept); SIGTERM stops it within 5 s. \
--check-config checks a config as boot would; --prepare-image readies a VM for capture as an image; \
--demo runs it in a throwaway sandbox.";

/// Query and steer the pool-agent daemon on this VM.
#[derive(Debug, Parser)]
#[command(name = "pool-agent", version, about, long_about = CLI_DESCRIPTION, propagate_version = true, disable_help_subcommand = true)]
pub struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, env = "POOL_AGENT_SOCKET", default_value = SOCKET_FILE, value_name = "PATH")]
    pub socket: PathBuf,
    /// Print the API's JSON answer instead of a summary.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up on a request after this long (30s, 1m, ...).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_timeout, value_name = "DURATION")]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every component's state, since when, and its last error.
    Status,
    /// The shared workspace mount: state, source, health (exit 0 mounted or none configured, 1 not mounted).
    Share {
        #[command(subcommand)]
        action: Option<ShareAction>,
    },
    /// Users' notebook links.
    Links {
        #[command(subcommand)]
        action: Option<LinksAction>,
    },
    /// The admin's setup scripts: runs, results, logs.
    Scripts {
        #[command(subcommand)]
        action: Option<ScriptsAction>,
    },
    /// The idle verdict with every signal and its reason.
    Idle,
    /// Keep this VM awake for a while (a keep-awake lease), or list/release leases.
    Hold(HoldArgs),
    /// Azure: this VM's metadata, tokens cached (never shown), metric posts, health.
    Azure,
    /// Azure Scheduled Events seen and handled: drained, approved, or not this VM's.
    Events,
    /// The pool seen from here: VMs on the share, who has sessions where, users whose ids differ.
    Pool {
        /// Only the caller's sessions on other VMs, one line or nothing (for the login script).
        #[arg(long)]
        login_note: bool,
    },
    /// The pool's registry accounts on this VM: created, present, locked, conflicts, keys.
    Users,
    /// The Prometheus metrics text.
    Metrics,
    /// The effective config (no secrets: keys live in files it only names).
    Config,
    /// Write man pages and shell completions into DIR (used by packaging).
    #[command(hide = true)]
    GenerateAssets {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// The pool-agent daemon: share, links, setup scripts, idle verdict, local API.
#[derive(Debug, Parser)]
#[command(name = "pool-agentd", version, about, long_about = DAEMON_DESCRIPTION)]
pub struct DaemonArgs {
    /// Main config file [default: /etc/pool-agent/config.toml, under --root if given].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Validate the config, print the effective config and exit (0 valid, 2 invalid).
    #[arg(long)]
    pub check_config: bool,
    /// Resolve every system path (/etc, /run, /var, homes, share) under DIR.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Build a sandbox with a local share, users and a sample script, and run in it.
    #[arg(long, conflicts_with = "prepare_image")]
    pub demo: bool,
    /// Make this VM fit to capture as a pool's image: stop the agent, clear
    /// its scripts' records, holds, last good config, logs and mounts, and exit.
    #[arg(long, conflicts_with = "check_config")]
    pub prepare_image: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::idle::HoldAction;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
        DaemonArgs::command().debug_assert();
    }

    #[test]
    fn hold_takes_a_duration_or_a_subcommand() {
        let cli = Cli::try_parse_from(["pool-agent", "hold", "2h", "--reason", "training"]).unwrap();
        match cli.command {
            Command::Hold(HoldArgs { duration: Some(d), reason: Some(r), action: None }) => {
                assert_eq!((d.as_str(), r.as_str()), ("2h", "training"))
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["pool-agent", "hold", "release", "h-1"]).unwrap();
        assert!(matches!(cli.command, Command::Hold(HoldArgs { action: Some(HoldAction::Release { .. }), .. })));
    }

    #[test]
    fn json_is_accepted_after_any_read_command() {
        for args in [["status", "--json"], ["share", "--json"], ["idle", "--json"], ["config", "--json"]] {
            let cli = Cli::try_parse_from(std::iter::once("pool-agent").chain(args)).unwrap();
            assert!(cli.json);
        }
    }
}
