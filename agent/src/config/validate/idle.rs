//! `[idle]`: sampling, timeout, and what counts as activity.

use super::checks::*;
use crate::config::duration;
use crate::config::duration::ConfigDuration;
use crate::config::fragment::*;
use crate::config::settings::*;
use crate::config::source::{Origin, Sourced};
use std::path::Path;
use std::time::Duration;

/// Every error goes to `found`; a wrong value's place holds its default.
pub(super) fn validate_idle(section: Option<Sourced<IdleFragment>>, found: &mut Found) -> IdleSettings {
    let idle = section.map(|s| s.value).unwrap_or_default();
    let mut interval = idle.interval.as_ref().map(|i| i.value.0).unwrap_or(DEFAULT_IDLE_INTERVAL);
    let timeout = idle.timeout.as_ref().map(|t| t.value.0).unwrap_or(DEFAULT_IDLE_TIMEOUT);
    if interval.is_zero() {
        if let Some(given) = &idle.interval {
            found.push(invalid(&given.origin, "idle.interval", "must be longer than 0s"));
        }
        interval = DEFAULT_IDLE_INTERVAL;
    }
    if timeout < interval {
        let origin = idle
            .timeout
            .as_ref()
            .or(idle.interval.as_ref())
            .map(|v| v.origin.clone())
            .unwrap_or_else(|| Origin::new(Path::new(BUILT_IN_DEFAULT), 0));
        found.push(invalid(
            &origin,
            "idle.timeout",
            format!("{} is shorter than idle.interval ({})", duration::format(timeout), duration::format(interval)),
        ));
    }
    let given_timeout = idle.timeout.as_ref();
    if let Some(given) = given_timeout {
        if !(MIN_IDLE_TIMEOUT..=MAX_IDLE_TIMEOUT).contains(&given.value.0) {
            found.push(invalid(&given.origin, "idle.timeout", "must be between 1m and 3d"));
        }
    }
    let duration_or =
        |value: &Value<ConfigDuration>, default: Duration| value.as_ref().map(|v| v.value.0).unwrap_or(default);
    let mut cpu_percent = idle.cpu_percent.as_ref().map(|v| v.value).unwrap_or(DEFAULT_CPU_PERCENT);
    if let Some(given) = &idle.cpu_percent {
        if !(given.value > 0.0 && given.value <= 6400.0) {
            found.push(invalid(&given.origin, "idle.cpu_percent", "must be above 0 (percent of one core)"));
            cpu_percent = DEFAULT_CPU_PERCENT;
        }
    }
    let cpu_window = duration_or(&idle.cpu_window, DEFAULT_CPU_WINDOW);
    if cpu_window < interval {
        // Left at its default, the error stands where idle.interval was raised past it.
        let (origin, key, message) = match (&idle.cpu_window, &idle.interval) {
            (None, Some(given)) => (
                given.origin.clone(),
                "idle.interval",
                format!(
                    "{} is longer than idle.cpu_window ({}, the built-in default): set idle.cpu_window to at least idle.interval",
                    duration::format(interval),
                    duration::format(cpu_window)
                ),
            ),
            (given, _) => (
                given.as_ref().map(|v| v.origin.clone()).unwrap_or_else(|| Origin::new(Path::new(BUILT_IN_DEFAULT), 0)),
                "idle.cpu_window",
                "must be at least idle.interval".to_string(),
            ),
        };
        found.push(invalid(&origin, key, message));
    }
    let mut max_hold = duration_or(&idle.max_hold, DEFAULT_MAX_HOLD);
    if max_hold.is_zero() {
        if let Some(given) = &idle.max_hold {
            found.push(invalid(&given.origin, "idle.max_hold", "must be longer than 0s"));
        }
        max_hold = DEFAULT_MAX_HOLD;
    }
    let mut jupyter_urls = Vec::new();
    if let Some(urls) = &idle.jupyter_urls {
        for (n, url) in urls.value.iter().enumerate() {
            jupyter_urls.extend(found.ok(http_url(&urls.origin, &format!("idle.jupyter_urls[{n}]"), url)));
        }
    }
    let jupyterhub_url = match &idle.jupyterhub_url {
        Some(url) if !url.value.is_empty() => {
            found.or(http_url(&url.origin, "idle.jupyterhub_url", &url.value), String::new())
        }
        _ => String::new(),
    };
    let mut token_file =
        |value: &Value<String>, key: &str| found.or(value.as_ref().map(|v| absolute_path(key, v)).transpose(), None);
    let jupyter_token_file = token_file(&idle.jupyter_token_file, "idle.jupyter_token_file");
    let jupyterhub_token_file = token_file(&idle.jupyterhub_token_file, "idle.jupyterhub_token_file");
    let max_unknown = duration_or(&idle.max_unknown, DEFAULT_MAX_UNKNOWN);
    if let Some(given) = &idle.max_unknown {
        if max_unknown < timeout {
            found.push(invalid(&given.origin, "idle.max_unknown", "must be at least idle.timeout"));
        }
    }
    let mut cpu_services = Vec::new();
    if let Some(units) = &idle.cpu_services {
        for (n, unit) in units.value.iter().enumerate() {
            let known = [".service", ".scope", ".slice"].iter().any(|s| unit.ends_with(s));
            if !known || unit.contains('/') || unit.chars().any(char::is_whitespace) {
                found.push(invalid(
                    &units.origin,
                    &format!("idle.cpu_services[{n}]"),
                    format!("{unit:?}: name a systemd unit, such as \"rstudio-server.service\""),
                ));
                continue;
            }
            cpu_services.push(unit.clone());
        }
    }
    let writes_max = duration_or(&idle.writes_max, DEFAULT_WRITES_MAX);
    if let Some(given) = &idle.writes_max {
        if writes_max < interval {
            found.push(invalid(&given.origin, "idle.writes_max", "must be at least idle.interval"));
        }
    }
    IdleSettings {
        interval,
        timeout,
        boot_grace: duration_or(&idle.boot_grace, DEFAULT_BOOT_GRACE),
        action: idle.action.as_ref().map(|a| a.value).unwrap_or(IdleAction::Report),
        min_instances: idle.min_instances.as_ref().map(|m| m.value).unwrap_or(0),
        max_hold,
        watch_ports: idle.watch_ports.as_ref().map(|p| p.value.clone()).unwrap_or_else(|| DEFAULT_WATCH_PORTS.to_vec()),
        connection_bytes_per_minute: idle
            .connection_bytes_per_minute
            .as_ref()
            .map(|v| v.value)
            .unwrap_or(DEFAULT_CONNECTION_BYTES_PER_MINUTE),
        cpu_percent,
        cpu_window,
        jupyter_urls,
        jupyter_token_file,
        jupyterhub_url,
        jupyterhub_token_file,
        max_unknown,
        gpu_memory_grace: duration_or(&idle.gpu_memory_grace, DEFAULT_GPU_MEMORY_GRACE),
        cpu_services,
        writes: idle.writes.as_ref().map(|w| w.value).unwrap_or(true),
        writes_max,
    }
}
