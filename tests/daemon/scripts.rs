//! Setup scripts under `pool-agentd --root`: real uids and groups, real
//! process groups, a daemon killed mid-run. Root only where a script runs
//! as another user (CI runs as root).

// Black-box tests poll real processes from plain threads; sleeping is the point.
#![allow(clippy::disallowed_methods)]

use crate::harness::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn needs_root(test: &str) -> bool {
    if nix_is_root() {
        return true;
    }
    skip_note(&format!("SKIP {test}: needs root to run scripts as other users and as root (CI runs as root)"));
    false
}

/// A script in the sandbox's setup.d, root-owned and 0755 like an admin's.
fn add_script(sandbox: &Sandbox, name: &str, body: &str) -> PathBuf {
    let dir = sandbox.root().join("etc/pool-agent/setup.d");
    fs::create_dir_all(&dir).unwrap();
    for d in [sandbox.root().join("etc"), sandbox.root().join("etc/pool-agent"), dir.clone()] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let file = dir.join(name);
    fs::write(&file, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).unwrap();
    file
}

/// A directory every uid may write, for what scripts report back.
fn out_dir(sandbox: &Sandbox) -> PathBuf {
    let out = sandbox.root().join("out");
    fs::create_dir_all(&out).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o1777)).unwrap();
    out
}

fn config_with(scripts: &str) -> String {
    LOCAL_SHARE_CONFIG
        .replace("[instance]\nname = \"vm-test-0\"\n", "[instance]\nname = \"vm-test-0\"\nlocal_user = \"alice\"\nresource_group = \"rg-pool\"\nworkspace = \"ws-pool\"\n")
        + scripts
}

fn scripts_json(sandbox: &Sandbox) -> serde_json::Value {
    sandbox.cli_json(&["scripts", "--json"])
}

fn script_row(sandbox: &Sandbox, name: &str) -> serde_json::Value {
    scripts_json(sandbox)["scripts"].as_array().unwrap().iter().find(|s| s["name"] == name).cloned().unwrap_or_default()
}

fn wait_state(sandbox: &Sandbox, name: &str, state: &str, limit: Duration) -> serde_json::Value {
    eventually(limit, || Some(script_row(sandbox, name)).filter(|row| row["state"] == state))
        .unwrap_or_else(|| panic!("{name} never {state}: {:#}", scripts_json(sandbox)))
}

