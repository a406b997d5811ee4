//! Scale-in protection follows the verdict. Autoscale picks which VM to
//! remove by zone and instance id, not by idleness: protection is what keeps
//! a working user's VM. The decisions live in the pure [`machine`] (what to
//! believe after each answer, when to write, when to read) and [`policy`]
//! (release after `azure.release_after` of continuous idle, at most
//! `azure.max_releases_per_hour`, counted on disk); this file does the I/O:
//! ARM calls, the state file, the view, and waking for the verdict.

pub mod machine;
pub mod policy;
#[cfg(test)]
mod simulation;

use super::token::{self, Tokens};
use super::{Compute, Problems, Shown};
use crate::core::clock::rfc3339;
use crate::core::shared::ProtectionNews;
use crate::core::task::TaskContext;
use machine::{Belief, Machine, Outcome, Step, Verdict};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Compute's version for scale set VMs.
pub const COMPUTE_API: &str = "2024-07-01";
/// The release budget's file in the state directory.
pub const STATE_FILE: &str = "protection.json";
/// A read may take this long; a verdict turning active meanwhile cuts it short.
const READ_DEADLINE: Duration = Duration::from_secs(10);

/// What `pool-agent azure` shows of protection.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ProtectionView {
    /// `yes`, `no` (as a read or a write's answer showed), `unknown` (not
    /// read yet, or an answer was lost), `gone`, `off`.
    pub protected: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    #[serde(default)]
    pub writes: u64,
    #[serde(default)]
    pub releases_last_hour: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Saved {
    #[serde(default)]
    releases: Vec<crate::core::clock::Stamp>,
}

/// The instance's ARM URL: Uniform scale sets name it by instance id (the
/// last part of `resourceId`), Flexible ones by the VM's name.
pub fn instance_url(arm_endpoint: &str, compute: &Compute) -> Option<String> {
    if compute.vm_scale_set_name.is_empty() {
        return None;
    }
    let uniform = compute.resource_id.to_ascii_lowercase().contains("/virtualmachinescalesets/");
    let instance = match uniform {
        true => compute.resource_id.rsplit('/').next().unwrap_or_default().to_string(),
        false => compute.name.clone(),
    };
    Some(format!(
        "{arm_endpoint}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{}/virtualMachines/{instance}",
        compute.subscription_id, compute.resource_group_name, compute.vm_scale_set_name
    ))
}

/// The body of a protection write: `protectFromScaleSetActions` as last
/// read, so an admin's setting is never undone.
pub fn body(location: &str, protect: bool, scale_set_actions: bool) -> serde_json::Value {
    serde_json::json!({
        "location": location,
        "properties": {"protectionPolicy": {"protectFromScaleIn": protect, "protectFromScaleSetActions": scale_set_actions}}
    })
}

struct Arm {
    http: reqwest::Client,
    tokens: Arc<Tokens>,
    url: String,
}

impl Arm {
    async fn call(&self, write: Option<serde_json::Value>) -> Outcome {
        let url = format!("{}?api-version={COMPUTE_API}", self.url);
        let method = if write.is_some() { reqwest::Method::PUT } else { reqwest::Method::GET };
        let sent = super::arm::send(&self.http, &self.tokens, token::MANAGEMENT, method, &url, write.as_ref()).await;
        match sent {
            Ok(answer) => outcome_of(answer.status, &String::from_utf8_lossy(&answer.body), answer.retry_after),
            Err(why) => Outcome::NoAnswer(format!("ARM: {why}")),
        }
    }
}

/// What an ARM answer proves. Deleted instances, as ARM answers them: a GET
/// gets 404 `ResourceNotFound` (or `NotFound`); a PUT gets 400
/// `InvalidParameter` "The provided instanceId N is not an active Virtual
/// Machine Scale Set VM instanceId." (target `instanceIds`), seen in
/// https://github.com/microsoft/onefuzz/issues/2547 and, as
/// `InstanceIdsListInstanceIdNotActiveVM`, in
/// https://github.com/kubernetes-sigs/cloud-provider-azure/issues/2356.
fn outcome_of(status: u16, text: &str, retry_after: Option<Duration>) -> Outcome {
    let short: String = text.chars().take(400).collect();
    let code = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.pointer("/error/code").and_then(|c| c.as_str()).map(str::to_string))
        .unwrap_or_default();
    match status {
        200..=299 => match protection_in(text) {
            Some((scale_in, scale_set_actions)) => Outcome::Model { scale_in, scale_set_actions },
            None => Outcome::Accepted,
        },
        404 => Outcome::Absent(format!("the instance is not found (404): {short}")),
        400 if short.contains("is not an active Virtual Machine Scale Set VM") || code.contains("NotActiveVM") => {
            Outcome::Absent(format!("the instance is no longer active: {short}"))
        }
        400 => Outcome::Refused(format!("ARM refused the write (400): {short}")),
        403 => Outcome::Refused(format!(
            "the VM's identity needs the role to change its instance (Microsoft.Compute/virtualMachineScaleSets/virtualMachines/write and /read on the scale set): {short}"
        )),
        409 => Outcome::Conflict(format!("a concurrent operation on the instance (409): {short}")),
        429 => Outcome::Throttled(retry_after, format!("ARM throttled (429): {short}")),
        _ => Outcome::NoAnswer(format!("ARM answered {status}: {short}")),
    }
}

