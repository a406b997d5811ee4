//! What the scale set's userData may set. Whoever can write an instance's
//! userData — the VM's own identity can, with `virtualMachines/write` — must
//! not get root on every VM that reads it, nor widen who can do what. So a
//! fragment from userData may set only keys that neither run code nor widen
//! access (tunables of the verdict and of reporting); everything else is
//! refused key by key, said as a warning, and never applied. A root-owned
//! local file may widen the list on purpose with `azure.user_data_keys`.

/// `section.key` names userData may set. Not here, with why: `[setup]` and
/// `run_as` run code; `[api]` names admins; `[share]` moves where users'
/// files go and how it is mounted; `links.private`/`private_root`, `link`
/// and `target` move files; every endpoint and `azure.client_id` redirect
/// tokens; `azure.enabled`, `imds_access` and `health_listen` change what is
/// open; `protect`, `scheduled_events`, `approve` and `idle.action` change
/// what may take a VM; `jupyter_*` send tokens to URLs.
pub const ALLOWED: &[&str] = &[
    "instance.name",
    "idle.interval",
    "idle.timeout",
    "idle.boot_grace",
    "idle.max_hold",
    "idle.watch_ports",
    "idle.connection_bytes_per_minute",
    "idle.cpu_percent",
    "idle.cpu_window",
    "idle.max_unknown",
    "idle.gpu_memory_grace",
    "idle.cpu_services",
    "idle.min_instances",
    "idle.writes",
    "idle.writes_max",
    "links.users",
    "links.min_uid",
    "links.max_uid",
    "azure.metrics_namespace",
    "azure.metrics_interval",
    "azure.instance_dimension",
    "azure.unhealthy_after",
    "azure.release_after",
    "azure.max_releases_per_hour",
    "azure.delete_wait",
    "pool.max_sessions",
];

/// A key the fragment set and may not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub line: usize,
    pub key: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {}: refused: userData may not set it (it could run code or widen access); to allow it on purpose, add it to azure.user_data_keys in a root-owned file",
            super::USER_DATA_SOURCE,
            self.line,
            self.key
        )
    }
}

/// Whether `key` (`section.key`) may come from userData: on the list, or
/// widened by `widened` (a `section.key`, or a whole `section`).
fn allowed(key: &str, widened: &[String]) -> bool {
    let section = key.split('.').next().unwrap_or_default();
    ALLOWED.contains(&key) || widened.iter().any(|w| w == key || w == section)
}

/// Keeps what the fragment may set: the text to apply and the keys
/// refused; None when the fragment is not TOML (the caller reports the parse error).
pub fn allow(text: &str, widened: &[String]) -> Option<(String, Vec<Refused>)> {
    let table: toml::Table = text.parse().ok()?;
    let mut kept = toml::Table::new();
    let mut refused = Vec::new();
    for (section, value) in table {
        let toml::Value::Table(keys) = value else {
            refused.push(Refused { line: line_of(text, None, &section), key: section });
            continue;
        };
        let mut kept_keys = toml::Table::new();
        for (key, value) in keys {
            let dotted = format!("{section}.{key}");
            if allowed(&dotted, widened) {
                kept_keys.insert(key, value);
            } else {
                refused.push(Refused { line: line_of(text, Some(&section), &key), key: dotted });
            }
        }
        if !kept_keys.is_empty() {
            kept.insert(section, toml::Value::Table(kept_keys));
        }
    }
    refused.sort_by_key(|r| r.line);
    let text = toml::to_string(&kept).ok()?;
    Some((text, refused))
}

/// The line (1-based) where `key` is set under `[section]` (or a
/// `[section.key]` / `[[section.key]]` header), best effort for messages.
fn line_of(text: &str, section: Option<&str>, key: &str) -> usize {
    let mut current = String::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(header) = trimmed.strip_prefix('[') {
            let header = header.trim_start_matches('[').trim_end_matches(']').trim();
            let dotted = section.map_or(key.to_string(), |s| format!("{s}.{key}"));
            if header == dotted {
                return index + 1;
            }
            current = header.to_string();
            continue;
        }
        let name = trimmed.split('=').next().unwrap_or_default().trim().trim_matches('"');
        let here = match section {
            Some(section) => current == section && name == key,
            None => current.is_empty() && name == key,
        };
        if trimmed.contains('=') && here {
            return index + 1;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_admins_and_endpoints_are_refused_key_by_key_and_tunables_kept() {
        let text = "[idle]\ntimeout = \"45m\"\naction = \"delete-self\"\n\n[[setup.scripts]]\nname = \"x\"\npath = \"/usr/bin/bash\"\nargs = [\"-c\", \"id\"]\nrun_as = \"root\"\n\n[api]\nadmin_group = \"users\"\n\n[azure]\narm_endpoint = \"https://evil.example\"\nrelease_after = \"20m\"\n";
        let (kept, refused) = allow(text, &[]).unwrap();
        let keys: Vec<(usize, &str)> = refused.iter().map(|r| (r.line, r.key.as_str())).collect();
        assert_eq!(
            keys,
            [(3, "idle.action"), (5, "setup.scripts"), (12, "api.admin_group"), (15, "azure.arm_endpoint")]
        );
        let kept: toml::Table = kept.parse().unwrap();
        assert_eq!(kept["idle"]["timeout"].as_str(), Some("45m"));
        assert_eq!(kept["azure"]["release_after"].as_str(), Some("20m"));
        assert!(kept.get("setup").is_none() && kept.get("api").is_none());
        assert!(refused[0].to_string().contains("<azure userData>:3: idle.action: refused"), "{}", refused[0]);
    }

    #[test]
    fn a_root_owned_file_may_widen_the_list_by_key_or_section() {
        let text = "[share]\naccount = \"team\"\nshare = \"notebooks\"\n[idle]\naction = \"delete-self\"\n";
        let (kept, refused) = allow(text, &["share".into(), "idle.action".into()]).unwrap();
        assert!(refused.is_empty(), "{refused:?}");
        assert!(kept.contains("account") && kept.contains("delete-self"), "{kept}");
        assert!(allow("not [ toml", &[]).is_none());
    }
}
