//! `idle.action = "delete-self"`: for pools without autoscale, an idle VM
//! asks its scale set to delete it — only when nobody can lose work and the
//! pool keeps its floor: idle (fresh verdict, past `idle.timeout`),
//! protection confirmed off, no Terminate pending, the scale set
//! `Succeeded` (not `Updating`) and its capacity minus one at or above
//! `idle.min_instances`. Then a random wait of up to `azure.delete_wait`
//! (VMs idle together do not all go at once), every check again, "delete
//! requested" kept on disk (it fires once, across restarts), and the delete.
//! Deallocating is not offered: a scale set never starts a deallocated VM again.

use super::events::EventsReport;
use super::protect::{self, ProtectionView};
use super::token::{self, Tokens};
use super::{Compute, Shown};
use crate::core::clock::rfc3339;
use crate::core::task::TaskContext;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const STATE_FILE: &str = "delete-requested.json";
/// The checks run again at least this often while nothing else wakes them.
const CHECK_EVERY: Duration = Duration::from_secs(30);
/// The scale set is read at most this often (ARM's read budget is shared by
/// the whole pool), except right before deleting, when it is read again.
const READ_SCALE_SET_EVERY: Duration = Duration::from_secs(60);

/// What `pool-agent azure` shows of self-delete.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct DeleteView {
    /// `waiting` (a check says no), `deciding` (in the random wait), `requested`, `failed`.
    pub state: String,
    pub why: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
}

/// What the checks read besides the verdict.
pub struct Inputs {
    pub http: reqwest::Client,
    pub tokens: Arc<Tokens>,
    pub compute: Compute,
    pub arm_endpoint: String,
    pub protection: Arc<Mutex<ProtectionView>>,
    /// Whether the agent keeps protection; without it the instance is read.
    pub protect: bool,
    pub events: Arc<Mutex<EventsReport>>,
    pub min_instances: u32,
    pub wait: Duration,
}

impl Inputs {
    fn scale_set_url(&self) -> String {
        let c = &self.compute;
        format!(
            "{}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{}",
            self.arm_endpoint, c.subscription_id, c.resource_group_name, c.vm_scale_set_name
        )
    }

    async fn get(&self, url: &str) -> Result<serde_json::Value, String> {
        let url = format!("{url}?api-version={}", protect::COMPUTE_API);
        let answer = super::arm::send(&self.http, &self.tokens, token::MANAGEMENT, reqwest::Method::GET, &url, None)
            .await
            .map_err(|why| format!("ARM: {why}"))?;
        if !answer.success() {
            return Err(format!("ARM answered {}: {}", answer.status, answer.text()));
        }
        serde_json::from_slice(&answer.body).map_err(|err| format!("ARM's answer is not JSON: {err}"))
    }

    /// Every condition, in the order a reader would ask; Err says which one
    /// holds the VM. `scale_set`: the last read of the scale set and when;
    /// read again when older than [`READ_SCALE_SET_EVERY`] or `fresh`.
    async fn check(
        &self,
        ctx: &TaskContext,
        scale_set: &mut Option<(std::time::SystemTime, Result<serde_json::Value, String>)>,
        fresh: bool,
    ) -> Result<(), String> {
        let idle = ctx.shared.idle();
        if !idle.idle_now(ctx.clock.now()) {
            let why = idle.reasons.first().cloned().unwrap_or_else(|| "no fresh verdict".into());
            return Err(format!("not idle: {why}"));
        }
        if self.protect {
            let protected = self.protection.lock().unwrap_or_else(|p| p.into_inner()).protected.clone();
            if protected != "no" {
                return Err(format!("scale-in protection not confirmed off (protected: {protected})"));
            }
        } else {
            let instance = protect::instance_url(&self.arm_endpoint, &self.compute).unwrap_or_default();
            let model = self.get(&instance).await?;
            if model.pointer("/properties/protectionPolicy/protectFromScaleIn").and_then(|p| p.as_bool()) == Some(true)
            {
                return Err("the instance is protected from scale-in".into());
            }
        }
        let pending = {
            let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
            events.events.iter().any(|e| {
                e.resources.contains(&self.compute.name)
                    && matches!(e.kind.as_str(), "Terminate" | "Preempt")
                    && matches!(e.status.as_str(), "Scheduled" | "Started")
            })
        };
        if pending {
            return Err("a Terminate is pending for this VM: Azure is removing it already".into());
        }
        let now = ctx.clock.now();
        let stale = scale_set
            .as_ref()
            .is_none_or(|(at, _)| fresh || now.duration_since(*at).unwrap_or_default() >= READ_SCALE_SET_EVERY);
        if stale {
            *scale_set = Some((now, self.get(&self.scale_set_url()).await));
        }
        let set = match scale_set.as_ref().map(|(_, read)| read.clone()) {
            Some(Ok(set)) => set,
            Some(Err(why)) => return Err(format!("cannot read the scale set: {why}")),
            None => return Err("the scale set was not read".into()),
        };
        let state = set.pointer("/properties/provisioningState").and_then(|s| s.as_str()).unwrap_or("unknown");
        if state != "Succeeded" {
            return Err(format!("the scale set is {state}, not Succeeded"));
        }
        let capacity = set.pointer("/sku/capacity").and_then(|c| c.as_u64()).unwrap_or(0);
        if capacity.saturating_sub(1) < u64::from(self.min_instances) {
            return Err(format!("capacity {capacity} - 1 would go below idle.min_instances = {}", self.min_instances));
        }
        Ok(())
    }
}

