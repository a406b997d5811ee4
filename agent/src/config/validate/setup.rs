//! `[setup]`: the setup scripts.

use super::checks::*;
use crate::config::fragment::*;
use crate::config::settings::*;
use crate::config::source::Sourced;
use std::collections::HashSet;

/// Every error goes to `found`; an entry with a wrong value is left out.
/// Also whether `setup.dir` is valid.
pub(super) fn validate_setup(
    section: Option<Sourced<SetupFragment>>,
    local_user: &str,
    found: &mut Found,
) -> (SetupSettings, bool) {
    let setup = section.map(|s| s.value).unwrap_or_default();
    // A wrong setup.dir: the scripts in it are unknown, so the whole section is unsure.
    let (dir, dir_ok) = match found.ok(absolute_path("setup.dir", &or_default(&setup.dir, DEFAULT_SETUP_DIR))) {
        Some(dir) => (dir, true),
        None => (std::path::PathBuf::from(DEFAULT_SETUP_DIR), false),
    };
    let mut seen = HashSet::new();
    let mut scripts = Vec::new();
    for (index, script) in setup.scripts.unwrap_or_default().into_iter().enumerate() {
        let before = found.len();
        let entry = validate_script(index, script, local_user, &mut seen, found);
        // A script with a wrong value is left out: the system checks skip it.
        if let Some(script) = entry.filter(|_| found.len() == before) {
            scripts.push(script);
        }
    }
    let share_wait = setup.share_wait.as_ref().map(|w| w.value.0).unwrap_or(DEFAULT_SHARE_WAIT);
    let trust_share = setup.trust_share.as_ref().is_some_and(|t| t.value);
    let log_to_share = setup.log_to_share.as_ref().is_none_or(|l| l.value);
    (SetupSettings { dir, share_wait, trust_share, log_to_share, scripts }, dir_ok)
}

/// One `[[setup.scripts]]` entry: `None` when a value needed to run it is wrong.
fn validate_script(
    index: usize,
    script: Sourced<ScriptFragment>,
    local_user: &str,
    seen: &mut HashSet<String>,
    found: &mut Found,
) -> Option<ScriptSettings> {
    let origin = script.origin;
    let script = script.value;
    let key = |field: &str| format!("setup.scripts[{index}].{field}");
    let name = found.ok(required(&script.name, &origin, &key("name"), "for every [[setup.scripts]]").cloned());
    if let Some(name) = &name {
        let name_ok = !name.value.is_empty()
            && name.value.len() <= 64
            && name.value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && !name.value.starts_with('.');
        if !name_ok {
            found.push(invalid(
                &name.origin,
                &key("name"),
                format!("{:?}: use letters, digits, '.', '_' and '-'", name.value),
            ));
        } else if !seen.insert(name.value.clone()) {
            found.push(invalid(&name.origin, &key("name"), format!("{:?} is used by two scripts", name.value)));
        }
    }
    let path = found
        .ok(required(&script.path, &origin, &key("path"), "for every [[setup.scripts]]"))
        .and_then(|path| found.ok(absolute_path(&key("path"), path)));
    let run_as = match &script.run_as {
        Some(user) => found.ok(account_name(&key("run_as"), user)),
        None => Some(local_user.to_string()),
    };
    let timeout = script.timeout.as_ref().map(|t| t.value.0).unwrap_or(DEFAULT_SCRIPT_TIMEOUT);
    if timeout.is_zero() {
        found.push(invalid(&origin, &key("timeout"), "must be longer than 0s"));
    }
    let env = script.env.as_ref().map(|e| e.value.clone()).unwrap_or_default();
    let env_origin = script.env.as_ref().map(|e| e.origin.clone()).unwrap_or(origin.clone());
    if let Some(bad) = env.keys().find(|k| !env_name_ok(k)) {
        found.push(invalid(&env_origin, &key("env"), format!("{bad:?} is not a variable name (letters, digits, '_')")));
    }
    if let Some((name, _)) = env.iter().find(|(_, v)| v.chars().any(char::is_control)) {
        found.push(invalid(
            &env_origin,
            &key("env"),
            format!("the value of {name} holds a control character (a newline?)"),
        ));
    }
    let workdir = script.workdir.as_ref().map(|w| found.ok(absolute_path(&key("workdir"), w)));
    let (name, path, run_as) = (name?, path?, run_as?);
    Some(ScriptSettings {
        name: name.value.clone(),
        path,
        run_as,
        when: script.when.as_ref().map(|w| w.value).unwrap_or(RunWhen::Once),
        args: script.args.as_ref().map(|a| a.value.clone()).unwrap_or_default(),
        workdir: workdir.flatten(),
        timeout,
        env,
        blocking: script.blocking.as_ref().is_none_or(|b| b.value),
        entry: Some(ScriptEntry {
            index,
            path: script.path.as_ref().map(|p| p.origin.clone()).unwrap_or(origin.clone()),
            run_as: script.run_as.as_ref().map(|r| r.origin.clone()),
        }),
    })
}

fn env_name_ok(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
