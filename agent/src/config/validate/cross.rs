//! Checks across keys and sections: values each valid alone that cannot
//! work together (an error), or a key that has no effect as the rest is
//! set (a warning). Each error stands where a key was written and names
//! where the other one was.

use crate::config::error::ConfigError;
use crate::config::fragment::*;
use crate::config::settings::*;
use crate::config::source::{Origin, Sourced};
use std::collections::BTreeSet;

/// What the checks need of the merged files, taken before validation
/// consumes them: values with the place they were written.
#[derive(Debug, Default)]
pub(super) struct Inputs {
    pub share_kind: Option<ShareKind>,
    enabled: Option<Sourced<AzureEnabled>>,
    action: Option<Sourced<IdleAction>>,
    protect: Option<Sourced<bool>>,
    scheduled_events: Option<Sourced<bool>>,
    /// Keys read only when another is set a certain way: (key, where, needs).
    only_with: Vec<(&'static str, Origin, Needs)>,
}

#[derive(Debug, Clone, Copy)]
enum Needs {
    DeleteSelf,
    JupyterUrls,
    JupyterhubUrl,
    Private,
    ScheduledEvents,
    Protect,
}

impl Inputs {
    pub fn of(merged: &ConfigFragment) -> Self {
        let mut inputs = Inputs::default();
        // A key written with its built-in default (as an example config
        // lists every key) changes nothing either way: no warning.
        let mut only = |key: &'static str, written: Option<&Origin>, is_default: bool, needs: Needs| {
            if let (Some(origin), false) = (written, is_default) {
                inputs.only_with.push((key, origin.clone(), needs));
            }
        };
        fn at<T>(value: &Value<T>) -> Option<&Origin> {
            value.as_ref().map(|v| &v.origin)
        }
        fn is<T: PartialEq>(value: &Value<T>, default: T) -> bool {
            value.as_ref().is_some_and(|v| v.value == default)
        }
        let duration = |value: &Value<crate::config::duration::ConfigDuration>, default| {
            value.as_ref().is_some_and(|v| v.value.0 == default)
        };
        if let Some(idle) = &merged.idle {
            let idle = &idle.value;
            only("idle.min_instances", at(&idle.min_instances), is(&idle.min_instances, 0), Needs::DeleteSelf);
            only("idle.jupyter_token_file", at(&idle.jupyter_token_file), false, Needs::JupyterUrls);
            only("idle.jupyterhub_token_file", at(&idle.jupyterhub_token_file), false, Needs::JupyterhubUrl);
        }
        if let Some(links) = &merged.links {
            let root = &links.value.private_root;
            only("links.private_root", at(root), is(root, DEFAULT_PRIVATE_ROOT.to_string()), Needs::Private);
        }
        if let Some(azure) = &merged.azure {
            let azure = &azure.value;
            let wait = duration(&azure.delete_wait, std::time::Duration::from_secs(120));
            only("azure.delete_wait", at(&azure.delete_wait), wait, Needs::DeleteSelf);
            let approve = is(&azure.approve, vec!["Freeze".to_string()]);
            only("azure.approve", at(&azure.approve), approve, Needs::ScheduledEvents);
            let after = duration(&azure.release_after, DEFAULT_RELEASE_AFTER);
            only("azure.release_after", at(&azure.release_after), after, Needs::Protect);
            let most = is(&azure.max_releases_per_hour, DEFAULT_MAX_RELEASES_PER_HOUR);
            only("azure.max_releases_per_hour", at(&azure.max_releases_per_hour), most, Needs::Protect);
        }
        inputs.share_kind = merged.share.as_ref().and_then(|s| s.value.kind.as_ref().map(|k| k.value));
        inputs.action = merged.idle.as_ref().and_then(|i| i.value.action.clone());
        if let Some(azure) = &merged.azure {
            inputs.enabled = azure.value.enabled.clone();
            inputs.protect = azure.value.protect.clone();
            inputs.scheduled_events = azure.value.scheduled_events.clone();
        }
        inputs
    }
}

fn place(origin: &Origin) -> String {
    format!("{}:{}", origin.file.display(), origin.line)
}