fn alive(pid: &str) -> bool {
    fs::read_to_string(format!("/proc/{}/stat", pid.trim())).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn a_script_runs_as_a_real_user_with_its_groups_home_and_ci_names_and_nothing_of_the_agent() {
    if !needs_root("a_script_runs_as_a_real_user_with_its_groups_home_and_ci_names_and_nothing_of_the_agent") {
        return;
    }
    let sandbox = Sandbox::new();
    let out = out_dir(&sandbox);
    add_script(
        &sandbox,
        "10-whoami",
        &format!("id -u > {o}/uid; id -G > {o}/groups; env | sort > {o}/env; echo \"hello $1\"", o = out.display()),
    );
    sandbox.write_config(&config_with(
        "[[setup.scripts]]\nname = \"10-whoami\"\npath = \"/etc/pool-agent/setup.d/10-whoami\"\nargs = [\"world\"]\n",
    ));
    let mut command = sandbox.daemon_command();
    command.env("INVOCATION_ID", "agent-invocation").env("POOL_AGENT_PRIVATE", "agent-only");
    let _daemon = sandbox.start_with(command);
    let row = wait_state(&sandbox, "10-whoami", "succeeded", Duration::from_secs(20));
    assert_eq!(row["run_as"], "alice");
    assert_eq!(fs::read_to_string(out.join("uid")).unwrap().trim(), ADMIN_UID.to_string());
    let groups = fs::read_to_string(out.join("groups")).unwrap();
    assert!(groups.split_whitespace().any(|g| g == "990"), "alice's supplementary group pool-agent-admin: {groups}");
    let env = fs::read_to_string(out.join("env")).unwrap();
    for wanted in [
        "HOME=/home/alice",
        "USER=alice",
        "CI_NAME=vm-test-0",
        "CI_LOCAL_UBUNTU_USER=alice",
        "CI_RESOURCE_GROUP=rg-pool",
        "CI_WORKSPACE=ws-pool",
        "POOL_INSTANCE_NAME=vm-test-0",
    ] {
        assert!(env.lines().any(|l| l == wanted), "{wanted} missing:\n{env}");
    }
    for leaked in ["INVOCATION_ID", "POOL_AGENT_PRIVATE", "POOL_AGENT_LOG", "NOTIFY_SOCKET"] {
        assert!(!env.contains(leaked), "{leaked} leaked into the script:\n{env}");
    }
    let log = sandbox.cli(&["scripts", "log", "10-whoami"]);
    assert!(stdout(&log).lines().any(|l| l.ends_with(" hello world")), "{}", stdout(&log));
    // Another user does not read what a script printed (tokens from `set -x`).
    let bob = sandbox.cli_as(USER_UID, &["scripts", "log", "10-whoami"]);
    assert!(!stdout(&bob).contains("hello world"), "{}", stdout(&bob));
    assert!(stderr(&bob).contains("[forbidden]") && stderr(&bob).contains("for alice"), "{}", stderr(&bob));
    let alice = sandbox.cli_as(ADMIN_UID, &["scripts", "log", "10-whoami"]);
    assert!(stdout(&alice).contains("hello world"), "{}", stderr(&alice));
    let human = stdout(&sandbox.cli(&["scripts"]));
    assert!(human.contains("10-whoami") && human.contains("succeeded"), "{human}");
}

#[test]
fn a_timed_out_script_is_killed_with_its_grandchild_and_a_daemon_holding_stdout_does_not_hang_the_runner() {
    if !needs_root(
        "a_timed_out_script_is_killed_with_its_grandchild_and_a_daemon_holding_stdout_does_not_hang_the_runner",
    ) {
        return;
    }
    let sandbox = Sandbox::new();
    let out = out_dir(&sandbox);
    add_script(&sandbox, "10-slow", &format!("sleep 300 &\necho $! > {o}/grandchild\nsleep 300", o = out.display()));
    add_script(
        &sandbox,
        "20-daemon",
        &format!("sleep 300 &\necho $! > {o}/daemon\necho left a daemon", o = out.display()),
    );
    sandbox.write_config(&config_with(
        "[[setup.scripts]]\nname = \"10-slow\"\npath = \"/etc/pool-agent/setup.d/10-slow\"\ntimeout = \"2s\"\n",
    ));
    let _daemon = sandbox.start();
    let slow = wait_state(&sandbox, "10-slow", "timed-out", Duration::from_secs(20));
    assert!(slow["reason"].as_str().unwrap().contains("timed out"), "{slow:#}");
    let grandchild = fs::read_to_string(out.join("grandchild")).unwrap();
    assert!(!alive(&grandchild), "the background sleep outlived the timeout");
    let started = Instant::now();
    wait_state(&sandbox, "20-daemon", "succeeded", Duration::from_secs(15));
    assert!(started.elapsed() < Duration::from_secs(10), "the runner hung on a daemon holding stdout");
    assert!(!alive(&fs::read_to_string(out.join("daemon")).unwrap()), "the leftover daemon was not stopped");
    // A blocking script that timed out leaves the VM not ready, and says which
    // (the status row follows the script's record a moment later).
    let named = eventually(Duration::from_secs(5), || {
        let status = sandbox.cli(&["status"]);
        (status.status.code() == Some(1) && stdout(&status).contains("10-slow")).then_some(())
    });
    assert!(named.is_some(), "{}", stdout(&sandbox.cli(&["status"])));
}

#[test]
fn a_group_writable_root_script_is_refused_with_its_reason() {
    let sandbox = Sandbox::new();
    let file = add_script(&sandbox, "10-root", "true");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o775)).unwrap();
    sandbox.write_config(&config_with(
        "[[setup.scripts]]\nname = \"10-root\"\npath = \"/etc/pool-agent/setup.d/10-root\"\nrun_as = \"root\"\n",
    ));
    let _daemon = sandbox.start();
    let row = wait_state(&sandbox, "10-root", "refused", Duration::from_secs(15));
    assert!(row["reason"].as_str().unwrap().contains("writable by its group or others"), "{row:#}");
    let human = stdout(&sandbox.cli(&["scripts"]));
    assert!(human.contains("refused") && human.contains("chmod go-w"), "{human}");
}