/// `properties.protectionPolicy` of an instance model (absent flags: false).
fn protection_in(text: &str) -> Option<(bool, bool)> {
    let model: serde_json::Value = serde_json::from_str(text).ok()?;
    let properties = model.get("properties")?;
    let flag = |name: &str| {
        properties.pointer(&format!("/protectionPolicy/{name}")).and_then(|p| p.as_bool()).unwrap_or(false)
    };
    Some((flag("protectFromScaleIn"), flag("protectFromScaleSetActions")))
}

fn verdict(ctx: &TaskContext, now: SystemTime) -> Verdict {
    let idle = ctx.shared.idle();
    Verdict { idle_now: idle.idle_now(now), stale_at: idle.stale_at() }
}

/// Keeps the instance's protection in step with the verdict until shutdown.
pub async fn keep(
    ctx: TaskContext,
    view: Arc<Mutex<ProtectionView>>,
    problems: Problems,
    arm: (reqwest::Client, Arc<Tokens>, String),
    compute: Compute,
    release_after: Duration,
    max_releases_per_hour: u32,
) {
    let shown = Shown(view);
    let (http, tokens, arm_endpoint) = arm;
    let Some(url) = instance_url(&arm_endpoint, &compute) else {
        shown.update(|v| {
            v.protected = "off".into();
            v.error = Some("not a scale set's VM: nothing to protect".into());
        });
        ctx.shared.publish_protection(ProtectionNews::NotKept);
        return;
    };
    ctx.shared.publish_protection(ProtectionNews::Unknown);
    let file: PathBuf = ctx.paths.state_dir().join(STATE_FILE);
    let saved: Saved = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let now = ctx.clock.now();
    let stamps = saved.releases.iter().map(|s| s.0).collect();
    let policy = policy::Policy::new(release_after, max_releases_per_hour, stamps, now);
    let mut machine = Machine::new(policy, fastrand::Rng::new());
    let arm = Arm { http, tokens, url: url.clone() };
    shown.update(|v| v.instance = url.rsplit('/').next().unwrap_or_default().to_string());
    let mut idle_rx = ctx.shared.watch_idle();
    loop {
        let now = ctx.clock.now();
        match machine.next(verdict(&ctx, now), now) {
            Step::Read => {
                // A verdict that turns active cuts a slow read short: the protect goes first.
                let outcome = tokio::select! {
                    outcome = arm.call(None) => outcome,
                    _ = tokio::time::sleep(READ_DEADLINE) => Outcome::NoAnswer("ARM: the read took over 10 s".into()),
                    _ = turned_active(&ctx, &mut idle_rx) => Outcome::NoAnswer("the read was cut short: the VM turned active".into()),
                    _ = ctx.shutdown.cancelled() => return,
                };
                machine.on_read(outcome, ctx.clock.now());
            }
            Step::Write { protect, scale_set_actions } => {
                if !protect {
                    save(&file, &machine.releases());
                }
                let write = arm.call(Some(body(&compute.location, protect, scale_set_actions)));
                // A release is cut short when the VM turns active: it may or
                // may not have been applied, so the machine protects at once.
                let outcome = tokio::select! {
                    outcome = write => outcome,
                    _ = turned_active(&ctx, &mut idle_rx), if !protect => {
                        Outcome::NoAnswer("the release was cut short: the VM turned active".into())
                    }
                    _ = ctx.shutdown.cancelled() => return,
                };
                let what = if protect { "protect" } else { "release" };
                match &outcome {
                    Outcome::Model { scale_in, .. } if *scale_in == protect => {
                        tracing::info!(component = "azure", "scale-in protection: {what} done");
                    }
                    other => tracing::warn!(component = "azure", "scale-in protection: {what}: {other:?}"),
                }
                // From when the answer came: a Retry-After counts from there.
                machine.on_write(protect, outcome, ctx.clock.now());
            }
            Step::Wait(until) => {
                show(&ctx, &shown, &problems, &mut machine);
                let wait = until.map(|at| at.duration_since(now).unwrap_or_default());
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    changed = idle_rx.changed() => if changed.is_err() { return },
                    _ = sleep_or_forever(wait) => {}
                }
                continue;
            }
        }
        show(&ctx, &shown, &problems, &mut machine);
    }
}

