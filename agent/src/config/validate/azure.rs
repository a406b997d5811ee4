//! `[azure]`: where Azure is reached, and what is published there.

use super::checks::*;
use crate::config::fragment::*;
use crate::config::settings::*;

/// Every error goes to `found`; a wrong value's place holds its default.
pub(super) fn validate_azure(azure: AzureFragment, found: &mut Found) -> AzureSettings {
    let mut endpoint = |key: &str, value: &Value<String>, default: &str| match value {
        Some(value) if !value.value.is_empty() => found.or(http_endpoint(key, value), default.to_string()),
        _ => default.to_string(),
    };
    let imds_endpoint = endpoint("azure.imds_endpoint", &azure.imds_endpoint, DEFAULT_IMDS_ENDPOINT);
    let mut monitoring_endpoint = endpoint("azure.monitoring_endpoint", &azure.monitoring_endpoint, "");
    let mut arm_endpoint = endpoint("azure.arm_endpoint", &azure.arm_endpoint, DEFAULT_ARM_ENDPOINT);
    // A bearer token travels with every request to these: only TLS, or loopback (tests).
    for (key, value, url, default) in [
        ("azure.monitoring_endpoint", &azure.monitoring_endpoint, &mut monitoring_endpoint, ""),
        ("azure.arm_endpoint", &azure.arm_endpoint, &mut arm_endpoint, DEFAULT_ARM_ENDPOINT),
    ] {
        if let Some(value) = value {
            if url.starts_with("http://") && !is_loopback_url(url) {
                found.push(invalid(&value.origin, key, "must be https:// (http:// only on loopback)"));
                *url = default.to_string();
            }
        }
    }
    let client_id = match &azure.client_id {
        Some(id) if !is_guid(&id.value) => {
            found.push(invalid(&id.origin, "azure.client_id", format!("{:?} is not a client id (a GUID)", id.value)));
            String::new()
        }
        Some(id) => id.value.to_ascii_lowercase(),
        None => String::new(),
    };
    let metrics_namespace = match &azure.metrics_namespace {
        Some(ns) if ns.value.is_empty() || ns.value.len() > 256 || ns.value.contains(char::is_control) => {
            found.push(invalid(&ns.origin, "azure.metrics_namespace", "must be 1 to 256 printable characters"));
            DEFAULT_METRICS_NAMESPACE.to_string()
        }
        Some(ns) => ns.value.clone(),
        None => DEFAULT_METRICS_NAMESPACE.to_string(),
    };
    let mut metrics_interval = azure.metrics_interval.as_ref().map(|i| i.value.0).unwrap_or(DEFAULT_METRICS_INTERVAL);
    if let Some(interval) = &azure.metrics_interval {
        if interval.value.0 < std::time::Duration::from_secs(1) || interval.value.0 > DEFAULT_METRICS_INTERVAL {
            found.push(invalid(&interval.origin, "azure.metrics_interval", "must be from 1s to 1m"));
            metrics_interval = DEFAULT_METRICS_INTERVAL;
        }
    }
    let health_listen = match &azure.health_listen {
        Some(listen) if listen.value.is_empty() => String::new(),
        Some(listen) => match listen.value.parse::<std::net::SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => listen.value.clone(),
            Ok(_) => {
                found.push(invalid(
                    &listen.origin,
                    "azure.health_listen",
                    "must be a loopback address (the Application Health extension asks from the VM itself)",
                ));
                DEFAULT_HEALTH_LISTEN.to_string()
            }
            Err(_) => {
                found.push(invalid(
                    &listen.origin,
                    "azure.health_listen",
                    format!("{:?} is not host:port", listen.value),
                ));
                DEFAULT_HEALTH_LISTEN.to_string()
            }
        },
        None => DEFAULT_HEALTH_LISTEN.to_string(),
    };
    let readiness_listen = match &azure.readiness_listen {
        Some(listen) if listen.value.is_empty() => String::new(),
        Some(listen) => match listen.value.parse::<std::net::SocketAddr>() {
            Ok(addr) if addr.port() != 0 => listen.value.clone(),
            _ => {
                found.push(invalid(
                    &listen.origin,
                    "azure.readiness_listen",
                    format!("{:?} is not host:port (for example \"{DEFAULT_READINESS_LISTEN}\")", listen.value),
                ));
                String::new()
            }
        },
        // On every address, so by default only where the agent's firewall
        // table keeps it for the load balancer's probes: with the real IMDS.
        None if imds_endpoint == DEFAULT_IMDS_ENDPOINT => DEFAULT_READINESS_LISTEN.to_string(),
        None => String::new(),
    };
    let readiness_listen = match azure.readiness_listen.as_ref().or(azure.health_listen.as_ref()) {
        Some(given) if !readiness_listen.is_empty() && readiness_listen == health_listen => {
            found.push(invalid(&given.origin, "azure.readiness_listen", "must differ from azure.health_listen"));
            String::new()
        }
        _ => readiness_listen,
    };
    let mut release_after = azure.release_after.as_ref().map(|r| r.value.0).unwrap_or(DEFAULT_RELEASE_AFTER);
    if let Some(given) = &azure.release_after {
        // Under 10 s the verdict's own sampling decides; over a day protection never ends.
        if !(std::time::Duration::from_secs(10)..=std::time::Duration::from_secs(86_400)).contains(&given.value.0) {
            found.push(invalid(&given.origin, "azure.release_after", "must be from 10s to 1d"));
            release_after = DEFAULT_RELEASE_AFTER;
        }
    }
    let mut max_releases_per_hour =
        azure.max_releases_per_hour.as_ref().map(|m| m.value).unwrap_or(DEFAULT_MAX_RELEASES_PER_HOUR);
    if let Some(given) = &azure.max_releases_per_hour {
        // Compute allows a few instance writes a minute; each release may cost two.
        if !(1..=12).contains(&given.value) {
            found.push(invalid(&given.origin, "azure.max_releases_per_hour", "must be from 1 to 12"));
            max_releases_per_hour = DEFAULT_MAX_RELEASES_PER_HOUR;
        }
    }
    let approve = match &azure.approve {
        Some(list) => {
            let known = |kind: &String| ["Freeze", "Reboot", "Redeploy"].contains(&kind.as_str());
            for kind in list.value.iter().filter(|kind| !known(kind)) {
                found.push(invalid(
                    &list.origin,
                    "azure.approve",
                    format!("{kind:?} is not one of Freeze, Reboot, Redeploy (Terminate and Preempt are always drained, then approved)"),
                ));
            }
            list.value.iter().filter(|kind| known(kind)).cloned().collect()
        }
        None => vec!["Freeze".to_string()],
    };
    let default_wait = std::time::Duration::from_secs(120);
    let mut delete_wait = azure.delete_wait.as_ref().map(|d| d.value.0).unwrap_or(default_wait);
    if let Some(given) = &azure.delete_wait {
        if given.value.0 > std::time::Duration::from_secs(600) {
            found.push(invalid(&given.origin, "azure.delete_wait", "must be from 0s to 10m"));
            delete_wait = default_wait;
        }
    }
    let imds_access = match &azure.imds_access {
        Some(given) => {
            let mut return_root = false;
            if let ImdsAccess::Groups(groups) = &given.value {
                if groups.is_empty() || groups.iter().any(|g| g.trim().is_empty()) {
                    found.push(invalid(
                        &given.origin,
                        "azure.imds_access",
                        "a list of group names must name at least one group, none empty (or say \"root\" or \"everyone\")",
                    ));
                    // The safe side: root alone.
                    return_root = true;
                }
            }
            if return_root {
                ImdsAccess::Root
            } else {
                given.value.clone()
            }
        }
        None => ImdsAccess::Root,
    };
    AzureSettings {
        imds_access,
        enabled: azure.enabled.map(|e| e.value).unwrap_or(AzureEnabled::Auto),
        imds_endpoint,
        client_id,
        monitoring_endpoint,
        metrics_namespace,
        metrics_interval,
        instance_dimension: azure.instance_dimension.is_some_and(|d| d.value),
        health_listen,
        readiness_listen,
        unhealthy_after: azure.unhealthy_after.map(|u| u.value.0).unwrap_or(DEFAULT_UNHEALTHY_AFTER),
        arm_endpoint,
        protect: azure.protect.as_ref().is_none_or(|p| p.value),
        release_after,
        max_releases_per_hour,
        scheduled_events: azure.scheduled_events.as_ref().is_none_or(|e| e.value),
        approve,
        delete_wait,
    }
}

fn is_guid(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12]) && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}