#[test]
fn once_is_not_run_again_after_a_restart_and_is_after_its_content_changes() {
    if !needs_root("once_is_not_run_again_after_a_restart_and_is_after_its_content_changes") {
        return;
    }
    let sandbox = Sandbox::new();
    let out = out_dir(&sandbox);
    add_script(&sandbox, "10-once", &format!("echo one >> {o}/count", o = out.display()));
    sandbox.write_config(&config_with(""));
    let mut daemon = sandbox.start();
    wait_state(&sandbox, "10-once", "succeeded", Duration::from_secs(15));
    daemon.signal("TERM");
    daemon.wait_exit(Duration::from_secs(10));
    let daemon = sandbox.start();
    let row = wait_state(&sandbox, "10-once", "succeeded", Duration::from_secs(15));
    assert!(row["reason"].as_str().unwrap_or_default().contains("not run again"), "{row:#}");
    assert_eq!(fs::read_to_string(out.join("count")).unwrap(), "one\n");
    drop(daemon);
    add_script(&sandbox, "10-once", &format!("echo two >> {o}/count", o = out.display()));
    let _daemon = sandbox.start();
    eventually(Duration::from_secs(15), || {
        Some(()).filter(|_| fs::read_to_string(out.join("count")).unwrap() == "one\ntwo\n")
    })
    .expect("the changed script ran again");
}

#[test]
fn a_daemon_killed_mid_run_reports_the_run_interrupted_stops_its_leftover_and_runs_it_again() {
    if !needs_root("a_daemon_killed_mid_run_reports_the_run_interrupted_stops_its_leftover_and_runs_it_again") {
        return;
    }
    let sandbox = Sandbox::new();
    let out = out_dir(&sandbox);
    let o = out.display();
    add_script(
        &sandbox,
        "10-long",
        &format!(
            "echo $$ >> {o}/pids\nif [ ! -e {o}/first ]; then touch {o}/first; sleep 300; fi\necho done >> {o}/done"
        ),
    );
    sandbox.write_config(&config_with(""));
    let mut daemon = sandbox.start();
    wait_state(&sandbox, "10-long", "running", Duration::from_secs(15));
    daemon.signal("KILL");
    daemon.wait_exit(Duration::from_secs(5));
    let first_pid = fs::read_to_string(out.join("pids")).unwrap();
    assert!(alive(&first_pid), "a direct run outlives a killed agent (its own session)");
    let daemon = sandbox.start();
    wait_state(&sandbox, "10-long", "succeeded", Duration::from_secs(20));
    assert_eq!(fs::read_to_string(out.join("done")).unwrap(), "done\n");
    assert!(!alive(&first_pid), "the lost run's process was stopped");
    let log = stdout(&sandbox.cli(&["scripts", "log", "10-long"]));
    assert!(log.contains("interrupted: was running"), "{log}");
    assert!(daemon.log().contains("interrupted"), "the journal says so too");
}

