//! `pool-agentd --check-config`: what an admin runs before a reload.

use crate::harness::*;

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
fn the_daemon_refuses_to_start_on_an_invalid_config() {
    let sandbox = Sandbox::new();
    sandbox.write_config("[idle]\ninterval = \"1h\"\ntimeout = \"1m\"\n");
    let out = sandbox.daemon_command().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("idle.timeout"), "{}", stderr(&out));
}

#[test]
fn a_missing_config_file_is_named() {
    let sandbox = Sandbox::new();
    std::fs::remove_file(sandbox.config_file()).unwrap();
    let out = sandbox.daemon_command().arg("--check-config").output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("config.toml: cannot read config"), "{}", stderr(&out));
}
