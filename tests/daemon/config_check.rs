//! `pool-agentd --check-config`: what an admin runs before a reload.

use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

#[test]
fn an_unknown_key_fails_the_check_naming_file_line_and_key() {
    let sandbox = Sandbox::new();
    sandbox.write_config("[share]\nkind = \"local\"\npath = \"/srv/share\"\nmount_pont = \"/data\"\n");
    let out = sandbox.daemon_command().arg("--check-config").output().unwrap();
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(message.contains("config.toml:4: share.mount_pont: unknown key"), "{message}");
    assert!(stdout(&out).is_empty(), "nothing on stdout for an invalid config");
}

#[test]
fn a_bad_drop_in_is_named() {
    let sandbox = Sandbox::new();
    std::fs::write(sandbox.root().join("etc/pool-agent/config.d/20-idle.toml"), "[idle]\ntimeout = \"forever\"\n")
        .unwrap();
    let out = sandbox.daemon_command().arg("--check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("20-idle.toml:2: idle.timeout: invalid duration"), "{}", stderr(&out));
}

#[test]
fn a_valid_config_prints_the_effective_config_with_defaults() {
    let sandbox = Sandbox::new();
    std::fs::write(
        sandbox.root().join("etc/pool-agent/config.d/10-nfs.toml"),
        "[share]\nkind = \"nfs\"\nsource = \"nfs.example:/export\"\npath = \"/x\"\n",
    )
    .unwrap();
    let invalid = sandbox.daemon_command().arg("--check-config").output().unwrap();
    assert!(!invalid.status.success(), "a local path left over for an nfs share is a mistake worth naming");
    assert!(stderr(&invalid).contains("share.path"), "{}", stderr(&invalid));

    std::fs::write(
        sandbox.root().join("etc/pool-agent/config.d/10-nfs.toml"),
        "[share]\nkind = \"local\"\npath = \"/srv/other\"\n",
    )
    .unwrap();
    let out = sandbox.daemon_command().arg("--check-config").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("10-nfs.toml"), "lists the files merged: {text}");
    assert!(text.contains("path = \"/srv/other\""), "{text}");
    assert!(text.contains("admin_group = \"pool-agent-admin\""), "shows defaults: {text}");
    assert!(!sandbox.socket().exists(), "--check-config must not start the daemon");
}

