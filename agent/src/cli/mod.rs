//! The `pool-agent` command: one request to the daemon per invocation. Each
//! subcommand lives in its own module and says which route it calls and how
//! its answer reads to a human; this module sends it and shows the answer.

pub mod args;
pub mod azure;
pub mod client;
pub mod events;
pub mod idle;
pub mod links;
mod manual;
pub mod pool;
mod render;
pub mod scripts;
pub mod share;
pub mod status;
pub mod users;

use args::{Cli, Command};
use clap::CommandFactory;
use client::{Client, ClientError, Reply};
use hyper::Method;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// A human summary of an answer body; `--json` bypasses it.
type Summary = fn(&[u8]) -> Result<String, String>;
/// From an answer: the offset to ask from next, and whether to ask again.
type FollowNext = fn(&[u8]) -> Option<(u64, bool)>;

/// What to ask the daemon and how to show the answer.
pub struct Call {
    method: Method,
    path: String,
    body: Option<serde_json::Value>,
    /// The body is text (logs, metrics), shown as it is.
    text: bool,
    summary: Option<Summary>,
    /// The exit code an answer means (status: 1 when something is not ready).
    verdict: Option<fn(&[u8]) -> u8>,
    /// Ask again (`?offset=`) while the answer says there is more: `scripts log --follow`.
    follow: Option<FollowNext>,
    /// A text answer's JSON form for `--json` (metrics: the parsed samples).
    json_of: Option<fn(&[u8]) -> serde_json::Value>,
}

impl Call {
    fn new(method: Method, path: &str, body: Option<serde_json::Value>) -> Self {
        Self {
            method,
            path: path.to_string(),
            body,
            text: false,
            summary: None,
            verdict: None,
            follow: None,
            json_of: None,
        }
    }
    pub fn get(path: &str) -> Self {
        Self::new(Method::GET, path, None)
    }
    pub fn post(path: &str, body: Option<serde_json::Value>) -> Self {
        Self::new(Method::POST, path, body)
    }
    pub fn delete(path: &str) -> Self {
        Self::new(Method::DELETE, path, None)
    }
    pub fn as_text(mut self) -> Self {
        self.text = true;
        self
    }
    pub fn json_by(mut self, json_of: fn(&[u8]) -> serde_json::Value) -> Self {
        self.json_of = Some(json_of);
        self
    }
    pub fn shown_by(mut self, summary: Summary) -> Self {
        self.summary = Some(summary);
        self
    }
    pub fn exit_code_by(mut self, verdict: fn(&[u8]) -> u8) -> Self {
        self.verdict = Some(verdict);
        self
    }
    pub fn following(mut self, next: FollowNext) -> Self {
        self.follow = Some(next);
        self
    }
}

fn plan(command: &Command) -> Result<Call, String> {
    match command {
        Command::Status => Ok(status::status()),
        Command::Share { action } => Ok(share::call(action)),
        Command::Links { action } => Ok(links::call(action)),
        Command::Scripts { action } => scripts::call(action),
        Command::Idle => Ok(idle::idle()),
        Command::Hold(hold) => idle::hold(hold),
        Command::Azure => Ok(azure::call()),
        Command::Events => Ok(events::call()),
        Command::Pool { login_note } => Ok(pool::call(*login_note)),
        Command::Users => Ok(users::call()),
        Command::Metrics => Ok(status::metrics()),
        Command::Config => Ok(status::config()),
        Command::GenerateAssets { .. } => Err("generate-assets does not talk to the daemon".into()),
    }
}

