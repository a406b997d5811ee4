//! Checks every section's validation shares: paths, names, modes,
//! durations, endpoints, and the one error shape naming file, line and key.

use crate::config::error::ConfigError;
use crate::config::settings::BUILT_IN_DEFAULT;
use crate::config::source::{Origin, Sourced};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

pub(super) fn invalid(origin: &Origin, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::at(origin, key, message)
}

/// The errors found so far. Validation goes on past each one (with the
/// default in the wrong value's place), so one check names every mistake.
#[derive(Debug, Default)]
pub(super) struct Found(pub Vec<ConfigError>);

impl Found {
    pub fn push(&mut self, error: ConfigError) {
        self.0.push(error);
    }

    /// The value, or `None` with its error kept.
    pub fn ok<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        result.map_err(|error| self.0.extend(error.into_each())).ok()
    }

    /// The value, or `fallback` with the error kept.
    pub fn or<T>(&mut self, result: Result<T, ConfigError>, fallback: T) -> T {
        self.ok(result).unwrap_or(fallback)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

pub(super) fn absolute_path(key: &str, value: &Sourced<String>) -> Result<PathBuf, ConfigError> {
    let path = Path::new(&value.value);
    if !path.is_absolute() {
        return Err(invalid(&value.origin, key, format!("{:?} must be an absolute path", value.value)));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(&value.origin, key, format!("{:?} must not contain `..`", value.value)));
    }
    Ok(path.to_path_buf())
}

/// A path under a home or the share root: relative, and unable to climb out.
pub(super) fn contained_relative_path(key: &str, value: &Sourced<String>) -> Result<PathBuf, ConfigError> {
    let path = Path::new(&value.value);
    let climbs = path.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if value.value.is_empty() || climbs {
        return Err(invalid(&value.origin, key, format!("{:?} must be a relative path without `..`", value.value)));
    }
    Ok(path.to_path_buf())
}

/// POSIX-portable account names, as useradd accepts them by default.
pub(super) fn is_account_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_');
    first_ok
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'))
}

pub(super) fn account_name(key: &str, value: &Sourced<String>) -> Result<String, ConfigError> {
    if is_account_name(&value.value) {
        Ok(value.value.clone())
    } else {
        Err(invalid(&value.origin, key, format!("{:?} is not a valid user or group name", value.value)))
    }
}

pub(super) fn required<'a, T>(
    value: &'a Option<Sourced<T>>,
    section: &Origin,
    key: &str,
    why: &str,
) -> Result<&'a Sourced<T>, ConfigError> {
    value.as_ref().ok_or_else(|| invalid(section, key, format!("required {why}")))
}

pub(super) fn or_default(value: &Option<Sourced<String>>, default: &str) -> Sourced<String> {
    value
        .clone()
        .unwrap_or_else(|| Sourced { value: default.to_string(), origin: Origin::new(Path::new(BUILT_IN_DEFAULT), 0) })
}

/// A DNS name, an IPv4 address or a bracketed IPv6 address; never something
/// a command line could read as an option.
pub(super) fn is_host(host: &str) -> bool {
    let bracketed_v6 = host.starts_with('[')
        && host.ends_with(']')
        && host.len() > 2
        && host[1..host.len() - 1].chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
    let name = !host.is_empty()
        && !host.starts_with(['-', '.'])
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    bracketed_v6 || name
}

pub(super) fn http_endpoint(key: &str, value: &Sourced<String>) -> Result<String, ConfigError> {
    let text = value.value.trim_end_matches('/');
    let rest = text.strip_prefix("http://").or_else(|| text.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => Ok(text.to_string()),
        _ => Err(invalid(&value.origin, key, format!("{:?} must be an http:// or https:// URL", value.value))),
    }
}

pub(super) const SMB_VERSIONS: &[&str] = &["3", "3.0", "3.02", "3.1.1"];
pub(super) const NFS_VERSIONS: &[&str] = &["3", "4", "4.0", "4.1", "4.2"];