#[test]
fn only_an_admin_runs_a_script_on_demand_and_the_log_follows_it_to_its_end() {
    if !can_switch_uid("only_an_admin_runs_a_script_on_demand_and_the_log_follows_it_to_its_end") {
        return;
    }
    let sandbox = Sandbox::new();
    let out = out_dir(&sandbox);
    add_script(
        &sandbox,
        "10-again",
        &format!("echo run >> {o}/count; echo step one; sleep 1; echo step two", o = out.display()),
    );
    sandbox.write_config(&config_with(""));
    let _daemon = sandbox.start();
    wait_state(&sandbox, "10-again", "succeeded", Duration::from_secs(15));
    let refused = sandbox.cli_as(USER_UID, &["scripts", "run", "10-again"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("forbidden"), "{}", stderr(&refused));
    let queued = sandbox.cli_as(ADMIN_UID, &["scripts", "run", "10-again"]);
    assert!(queued.status.success(), "{}", stderr(&queued));
    wait_state(&sandbox, "10-again", "running", Duration::from_secs(10));
    let followed = sandbox.cli(&["scripts", "log", "10-again", "--follow"]);
    assert!(followed.status.success(), "{}", stderr(&followed));
    assert!(stdout(&followed).contains(" step two"), "--follow stopped before the end: {}", stdout(&followed));
    assert_eq!(fs::read_to_string(out.join("count")).unwrap(), "run\nrun\n");
    let unknown = sandbox.cli(&["scripts", "run", "nope"]);
    assert!(stderr(&unknown).contains("not_found"), "{}", stderr(&unknown));
}

#[test]
fn run_then_follow_follows_the_new_run_to_its_end_every_time() {
    if !needs_root("run_then_follow_follows_the_new_run_to_its_end_every_time") {
        return;
    }
    let sandbox = Sandbox::new();
    let out = out_dir(&sandbox);
    add_script(
        &sandbox,
        "10-again",
        &format!("echo run >> {o}/count; echo \"pass $(wc -l < {o}/count)\"; sleep 0.3; echo end", o = out.display()),
    );
    sandbox.write_config(&config_with(""));
    let _daemon = sandbox.start();
    wait_state(&sandbox, "10-again", "succeeded", Duration::from_secs(15));
    // The flow the CLI suggests, back to back: the follow must show each new run, not the last one's end.
    for pass in 2..=11 {
        let queued = sandbox.cli(&["scripts", "run", "10-again"]);
        assert!(queued.status.success(), "{}", stderr(&queued));
        let followed = stdout(&sandbox.cli(&["scripts", "log", "10-again", "--follow"]));
        assert!(followed.contains(&format!(" pass {pass}")), "pass {pass} not followed: {followed}");
        let tail = followed.rsplit(&format!(" pass {pass}")).next().unwrap_or_default();
        assert!(tail.contains(" end") && tail.contains("run ended"), "pass {pass} not followed to its end: {followed}");
    }
}

fn set_machine_id(sandbox: &Sandbox, id: &str) {
    fs::write(sandbox.root().join("etc/machine-id"), format!("{id}\n")).unwrap();
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    let copied = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(copied.success(), "cp -a {} {}", from.display(), to.display());
}

#[test]
fn once_records_copied_to_another_machine_do_not_count_there() {
    if !needs_root("once_records_copied_to_another_machine_do_not_count_there") {
        return;
    }
    let (build_vm, pool_vm) = (Sandbox::new(), Sandbox::new());
    for (sandbox, id) in
        [(&build_vm, "0123456789abcdef0123456789abcdef"), (&pool_vm, "fedcba9876543210fedcba9876543210")]
    {
        set_machine_id(sandbox, id);
        out_dir(sandbox);
        // The same bytes in both sandboxes (the same image): the output path is found from the script's own.
        add_script(sandbox, "10-once", "echo ran >> \"$(dirname \"$0\")/../../../out/count\"");
        sandbox.write_config(&config_with(""));
    }
    let mut daemon = build_vm.start();
    wait_state(&build_vm, "10-once", "succeeded", Duration::from_secs(15));
    daemon.signal("TERM");
    daemon.wait_exit(Duration::from_secs(10));
    // What capturing the build VM without preparing it carries: its whole state directory.
    let pool_state = pool_vm.root().join("var/lib/pool-agent");
    fs::create_dir_all(pool_state.parent().unwrap()).unwrap();
    copy_tree(&build_vm.root().join("var/lib/pool-agent"), &pool_state);
    let _daemon = pool_vm.start();
    let row = wait_state(&pool_vm, "10-once", "succeeded", Duration::from_secs(15));
    assert_eq!(fs::read_to_string(pool_vm.root().join("out/count")).unwrap(), "ran\n", "{row:#}");
    // The same records on the machine that wrote them still count.
    let _daemon = build_vm.start();
    let row = wait_state(&build_vm, "10-once", "succeeded", Duration::from_secs(15));
    assert!(row["reason"].as_str().unwrap_or_default().contains("not run again"), "{row:#}");
    assert_eq!(fs::read_to_string(build_vm.root().join("out/count")).unwrap(), "ran\n");
}

#[test]
fn prepare_image_refuses_while_the_agent_runs_then_clears_what_it_says() {
    if !needs_root("prepare_image_refuses_while_the_agent_runs_then_clears_what_it_says") {
        return;
    }
    let sandbox = Sandbox::new();
    set_machine_id(&sandbox, "0123456789abcdef0123456789abcdef");
    let out = out_dir(&sandbox);
    add_script(&sandbox, "10-once", &format!("echo ran >> {o}/count", o = out.display()));
    sandbox.write_config(&config_with(""));
    let mut daemon = sandbox.start();
    wait_state(&sandbox, "10-once", "succeeded", Duration::from_secs(15));
    let held = sandbox.cli(&["hold", "2h", "--reason", "baking"]);
    assert!(held.status.success(), "{}", stderr(&held));
    let prepare = || {
        std::process::Command::new(DAEMON).arg("--root").arg(sandbox.root()).arg("--prepare-image").output().unwrap()
    };
    let refused = prepare();
    assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));
    assert!(stderr(&refused).contains("stop it first"), "{}", stderr(&refused));
    assert!(sandbox.root().join("var/lib/pool-agent/scripts/10-once.json").exists(), "nothing cleared while it runs");
    daemon.signal("TERM");
    daemon.wait_exit(Duration::from_secs(10));

    let prepared = prepare();
    let said = stdout(&prepared);
    assert!(prepared.status.success(), "{said}{}", stderr(&prepared));
    for what in ["setup scripts' run records", "holds", "the last good config", "setup scripts' logs"] {
        assert!(said.contains(&format!("cleared {what}")), "{what} not said: {said}");
    }
    assert_eq!(fs::read_dir(sandbox.root().join("var/lib/pool-agent")).unwrap().count(), 0, "{said}");
    assert_eq!(fs::read_dir(sandbox.root().join("var/log/pool-agent/scripts")).unwrap().count(), 0, "{said}");
    assert!(sandbox.config_file().exists(), "the config is kept");
    let again = prepare();
    assert!(stdout(&again).contains("nothing to clear"), "{}", stdout(&again));

    // The image's first boot: the once script runs, no hold is carried.
    let _daemon = sandbox.start();
    wait_state(&sandbox, "10-once", "succeeded", Duration::from_secs(15));
    assert_eq!(fs::read_to_string(out.join("count")).unwrap(), "ran\nran\n");
    let idle = sandbox.cli_json(&["idle", "--json"]);
    let holds = idle["signals"].as_array().unwrap().iter().find(|s| s["name"] == "holds").cloned().unwrap_or_default();
    assert_eq!(holds["figures"]["holds"], 0.0, "{idle:#}");
}