#[test]
fn a_broken_config_at_start_still_answers_with_the_error_and_a_reload_brings_it_up() {
    let sandbox = Sandbox::new();
    // One bad fragment (as a scale set's drop-in might be) next to a good main file.
    let drop_in = sandbox.root().join("etc/pool-agent/config.d/50-idle.toml");
    std::fs::write(&drop_in, "[idle]\ninterval = \"1m\"\ntimeout = \"30s\"\n").unwrap();
    let daemon = sandbox.start();
    let out = sandbox.cli(&["status"]);
    assert_eq!(out.status.code(), Some(1), "a broken config is not ready: {}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("50-idle.toml:3: idle.timeout"), "{text}");
    assert!(text.contains("built-in defaults"), "says what runs instead: {text}");
    let status = sandbox.status_json();
    let config = status["components"].as_array().unwrap().iter().find(|c| c["name"] == "config").cloned().unwrap();
    assert_eq!(config["state"], "failed", "{config}");
    assert_eq!(status["config"]["rejected_reload"]["key"], "idle.timeout");
    // The defaults have no share: nothing is mounted from a config that is not in force.
    let share = sandbox.cli(&["share", "--json"]);
    let share: serde_json::Value = serde_json::from_slice(&share.stdout).unwrap();
    assert_eq!(share["state"], "not-configured", "{share}");

    std::fs::write(&drop_in, "[idle]\ninterval = \"10s\"\ntimeout = \"1h\"\n").unwrap();
    daemon.signal("HUP");
    let ready = eventually(Duration::from_secs(10), || {
        let out = sandbox.cli(&["status", "--json"]);
        (out.status.code() == Some(0)).then_some(out)
    });
    assert!(ready.is_some(), "a fixed config and a reload did not bring it up: {}", sandbox.status_json());
    let status = sandbox.status_json();
    assert!(status["config"].get("rejected_reload").is_none(), "{status}");
    assert!(status["config"].get("running_on").is_none(), "{status}");
    let config = status["components"].as_array().unwrap().iter().find(|c| c["name"] == "config").cloned().unwrap();
    assert!(config.get("last_error").is_none(), "no stale error after a good reload: {config}");
}

#[test]
fn a_later_broken_start_runs_on_the_last_valid_config() {
    let sandbox = Sandbox::new();
    let mut first = sandbox.start();
    let mounted = eventually(Duration::from_secs(10), || {
        let share: serde_json::Value = serde_json::from_slice(&sandbox.cli(&["share", "--json"]).stdout).ok()?;
        (share["state"] == "mounted").then_some(())
    });
    assert!(mounted.is_some());
    first.signal("TERM");
    first.wait_exit(Duration::from_secs(10));
    sandbox.write_config(&format!("{LOCAL_SHARE_CONFIG}\n[api]\nadmin_grup = \"x\"\n"));
    let _second = sandbox.start();
    let text = stdout(&sandbox.cli(&["status"]));
    assert!(text.contains("last valid config"), "{text}");
    let share = eventually(Duration::from_secs(10), || {
        let share: serde_json::Value = serde_json::from_slice(&sandbox.cli(&["share", "--json"]).stdout).ok()?;
        (share["state"] == "mounted").then_some(share)
    });
    assert!(share.is_some(), "the share of the last valid config is kept: {}", sandbox.status_json());
}

#[test]
fn status_exits_1_while_the_share_has_failed_and_0_once_all_is_ready() {
    let sandbox = Sandbox::new();
    std::fs::remove_dir(sandbox.root().join("srv/share")).unwrap();
    let _daemon = sandbox.start();
    let failed = eventually(Duration::from_secs(10), || {
        let out = sandbox.cli(&["status"]);
        stdout(&out).contains("! share").then_some(out)
    })
    .expect("the share never showed as failed");
    assert_eq!(failed.status.code(), Some(1), "{}", stdout(&failed));
    let json = sandbox.cli(&["status", "--json"]);
    assert_eq!(json.status.code(), Some(1), "--json carries the same exit code");
    std::fs::create_dir_all(sandbox.root().join("srv/share")).unwrap();
    let ready = eventually(Duration::from_secs(15), || {
        let out = sandbox.cli(&["status"]);
        (out.status.code() == Some(0)).then_some(out)
    });
    assert!(ready.is_some(), "never all ready: {}", sandbox.status_json());
}

#[test]
fn the_check_refuses_what_would_fail_at_run_time_naming_file_line_key_and_fix() {
    let sandbox = Sandbox::new();
    let azure = "[share]\nkind = \"azure-files\"\naccount = \"acct\"\nshare = \"notebooks\"\nkey_file = \"/etc/pool-agent/secrets/storage-key\"\n";
    let key = sandbox.root().join("etc/pool-agent/secrets/storage-key");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    // (config, what to do to the system first, what the check must say)
    type Case = (String, Box<dyn Fn()>, &'static str);
    let cases: Vec<Case> = vec![
        (azure.to_string(), Box::new(|| {}), "config.toml:5: share.key_file: cannot read the storage key file"),
        (
            azure.to_string(),
            Box::new({
                let key = key.clone();
                move || {
                    std::fs::write(&key, "k\n").unwrap();
                    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
                }
            }),
            "config.toml:5: share.key_file: storage key file",
        ),
        (
            "[share]\nkind = \"local\"\npath = \"/srv/share\"\nmount_point = \"/etc\"\nforce = true\n".to_string(),
            Box::new(|| {}),
            "config.toml:4: share.mount_point: /etc is a system directory",
        ),
        (
            "[share]\nkind = \"local\"\npath = \"/srv/share\"\nmount_point = \"/\"\n".to_string(),
            Box::new(|| {}),
            "config.toml:4: share.mount_point: / is a system directory",
        ),
        (
            "[share]\nkind = \"nfs\"\nsource = \"h:/x\"\noptions = [\"PASSWORD=x\"]\n".to_string(),
            Box::new(|| {}),
            "config.toml:4: share.options: `password=` does not belong in the config",
        ),
        (
            format!("{azure}key_source = \"key-vault\"\n")
                .replace("key_file = \"/etc/pool-agent/secrets/storage-key\"\n", ""),
            Box::new(|| {}),
            "config.toml:5: share.key_vault_secret: is needed with key_source = \"key-vault\"",
        ),
        (
            "[instance]\nlocal_user = \"nosuchuser\"\n".to_string(),
            Box::new(|| {}),
            "config.toml:2: instance.local_user: no user `nosuchuser`",
        ),
        (
            "[api]\nadmin_group = \"nosuchgroup\"\n".to_string(),
            Box::new(|| {}),
            "config.toml:2: api.admin_group: no group `nosuchgroup`",
        ),
        (
            format!("{azure}uid = \"nosuchuser\"\n"),
            Box::new({
                let key = key.clone();
                move || std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap()
            }),
            "config.toml:6: share.uid: no user `nosuchuser`",
        ),
        (
            format!("{azure}gid = \"nosuchgroup\"\n"),
            Box::new(|| {}),
            "config.toml:6: share.gid: no group `nosuchgroup`",
        ),
    ];
    for (config, prepare, expected) in cases {
        sandbox.write_config(&config);
        prepare();
        let out = sandbox.daemon_command().arg("--check-config").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{config}\n{}", stderr(&out));
        assert!(stderr(&out).contains(expected), "expected {expected:?} for:\n{config}\ngot: {}", stderr(&out));
    }
    // A file config.d does not read (a dpkg leftover) is named as a warning; the config stays valid.
    sandbox.write_config(LOCAL_SHARE_CONFIG);
    std::fs::write(sandbox.root().join("etc/pool-agent/config.d/50-share.toml.dpkg-old"), "[share\n").unwrap();
    let out = sandbox.daemon_command().arg("--check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: ") && stderr(&out).contains("50-share.toml.dpkg-old: not read"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_missing_config_file_is_named() {
    let sandbox = Sandbox::new();
    std::fs::remove_file(sandbox.config_file()).unwrap();
    let out = sandbox.daemon_command().arg("--check-config").output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("config.toml: cannot read config"), "{}", stderr(&out));
}

/// An admin's script in the sandbox, root-owned like one from an image.
fn admin_script(sandbox: &Sandbox, name: &str, body: &[u8], mode: u32) {
    let dir = sandbox.root().join("opt/setup");
    std::fs::create_dir_all(&dir).unwrap();
    for d in [sandbox.root().join("opt"), dir.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(dir.join(name), body).unwrap();
    std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn the_check_vets_every_script_as_boot_would_and_names_them_all_in_line_order() {
    let sandbox = Sandbox::new();
    admin_script(&sandbox, "good.sh", b"#!/bin/sh\necho ok\n", 0o755);
    admin_script(&sandbox, "crlf.sh", b"#!/bin/sh\r\necho ok\r\n", 0o755);
    admin_script(&sandbox, "plain.sh", b"#!/bin/sh\necho ok\n", 0o644);
    let entry = |name: &str, path: &str, run_as: &str| {
        format!("[[setup.scripts]]\nname = \"{name}\"\npath = \"{path}\"\nrun_as = \"{run_as}\"\n")
    };
    let me = sandbox.caller_name();
    let config = [
        LOCAL_SHARE_CONFIG.to_string(),
        entry("missing", "/opt/setup/missing.sh", &me),
        entry("crlf", "/opt/setup/crlf.sh", &me),
        entry("plain", "/opt/setup/plain.sh", &me),
        entry("stranger", "/opt/setup/good.sh", "nosuchuser"),
        entry("good", "/opt/setup/good.sh", &me),
    ]
    .concat();
    sandbox.write_config(&config);
    let line_of = |needle: &str| config.lines().position(|l| l == needle).unwrap() + 1;
    let out = sandbox.daemon_command().arg("--check-config").output().unwrap();
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    let expected = [
        format!(
            "config.toml:{}: setup.scripts[0].path: /opt/setup/missing.sh",
            line_of("path = \"/opt/setup/missing.sh\"")
        ),
        format!(
            "config.toml:{}: setup.scripts[1].path: /opt/setup/crlf.sh has Windows line endings",
            line_of("path = \"/opt/setup/crlf.sh\"")
        ),
        format!(
            "config.toml:{}: setup.scripts[2].path: /opt/setup/plain.sh is not executable",
            line_of("path = \"/opt/setup/plain.sh\"")
        ),
        format!("config.toml:{}: setup.scripts[3].run_as: no user \"nosuchuser\"", line_of("run_as = \"nosuchuser\"")),
    ];
    let mut at = 0;
    for want in &expected {
        let found =
            said[at..].find(want.as_str()).unwrap_or_else(|| panic!("{want:?} not said (in order) in:\n{said}"));
        at += found + want.len();
    }
    assert!(said.contains("run dos2unix"), "{said}");
    assert!(!said.contains("os error") && !said.contains("scripts[4]"), "{said}");
    assert_eq!(said.matches("invalid config:").count(), 4, "only the four broken scripts: {said}");
}

#[test]
fn every_parse_and_type_error_of_every_file_is_named_at_once_with_a_suggestion() {
    let sandbox = Sandbox::new();
    std::fs::write(
        sandbox.root().join("etc/pool-agent/config.d/10-idle.toml"),
        "[idle]\ntimeout = 30\nintervall = \"1m\"\n",
    )
    .unwrap();
    std::fs::write(
        sandbox.root().join("etc/pool-agent/config.d/20-links.toml"),
        "[links]\nmin_uid = \"1000\"\nprivate = \"yes\"\n",
    )
    .unwrap();
    let out = sandbox.daemon_command().arg("--check-config").output().unwrap();
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    // Warnings and what was not checked come too; the errors are these.
    let lines: Vec<&str> = said.lines().filter(|l| l.contains("invalid config:")).collect();
    let expected = [
        "10-idle.toml:2: idle.timeout: expected a quoted duration such as \"30s\"".to_string(),
        "10-idle.toml:3: idle.intervall: unknown key `intervall`; did you mean `interval`?".to_string(),
        "20-links.toml:2: links.min_uid: expected a whole number".to_string(),
        "20-links.toml:3: links.private: expected true or false, without quotes".to_string(),
    ];
    assert_eq!(lines.len(), expected.len(), "{said}");
    for (line, want) in lines.iter().zip(&expected) {
        assert!(line.contains(want.as_str()), "{want:?} not in {line:?}\n{said}");
    }
    assert!(!said.contains("u32") && !said.contains("unknown field") && !said.contains("variant"), "{said}");
}

#[test]
fn without_root_the_check_says_what_it_could_not_check_and_passes_a_valid_config() {
    let test = "without_root_the_check_says_what_it_could_not_check_and_passes_a_valid_config";
    if !can_switch_uid(test) {
        return;
    }
    let sandbox = Sandbox::new();
    let secrets = sandbox.root().join("etc/pool-agent/secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(secrets.join("storage-key"), "k3y\n").unwrap();
    std::fs::set_permissions(secrets.join("storage-key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    for dir in ["etc", "etc/pool-agent"] {
        std::fs::set_permissions(sandbox.root().join(dir), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    sandbox.write_config(
        "[share]\nkind = \"azure-files\"\naccount = \"acct\"\nshare = \"notebooks\"\nkey_file = \"/etc/pool-agent/secrets/storage-key\"\nuid = \"1001\"\ngid = \"1001\"\n[instance]\nlocal_user = \"alice\"\n",
    );
    let check_as = |uid: Option<u32>| {
        let mut command = match uid {
            Some(uid) => {
                let mut c = std::process::Command::new("setpriv");
                c.args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups", DAEMON]);
                c
            }
            None => std::process::Command::new(DAEMON),
        };
        command.arg("--root").arg(sandbox.root()).arg("--check-config").output().unwrap()
    };
    let as_root = check_as(None);
    assert_eq!(as_root.status.code(), Some(0), "{}", stderr(&as_root));
    assert!(!stderr(&as_root).contains("need root"), "{}", stderr(&as_root));
    let as_nobody = check_as(Some(65534));
    let said = stderr(&as_nobody);
    // In a sandbox the key belongs to the uid that runs the daemon: root's key is one nobody cannot read.
    assert_eq!(as_nobody.status.code(), Some(0), "a valid config is not called invalid: {said}");
    assert!(said.contains("not checked: share.key_file") && said.contains("need root"), "{said}");
    assert!(said.contains("sudo pool-agentd --check-config"), "{said}");
    assert!(!said.contains("k3y"), "{said}");
}

#[test]
fn config_d_skips_backup_and_package_files_with_a_warning_and_runs_with_the_rest() {
    let sandbox = Sandbox::new();
    let dir = sandbox.root().join("etc/pool-agent/config.d");
    std::fs::write(dir.join("20-idle.toml"), "[idle]\ntimeout = \"45m\"\n").unwrap();
    // Each would break the config if read: broken TOML or a key that does not exist.
    let leftovers = [
        "20-idle.toml~",
        "20-idle.toml.bak",
        "20-idle.toml.dpkg-old",
        "20-idle.toml.dpkg-new",
        "20-idle.toml.dpkg-dist",
        "20-idle.toml.disabled",
        ".20-idle.toml.swp",
        "README",
    ];
    for name in leftovers {
        std::fs::write(dir.join(name), "[idle\nthis is not toml\n").unwrap();
    }
    let out = sandbox.daemon_command().arg("--check-config").output().unwrap();
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    for name in leftovers {
        assert!(said.contains(&format!("{name}: not read")), "{name} not named: {said}");
    }
    assert!(stdout(&out).contains("timeout = \"45m\""), "the real drop-in is in force: {}", stdout(&out));
    // The daemon runs on it too, and says the same in its journal.
    let daemon = sandbox.start();
    assert!(answered(&sandbox.cli(&["status"])), "{}", daemon.log());
    let idle = eventually(Duration::from_secs(10), || {
        Some(sandbox.cli_json(&["idle", "--json"])).filter(|idle| idle["timeout_seconds"] == 2700)
    });
    assert!(idle.is_some(), "{:#}", sandbox.cli_json(&["idle", "--json"]));
    assert!(daemon.log().contains("20-idle.toml.dpkg-dist: not read"), "{}", daemon.log());
}

#[test]
fn a_drop_in_switches_the_share_s_kind_and_the_earlier_kind_s_keys_are_dropped_with_a_note() {
    let sandbox = Sandbox::new();
    sandbox.write_config(
        "[instance]\nname = \"vm-test-0\"\n[share]\nkind = \"azure-files\"\naccount = \"acct\"\nshare = \"notebooks\"\nkey_file = \"/etc/pool-agent/secrets/storage-key\"\nmount_point = \"/data/notebooks\"\n",
    );
    std::fs::write(
        sandbox.root().join("etc/pool-agent/config.d/50-local.toml"),
        "[share]\nkind = \"local\"\npath = \"/srv/share\"\n",
    )
    .unwrap();
    let out = sandbox.daemon_command().arg("--check-config").output().unwrap();
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("50-local.toml:2: share.kind = \"local\" replaces \"azure-files\" of"), "{said}");
    assert!(said.contains("account, share, key_file are dropped"), "{said}");
    let effective = stdout(&out);
    assert!(effective.contains("kind = \"local\"") && !effective.contains("acct"), "{effective}");
    let _daemon = sandbox.start();
    let share = eventually(Duration::from_secs(10), || {
        serde_json::from_slice::<serde_json::Value>(&sandbox.cli(&["share", "--json"]).stdout)
            .ok()
            .filter(|s| s["state"] == "mounted")
    });
    assert!(share.is_some(), "{:#}", stdout(&sandbox.cli(&["share", "--json"])));
}

/// A pool's main file with an Azure Files share whose key is root's alone
/// (`secrets/` 0700), as on a VM; the drop-in is the team's.
fn team_sandbox() -> Sandbox {
    let sandbox = Sandbox::new();
    let secrets = sandbox.root().join("etc/pool-agent/secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(secrets.join("storage-key"), "k3y\n").unwrap();
    std::fs::set_permissions(secrets.join("storage-key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    for dir in ["etc", "etc/pool-agent", "etc/pool-agent/config.d"] {
        std::fs::set_permissions(sandbox.root().join(dir), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    sandbox.write_config(
        "[share]\nkind = \"azure-files\"\naccount = \"acct\"\nshare = \"notebooks\"\nkey_file = \"/etc/pool-agent/secrets/storage-key\"\nuid = \"1001\"\ngid = \"1001\"\n",
    );
    sandbox
}

const TEAM_DROP_IN: &str = "etc/pool-agent/config.d/50-team.toml";

/// The team's drop-in as it should be: a script run as alice.
const TEAM_FIXED: &str =
    "[idle]\ninterval = \"10s\"\ntimeout = \"30m\"\n[links]\nmin_uid = 1000\nfolder_mode = \"0770\"\n\
[[setup.scripts]]\nname = \"conda\"\npath = \"/opt/setup/conda.sh\"\nrun_as = \"alice\"\n";

#[test]
fn a_drop_in_with_five_mistakes_has_all_five_named_in_one_run_in_line_order() {
    let sandbox = team_sandbox();
    let drop_in = "[idle]\nintervall = \"10s\"\ntimeout = 30\n[links]\nmin_uid = 70000\nfolder_mode = \"999\"\n\
[[setup.scripts]]\nname = \"conda\"\npath = \"/opt/setup/missing.sh\"\nrun_as = \"alice\"\n";
    std::fs::write(sandbox.root().join(TEAM_DROP_IN), drop_in).unwrap();
    let out = sandbox.daemon_command().arg("--check-config").output().unwrap();
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    let errors: Vec<&str> = said.lines().filter(|l| l.contains("invalid config:")).collect();
    let expected = [
        "50-team.toml:2: idle.intervall: unknown key `intervall`; did you mean `interval`?",
        "50-team.toml:3: idle.timeout: expected a quoted duration",
        "50-team.toml:5: links.min_uid: 70000 is above links.max_uid (60000, the built-in default)",
        "50-team.toml:6: links.folder_mode: \"999\" is not an octal mode",
        "50-team.toml:9: setup.scripts[0].path: /opt/setup/missing.sh: No such file or directory",
    ];
    assert_eq!(errors.len(), expected.len(), "exactly the five mistakes, once each:\n{said}");
    for (line, want) in errors.iter().zip(expected) {
        assert!(line.contains(want), "{want:?} not in {line:?} (in line order):\n{said}");
    }
    assert!(stdout(&out).is_empty(), "no effective config for an invalid one");

    // Fixed, with the script in place, the check passes as root and says nothing is left unchecked.
    admin_script(&sandbox, "conda.sh", b"#!/bin/sh\necho ok\n", 0o755);
    std::fs::write(sandbox.root().join(TEAM_DROP_IN), TEAM_FIXED).unwrap();
    let out = sandbox.daemon_command().arg("--check-config").output().unwrap();
    let said = stderr(&out);
    if nix_is_root() {
        assert_eq!(out.status.code(), Some(0), "{said}");
        assert!(!said.contains("not checked"), "root checks it all: {said}");
        assert!(stdout(&out).contains("run_as = \"alice\""), "{}", stdout(&out));
    }
    // The VM's user left at its default names no line 0, but the built-in default and a fix.
    let warning = said.lines().find(|l| l.contains("instance.local_user")).unwrap_or_default();
    assert!(warning.contains("warning: built-in default: instance.local_user: no user `azureuser`"), "{said}");
    assert!(warning.contains("useradd it, or name another") && !said.contains(":0:"), "{said}");
}

#[test]
fn without_root_the_same_config_with_only_root_only_problems_passes_saying_what_was_not_checked() {
    let test = "without_root_the_same_config_with_only_root_only_problems_passes_saying_what_was_not_checked";
    if !can_switch_uid(test) {
        return;
    }
    let sandbox = team_sandbox();
    admin_script(&sandbox, "conda.sh", b"#!/bin/sh\necho ok\n", 0o755);
    std::fs::write(sandbox.root().join(TEAM_DROP_IN), TEAM_FIXED).unwrap();
    let as_nobody = || {
        std::process::Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", DAEMON, "--root"])
            .arg(sandbox.root())
            .arg("--check-config")
            .output()
            .unwrap()
    };
    let out = as_nobody();
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "a config with no error it could see passes: {said}");
    assert!(said.contains("not checked: share.key_file"), "{said}");
    assert!(
        said.contains("not checked: ")
            && said.contains("setup.scripts[0]")
            && said.contains("cannot run scripts as alice"),
        "running a script as another user is root's to check: {said}"
    );
    assert!(said.contains("2 check(s) need root") && said.contains("sudo pool-agentd --check-config"), "{said}");
    assert!(!said.contains("invalid config") && !said.contains("k3y"), "{said}");
    assert!(stdout(&out).contains("[share]"), "prints the effective config: {}", stdout(&out));

    // A real error still fails the check without root, next to what it could not check.
    let broken = TEAM_FIXED.replace("min_uid = 1000", "min_uid = 70000");
    std::fs::write(sandbox.root().join(TEAM_DROP_IN), broken).unwrap();
    let out = as_nobody();
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("invalid config: ") && said.contains("50-team.toml:5: links.min_uid"), "{said}");
    assert!(said.contains("not checked: share.key_file"), "{said}");
}

#[test]
fn a_registry_account_this_vm_gives_to_someone_else_fails_the_check_at_its_line() {
    let sandbox = Sandbox::new();
    // bob is uid 1002 here; the registry gives bob 2002 and gives uid 1001 (alice's) to carol.
    sandbox.write_config(&format!(
        "{LOCAL_SHARE_CONFIG}\n[users]\nmanage = true\n\n[[users.accounts]]\nname = \"bob\"\nuid = 2002\n\n[[users.accounts]]\nname = \"carol\"\nuid = 1001\n"
    ));
    let line_of = |needle: &str| {
        let text = std::fs::read_to_string(sandbox.root().join("etc/pool-agent/config.toml")).unwrap();
        text.lines().position(|l| l == needle).unwrap() + 1
    };
    let out = sandbox.daemon_command().arg("--check-config").output().unwrap();
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    let bob =
        format!("config.toml:{}: users.accounts: bob: local account bob has uid 1002", line_of("name = \"bob\"") - 1);
    let carol = format!(
        "config.toml:{}: users.accounts: carol: uid 1001 is local account alice's",
        line_of("name = \"carol\"") - 1
    );
    assert!(said.contains(&bob) && said.contains(&carol), "{said}");
    // Nothing was created or changed: a check only reads.
    let passwd = std::fs::read_to_string(sandbox.root().join("etc/passwd")).unwrap();
    assert!(!passwd.contains("carol") && passwd.contains(&format!("bob:x:{USER_UID}:")), "{passwd}");
}