/// Watches for the moment the VM may go; asks for its deletion once.
pub async fn keep(ctx: TaskContext, view: Arc<Mutex<DeleteView>>, inputs: Inputs) {
    let shown = Shown(view);
    let file = ctx.paths.state_dir().join(STATE_FILE);
    if let Ok(bytes) = std::fs::read(&file) {
        let at =
            serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v["at"].as_str().map(str::to_string));
        shown.update(|v| {
            v.state = "requested".into();
            v.why = "the delete was asked for before; it is asked only once".into();
            v.requested_at = at;
        });
        return;
    }
    let Some(instance) = protect::instance_url(&inputs.arm_endpoint, &inputs.compute) else {
        shown.update(|v| {
            v.state = "off".into();
            v.why = "not a scale set's VM".into();
        });
        return;
    };
    let instance_id = instance.rsplit('/').next().unwrap_or_default().to_string();
    let mut idle_rx = ctx.shared.watch_idle();
    let mut scale_set = None;
    loop {
        match inputs.check(&ctx, &mut scale_set, false).await {
            Ok(()) => {
                let wait = inputs.wait.mul_f64(fastrand::f64());
                let at = rfc3339(ctx.clock.now() + wait);
                shown.update(|v| {
                    v.state = "deciding".into();
                    v.why = format!("every check passed; checking again at {at} before deleting");
                });
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                match inputs.check(&ctx, &mut scale_set, true).await {
                    Ok(()) => {
                        request(&ctx, &shown, &inputs, &file, &instance_id).await;
                        return;
                    }
                    Err(why) => shown.update(|v| {
                        v.state = "waiting".into();
                        v.why = why;
                    }),
                }
            }
            Err(why) => shown.update(|v| {
                v.state = "waiting".into();
                v.why = why;
            }),
        }
        // Again when the verdict turns, or every CHECK_EVERY (not at every sample).
        let was_idle = ctx.shared.idle().idle_now(ctx.clock.now());
        let next_check = tokio::time::sleep(CHECK_EVERY);
        tokio::pin!(next_check);
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                _ = &mut next_check => break,
                changed = idle_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if ctx.shared.idle().idle_now(ctx.clock.now()) != was_idle {
                        break;
                    }
                }
            }
        }
    }
}

/// Records the request, then sends it: a crash in between never sends a second.
async fn request(
    ctx: &TaskContext,
    shown: &Shown<DeleteView>,
    inputs: &Inputs,
    file: &std::path::Path,
    instance_id: &str,
) {
    let at = rfc3339(ctx.clock.now());
    let record = serde_json::json!({"at": at, "instance": instance_id});
    // Created, never replaced: of two triggers racing, only the one that makes the file asks.
    let parent_made = file.parent().map_or(Ok(()), std::fs::create_dir_all);
    let recorded = parent_made
        .and_then(|()| std::fs::OpenOptions::new().write(true).create_new(true).open(file))
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(record.to_string().as_bytes())?;
            f.sync_all()
        });
    if let Err(err) = recorded {
        let why = match err.kind() {
            std::io::ErrorKind::AlreadyExists => "the delete was already asked for; it is asked only once".to_string(),
            // Without the record a restart could ask again: do not ask at all.
            _ => format!("cannot record the delete request in {}: {err}; not deleting", file.display()),
        };
        tracing::warn!(component = "azure", "{why}");
        shown.update(|v| {
            v.state = if err.kind() == std::io::ErrorKind::AlreadyExists { "requested" } else { "failed" }.into();
            v.why = why;
        });
        return;
    }
    let url = format!("{}/delete?api-version={}", inputs.scale_set_url(), protect::COMPUTE_API);
    let body = serde_json::json!({"instanceIds": [instance_id]});
    let sent =
        super::arm::send(&inputs.http, &inputs.tokens, token::MANAGEMENT, reqwest::Method::POST, &url, Some(&body))
            .await;
    let (state, why) = match sent {
        Ok(answer) if answer.success() => {
            tracing::warn!(component = "azure", "idle: asked the scale set to delete this VM (instance {instance_id})");
            ("requested", format!("the scale set was asked to delete instance {instance_id}"))
        }
        Ok(answer) => ("failed", format!("ARM answered {}: {}", answer.status, answer.text())),
        Err(why) => ("failed", format!("ARM: {why}")),
    };
    shown.update(|v| {
        v.state = state.into();
        v.why = why;
        v.requested_at = Some(at);
    });
}
