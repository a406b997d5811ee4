//! The config as an admin meets it: defaults, merges, drop-ins, userData and
//! every error naming its file, line and key.

use super::*;
use std::time::Duration;

fn parse(text: &str) -> Result<Settings, ConfigError> {
    load_str(Path::new("/etc/pool-agent/config.toml"), text)
}

fn expect_invalid(text: &str) -> (usize, String, String) {
    match parse(text) {
        Err(ConfigError::Invalid { line, key, message, .. }) => (line, key, message),
        other => panic!("expected an invalid-key error, got {other:?}"),
    }
}

#[test]
fn drop_ins_sit_beside_the_main_file() {
    assert_eq!(drop_in_dir(Path::new("/etc/pool-agent/config.toml")), PathBuf::from("/etc/pool-agent/config.d"));
}

#[test]
fn empty_config_gives_every_default() {
    let settings = parse("").unwrap();
    assert_eq!(settings.instance.local_user, "azureuser");
    assert!(settings.share.is_none());
    assert_eq!(settings.links.users, UserSelection::All);
    assert_eq!(settings.links.min_uid, 1000);
    assert_eq!(settings.links.link, PathBuf::from("notebooks/remote"));
    assert_eq!(settings.idle.interval, Duration::from_secs(10));
    assert_eq!(settings.idle.timeout, Duration::from_secs(1800));
    assert_eq!(settings.api.admin_group, "pool-agent-admin");
    assert_eq!(settings.azure.imds_endpoint, "http://169.254.169.254");
}

#[test]
fn unknown_key_names_line_and_dotted_key() {
    let (line, key, message) = expect_invalid("[share]\nkind = \"local\"\npath = \"/srv\"\n\nbogus = 1\n");
    assert_eq!(line, 5);
    assert_eq!(key, "share.bogus");
    assert!(message.contains("unknown key `bogus`"), "{message}");
}

#[test]
fn unknown_section_is_an_error() {
    let (line, key, _) = expect_invalid("[idle]\ninterval = \"10s\"\n[sahre]\n");
    assert_eq!((line, key.as_str()), (3, "sahre"));
}

#[test]
fn bad_duration_names_the_key() {
    let (line, key, message) = expect_invalid("[idle]\n\ninterval = \"10x\"\n");
    assert_eq!((line, key.as_str()), (3, "idle.interval"));
    assert!(message.contains("30s, 15m, 2h, 1d"), "{message}");
}

#[test]
fn bad_value_type_names_the_key() {
    let (line, key, _) = expect_invalid("[links]\nmin_uid = \"lots\"\n");
    assert_eq!((line, key.as_str()), (2, "links.min_uid"));
}

#[test]
fn type_errors_and_duplicates_speak_the_config_s_words() {
    let (_, key, message) = expect_invalid("[links]\nmin_uid = \"1000\"\n");
    assert_eq!(key, "links.min_uid");
    assert_eq!(message, "expected a whole number of 0 or more, without quotes, found string \"1000\"");
    match parse("[links]\nmin_uid = 1000\nmin_uid = 1001\n") {
        Err(ConfigError::Syntax { line: 3, message, .. }) => assert!(message.contains("`min_uid`"), "{message}"),
        other => panic!("expected a duplicate key error, got {other:?}"),
    }
}

#[test]
fn a_drop_in_that_changes_the_kind_drops_the_earlier_kind_s_keys_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    std::fs::write(
        &main,
        "[share]\nkind = \"azure-files\"\naccount = \"acct\"\nshare = \"notebooks\"\nprobe_interval = \"7s\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("config.d")).unwrap();
    std::fs::write(dir.path().join("config.d/50-nfs.toml"), "[share]\nkind = \"nfs\"\nsource = \"h:/x\"\n").unwrap();
    let settings = load(&main).unwrap();
    let share = settings.share.unwrap();
    assert_eq!(share.source, ShareSource::Nfs { source: "h:/x".into(), vers: "4.1".into() });
    assert_eq!(share.probe_interval, std::time::Duration::from_secs(7), "keys of every kind are kept");
    assert_eq!(settings.skipped.len(), 1, "{:?}", settings.skipped);
    let note = &settings.skipped[0];
    assert!(note.contains("50-nfs.toml:2: share.kind = \"nfs\" replaces \"azure-files\""), "{note}");
    assert!(note.contains("config.toml:2") && note.contains("account, share are dropped"), "{note}");
    // A key of another kind in the file that sets the kind is still a mistake.
    std::fs::write(
        dir.path().join("config.d/50-nfs.toml"),
        "[share]\nkind = \"nfs\"\nsource = \"h:/x\"\naccount = \"acct\"\n",
    )
    .unwrap();
    let err = load(&main).unwrap_err();
    assert_eq!((err.line(), err.key()), (Some(4), Some("share.account")));
}