/// Resolves when the verdict is no longer idle now (never while it is).
async fn turned_active(ctx: &TaskContext, idle_rx: &mut tokio::sync::watch::Receiver<crate::core::shared::IdleNews>) {
    loop {
        if idle_rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        if !ctx.shared.idle().idle_now(ctx.clock.now()) {
            return;
        }
    }
}

/// Publishes the belief (typed, for the metrics and self-delete), the view
/// and any problem for the status board.
fn show(ctx: &TaskContext, shown: &Shown<ProtectionView>, problems: &Problems, machine: &mut Machine) {
    let now = ctx.clock.now();
    let (news, protected, since) = match machine.belief() {
        Belief::Unknown => (ProtectionNews::Unknown, "unknown", None),
        Belief::Protected { since } => (ProtectionNews::Protected, "yes", Some(since)),
        Belief::Released { since } => (ProtectionNews::Released, "no", Some(since)),
        Belief::Gone { since } => (ProtectionNews::Gone, "gone", Some(since)),
    };
    ctx.shared.publish_protection(news);
    problems.set("protection", machine.problem(now));
    let next_release = machine.next_release(now).map(rfc3339);
    shown.update(|v| {
        v.protected = protected.to_string();
        v.since = since.map(rfc3339);
        v.writes = machine.writes();
        v.releases_last_hour = machine.releases_in_the_last_hour(now);
        v.next_release = next_release;
        v.error = machine.error().map(str::to_string);
    });
}

fn save(file: &std::path::Path, releases: &[SystemTime]) {
    let saved = Saved { releases: releases.iter().copied().map(crate::core::clock::Stamp).collect() };
    let bytes = serde_json::to_vec(&saved).unwrap_or_default();
    if let Err(err) = crate::core::atomic::replace_file(file, &bytes, 0o644) {
        tracing::warn!(component = "azure", "cannot save the release count in {}: {err}", file.display());
    }
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm_s_answers_are_read_for_what_they_prove() {
        let model =
            r#"{"properties": {"protectionPolicy": {"protectFromScaleIn": true, "protectFromScaleSetActions": true}}}"#;
        assert_eq!(outcome_of(200, model, None), Outcome::Model { scale_in: true, scale_set_actions: true });
        assert_eq!(
            outcome_of(200, r#"{"properties": {}}"#, None),
            Outcome::Model { scale_in: false, scale_set_actions: false }
        );
        assert_eq!(outcome_of(202, "", None), Outcome::Accepted);
        assert_eq!(outcome_of(200, r#"{"propert"#, None), Outcome::Accepted, "a body that broke off proves nothing");
        let not_active = r#"{"error": {"code": "InvalidParameter", "message": "The provided instanceId 3 is not an active Virtual Machine Scale Set VM instanceId.", "target": "instanceIds"}}"#;
        assert!(matches!(outcome_of(400, not_active, None), Outcome::Absent(_)));
        assert!(matches!(outcome_of(404, r#"{"error": {"code": "ResourceNotFound"}}"#, None), Outcome::Absent(_)));
        assert!(matches!(
            outcome_of(400, r#"{"error": {"code": "InvalidParameter", "message": "bad"}}"#, None),
            Outcome::Refused(_)
        ));
        let Outcome::Refused(why) = outcome_of(403, "{}", None) else { panic!() };
        assert!(why.contains("needs the role"), "{why}");
        assert!(matches!(outcome_of(503, "", None), Outcome::NoAnswer(_)), "a 5xx may have been applied");
        let after = Some(Duration::from_secs(7));
        assert_eq!(outcome_of(429, "", after), Outcome::Throttled(after, "ARM throttled (429): ".into()));
    }

    #[test]
    fn a_write_keeps_the_admin_s_protection_from_scale_set_actions() {
        assert_eq!(
            body("westeurope", true, true),
            serde_json::json!({"location": "westeurope", "properties": {"protectionPolicy": {"protectFromScaleIn": true, "protectFromScaleSetActions": true}}})
        );
    }

    #[test]
    fn the_instance_url_is_by_instance_id_in_uniform_sets_and_by_name_in_flexible_ones() {
        let uniform = Compute {
            name: "pool_3".into(),
            subscription_id: "s".into(),
            resource_group_name: "g".into(),
            vm_scale_set_name: "pool".into(),
            resource_id: "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachineScaleSets/pool/virtualMachines/3".into(),
            ..Compute::default()
        };
        assert_eq!(
            instance_url("https://management.azure.com", &uniform).unwrap(),
            "https://management.azure.com/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachineScaleSets/pool/virtualMachines/3"
        );
        let flexible = Compute {
            name: "pool_a1b2c3".into(),
            resource_id: "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/pool_a1b2c3"
                .into(),
            ..uniform.clone()
        };
        assert!(instance_url("https://m", &flexible).unwrap().ends_with("/virtualMachines/pool_a1b2c3"));
        let alone = Compute { vm_scale_set_name: String::new(), ..uniform };
        assert_eq!(instance_url("https://m", &alone), None);
    }
}
