//! Validation that names every error in one run, the checks across keys,
//! and what is left sure for the checks against the system.

use super::*;
use std::path::Path;

const MAIN: &str = "/etc/pool-agent/config.toml";

/// Every error of one text, as (line, key), in the order given.
fn errors_of(text: &str) -> Vec<(usize, String)> {
    match load_str(Path::new(MAIN), text) {
        Ok(_) => Vec::new(),
        Err(error) => error.each().iter().map(|e| (e.line().unwrap_or(0), e.key().unwrap_or("").to_string())).collect(),
    }
}

fn message_of(text: &str, key: &str) -> String {
    let Err(error) = load_str(Path::new(MAIN), text) else { panic!("valid: {text}") };
    let found = error.each().into_iter().find(|e| e.key() == Some(key)).map(ToString::to_string);
    found.unwrap_or_else(|| panic!("no error about {key}: {error}"))
}

/// A config directory: the main file and drop-ins.
fn config_dir(main: &str, drop_ins: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, main).unwrap();
    std::fs::create_dir(dir.path().join("config.d")).unwrap();
    for (name, text) in drop_ins {
        std::fs::write(dir.path().join("config.d").join(name), text).unwrap();
    }
    (dir, file)
}

#[test]
fn every_wrong_value_of_every_section_is_named_in_one_run_in_line_order() {
    let text = "[share]\nkind = \"azure-files\"\naccount = \"My_Storage\"\nshare = \"a--b\"\nvers = \"2.0\"\n\
        [links]\nmin_uid = 5000\nmax_uid = 4000\nfolder_mode = \"999\"\n\
        [idle]\ntimeout = \"10s\"\ncpu_percent = 0.0\n\
        [azure]\nclient_id = \"not-a-guid\"\nmax_releases_per_hour = 99\n\
        [[setup.scripts]]\nname = \"a b\"\npath = \"relative.sh\"\n[api]\nadmin_group = \"Bad Group\"\n";
    let keys: Vec<(usize, &str)> = vec![
        (3, "share.account"),
        (4, "share.share"),
        (5, "share.vers"),
        (8, "links.max_uid"),
        (9, "links.folder_mode"),
        (11, "idle.timeout"),
        (12, "idle.cpu_percent"),
        (14, "azure.client_id"),
        (15, "azure.max_releases_per_hour"),
        (17, "setup.scripts[0].name"),
        (18, "setup.scripts[0].path"),
        (20, "api.admin_group"),
    ];
    let found = errors_of(text);
    let found: Vec<(usize, &str)> = found.iter().map(|(line, key)| (*line, key.as_str())).collect();
    assert_eq!(found, keys);
}

#[test]
fn two_wrong_values_of_one_key_list_are_both_named_and_the_valid_ones_kept() {
    let text = "[share]\nkind = \"nfs\"\nsource = \"h:/x\"\noptions = [\"password=x\", \"uid=3\", \"noatime\"]\n";
    let Err(error) = load_str(Path::new(MAIN), text) else { panic!("valid") };
    let said: Vec<String> = error.each().iter().map(ToString::to_string).collect();
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(
        said[0].contains("`password=` does not belong") && said[1].contains("`uid` is set by the agent"),
        "{said:?}"
    );
    assert!(said.iter().all(|s| !s.contains("password=x")), "no secret echoed: {said:?}");
}

#[test]
fn min_uid_above_max_uid_links_nobody_and_is_an_error_whichever_key_was_set() {
    // Only min_uid: above the built-in max_uid (60000).
    let said = message_of("[links]\nmin_uid = 70000\n", "links.min_uid");
    assert!(
        said.contains("config.toml:2: links.min_uid: 70000 is above links.max_uid (60000, the built-in default)"),
        "{said}"
    );
    // Only max_uid: below the built-in min_uid (1000).
    let said = message_of("[links]\nmax_uid = 500\n", "links.max_uid");
    assert!(said.contains(":2: links.max_uid: 500 is below links.min_uid (1000, the built-in default)"), "{said}");
    // Both: at max_uid, naming where min_uid was set.
    let said = message_of("[links]\nmin_uid = 2000\nmax_uid = 1999\n", "links.max_uid");
    assert!(
        said.contains(":3: links.max_uid: 1999 is below links.min_uid (2000, set at /etc/pool-agent/config.toml:2)"),
        "{said}"
    );
    // Equal is one uid, and fine; so are the defaults.
    assert!(errors_of("[links]\nmin_uid = 1500\nmax_uid = 1500\n").is_empty());
    // Across files: a drop-in's min_uid against the main file's max_uid.
    let (_dir, main) = config_dir("[links]\nmax_uid = 3000\n", &[("50-links.toml", "[links]\nmin_uid = 4000\n")]);
    let said = load(&main).unwrap_err().to_string();
    assert!(
        said.contains("config.toml:2: links.max_uid: 3000 is below links.min_uid (4000, set at")
            && said.contains("50-links.toml:2"),
        "{said}"
    );
}