#[test]
fn a_drop_in_that_moves_the_key_to_key_vault_drops_the_key_file_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    std::fs::write(
        &main,
        "[share]\nkind = \"azure-files\"\naccount = \"acct\"\nshare = \"notebooks\"\nkey_file = \"/etc/k\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("config.d")).unwrap();
    std::fs::write(
        dir.path().join("config.d/50-vault.toml"),
        "[share]\nkey_source = \"key-vault\"\nkey_vault_secret = \"https://kv.vault.azure.net/secrets/k\"\n",
    )
    .unwrap();
    let settings = load(&main).unwrap();
    match settings.share.unwrap().source {
        ShareSource::AzureFiles { key_source, key_file, .. } => {
            assert_eq!((key_source, key_file), (KeySourceKind::KeyVault, None));
        }
        other => panic!("{other:?}"),
    }
    let note = settings.skipped.join("\n");
    assert!(note.contains("50-vault.toml:2: share.key_source = \"key-vault\" drops the earlier key_file"), "{note}");
}

#[test]
fn user_data_is_the_last_drop_in_and_may_name_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    std::fs::write(&main, "[idle]\ntimeout = \"30m\"\n").unwrap();
    let settings = load_with(&main, Some("[idle]\ntimeout = \"45m\"\n")).unwrap();
    assert_eq!(settings.idle.timeout, std::time::Duration::from_secs(2700));
    assert_eq!(settings.sources.last().unwrap(), Path::new(USER_DATA_SOURCE));
    assert!(load_with(&main, Some("")).unwrap().sources.len() == 1, "empty userData is no drop-in");
    for secret in ["[share]\npassword = \"x\"\n", "[azure]\nclient_secret = \"x\"\n", "[idle]\njupyter_token = \"x\"\n"]
    {
        let err = load_with(&main, Some(secret)).unwrap_err();
        assert_eq!(err.file(), Path::new(USER_DATA_SOURCE), "{err}");
        assert_eq!(err.line(), Some(2), "{err}");
    }
    // Paths to root-only files are not secrets.
    let paths = "[idle]\njupyter_token_file = \"/etc/pool-agent/secrets/jupyter-token\"\n";
    assert!(load_with(&main, Some(paths)).is_ok());
}

#[test]
fn a_samba_source_needs_no_azure_names_and_no_account_is_a_guest_mount() {
    let settings = parse("[share]\nkind = \"azure-files\"\nsource = \"//files.corp/Team Share\"\n");
    assert!(settings.is_err(), "a source with a space is refused");
    let settings =
        parse("[share]\nkind = \"azure-files\"\nsource = \"//files.corp/TeamShare\"\naccount = \"Pool_Store\"\n")
            .unwrap();
    match settings.share.unwrap().source {
        ShareSource::AzureFiles { account, share, key_file, .. } => {
            assert_eq!((account.as_deref(), share), (Some("Pool_Store"), None));
            assert!(key_file.is_some(), "a user has a key");
        }
        other => panic!("{other:?}"),
    }
    let guest = parse("[share]\nkind = \"azure-files\"\nsource = \"//files.corp/pub\"\n").unwrap();
    match guest.share.unwrap().source {
        ShareSource::AzureFiles { account: None, key_file: None, .. } => {}
        other => panic!("{other:?}"),
    }
    let (_, key, _) =
        expect_invalid("[share]\nkind = \"azure-files\"\nsource = \"//files.corp/pub\"\nkey_file = \"/k\"\n");
    assert_eq!(key, "share.key_file");
    let (_, key, _) = expect_invalid("[share]\nkind = \"azure-files\"\nshare = \"notebooks\"\n");
    assert_eq!(key, "share.account", "without a source it is Azure Files: the account is needed");
}

