//! `[setup]`: the setup scripts.

use super::checks::*;
use crate::config::error::ConfigError;
use crate::config::fragment::*;
use crate::config::settings::*;
use crate::config::source::Sourced;
use std::collections::HashSet;

pub(super) fn validate_setup(
    section: Option<Sourced<SetupFragment>>,
    local_user: &str,
) -> Result<SetupSettings, ConfigError> {
    let setup = section.map(|s| s.value).unwrap_or_default();
    let dir = absolute_path("setup.dir", &or_default(&setup.dir, DEFAULT_SETUP_DIR))?;
    let mut seen = HashSet::new();
    let mut scripts = Vec::new();
    for (index, script) in setup.scripts.unwrap_or_default().into_iter().enumerate() {
        let origin = script.origin;
        let script = script.value;
        let key = |field: &str| format!("setup.scripts[{index}].{field}");
        let name = required(&script.name, &origin, &key("name"), "for every [[setup.scripts]]")?;
        let name_ok = !name.value.is_empty()
            && name.value.len() <= 64
            && name.value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && !name.value.starts_with('.');
        if !name_ok {
            return Err(invalid(
                &name.origin,
                &key("name"),
                format!("{:?}: use letters, digits, '.', '_' and '-'", name.value),
            ));
        }
        if !seen.insert(name.value.clone()) {
            return Err(invalid(&name.origin, &key("name"), format!("{:?} is used by two scripts", name.value)));
        }
        let path =
            absolute_path(&key("path"), required(&script.path, &origin, &key("path"), "for every [[setup.scripts]]")?)?;
        let run_as = match &script.run_as {
            Some(user) => account_name(&key("run_as"), user)?,
            None => local_user.to_string(),
        };
        let timeout = script.timeout.as_ref().map(|t| t.value.0).unwrap_or(DEFAULT_SCRIPT_TIMEOUT);
        if timeout.is_zero() {
            return Err(invalid(&origin, &key("timeout"), "must be longer than 0s"));
        }
        let env = script.env.as_ref().map(|e| e.value.clone()).unwrap_or_default();
        let env_origin = script.env.as_ref().map(|e| e.origin.clone()).unwrap_or(origin.clone());
        if let Some(bad) = env.keys().find(|k| !env_name_ok(k)) {
            return Err(invalid(
                &env_origin,
                &key("env"),
                format!("{bad:?} is not a variable name (letters, digits, '_')"),
            ));
        }
        if let Some((name, _)) = env.iter().find(|(_, v)| v.chars().any(char::is_control)) {
            return Err(invalid(
                &env_origin,
                &key("env"),
                format!("the value of {name} holds a control character (a newline?)"),
            ));
        }
        scripts.push(ScriptSettings {
            name: name.value.clone(),
            path,
            run_as,
            when: script.when.as_ref().map(|w| w.value).unwrap_or(RunWhen::Once),
            args: script.args.as_ref().map(|a| a.value.clone()).unwrap_or_default(),
            workdir: script.workdir.as_ref().map(|w| absolute_path(&key("workdir"), w)).transpose()?,
            timeout,
            env,
            blocking: script.blocking.as_ref().is_none_or(|b| b.value),
            entry: Some(ScriptEntry {
                index,
                path: script.path.as_ref().map(|p| p.origin.clone()).unwrap_or(origin.clone()),
                run_as: script.run_as.as_ref().map(|r| r.origin.clone()),
            }),
        });
    }
    let share_wait = setup.share_wait.as_ref().map(|w| w.value.0).unwrap_or(DEFAULT_SHARE_WAIT);
    let trust_share = setup.trust_share.as_ref().is_some_and(|t| t.value);
    let log_to_share = setup.log_to_share.as_ref().is_none_or(|l| l.value);
    Ok(SetupSettings { dir, share_wait, trust_share, log_to_share, scripts })
}

fn env_name_ok(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
