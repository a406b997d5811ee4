//! `[idle]`: sampling, timeout, and what counts as activity.

use super::checks::*;
use crate::config::duration;
use crate::config::duration::ConfigDuration;
use crate::config::error::ConfigError;
use crate::config::fragment::*;
use crate::config::settings::*;
use crate::config::source::{Origin, Sourced};
use std::path::Path;
use std::time::Duration;

pub(super) fn validate_idle(section: Option<Sourced<IdleFragment>>) -> Result<IdleSettings, ConfigError> {
    let idle = section.map(|s| s.value).unwrap_or_default();
    let interval = idle.interval.as_ref().map(|i| i.value.0).unwrap_or(DEFAULT_IDLE_INTERVAL);
    let timeout = idle.timeout.as_ref().map(|t| t.value.0).unwrap_or(DEFAULT_IDLE_TIMEOUT);
    if interval.is_zero() {
        if let Some(given) = &idle.interval {
            return Err(invalid(&given.origin, "idle.interval", "must be longer than 0s"));
        }
    }
    if timeout < interval {
        let origin = idle
            .timeout
            .as_ref()
            .or(idle.interval.as_ref())
            .map(|v| v.origin.clone())
            .unwrap_or_else(|| Origin::new(Path::new("<default>"), 0));
        return Err(invalid(
            &origin,
            "idle.timeout",
            format!("{} is shorter than idle.interval ({})", duration::format(timeout), duration::format(interval)),
        ));
    }
    let given_timeout = idle.timeout.as_ref();
    if let Some(given) = given_timeout {
        if !(MIN_IDLE_TIMEOUT..=MAX_IDLE_TIMEOUT).contains(&given.value.0) {
            return Err(invalid(&given.origin, "idle.timeout", "must be between 1m and 3d"));
        }
    }
    let duration_or =
        |value: &Value<ConfigDuration>, default: Duration| value.as_ref().map(|v| v.value.0).unwrap_or(default);
    let cpu_percent = idle.cpu_percent.as_ref().map(|v| v.value).unwrap_or(DEFAULT_CPU_PERCENT);
    if let Some(given) = &idle.cpu_percent {
        if !(given.value > 0.0 && given.value <= 6400.0) {
            return Err(invalid(&given.origin, "idle.cpu_percent", "must be above 0 (percent of one core)"));
        }
    }
    let cpu_window = duration_or(&idle.cpu_window, DEFAULT_CPU_WINDOW);
    if cpu_window < interval {
        let origin = idle
            .cpu_window
            .as_ref()
            .map(|v| v.origin.clone())
            .unwrap_or_else(|| Origin::new(Path::new("<default>"), 0));
        return Err(invalid(&origin, "idle.cpu_window", "must be at least idle.interval"));
    }
    let max_hold = duration_or(&idle.max_hold, DEFAULT_MAX_HOLD);
    if max_hold.is_zero() {
        if let Some(given) = &idle.max_hold {
            return Err(invalid(&given.origin, "idle.max_hold", "must be longer than 0s"));
        }
    }
    let mut jupyter_urls = Vec::new();
    if let Some(urls) = &idle.jupyter_urls {
        for (n, url) in urls.value.iter().enumerate() {
            jupyter_urls.push(http_url(&urls.origin, &format!("idle.jupyter_urls[{n}]"), url)?);
        }
    }
    let jupyterhub_url = match &idle.jupyterhub_url {
        Some(url) if !url.value.is_empty() => http_url(&url.origin, "idle.jupyterhub_url", &url.value)?,
        _ => String::new(),
    };
    let token_file = |value: &Value<String>, key: &str| value.as_ref().map(|v| absolute_path(key, v)).transpose();
    let max_unknown = duration_or(&idle.max_unknown, DEFAULT_MAX_UNKNOWN);
    if let Some(given) = &idle.max_unknown {
        if max_unknown < timeout {
            return Err(invalid(&given.origin, "idle.max_unknown", "must be at least idle.timeout"));
        }
    }
    let mut cpu_services = Vec::new();
    if let Some(units) = &idle.cpu_services {
        for (n, unit) in units.value.iter().enumerate() {
            let known = [".service", ".scope", ".slice"].iter().any(|s| unit.ends_with(s));
            if !known || unit.contains('/') || unit.chars().any(char::is_whitespace) {
                return Err(invalid(
                    &units.origin,
                    &format!("idle.cpu_services[{n}]"),
                    format!("{unit:?}: name a systemd unit, such as \"rstudio-server.service\""),
                ));
            }
            cpu_services.push(unit.clone());
        }
    }
    let writes_max = duration_or(&idle.writes_max, DEFAULT_WRITES_MAX);
    if let Some(given) = &idle.writes_max {
        if writes_max < interval {
            return Err(invalid(&given.origin, "idle.writes_max", "must be at least idle.interval"));
        }
    }
    Ok(IdleSettings {
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
        jupyter_token_file: token_file(&idle.jupyter_token_file, "idle.jupyter_token_file")?,
        jupyterhub_url,
        jupyterhub_token_file: token_file(&idle.jupyterhub_token_file, "idle.jupyterhub_token_file")?,
        max_unknown,
        gpu_memory_grace: duration_or(&idle.gpu_memory_grace, DEFAULT_GPU_MEMORY_GRACE),
        cpu_services,
        writes: idle.writes.as_ref().map(|w| w.value).unwrap_or(true),
        writes_max,
    })
}
