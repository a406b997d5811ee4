//! The `pool-agent` command: one request to the daemon per invocation.

pub mod args;
pub mod client;
pub mod render;

use crate::api::types::StatusReport;
use args::{Cli, Command, DaemonArgs, HoldAction, LinksAction, ScriptsAction, ShareAction};
use clap::CommandFactory;
use client::{Client, ClientError, Reply};
use hyper::Method;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// What to ask the daemon and how to show the answer.
struct Call {
    method: Method,
    path: String,
    body: Option<serde_json::Value>,
    show: Show,
}

#[derive(Clone, Copy)]
enum Show {
    Status,
    Share,
    Text,
    Json,
}

fn plan(command: &Command) -> Result<Call, String> {
    let get = |path: &str, show: Show| Ok(Call { method: Method::GET, path: path.to_string(), body: None, show });
    let post =
        |path: String, body: Option<serde_json::Value>, show: Show| Ok(Call { method: Method::POST, path, body, show });
    match command {
        Command::Status => get("/v1/status", Show::Status),
        Command::Share { action: None } => get("/v1/share", Show::Share),
        Command::Share { action: Some(ShareAction::Remount) } => post("/v1/share/remount".into(), None, Show::Share),
        Command::Links { action: None } => get("/v1/links", Show::Json),
        Command::Links { action: Some(LinksAction::Sync) } => post("/v1/links/sync".into(), None, Show::Json),
        Command::Scripts { action: None } => get("/v1/scripts", Show::Json),
        Command::Scripts { action: Some(ScriptsAction::Run { name }) } => {
            post(format!("/v1/scripts/{}/run", path_segment(name)?), None, Show::Json)
        }
        Command::Scripts { action: Some(ScriptsAction::Log { name }) } => {
            get(&format!("/v1/scripts/{}/log", path_segment(name)?), Show::Text)
        }
        Command::Idle => get("/v1/idle", Show::Json),
        Command::Hold(hold) => match (&hold.action, &hold.duration) {
            (Some(HoldAction::List), _) => get("/v1/holds", Show::Json),
            (Some(HoldAction::Release { id }), _) => Ok(Call {
                method: Method::DELETE,
                path: format!("/v1/holds/{}", path_segment(id)?),
                body: None,
                show: Show::Json,
            }),
            (None, Some(duration)) => {
                crate::config::duration::parse(duration)?;
                let body = serde_json::json!({ "duration": duration, "reason": hold.reason });
                post("/v1/holds".into(), Some(body), Show::Json)
            }
            (None, None) => {
                Err("hold needs a DURATION (e.g. `pool-agent hold 2h`), or `hold list` / `hold release ID`".into())
            }
        },
        Command::Events => get("/v1/events", Show::Json),
        Command::Metrics => get("/metrics", Show::Text),
        Command::Config => get("/v1/config", Show::Json),
        Command::GenerateAssets { .. } => Err("generate-assets does not talk to the daemon".into()),
    }
}

/// Names go into a URL path: refuse anything that would change its shape.
fn path_segment(name: &str) -> Result<&str, String> {
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok && name != "." && name != ".." {
        Ok(name)
    } else {
        Err(format!("{name:?} is not a valid name"))
    }
}

pub fn main(cli: Cli) -> ExitCode {
    if let Command::GenerateAssets { dir } = &cli.command {
        return match generate_assets(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(&format!("cannot write assets to {}: {err}", dir.display()), 1),
        };
    }
    let call = match plan(&cli.command) {
        Ok(call) => call,
        Err(message) => return fail(&message, 2),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return fail(&format!("cannot start: {err}"), 1),
    };
    let client = Client::new(&cli.socket, cli.timeout);
    let result = runtime.block_on(client.call(call.method.clone(), &call.path, call.body.clone()));
    match result {
        Ok(reply) => show(&call, &reply, cli.json),
        Err(err @ ClientError::Api { .. }) => {
            let ClientError::Api { body, .. } = &err else {
                return ExitCode::from(1);
            };
            if cli.json {
                println!("{}", serde_json::to_string_pretty(body).unwrap_or_default());
            }
            fail(&format!("{} [{}]", body.message, body.error), err.exit_code())
        }
        Err(err) => fail(&err.to_string(), err.exit_code()),
    }
}

