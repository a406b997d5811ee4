//! `pool-agent azure`: who this VM is to Azure, the tokens cached (never the
//! tokens), the last metric post, the backlog and the health answer.

use super::Call;
use crate::azure::AzureReport;
use std::fmt::Write;

pub fn call() -> Call {
    Call::get("/v1/azure").shown_by(|body| {
        serde_json::from_slice::<AzureReport>(body)
            .map(|report| summary(&report))
            .map_err(|err| format!("unexpected azure answer: {err}"))
    })
}

pub fn summary(report: &AzureReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "azure: {}", report.state);
    if let Some(error) = &report.error {
        let _ = writeln!(out, "  last error: {error}");
    }
    if let Some(compute) = &report.compute {
        let _ = writeln!(out, "  vm: {} ({}) in {}", compute.name, compute.vm_id, compute.location);
        if !compute.vm_scale_set_name.is_empty() {
            let _ = writeln!(out, "  scale set: {} in {}", compute.vm_scale_set_name, compute.resource_group_name);
        }
    }
    if !report.identity.is_empty() {
        let _ = writeln!(out, "  identity: {}", report.identity);
    }
    if !report.user_data_refused.is_empty() {
        let _ = writeln!(
            out,
            "  userData keys refused (they could run code or widen access): {}",
            report.user_data_refused.join(", ")
        );
    }
    if !report.imds_access.is_empty() {
        let _ = writeln!(out, "  IMDS reachable by: {}", report.imds_access);
    }
    for token in &report.tokens {
        let _ = writeln!(out, "  token for {} until {}", token.audience, token.expires);
    }
    if !report.metrics_url.is_empty() {
        let _ = writeln!(out, "  metrics to: {}", report.metrics_url);
    }
    match &report.last_post {
        Some(post) => {
            let _ = writeln!(out, "  last post: {} HTTP {} {}", post.at, post.status, post.detail);
        }
        None if report.state == "on-azure" => {
            let _ = writeln!(out, "  last post: none yet");
        }
        None => {}
    }
    let _ = writeln!(
        out,
        "  buckets posted {}, waiting {}, dropped {} too old, {} refused; IMDS requests {}",
        report.buckets_posted, report.backlog, report.dropped_too_old, report.dropped_rejected, report.imds_requests
    );
    if let Some(p) = &report.protection {
        let _ = write!(out, "  scale-in protection: {}", p.protected);
        if let Some(since) = &p.since {
            let _ = write!(out, " since {since}");
        }
        let _ = writeln!(
            out,
            " (instance {}; {} writes, {} releases in the last hour)",
            p.instance, p.writes, p.releases_last_hour
        );
        if let Some(next) = &p.next_release {
            let _ = writeln!(out, "    next release if still idle: {next}");
        }
        if let Some(error) = &p.error {
            let _ = writeln!(out, "    error: {error}");
        }
    }
    if let Some(d) = &report.self_delete {
        let _ = writeln!(out, "  self-delete: {}: {}", d.state, d.why);
        if let Some(at) = &d.requested_at {
            let _ = writeln!(out, "    requested at {at}");
        }
    }
    if let Some(k) = &report.storage_key {
        let _ = write!(out, "  share key from {}: {} fetch(es)", k.source, k.fetches);
        if let Some(at) = &k.fetched_at {
            let _ = write!(out, ", last at {at} ({})", k.from);
        }
        let _ = writeln!(out);
        if let Some(error) = &k.error {
            let _ = writeln!(out, "    error: {error}");
        }
    }
    if let Some(health) = &report.health {
        let state = if health.healthy { "Healthy" } else { "Unhealthy" };
        let _ = writeln!(out, "  health ({}): {state}: {}", report.health_listen, health.why);
    }
    if let Some(readiness) = &report.readiness {
        let at = if report.readiness_listen.is_empty() { "no listener" } else { &report.readiness_listen };
        let _ = writeln!(out, "  new sessions ({at}): {readiness}");
    }
    if let Some(offer) = &report.offer {
        let word = |on: bool| if on { 1 } else { 0 };
        let _ = writeln!(
            out,
            "  offers the pool: InUse {}, Booting {}, Free {}",
            word(offer.in_use),
            word(offer.booting),
            word(offer.free)
        );
    }
    out
}