#[test]
fn delete_self_with_azure_off_is_an_error_and_protection_a_warning_naming_both_places() {
    let said = message_of("[idle]\naction = \"delete-self\"\n[azure]\nenabled = false\n", "idle.action");
    assert!(said.contains("config.toml:2: idle.action: \"delete-self\""), "{said}");
    assert!(said.contains("azure.enabled = false (set at /etc/pool-agent/config.toml:4)"), "{said}");
    // Protection and events asked for with Azure off do nothing: said, the config still loads.
    let settings =
        load_str(Path::new(MAIN), "[azure]\nenabled = false\nprotect = true\nscheduled_events = true\n").unwrap();
    let notes = settings.skipped.join("\n");
    assert!(notes.contains(":3: azure.protect = true has no effect"), "{notes}");
    assert!(
        notes.contains(":4: azure.scheduled_events = true has no effect") && notes.contains("config.toml:2)"),
        "{notes}"
    );
    // The same keys with Azure on (or "auto", the default) are fine; so is protect = false with Azure off.
    for fine in [
        "[idle]\naction = \"delete-self\"\n",
        "[idle]\naction = \"delete-self\"\n[azure]\nenabled = true\nprotect = true\n",
        "[azure]\nenabled = false\nprotect = false\nscheduled_events = false\n",
        "[idle]\naction = \"report\"\n[azure]\nenabled = false\n",
    ] {
        assert!(errors_of(fine).is_empty(), "{fine}: {:?}", errors_of(fine));
    }
    // With a key source that needs Azure too: every mismatch is named at once.
    let text =
        "[share]\nkind = \"azure-files\"\naccount = \"acct\"\nshare = \"nb1\"\nkey_source = \"storage-account\"\n\
        [idle]\naction = \"delete-self\"\n[azure]\nenabled = false\n";
    let keys: Vec<String> = errors_of(text).into_iter().map(|(_, key)| key).collect();
    assert_eq!(keys, ["idle.action", "azure.enabled"]);
}

#[test]
fn keys_that_have_no_effect_are_warned_of_and_the_config_stays_valid() {
    let text = "[idle]\nmin_instances = 2\njupyterhub_token_file = \"/etc/pool-agent/hub-token\"\n\
        [links]\nprivate_root = \"/srv/private\"\n[azure]\nprotect = false\nrelease_after = \"20m\"\n";
    let settings = load_str(Path::new(MAIN), text).unwrap();
    let notes = settings.skipped.join("\n");
    for want in [
        ":2: idle.min_instances has no effect: it is read only with idle.action = \"delete-self\"",
        ":3: idle.jupyterhub_token_file has no effect: it is read only with idle.jupyterhub_url",
        ":5: links.private_root has no effect",
        ":8: azure.release_after has no effect: it is read only with azure.protect = true",
    ] {
        assert!(notes.contains(want), "{want:?} not in:\n{notes}");
    }
    let settings = load_str(Path::new(MAIN), "[idle]\naction = \"delete-self\"\nmin_instances = 2\n").unwrap();
    assert!(settings.skipped.is_empty(), "{:?}", settings.skipped);
    // A key written down with its default (as the example config does) changes nothing: no warning.
    let text = "[idle]\nmin_instances = 0\n[links]\nprivate_root = \"/data/notebooks-private\"\n[azure]\ndelete_wait = \"2m\"\n";
    let settings = load_str(Path::new(MAIN), text).unwrap();
    assert!(settings.skipped.is_empty(), "{:?}", settings.skipped);
}

#[test]
fn a_wrong_value_leaves_only_its_part_unsure_and_the_rest_checkable() {
    let (_dir, main) = config_dir(
        "[share]\nkind = \"local\"\npath = \"/srv/share\"\n[links]\nfolder_mode = \"9\"\n",
        &[(
            "50-setup.toml",
            "[[setup.scripts]]\nname = \"good\"\npath = \"/opt/good.sh\"\n[[setup.scripts]]\nname = \"bad\"\npath = \"bad.sh\"\n",
        )],
    );
    let checked = check_with(&main, None);
    let said: Vec<String> = checked.errors.iter().map(ToString::to_string).collect();
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(
        said[0].contains("config.toml:5: links.folder_mode")
            && said[1].contains("50-setup.toml:6: setup.scripts[1].path"),
        "{said:?}"
    );
    assert!(checked.unsure.section("links"));
    assert!(!checked.unsure.section("share") && !checked.unsure.section("setup") && !checked.unsure.incomplete);
    let settings = checked.settings.unwrap();
    let names: Vec<&str> = settings.setup.scripts.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["good"], "the entry with a wrong value is left out of what the system checks see");
    // The daemon's own load refuses the same config with the same errors, first one first.
    let error = load(&main).unwrap_err();
    assert_eq!((error.key(), error.line()), (Some("links.folder_mode"), Some(5)));
    assert_eq!(error.each().len(), 2);
}