pub(super) fn one_of(key: &str, value: &Sourced<String>, allowed: &[&str]) -> Result<String, ConfigError> {
    if allowed.contains(&value.value.as_str()) {
        Ok(value.value.clone())
    } else {
        Err(invalid(&value.origin, key, format!("{:?} is not one of {}", value.value, allowed.join(", "))))
    }
}

/// A user or group for mount options: a name or a number.
pub(super) fn owner(key: &str, value: &Sourced<String>) -> Result<String, ConfigError> {
    if value.value.parse::<u32>().is_ok() || is_account_name(&value.value) {
        Ok(value.value.clone())
    } else {
        Err(invalid(&value.origin, key, format!("{:?} is neither a name nor a number", value.value)))
    }
}

pub(super) fn octal_mode(key: &str, value: &Sourced<String>) -> Result<String, ConfigError> {
    let digits = value.value.trim_start_matches('0');
    let ok = (3..=4).contains(&value.value.len())
        && digits.len() <= 3
        && value.value.chars().all(|c| ('0'..='7').contains(&c));
    if ok {
        Ok(format!("0{:0>3}", digits))
    } else {
        Err(invalid(&value.origin, key, format!("{:?} is not an octal mode such as \"0775\"", value.value)))
    }
}

pub(super) fn duration_or(
    value: &Option<Sourced<crate::config::duration::ConfigDuration>>,
    default: Duration,
    key: &str,
) -> Result<Duration, ConfigError> {
    match value {
        Some(given) if given.value.0.is_zero() => Err(invalid(&given.origin, key, "must be longer than 0s")),
        Some(given) => Ok(given.value.0),
        None => Ok(default),
    }
}

/// A system directory or one of the top directories that hold others: never
/// a place for the agent's mounts.
pub(super) fn is_system_dir(path: &Path) -> bool {
    let normalized: PathBuf = path.components().collect();
    SYSTEM_TOP_DIRS.iter().any(|dir| normalized == Path::new(dir))
        || SYSTEM_DIRS.iter().any(|dir| normalized.starts_with(dir))
}

/// Places a share must never be mounted over: the system itself.
pub(super) const SYSTEM_DIRS: &[&str] =
    &["/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin", "/sys", "/usr"];
/// Top-level directories that may hold a mount point below them, but are not one.
pub(super) const SYSTEM_TOP_DIRS: &[&str] =
    &["/", "/home", "/root", "/srv", "/opt", "/tmp", "/var", "/var/lib", "/var/log", "/media"];

/// An `http://` or `https://host:port[/path]` URL (https on loopback accepts
/// the server's own certificate). Messages never echo a query (`?token=`).
pub(super) fn http_url(origin: &Origin, key: &str, url: &str) -> Result<String, ConfigError> {
    let shown = shown_url(url);
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| invalid(origin, key, format!("{shown:?}: use http://host:port or https://host:port")))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid(origin, key, format!("{shown:?} names no host")));
    }
    if url.contains('?') {
        return Err(invalid(origin, key, format!("{shown:?}: put the token in the token file, not in the URL")));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// A URL as it may be shown: without its query (`?token=…`) or user info.
pub fn shown_url(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or("");
    let Some((scheme, rest)) = without_query.split_once("://") else { return without_query.to_string() };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}{path}")
}

/// An Azure storage account name: 3-24 lowercase letters and digits.
pub(super) fn is_storage_account_name(name: &str) -> bool {
    (3..=24).contains(&name.len()) && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// `localhost` or a loopback address (with or without a port).
pub(super) fn is_loopback_host(host_and_port: &str) -> bool {
    let host = match host_and_port.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host_and_port.split(':').next().unwrap_or_default(),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An http(s) URL whose host is loopback.
pub(super) fn is_loopback_url(url: &str) -> bool {
    is_loopback_host(url.split("://").nth(1).unwrap_or_default().split('/').next().unwrap_or_default())
}