#[test]
fn private_mounts_are_for_azure_files_only() {
    let (_, key, message) = expect_invalid("[share]\nkind = \"nfs\"\nsource = \"h:/x\"\n[links]\nprivate = true\n");
    assert_eq!(key, "links.private");
    assert!(message.contains("azure-files"), "{message}");
    let ok =
        parse("[share]\nkind = \"azure-files\"\naccount = \"acct\"\nshare = \"notebooks\"\n[links]\nprivate = true\n");
    let links = ok.unwrap().links;
    assert!(links.private);
    assert_eq!(links.private_root, PathBuf::from("/data/notebooks-private"));
}

#[test]
fn bad_kind_lists_the_choices() {
    let (line, key, message) = expect_invalid("[share]\nkind = \"smb\"\n");
    assert_eq!((line, key.as_str()), (2, "share.kind"));
    assert!(message.contains("azure-files"), "{message}");
}

#[test]
fn syntax_error_names_the_line() {
    match parse("[idle]\ninterval = \n") {
        Err(ConfigError::Syntax { line, .. }) => assert_eq!(line, 2),
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn missing_required_key_points_at_the_kind() {
    let (line, key, message) = expect_invalid("# nfs share\n[share]\nkind = \"nfs\"\n");
    assert_eq!((line, key.as_str()), (3, "share.source"));
    assert!(message.contains("required"), "{message}");
}

#[test]
fn key_of_another_kind_is_named() {
    let (_, key, _) = expect_invalid("[share]\nkind = \"nfs\"\nsource = \"h:/x\"\naccount = \"abc\"\n");
    assert_eq!(key, "share.account");
}

#[test]
fn azure_files_defaults_the_key_file_and_suffix() {
    let settings = parse("[share]\nkind = \"azure-files\"\naccount = \"mystorage\"\nshare = \"notebooks\"\n").unwrap();
    let share = settings.share.unwrap();
    assert_eq!(share.mount_point, PathBuf::from("/data/notebooks"));
    match share.source {
        ShareSource::AzureFiles { key_file, endpoint_suffix, key_source, .. } => {
            assert_eq!(key_file, Some(PathBuf::from("/etc/pool-agent/secrets/storage-key")));
            assert_eq!(endpoint_suffix, "core.windows.net");
            assert_eq!(key_source, KeySourceKind::File);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn azure_names_follow_azure_rules() {
    let (_, key, _) = expect_invalid("[share]\nkind = \"azure-files\"\naccount = \"My_Storage\"\nshare = \"team\"\n");
    assert_eq!(key, "share.account");
    let (_, key, _) = expect_invalid("[share]\nkind = \"azure-files\"\naccount = \"mystorage\"\nshare = \"a--b\"\n");
    assert_eq!(key, "share.share");
}

#[test]
fn secrets_in_mount_options_are_refused() {
    let (line, key, message) =
        expect_invalid("[share]\nkind = \"nfs\"\nsource = \"h:/x\"\noptions = [\"password=hunter2\"]\n");
    assert_eq!((line, key.as_str()), (4, "share.options"));
    assert!(!message.contains("hunter2"), "the error must not echo the secret: {message}");
}

#[test]
fn options_the_agent_sets_itself_point_at_their_key() {
    let (_, key, message) = expect_invalid("[share]\nkind = \"nfs\"\nsource = \"h:/x\"\noptions = [\"nfsvers=3\"]\n");
    assert_eq!(key, "share.options");
    assert!(message.contains("share.vers"), "{message}");
    let (_, _, message) = expect_invalid(
        "[share]\nkind = \"azure-files\"\naccount = \"mystorage\"\nshare = \"team\"\noptions = [\"username=x\"]\n",
    );
    assert!(message.contains("share.account"), "{message}");
}

#[test]
fn a_source_mount_could_read_as_an_option_is_refused() {
    for source in ["-oremount:/x", "-o:/export", ".hidden:/x"] {
        let text = format!("[share]\nkind = \"nfs\"\nsource = \"{source}\"\n");
        assert_eq!(expect_invalid(&text).1, "share.source", "{source}");
    }
    for source in ["nfs.example:/export", "10.0.0.4:/export", "[fd00::4]:/export"] {
        let text = format!("[share]\nkind = \"nfs\"\nsource = \"{source}\"\n");
        assert!(parse(&text).is_ok(), "{source}");
    }
    let text =
        "[share]\nkind = \"azure-files\"\naccount = \"acct\"\nshare = \"notebooks\"\nsource = \"//-oremount/x\"\n";
    assert_eq!(expect_invalid(text).1, "share.source");
}

#[test]
fn relative_paths_and_escapes_are_refused() {
    assert_eq!(expect_invalid("[share]\nkind = \"local\"\npath = \"srv\"\n").1, "share.path");
    assert_eq!(expect_invalid("[links]\nlink = \"../../etc\"\n").1, "links.link");
    assert_eq!(expect_invalid("[links]\ntarget = \"notebooks/shared\"\n").1, "links.target");
}

#[test]
fn a_private_root_that_would_sweep_other_mounts_is_refused() {
    let share = "[share]\nkind = \"local\"\npath = \"/srv/share\"\nmount_point = \"/data/notebooks\"\n";
    for (root, why) in [
        ("/", "system directory"),
        ("/home", "system directory"),
        ("/usr/local", "system directory"),
        ("/data", "holds share.mount_point"),
        ("/data/notebooks", "holds share.mount_point"),
        ("/data/notebooks/private", "inside share.mount_point"),
    ] {
        let (line, key, message) = expect_invalid(&format!("{share}[links]\nprivate_root = \"{root}\"\n"));
        assert_eq!((line, key.as_str()), (6, "links.private_root"), "{root}: {message}");
        assert!(message.contains(why), "{root}: {message}");
    }
    parse(&format!("{share}[links]\nprivate_root = \"/data/notebooks-private\"\n")).unwrap();
}

#[test]
fn users_is_all_or_a_list() {
    assert_eq!(
        parse("[links]\nusers = [\"alice\", \"bob\"]\n").unwrap().links.users,
        UserSelection::Named(vec!["alice".into(), "bob".into()])
    );
    assert_eq!(expect_invalid("[links]\nusers = \"everyone\"\n").1, "links.users");
    assert_eq!(expect_invalid("[links]\nusers = [\"Bad Name\"]\n").1, "links.users");
}

#[test]
fn scripts_get_defaults_and_unique_names() {
    let settings =
        parse("[instance]\nlocal_user = \"dsadmin\"\n[[setup.scripts]]\nname = \"conda\"\npath = \"/opt/conda.sh\"\n")
            .unwrap();
    let script = &settings.setup.scripts[0];
    assert_eq!(script.run_as, "dsadmin");
    assert_eq!(script.when, RunWhen::Once);
    assert_eq!(script.timeout, Duration::from_secs(900));
    let (line, key, _) = expect_invalid(
        "[[setup.scripts]]\nname = \"a\"\npath = \"/a\"\n[[setup.scripts]]\nname = \"a\"\npath = \"/b\"\n",
    );
    assert_eq!((line, key.as_str()), (5, "setup.scripts[1].name"));
}

#[test]
fn script_env_names_and_values_are_checked() {
    let base = "[[setup.scripts]]\nname = \"a\"\npath = \"/a\"\n";
    let settings = parse(&format!("{base}env = {{ TOKEN_FILE = \"/etc/t\" }}\nblocking = false\n")).unwrap();
    assert_eq!(settings.setup.scripts[0].env["TOKEN_FILE"], "/etc/t");
    assert!(!settings.setup.scripts[0].blocking);
    assert_eq!(expect_invalid(&format!("{base}env = {{ \"1X\" = \"v\" }}\n")).1, "setup.scripts[0].env");
    let (_, key, message) = expect_invalid(&format!("{base}env = {{ X = \"a\\nb\" }}\n"));
    assert_eq!(key, "setup.scripts[0].env");
    assert!(message.contains("control character"), "{message}");
}

#[test]
fn idle_keys_have_defaults_and_bounds() {
    let settings = parse("[idle]\ninterval = \"2s\"\ntimeout = \"1m\"\nboot_grace = \"0s\"\njupyterhub_url = \"http://127.0.0.1:8000/\"\n").unwrap();
    assert_eq!(settings.idle.boot_grace, Duration::ZERO);
    assert_eq!(settings.idle.watch_ports, [22, 8000, 8888, 8787, 3389]);
    assert_eq!(settings.idle.max_hold, Duration::from_secs(86_400));
    assert_eq!(settings.idle.jupyterhub_url, "http://127.0.0.1:8000");
    assert_eq!(expect_invalid("[idle]\ntimeout = \"30s\"\n").1, "idle.timeout");
    assert_eq!(expect_invalid("[idle]\ntimeout = \"4d\"\n").1, "idle.timeout");
    assert_eq!(expect_invalid("[idle]\njupyter_urls = [\"ftp://x\"]\n").1, "idle.jupyter_urls[0]");
    let (_, key, message) = expect_invalid("[idle]\njupyter_urls = [\"http://127.0.0.1:8888/?token=s3cret\"]\n");
    assert_eq!(key, "idle.jupyter_urls[0]");
    assert!(!message.contains("s3cret"), "the token is not echoed: {message}");
    assert_eq!(
        parse("[idle]\njupyter_urls = [\"https://127.0.0.1:8000\"]\n").unwrap().idle.jupyter_urls,
        ["https://127.0.0.1:8000"]
    );
    assert_eq!(expect_invalid("[idle]\nmax_unknown = \"10m\"\n").1, "idle.max_unknown");
    assert_eq!(expect_invalid("[links]\nresync_interval = \"0s\"\n").1, "links.resync_interval");
    assert_eq!(expect_invalid("[idle]\ncpu_services = [\"rstudio\"]\n").1, "idle.cpu_services[0]");
    assert_eq!(expect_invalid("[idle]\naction = \"delete\"\n").1, "idle.action");
}

#[test]
fn idle_timeout_must_cover_the_interval() {
    assert_eq!(expect_invalid("[idle]\ninterval = \"1h\"\ncpu_window = \"1h\"\ntimeout = \"5m\"\n").1, "idle.timeout");
}

#[test]
fn drop_ins_merge_in_name_order_and_later_wins() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    std::fs::write(&main, "[share]\nkind = \"local\"\npath = \"/srv/a\"\n[idle]\ntimeout = \"1h\"\n[[setup.scripts]]\nname = \"x\"\npath = \"/x1\"\n").unwrap();
    let drop_ins = dir.path().join("config.d");
    std::fs::create_dir(&drop_ins).unwrap();
    std::fs::write(drop_ins.join("20-late.toml"), "[share]\npath = \"/srv/late\"\n").unwrap();
    std::fs::write(drop_ins.join("10-early.toml"), "[share]\npath = \"/srv/early\"\nmount_point = \"/nb\"\n[[setup.scripts]]\nname = \"x\"\npath = \"/x2\"\n[[setup.scripts]]\nname = \"y\"\npath = \"/y\"\n").unwrap();
    std::fs::write(drop_ins.join(".30-hidden.toml.swp"), "not toml at all").unwrap();
    let settings = load(&main).unwrap();
    let share = settings.share.unwrap();
    assert_eq!(share.source, ShareSource::Local { path: "/srv/late".into() });
    assert_eq!(share.mount_point, PathBuf::from("/nb"));
    assert_eq!(settings.idle.timeout, Duration::from_secs(3600));
    let scripts: Vec<_> = settings.setup.scripts.iter().map(|s| (s.name.as_str(), s.path.to_str().unwrap())).collect();
    assert_eq!(scripts, [("x", "/x2"), ("y", "/y")]);
    assert_eq!(settings.sources.len(), 3);
}

#[test]
fn backup_and_package_files_in_config_d_are_skipped_with_a_warning_never_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    std::fs::write(&main, "[share]\nkind = \"local\"\npath = \"/srv/share\"\n").unwrap();
    let drop_ins = dir.path().join("config.d");
    std::fs::create_dir(&drop_ins).unwrap();
    std::fs::write(drop_ins.join("50-idle.toml"), "[idle]\ntimeout = \"2h\"\n").unwrap();
    // What editors, dpkg and admins leave beside it; some would not even parse.
    let leftovers = [
        "50-idle.toml~",
        ".50-idle.toml.swp",
        "50-idle.toml.bak",
        "50-idle.toml.dpkg-old",
        "50-idle.toml.dpkg-new",
        "50-idle.toml.dpkg-dist",
        "60-share.toml.disabled",
        "50-share.conf",
        "README",
    ];
    for name in leftovers {
        std::fs::write(drop_ins.join(name), "[share\nbroken = ").unwrap();
    }
    let settings = load(&main).unwrap();
    assert_eq!(settings.idle.timeout, std::time::Duration::from_secs(7200), "the real drop-in is read");
    assert!(settings.share.is_some(), "the base file is in force");
    assert_eq!(settings.skipped.len(), leftovers.len(), "{:#?}", settings.skipped);
    for name in leftovers {
        assert!(settings.skipped.iter().any(|w| w.contains(name) && w.contains("not read")), "{name}");
    }
}

#[test]
fn system_directories_are_no_mount_points() {
    for point in ["/", "/etc", "/usr/local/nb", "/home", "/var", "/proc/x", "/etc/"] {
        let text = format!("[share]\nkind = \"nfs\"\nsource = \"h:/x\"\nmount_point = \"{point}\"\n");
        let (_, key, message) = expect_invalid(&text);
        assert_eq!(key, "share.mount_point", "{point}");
        assert!(message.contains("system directory"), "{point}: {message}");
    }
    for point in ["/data/notebooks", "/home/shared", "/srv/team"] {
        let text = format!("[share]\nkind = \"nfs\"\nsource = \"h:/x\"\nmount_point = \"{point}\"\n");
        assert!(parse(&text).is_ok(), "{point}");
    }
}

#[test]
fn secret_options_are_refused_in_any_case() {
    let (_, key, message) = expect_invalid("[share]\nkind = \"nfs\"\nsource = \"h:/x\"\noptions = [\"PASSWORD=x\"]\n");
    assert_eq!(key, "share.options");
    assert!(message.contains("password"), "{message}");
}

#[test]
fn a_key_from_azure_needs_its_url_over_tls_and_no_key_file() {
    const SMB: &str = "[share]\nkind = \"azure-files\"\naccount = \"poolstore\"\nshare = \"notebooks\"\n";
    let vault = parse(&format!(
        "{SMB}key_source = \"key-vault\"\nkey_vault_secret = \"https://team-kv.vault.azure.net/secrets/storage-key\"\n"
    ))
    .unwrap();
    match vault.share.unwrap().source {
        ShareSource::AzureFiles { key_source, key_file, key_vault_secret, key_fetch_spread, .. } => {
            assert_eq!(key_source, KeySourceKind::KeyVault);
            assert_eq!(key_file, None, "no key file is read");
            assert_eq!(key_vault_secret.as_deref(), Some("https://team-kv.vault.azure.net/secrets/storage-key"));
            assert_eq!(key_fetch_spread, settings::DEFAULT_KEY_FETCH_SPREAD);
        }
        other => panic!("{other:?}"),
    }
    // Loopback may be plain http (tests); nothing else may.
    let local = "http://127.0.0.1:8080/secrets/k";
    assert!(parse(&format!("{SMB}key_source = \"key-vault\"\nkey_vault_secret = \"{local}\"\n")).is_ok());
    let (line, key, message) = expect_invalid(&format!(
        "{SMB}key_source = \"key-vault\"\nkey_vault_secret = \"http://team-kv.vault.azure.net/secrets/k\"\n"
    ));
    assert_eq!((line, key.as_str()), (6, "share.key_vault_secret"));
    assert!(message.contains("https://"), "{message}");
    let (_, key, message) = expect_invalid(&format!(
        "{SMB}key_source = \"key-vault\"\nkey_vault_secret = \"https://team-kv.vault.azure.net/keys/k\"\n"
    ));
    assert_eq!(key, "share.key_vault_secret");
    assert!(message.contains("/secrets/<name>"), "{message}");
    let (_, key, _) = expect_invalid(&format!("{SMB}key_source = \"key-vault\"\n"));
    assert_eq!(key, "share.key_vault_secret", "key-vault without a secret");
    // A key file beside another source would be ignored: refused, where it stands.
    let (line, key, message) =
        expect_invalid(&format!("{SMB}key_source = \"storage-account\"\nkey_file = \"/etc/k\"\n"));
    assert_eq!((line, key.as_str()), (6, "share.key_file"));
    assert!(message.contains("key_source = \"file\""), "{message}");
    let (_, key, message) = expect_invalid(&format!(
        "{SMB}key_source = \"storage-account\"\nstorage_account_id = \"/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/disks/d\"\n"
    ));
    assert_eq!(key, "share.storage_account_id");
    assert!(message.contains("storageAccounts"), "{message}");
    let account = parse(&format!(
        "{SMB}key_source = \"storage-account\"\nstorage_account_id = \"/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/other\"\n"
    ));
    assert!(account.is_ok(), "{account:?}");
    // The key comes with the VM's identity: Azure may not be switched off.
    let (line, key, _) = expect_invalid(&format!("{SMB}key_source = \"storage-account\"\n[azure]\nenabled = false\n"));
    assert_eq!((line, key.as_str()), (7, "azure.enabled"));
    let (line, key, message) = expect_invalid("[azure]\narm_endpoint = \"http://management.example\"\n");
    assert_eq!((line, key.as_str()), (2, "azure.arm_endpoint"));
    assert!(message.contains("https://"), "{message}");
}

#[test]
fn an_error_in_a_drop_in_names_that_file() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    std::fs::write(&main, "").unwrap();
    std::fs::create_dir(dir.path().join("config.d")).unwrap();
    std::fs::write(dir.path().join("config.d/50-bad.toml"), "\n[api]\nadmin_grup = \"x\"\n").unwrap();
    let err = load(&main).unwrap_err();
    assert!(err.file().ends_with("config.d/50-bad.toml"));
    assert_eq!(err.line(), Some(3));
    assert_eq!(err.key(), Some("api.admin_grup"));
    let text = err.to_string();
    assert!(text.contains("50-bad.toml:3: api.admin_grup: unknown key"), "{text}");
}

#[test]
fn shipped_example_config_is_valid_and_complete() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let settings = load_str(&path, &text).unwrap();
    // The example shows every section, so a typo in it would fail here.
    assert!(settings.share.is_some());
    assert!(!settings.setup.scripts.is_empty());
    for section in [
        "[instance]",
        "[share]",
        "[links]",
        "[setup]",
        "[[setup.scripts]]",
        "[idle]",
        "[azure]",
        "[api]",
        "[pool]",
        "[users]",
    ] {
        assert!(text.contains(section), "example config lacks {section}");
    }
}

#[test]
fn shipped_etc_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/etc-config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    load_str(&path, &text).unwrap();
}