#[test]
fn a_typo_or_wrong_type_is_named_with_every_value_error_and_leaves_only_its_part_out() {
    let (_dir, main) = config_dir(
        "[share]\nkind = \"local\"\npath = \"/srv/share\"\n",
        &[(
            "50-mixed.toml",
            "[idle]\ntimeout = \"2h\"\nintervall = \"1m\"\n[links]\nmin_uid = \"1000\"\n\
             [[setup.scripts]]\nname = \"first\"\npath = \"/opt/first.sh\"\n\
             [[setup.scripts]]\nname = \"second\"\npath = \"/opt/second.sh\"\nrun_ass = \"root\"\n\
             [azure]\nmax_releases_per_hour = 0\n",
        )],
    );
    let checked = check_with(&main, None);
    let said: Vec<(usize, String)> =
        checked.errors.iter().map(|e| (e.line().unwrap_or(0), e.key().unwrap_or("").to_string())).collect();
    let want: Vec<(usize, String)> = [
        (3, "idle.intervall"),
        (5, "links.min_uid"),
        (12, "setup.scripts[1].run_ass"),
        (14, "azure.max_releases_per_hour"),
    ]
    .into_iter()
    .map(|(line, key)| (line, key.to_string()))
    .collect();
    assert_eq!(said, want, "{:?}", checked.errors);
    // What parsed of the file still applies: the good timeout, the first script.
    let settings = checked.settings.unwrap();
    assert_eq!(settings.idle.timeout, std::time::Duration::from_secs(7200));
    let names: Vec<&str> = settings.setup.scripts.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["first"], "the entry with the typo is not checked as if it ran as the default user");
    assert!(checked.unsure.section("idle") && checked.unsure.section("links") && checked.unsure.section("azure"));
    assert!(!checked.unsure.section("setup") && !checked.unsure.section("share"));
}

#[test]
fn a_wrong_setup_dir_leaves_all_of_setup_unsure_a_wrong_entry_only_itself() {
    let (_dir, main) = config_dir("[setup]\ndir = \"setup.d\"\n", &[]);
    let checked = check_with(&main, None);
    assert_eq!(checked.errors.len(), 1, "{:?}", checked.errors);
    assert!(checked.unsure.section("setup"), "the scripts of a wrong dir are unknown");
    let (_dir, main) = config_dir("[[setup.scripts]]\nname = \"x\"\npath = \"/x\"\ntimeout = \"0s\"\n", &[]);
    let checked = check_with(&main, None);
    assert_eq!(checked.errors.len(), 1, "{:?}", checked.errors);
    assert!(!checked.unsure.section("setup") && checked.settings.unwrap().setup.scripts.is_empty());
}

#[test]
fn a_file_that_cannot_be_read_leaves_everything_unsure() {
    let (_dir, main) =
        config_dir("[share]\nkind = \"local\"\npath = \"/srv/share\"\n", &[("50-broken.toml", "[idle\n")]);
    let checked = check_with(&main, None);
    assert_eq!(checked.errors.len(), 1, "{:?}", checked.errors);
    assert!(checked.unsure.incomplete && checked.unsure.section("share"));
}

#[test]
fn an_error_about_a_default_names_the_file_of_its_section_or_the_built_in_default_never_line_0() {
    let (_dir, main) = config_dir(
        "[share]\nkind = \"local\"\npath = \"/srv/share\"\n",
        &[("50-instance.toml", "# the VM's user\n[instance]\nname = \"vm\"\n")],
    );
    let settings = load(&main).unwrap();
    let said = settings.origins.error(&main, "instance.local_user", "no user `azureuser` on this system").to_string();
    assert!(said.contains("50-instance.toml:2: instance.local_user: no user `azureuser`"), "{said}");
    assert!(said.contains("built-in default") && said.contains("set instance.local_user here"), "{said}");
    let said = settings.origins.error(&main, "api.admin_group", "no group `pool-agent-admin`").to_string();
    assert!(said.starts_with("built-in default: api.admin_group: no group"), "{said}");
    assert!(said.contains("no file sets [api]") && said.contains(&main.display().to_string()), "{said}");
    assert!(!said.contains(":0"), "{said}");
    // A key that was written is named where it was written.
    let (_dir, main) = config_dir("[instance]\nlocal_user = \"dsadmin\"\n", &[]);
    let said = load(&main).unwrap().origins.error(&main, "instance.local_user", "no user").to_string();
    assert!(said.ends_with("config.toml:2: instance.local_user: no user"), "{said}");
}

#[test]
fn a_default_idle_cpu_window_below_a_raised_interval_is_named_at_the_interval() {
    let said = message_of("[idle]\ninterval = \"2m\"\n", "idle.interval");
    assert!(
        said.contains("config.toml:2: idle.interval: 2m is longer than idle.cpu_window (1m, the built-in default)"),
        "{said}"
    );
}

#[test]
fn a_misspelt_required_key_is_named_once_not_again_as_missing() {
    let (_dir, main) = config_dir("[share]\nknd = \"local\"\npath = \"/srv/share\"\n", &[]);
    let checked = check_with(&main, None);
    let said: Vec<String> = checked.errors.iter().map(ToString::to_string).collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("config.toml:2: share.knd: unknown key `knd`; did you mean `kind`?"), "{said:?}");
    assert!(checked.unsure.section("share"));
}
