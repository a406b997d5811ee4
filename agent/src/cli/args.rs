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

/// Query and steer the pool-agent daemon on this VM.
#[derive(Debug, Parser)]
#[command(name = "pool-agent", version, about, long_about = None, propagate_version = true, disable_help_subcommand = true)]
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
    /// Azure Scheduled Events seen and handled.
    Events,
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
#[command(name = "pool-agentd", version, about, long_about = None)]
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