/// Names go into a URL path: refuse anything that would change its shape.
pub fn path_segment(name: &str) -> Result<&str, String> {
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
    if let Some(next) = call.follow {
        return runtime.block_on(follow(&client, &call, next, cli.json));
    }
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

/// Shows each answer as it comes, asking from where the last one ended,
/// until the daemon says there is no more (the script ended).
async fn follow(client: &Client, call: &Call, next: FollowNext, json: bool) -> ExitCode {
    let mut path = call.path.clone();
    loop {
        let reply = match client.call(call.method.clone(), &path, None).await {
            Ok(reply) => reply,
            Err(err) => return fail(&err.to_string(), err.exit_code()),
        };
        let code = show(call, &reply, json);
        let Some((offset, more)) = next(&reply.body) else { return code };
        if !more {
            return code;
        }
        let separator = if call.path.contains('?') { '&' } else { '?' };
        let unchanged = path.ends_with(&format!("offset={offset}"));
        path = format!("{}{separator}offset={offset}", call.path);
        if unchanged {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

fn show(call: &Call, reply: &Reply, json: bool) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let as_json = |value: serde_json::Value| {
        let pretty = serde_json::to_string_pretty(&value).unwrap_or_default();
        format!("{}\n", render::json_for_terminal(&pretty))
    };
    let text = match (call.text, call.summary, json) {
        (true, _, true) if call.json_of.is_some() => as_json(call.json_of.map(|f| f(&reply.body)).unwrap_or_default()),
        (true, _, _) => render::printable(&String::from_utf8_lossy(&reply.body)).into_owned(),
        (false, Some(summary), false) => match summary(&reply.body) {
            Ok(text) => render::printable(&text).into_owned(),
            Err(message) => return fail(&message, 1),
        },
        // JSON escapes control characters itself; bidi controls are escaped here.
        _ => match serde_json::from_slice::<serde_json::Value>(&reply.body) {
            Ok(value) => as_json(value),
            Err(_) => render::printable(&String::from_utf8_lossy(&reply.body)).into_owned(),
        },
    };
    // (What users wrote, script output and hold reasons, cannot steer the terminal.)
    // A closed pipe (`pool-agent status | head -1`) is not an error worth a panic.
    let _ = stdout.write_all(text.as_bytes());
    ExitCode::from(call.verdict.map_or(0, |verdict| verdict(&reply.body)))
}

fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("pool-agent: {}", render::printable(message));
    ExitCode::from(code)
}

/// Man pages for both binaries and completions for bash, zsh and fish.
fn generate_assets(dir: &Path) -> std::io::Result<()> {
    let man_dir = dir.join("man");
    let completion_dir = dir.join("completions");
    std::fs::create_dir_all(&man_dir)?;
    std::fs::create_dir_all(&completion_dir)?;
    manual::write_pages(&man_dir)?;
    let mut cli = completion_command();
    for (shell, file) in [
        (clap_complete::Shell::Bash, "pool-agent.bash"),
        (clap_complete::Shell::Zsh, "_pool-agent"),
        (clap_complete::Shell::Fish, "pool-agent.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cli, "pool-agent", &mut out);
        if shell == clap_complete::Shell::Bash {
            out = mend_bash_names(&out);
        }
        std::fs::write(completion_dir.join(file), out)?;
    }
    Ok(())
}

/// The CLI as shells should complete it: hidden subcommands left out (clap's
/// generators would offer them).
fn completion_command() -> clap::Command {
    let full = Cli::command();
    let visible: Vec<clap::Command> = full.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
    // The CLI has no `help` subcommand (`--help` serves): offer none.
    let mut command = clap::Command::new("pool-agent").disable_help_subcommand(true).subcommands(visible);
    for argument in full.get_arguments().filter(|a| !matches!(a.get_id().as_str(), "help" | "version")) {
        command = command.arg(argument.clone());
    }
    command.version(crate::VERSION).about(full.get_about().cloned().unwrap_or_default())
}

/// clap_complete's bash script names a hyphenated program's subcommand
/// branches `pool__subcmd__agent__…` while its dispatcher sets
/// `pool__agent__…`, so nothing past the first word completes. One spelling.
fn mend_bash_names(script: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(script).replace("pool__subcmd__agent", "pool__agent").into_bytes()
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
            "man/pool-agent-share-remount.1",
            "man/pool-agent.toml.5",
            "completions/pool-agent.bash",
            "completions/_pool-agent",
            "completions/pool-agent.fish",
        ] {
            assert!(dir.path().join(file).metadata().unwrap().len() > 100, "{file}");
        }
        let bash = std::fs::read_to_string(dir.path().join("completions/pool-agent.bash")).unwrap();
        assert!(bash.contains("remount"));
    }

    /// What bash offers after `words` (the last one being completed), from the real script.
    fn bash_completes(script: &Path, words: &[&str]) -> Vec<String> {
        let line = words.join(" ");
        let program = format!(
            "source {script}\nCOMP_WORDS=({line})\nCOMP_CWORD={}\nCOMP_LINE='{line}'\nCOMP_POINT=${{#COMP_LINE}}\n\
             complete -p pool-agent >/dev/null || exit 9\n_pool__agent pool-agent '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
            script = script.display(),
        );
        let out = std::process::Command::new("bash").arg("-c").arg(program).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
    }

    #[test]
    fn bash_completes_past_the_first_word_and_hides_internal_commands() {
        let dir = tempfile::tempdir().unwrap();
        generate_assets(dir.path()).unwrap();
        let script = dir.path().join("completions/pool-agent.bash");
        assert_eq!(bash_completes(&script, &["pool-agent", "share", "--j"]), ["--json"]);
        assert_eq!(bash_completes(&script, &["pool-agent", "share", "re"]), ["remount"]);
        let first = bash_completes(&script, &["pool-agent", ""]);
        assert!(first.contains(&"status".to_string()), "{first:?}");
        assert!(!first.iter().any(|w| w == "generate-assets"), "{first:?}");
        // Nothing the CLI would reject: it has no `help` subcommand.
        for rejected in ["help"] {
            assert!(!first.iter().any(|w| w == rejected), "{rejected} offered: {first:?}");
            for words in [&["pool-agent", "scripts", ""][..], &["pool-agent", "hold", ""], &["pool-agent", "share", ""]]
            {
                let offered = bash_completes(&script, words);
                assert!(!offered.iter().any(|w| w == rejected), "{rejected} offered after {words:?}: {offered:?}");
            }
        }
        for file in ["completions/_pool-agent", "completions/pool-agent.fish"] {
            let text = std::fs::read_to_string(dir.path().join(file)).unwrap();
            assert!(!text.contains("generate-assets"), "{file}");
        }
    }

    #[test]
    fn zsh_and_fish_scripts_load_where_those_shells_exist() {
        let dir = tempfile::tempdir().unwrap();
        generate_assets(dir.path()).unwrap();
        for (shell, file, program) in [
            ("zsh", "completions/_pool-agent", "autoload -U compinit; compinit -u; source {}"),
            ("fish", "completions/pool-agent.fish", "source {}"),
        ] {
            let path = dir.path().join(file);
            let run = std::process::Command::new(shell)
                .arg("-c")
                .arg(program.replace("{}", &path.display().to_string()))
                .output();
            match run {
                Ok(out) => assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr)),
                Err(_) => {
                    use std::io::Write as _;
                    let _ = writeln!(std::io::stderr(), "SKIP {shell} completion load: {shell} is not installed");
                }
            }
        }
    }
}