#[test]
fn effective_config_of_every_share_kind_loads_again() {
    for share in [
        "[share]\nkind = \"local\"\npath = \"/srv/share\"\n",
        "[share]\nkind = \"azure-files\"\naccount = \"acct\"\nshare = \"notebooks\"\noptions = [\"cache=none\"]\ndefault_options = false\n",
        "[share]\nkind = \"nfs\"\nsource = \"h:/x\"\n",
    ] {
        let settings = parse(share).unwrap();
        let rendered = render_effective_toml(&settings);
        let again = load_str(Path::new("again.toml"), &rendered).unwrap_or_else(|err| panic!("{err}\n{rendered}"));
        assert_eq!(again.share, settings.share);
    }
}

#[test]
fn effective_config_round_trips() {
    let settings = parse("[share]\nkind = \"nfs\"\nsource = \"nfs.example:/export\"\n[idle]\ntimeout = \"2h\"\n[[setup.scripts]]\nname = \"a\"\npath = \"/a\"\n").unwrap();
    let rendered = render_effective_toml(&settings);
    let again = load_str(Path::new("again.toml"), &rendered).unwrap();
    assert_eq!(again.share, settings.share);
    assert_eq!(again.idle, settings.idle);
    assert_eq!(again.setup, settings.setup);
    assert_eq!(again.links, settings.links);
}