#[test]
fn on_the_built_in_defaults_no_script_runs_until_a_valid_config_is_reloaded() {
    if !needs_root("on_the_built_in_defaults_no_script_runs_until_a_valid_config_is_reloaded") {
        return;
    }
    let sandbox = Sandbox::new();
    // The defaults' user exists here, so only the agent's restraint keeps the script from running.
    let passwd = sandbox.root().join("etc/passwd");
    let mut users = fs::read_to_string(&passwd).unwrap();
    users.push_str("azureuser:x:1000:1000::/home/alice:/bin/bash\n");
    fs::write(&passwd, users).unwrap();
    let out = out_dir(&sandbox);
    add_script(&sandbox, "10-from-dir", &format!("echo ran >> {o}/count", o = out.display()));
    sandbox.write_config("[share]\nkind = \"local\"\npath = \"/srv/share\"\nmount_point = \"/data/notebooks\"\nprobe_intervall = \"5s\"\n");
    let daemon = sandbox.start();
    let held = eventually(Duration::from_secs(10), || {
        Some(scripts_json(&sandbox)).filter(|s| s["phase"].as_str().unwrap_or_default().contains("built-in defaults"))
    });
    assert!(held.is_some(), "{:#}\n{}", scripts_json(&sandbox), daemon.log());
    std::thread::sleep(Duration::from_secs(2));
    assert!(!out.join("count").exists(), "a script ran on the built-in defaults");
    let asked = sandbox.cli(&["scripts", "run", "10-from-dir"]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(!out.join("count").exists(), "an on-demand run ran on the built-in defaults: {}", stderr(&asked));
    sandbox.write_config(&config_with(""));
    daemon.signal("HUP");
    wait_state(&sandbox, "10-from-dir", "succeeded", Duration::from_secs(15));
    assert_eq!(fs::read_to_string(out.join("count")).unwrap(), "ran\n");
}

#[test]
fn after_a_reload_that_changes_the_share_scripts_wait_for_it_as_at_boot() {
    if !needs_root("after_a_reload_that_changes_the_share_scripts_wait_for_it_as_at_boot") {
        return;
    }
    let sandbox = Sandbox::new();
    let out = out_dir(&sandbox);
    sandbox.write_config(&config_with(""));
    let daemon = sandbox.start();
    eventually(Duration::from_secs(10), || Some(()).filter(|_| sandbox.cli(&["status"]).status.success()))
        .expect("ready");
    // The new config moves the share to a server that is not there, and adds a script.
    add_script(&sandbox, "20-new", &format!("echo ran >> {o}/count", o = out.display()));
    sandbox.write_config(&config_with("[setup]\nshare_wait = \"4s\"\n").replace(
        "kind = \"local\"\npath = \"/srv/share\"\n",
        "kind = \"nfs\"\nsource = \"127.0.0.1:/nowhere\"\nmount_timeout = \"2s\"\n",
    ));
    let reloaded = std::time::Instant::now();
    daemon.signal("HUP");
    let waiting = eventually(Duration::from_secs(3), || {
        Some(scripts_json(&sandbox))
            .filter(|s| s["phase"].as_str().unwrap_or_default().contains("waiting for the share"))
    });
    assert!(waiting.is_some(), "{:#}", scripts_json(&sandbox));
    assert!(!out.join("count").exists(), "ran before the new share was waited for");
    wait_state(&sandbox, "20-new", "succeeded", Duration::from_secs(20));
    assert!(
        reloaded.elapsed() >= Duration::from_secs(4),
        "ran {:?} after the reload, before share_wait",
        reloaded.elapsed()
    );
}

#[test]
fn refused_and_failed_scripts_reach_the_journal_as_warnings_once() {
    let sandbox = Sandbox::new();
    let refused = add_script(&sandbox, "10-open", "true");
    fs::set_permissions(&refused, fs::Permissions::from_mode(0o777)).unwrap();
    add_script(&sandbox, "20-fails", "exit 3");
    let me = sandbox.caller_name();
    sandbox.write_config(&config_with(&format!(
        "[[setup.scripts]]\nname = \"10-open\"\npath = \"/etc/pool-agent/setup.d/10-open\"\nrun_as = \"{me}\"\n[[setup.scripts]]\nname = \"20-fails\"\npath = \"/etc/pool-agent/setup.d/20-fails\"\nrun_as = \"{me}\"\n"
    )));
    // Under systemd the agent's stderr is the journal's stream: each line carries its priority.
    let mut command = sandbox.daemon_command();
    command.env("JOURNAL_STREAM", "8:12345");
    let daemon = sandbox.start_with(command);
    wait_state(&sandbox, "10-open", "refused", Duration::from_secs(15));
    wait_state(&sandbox, "20-fails", "failed", Duration::from_secs(15));
    // A reload runs the batch again: the same refusal is not said again.
    daemon.signal("HUP");
    std::thread::sleep(Duration::from_secs(2));
    let log = daemon.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.starts_with("<4>")).collect();
    let refusals = warnings.iter().filter(|l| l.contains("10-open") && l.contains("refused")).count();
    assert_eq!(refusals, 1, "one warning for the refusal: {log}");
    assert!(warnings.iter().any(|l| l.contains("20-fails") && l.contains("failed (exit 3)")), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("<6>") && l.contains("failed (exit 3)")), "{log}");
}