fn show(call: &Call, reply: &Reply, json: bool) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let text = match (call.show, json) {
        (Show::Text, _) => String::from_utf8_lossy(&reply.body).into_owned(),
        (Show::Status, false) => match serde_json::from_slice::<StatusReport>(&reply.body) {
            Ok(report) => render::status(&report),
            Err(err) => return fail(&format!("unexpected status answer: {err}"), 1),
        },
        (Show::Share, false) => match serde_json::from_slice::<crate::api::types::ShareReport>(&reply.body) {
            Ok(report) => render::share(&report),
            Err(err) => return fail(&format!("unexpected share answer: {err}"), 1),
        },
        (_, _) => match serde_json::from_slice::<serde_json::Value>(&reply.body) {
            Ok(value) => format!("{}\n", serde_json::to_string_pretty(&value).unwrap_or_default()),
            Err(_) => String::from_utf8_lossy(&reply.body).into_owned(),
        },
    };
    // A closed pipe (`pool-agent status | head -1`) is not an error worth a panic.
    let _ = stdout.write_all(text.as_bytes());
    ExitCode::SUCCESS
}

fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("pool-agent: {message}");
    ExitCode::from(code)
}

/// Man pages for both binaries and completions for bash, zsh and fish.
fn generate_assets(dir: &Path) -> std::io::Result<()> {
    let man_dir = dir.join("man");
    let completion_dir = dir.join("completions");
    std::fs::create_dir_all(&man_dir)?;
    std::fs::create_dir_all(&completion_dir)?;
    for command in [Cli::command(), DaemonArgs::command()] {
        let name = command.get_name().to_string();
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone()).render(&mut page)?;
        std::fs::write(man_dir.join(format!("{name}.1")), page)?;
        for subcommand in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            let sub_name = format!("{name}-{}", subcommand.get_name());
            let mut page = Vec::new();
            clap_mangen::Man::new(subcommand.clone().name(sub_name.clone())).render(&mut page)?;
            std::fs::write(man_dir.join(format!("{sub_name}.1")), page)?;
        }
    }
    let mut cli = Cli::command();
    for (shell, file) in [
        (clap_complete::Shell::Bash, "pool-agent.bash"),
        (clap_complete::Shell::Zsh, "_pool-agent"),
        (clap_complete::Shell::Fish, "pool-agent.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cli, "pool-agent", &mut out);
        std::fs::write(completion_dir.join(file), out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn plan_of(args: &[&str]) -> Result<Call, String> {
        let cli = Cli::try_parse_from(std::iter::once("pool-agent").chain(args.iter().copied())).unwrap();
        plan(&cli.command)
    }

    #[test]
    fn commands_map_to_the_design_routes() {
        let cases: &[(&[&str], &str, &str)] = &[
            (&["status"], "GET", "/v1/status"),
            (&["share", "remount"], "POST", "/v1/share/remount"),
            (&["links", "sync"], "POST", "/v1/links/sync"),
            (&["scripts", "run", "conda"], "POST", "/v1/scripts/conda/run"),
            (&["scripts", "log", "conda"], "GET", "/v1/scripts/conda/log"),
            (&["hold", "2h"], "POST", "/v1/holds"),
            (&["hold", "list"], "GET", "/v1/holds"),
            (&["hold", "release", "h-1"], "DELETE", "/v1/holds/h-1"),
            (&["metrics"], "GET", "/metrics"),
        ];
        for (args, method, path) in cases {
            let call = plan_of(args).unwrap();
            assert_eq!((call.method.as_str(), call.path.as_str()), (*method, *path));
        }
    }

    #[test]
    fn names_cannot_reshape_the_url() {
        assert!(plan_of(&["scripts", "run", "../../v1/share/remount"]).is_err());
        assert!(plan_of(&["hold", "release", "a/b"]).is_err());
        assert!(plan_of(&["hold", "forever"]).is_err());
        assert!(plan_of(&["hold"]).is_err());
    }

    #[test]
    fn assets_are_generated() {
        let dir = tempfile::tempdir().unwrap();
        generate_assets(dir.path()).unwrap();
        for file in [
            "man/pool-agent.1",
            "man/pool-agentd.1",
            "man/pool-agent-status.1",
            "completions/pool-agent.bash",
            "completions/_pool-agent",
            "completions/pool-agent.fish",
        ] {
            assert!(dir.path().join(file).metadata().unwrap().len() > 100, "{file}");
        }
        let bash = std::fs::read_to_string(dir.path().join("completions/pool-agent.bash")).unwrap();
        assert!(bash.contains("remount"));
    }
}
