//! IMDS closed to users, with the real kernel firewall: a network namespace
//! of the test's own, 169.254.169.254 on its loopback served by the fake
//! Azure, the agent and the callers inside it. Nothing touches the host's
//! rules (nftables tables belong to their namespace).

// Black-box tests poll real processes from plain threads; sleeping is the point.
#![allow(clippy::disallowed_methods)]

use crate::harness::*;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FAKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fake/fake_azure.py");

/// A network namespace kept alive by a sleeping process; killed on drop.
struct Namespace {
    holder: Child,
    fake: Option<Child>,
}

impl Namespace {
    fn new() -> Option<Self> {
        let holder = Command::new("unshare").args(["--net", "sleep", "900"]).spawn().ok()?;
        let ns = Self { holder, fake: None };
        // The holder needs a moment to have entered its namespace.
        let entered = eventually(Duration::from_secs(5), || {
            let mine = std::fs::read_link("/proc/self/ns/net").ok()?;
            let its = std::fs::read_link(format!("/proc/{}/ns/net", ns.holder.id())).ok()?;
            (mine != its).then_some(())
        });
        entered?;
        Some(ns)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command.args(["-t", &self.holder.id().to_string(), "-n", "--", program]);
        command
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program).args(args).output().unwrap()
    }

    /// Asks IMDS for a management token as `uid` (None: root): Ok(the HTTP
    /// status IMDS answered — the fake may say 429 to a burst), or Err(why
    /// no answer came).
    fn token_as(&self, uid: Option<u32>) -> Result<String, String> {
        let script = "import sys, urllib.request\nr = urllib.request.Request('http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F', headers={'Metadata': 'true'})\ntry:\n    print(urllib.request.urlopen(r, timeout=2).status)\nexcept urllib.error.HTTPError as answer:\n    print(answer.code)\n";
        // The system's python: a user cannot run one from root's home (pyenv).
        let python = if std::path::Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
        let started = Instant::now();
        let out = match uid {
            Some(uid) => {
                let id = uid.to_string();
                self.run("setpriv", &["--reuid", &id, "--regid", &id, "--clear-groups", python, "-c", script])
            }
            None => self.run(python, &["-c", script]),
        };
        let took = started.elapsed();
        match out.status.success() {
            true => Ok(stdout(&out).trim().to_string()),
            false => Err(format!("after {took:?}: {}", stderr(&out).lines().last().unwrap_or_default())),
        }
    }

    fn tables(&self) -> String {
        stdout(&self.run("nft", &["list", "tables"]))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Some(fake) = &mut self.fake {
            let _ = fake.kill();
            let _ = fake.wait();
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// IMDS at its real address; Azure Monitor and ARM (plain http only on
/// loopback) at the same fake through 127.0.0.1.
fn config(imds_access: &str) -> String {
    format!(
        "{LOCAL_SHARE_CONFIG}\n[azure]\nenabled = true\nimds_endpoint = \"http://169.254.169.254\"\nmonitoring_endpoint = \"http://127.0.0.1\"\narm_endpoint = \"http://127.0.0.1\"\nprotect = false\nscheduled_events = false\nmetrics_interval = \"2s\"\nhealth_listen = \"\"\n{imds_access}"
    )
}

#[test]
fn imds_answers_root_and_the_named_groups_only_while_the_agent_runs_and_the_admin_s_rules_stay() {
    if !nix_is_root() {
        skip_note("SKIP imds_answers_root…: a network namespace and nftables need root (CI runs as root)");
        return;
    }
    let tools = ["unshare", "nsenter", "nft", "ip", "python3"];
    if let Some(missing) = tools.iter().find(|t| {
        Command::new("sh").args(["-c", &format!("command -v {t}")]).output().map_or(true, |o| !o.status.success())
    }) {
        skip_note(&format!("SKIP imds_answers_root…: {missing} is not installed"));
        return;
    }
    let Some(mut ns) = Namespace::new() else {
        skip_note("SKIP imds_answers_root…: cannot make a network namespace here");
        return;
    };
    assert!(ns.run("ip", &["link", "set", "lo", "up"]).status.success());
    assert!(ns.run("ip", &["addr", "add", "169.254.169.254/32", "dev", "lo"]).status.success());
    // The admin's own rules, which the agent must never touch.
    let admin = "table inet admin_rules {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\ttcp dport 2222 counter accept\n\t}\n}\n";
    let mut load = ns.command("nft").args(["-f", "-"]).stdin(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(load.stdin.as_mut().unwrap(), admin.as_bytes()).unwrap();
    drop(load.stdin.take());
    assert!(load.wait().unwrap().success());
    let admin_before = stdout(&ns.run("nft", &["list", "table", "inet", "admin_rules"]));
    ns.fake = Some(
        ns.command("env")
            .args(["FAKE_AZURE_HOST=0.0.0.0", "python3", FAKE, "80"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let fake_up = eventually(Duration::from_secs(10), || ns.token_as(None).ok());
    assert!(fake_up.is_some(), "the fake never answered in the namespace");
    let open = ns.token_as(Some(65534));
    assert!(open.is_ok(), "before the agent, IMDS is open (as on a plain VM): {open:?}");

    let sandbox = Sandbox::new();
    let mut group = std::fs::read_to_string(sandbox.root().join("etc/group")).unwrap();
    group.push_str("datasci:x:2000:alice\n");
    std::fs::write(sandbox.root().join("etc/group"), group).unwrap();
    sandbox.write_config(&config(""));
    let mut command = ns.command(DAEMON);
    command.arg("--root").arg(sandbox.root()).env_remove("NOTIFY_SOCKET").env("POOL_AGENT_LOG", "debug");
    let mut daemon = sandbox.start_with(command);
    assert!(!daemon.log().contains("invalid config"), "{}", daemon.log());
    let closed = eventually(Duration::from_secs(20), || {
        Some(sandbox.cli_json(&["azure", "--json"]))
            .filter(|a| a["imds_access"].as_str().is_some_and(|s| s.starts_with("root only")))
    });
    assert!(closed.is_some(), "{:#}\n{}", sandbox.cli_json(&["azure", "--json"]), daemon.log());
    assert!(ns.tables().contains("table inet pool_agent"), "{}", ns.tables());
    assert!(ns.token_as(None).is_ok(), "root still reaches IMDS");
    let refused = ns.token_as(Some(65534));
    println!("a user asking IMDS: {refused:?}");
    assert!(refused.as_ref().is_err_and(|why| why.contains("refused")), "{refused:?}");
    assert!(ns.token_as(Some(ADMIN_UID)).is_err(), "alice is not root");
    // The agent itself (root) still posts its metrics.
    let posted = eventually(Duration::from_secs(20), || {
        Some(sandbox.cli_json(&["azure", "--json"])).filter(|a| a["buckets_posted"].as_u64().unwrap_or(0) >= 1)
    });
    assert!(posted.is_some(), "{:#}", sandbox.cli_json(&["azure", "--json"]));

    // A team that wants `az login --identity` in notebooks names its group.
    sandbox.write_config(&config("imds_access = [\"datasci\"]\n"));
    daemon.signal("HUP");
    let widened = eventually(Duration::from_secs(20), || {
        Some(sandbox.cli_json(&["azure", "--json"]))
            .filter(|a| a["imds_access"].as_str().is_some_and(|s| s.contains("datasci")))
    });
    assert!(widened.is_some(), "{:#}", sandbox.cli_json(&["azure", "--json"]));
    let member = eventually(Duration::from_secs(10), || ns.token_as(Some(ADMIN_UID)).ok());
    assert!(member.is_some(), "alice is in datasci");
    assert!(ns.token_as(Some(USER_UID)).is_err(), "bob is not");
    assert!(ns.token_as(Some(65534)).is_err(), "nobody is not");
    assert!(ns.token_as(None).is_ok());

    // Stopped, the agent takes its table away and leaves the admin's as it was.
    daemon.signal("TERM");
    daemon.wait_exit(Duration::from_secs(20));
    let gone = eventually(Duration::from_secs(10), || Some(()).filter(|_| !ns.tables().contains("pool_agent")));
    assert!(gone.is_some(), "{}\nthe agent said:\n{}", ns.tables(), daemon.log());
    assert_eq!(stdout(&ns.run("nft", &["list", "table", "inet", "admin_rules"])), admin_before);
    assert!(ns.token_as(Some(65534)).is_ok(), "open again without the agent");
}