/// Settings that cannot work together, each with the section it leaves unsure.
pub(super) fn check(inputs: &Inputs, settings: &Settings) -> Vec<(&'static str, ConfigError)> {
    let mut errors = Vec::new();
    // Everything below asks Azure for something; with Azure off it would never happen.
    let Some(enabled) = inputs.enabled.as_ref().filter(|e| e.value == AzureEnabled::Off) else { return errors };
    let off = format!("azure.enabled = false (set at {})", place(&enabled.origin));
    // A key fetched with the VM's identity needs the Azure capability.
    if let Some(ShareSource::AzureFiles { key_source, .. }) = settings.share.as_ref().map(|s| &s.source) {
        if *key_source != KeySourceKind::File {
            errors.push((
                "azure",
                ConfigError::at(
                    &enabled.origin,
                    "azure.enabled",
                    format!(
                        "is false, but share.key_source = \"{}\" fetches the key from Azure with the VM's identity",
                        key_source.as_str()
                    ),
                ),
            ));
        }
    }
    if let Some(action) = inputs.action.as_ref().filter(|a| a.value == IdleAction::DeleteSelf) {
        errors.push((
            "idle",
            ConfigError::at(
                &action.origin,
                "idle.action",
                format!(
                    "\"delete-self\" asks the scale set through Azure to delete this VM, but {off}: set idle.action = \"report\", or turn Azure on"
                ),
            ),
        ));
    }
    errors
}

/// Keys set where nothing reads them (warnings): likely a key meant for
/// another setup, or a half-made change.
pub(super) fn unused(inputs: &Inputs, settings: &Settings) -> Vec<String> {
    let mut notes = Vec::new();
    // Safe-side keys asked for with Azure off (a drop-in turning Azure off
    // for a while, say): nothing to protect from or drain, so a warning, not
    // a config refused.
    if let Some(enabled) = inputs.enabled.as_ref().filter(|e| e.value == AzureEnabled::Off) {
        for (key, value, what) in [
            ("azure.protect", &inputs.protect, "protects a busy VM from scale-in"),
            ("azure.scheduled_events", &inputs.scheduled_events, "drains the VM before Azure removes it"),
        ] {
            if let Some(given) = value.as_ref().filter(|v| v.value) {
                notes.push(format!(
                    "{}: {key} = true has no effect (it {what}): azure.enabled = false (set at {})",
                    place(&given.origin),
                    place(&enabled.origin)
                ));
            }
        }
    }
    for (key, origin, needs) in &inputs.only_with {
        let unmet = match needs {
            Needs::DeleteSelf => (settings.idle.action != IdleAction::DeleteSelf)
                .then_some("idle.action = \"delete-self\" (it is \"report\")"),
            Needs::JupyterUrls => settings.idle.jupyter_urls.is_empty().then_some("idle.jupyter_urls (none is set)"),
            Needs::JupyterhubUrl => {
                settings.idle.jupyterhub_url.is_empty().then_some("idle.jupyterhub_url (none is set)")
            }
            Needs::Private => (!settings.links.private).then_some("links.private = true"),
            Needs::ScheduledEvents => {
                (!settings.azure.scheduled_events).then_some("azure.scheduled_events = true (it is false)")
            }
            Needs::Protect => (!settings.azure.protect).then_some("azure.protect = true (it is false)"),
        };
        if let Some(unmet) = unmet {
            notes.push(format!("{}: {key} has no effect: it is read only with {unmet}", place(origin)));
        }
    }
    notes
}

/// Names of the script entries a parse error was in (a typo key, a wrong
/// type): what is left of them is not what the admin wrote, so the system
/// checks skip them. An entry runs from its `[[setup.scripts]]` line to the
/// next entry of the same file.
pub(super) fn tainted_scripts(merged: &ConfigFragment, parse_errors: &[ConfigError]) -> BTreeSet<String> {
    let Some(scripts) = merged.setup.as_ref().and_then(|s| s.value.scripts.as_ref()) else {
        return BTreeSet::new();
    };
    let mut tainted = BTreeSet::new();
    for error in parse_errors.iter().filter(|e| e.key().is_some_and(|k| k.starts_with("setup.scripts"))) {
        let Some(line) = error.line() else { continue };
        let entry = scripts
            .iter()
            .filter(|s| *s.origin.file == *error.file() && s.origin.line <= line)
            .max_by_key(|s| s.origin.line);
        if let Some(name) = entry.and_then(|s| s.value.name.as_ref()) {
            tainted.insert(name.value.clone());
        }
    }
    tainted
}