#[test]
fn while_the_share_is_awaited_scripts_lists_every_configured_script_and_the_refusals_known_already() {
    let sandbox = Sandbox::new();
    add_script(&sandbox, "10-conda", "true");
    add_script(&sandbox, "20-ghost", "true");
    let me = sandbox.caller_name();
    // A local share whose directory is not there: never mounted, so scripts wait (up to an hour).
    sandbox.write_config(
        &config_with(&format!(
            "[setup]\nshare_wait = \"1h\"\n[[setup.scripts]]\nname = \"10-conda\"\npath = \"/etc/pool-agent/setup.d/10-conda\"\nrun_as = \"{me}\"\n[[setup.scripts]]\nname = \"20-ghost\"\npath = \"/etc/pool-agent/setup.d/20-ghost\"\nrun_as = \"nosuchuser\"\n"
        ))
        .replace("path = \"/srv/share\"", "path = \"/srv/not-there\""),
    );
    let _daemon = sandbox.start();
    let listed = eventually(Duration::from_secs(10), || {
        Some(scripts_json(&sandbox)).filter(|s| s["scripts"].as_array().is_some_and(|rows| rows.len() == 2))
    })
    .unwrap_or_else(|| panic!("the configured scripts were never listed: {:#}", scripts_json(&sandbox)));
    assert!(listed["phase"].as_str().unwrap().starts_with("waiting for the share"), "{listed:#}");
    let out = sandbox.cli(&["scripts"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("2 setup script(s)"), "{text}");
    assert!(text.contains("waiting for the share"), "{text}");
    let line = |name: &str| text.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_string();
    assert!(line("10-conda").contains("pending"), "{text}");
    assert!(line("20-ghost").contains("refused"), "{text}");
    assert!(text.contains("run_as: no user \"nosuchuser\" on this VM"), "the refusal says why: {text}");
    // Nothing ran while the share is awaited.
    assert_eq!(script_row(&sandbox, "10-conda")["started"], serde_json::Value::Null);
}
