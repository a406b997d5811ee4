//! `idle.action = "delete-self"`: for pools without autoscale, an idle VM
//! asks its scale set to delete it — only when nobody can lose work and the
//! pool keeps its floor: idle (fresh verdict, past `idle.timeout`),
//! protection confirmed off, no Terminate pending, the scale set
//! `Succeeded` (not `Updating`), its capacity minus one at or above
//! `idle.min_instances`, and no other VM holding the pool's delete lease.
//! Then a random wait of up to `azure.delete_wait`, every check again on a
//! fresh read, the lease taken by compare-and-swap on the scale set's etag
//! ([`super::delete_lease`]), the verdict and protection checked once more,
//! the request recorded on disk and sent.
//!
//! The record guards the request in flight, not the VM's life: a refusal,
//! a 429 or no answer is tried again with backoff and jitter, every check
//! again; a 202 is followed (its operation, else the instance) until the
//! instance is gone or the delete failed. A record naming another VM id (an
//! image baked with one) is ignored. Deallocating is not offered: a scale
//! set never starts a deallocated VM again.

use super::delete_arm::{self, Reply};
use super::delete_lease::{self as lease, Operation, ScaleSet, Sent};
use super::events::EventsReport;
use super::protect;
use super::token::Tokens;
use super::{Compute, Shown};
use crate::core::backoff::Backoff;
use crate::core::clock::rfc3339;
use crate::core::task::TaskContext;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Retrying for this long (or refused outright) is shown in status.
const FAILING_IS_A_PROBLEM_AFTER: Duration = Duration::from_secs(600);
pub const STATE_FILE: &str = "delete-requested.json";
/// The checks run again at least this often while nothing else wakes them.
const CHECK_EVERY: Duration = Duration::from_secs(30);
/// The scale set is read at most this often (ARM's read budget is shared by
/// the whole pool), except right before deleting, when it is read again.
const READ_SCALE_SET_EVERY: Duration = Duration::from_secs(60);
/// A delete followed for longer than this is taken as failed and tried again.
const FOLLOW_AT_MOST: Duration = Duration::from_secs(30 * 60);

/// What `pool-agent azure` shows of self-delete.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct DeleteView {
    /// `waiting` (a check says no), `deciding` (in the random wait),
    /// `retrying` (a refusal or no answer), `requested` (accepted, followed),
    /// `deleted` (the operation succeeded or the instance is gone).
    pub state: String,
    pub why: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
    #[serde(default)]
    pub attempts: u32,
}

/// What the checks read besides the verdict.
#[derive(Clone)]
pub struct Inputs {
    pub http: reqwest::Client,
    pub tokens: Arc<Tokens>,
    pub compute: Compute,
    pub arm_endpoint: String,
    /// Where a failure that lasts is shown (the azure row in status).
    pub problems: super::Problems,
    /// Whether the agent keeps protection; without it the instance is read.
    pub protect: bool,
    pub events: Arc<Mutex<EventsReport>>,
    pub min_instances: u32,
    pub wait: Duration,
}

/// The request on disk: which VM asked, and when.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    at: String,
    instance: String,
    #[serde(default)]
    vm_id: String,
}

/// What one pass came to.
enum Pass {
    /// A check says no: wait for the verdict to change or CHECK_EVERY.
    Held(String),
    /// Try again after a backoff (or the server's delay).
    Retry { why: String, after: Option<Duration> },
    /// The instance is deleted (or going): nothing more to do.
    Done(String),
}

/// What a read of our instance says.
enum InstanceIs {
    Present,
    Deleting,
    Gone,
}

impl Inputs {
    fn scale_set_url(&self) -> String {
        let c = &self.compute;
        format!(
            "{}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{}",
            self.arm_endpoint, c.subscription_id, c.resource_group_name, c.vm_scale_set_name
        )
    }

    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&serde_json::Value>,
        if_match: Option<&str>,
    ) -> Result<Reply, String> {
        delete_arm::call(&self.http, &self.tokens, method, url, body, if_match)
            .await
            .map_err(|why| format!("ARM: {why}"))
    }

    async fn read_scale_set(&self) -> Result<ScaleSet, String> {
        let url = format!("{}?api-version={}", self.scale_set_url(), protect::COMPUTE_API);
        let reply = self.call(reqwest::Method::GET, &url, None, None).await?;
        if !(200..300).contains(&reply.status) {
            return Err(format!("ARM answered {}: {}", reply.status, reply.text()));
        }
        Ok(ScaleSet::from_json(&reply.json()))
    }

    async fn read_instance(&self, url: &str) -> Result<(InstanceIs, serde_json::Value), String> {
        let reply =
            self.call(reqwest::Method::GET, &format!("{url}?api-version={}", protect::COMPUTE_API), None, None).await?;
        match reply.status {
            404 => Ok((InstanceIs::Gone, serde_json::Value::Null)),
            200..=299 => {
                let model = reply.json();
                let deleting =
                    model.pointer("/properties/provisioningState").and_then(|s| s.as_str()) == Some("Deleting");
                Ok((if deleting { InstanceIs::Deleting } else { InstanceIs::Present }, model))
            }
            status => Err(format!("reading the instance: ARM answered {status}: {}", reply.text())),
        }
    }

    /// The checks that need no slow read: the verdict, protection, no
    /// Terminate pending. Run last, right before a write.
    fn local_checks(&self, ctx: &TaskContext) -> Result<(), String> {
        let idle = ctx.shared.idle();
        if !idle.idle_now(ctx.clock.now()) {
            let why = idle.reasons.first().cloned().unwrap_or_else(|| "no fresh verdict".into());
            return Err(format!("not idle: {why}"));
        }
        // Released as a read or a write's answer proved it: the typed belief, never a display string.
        if self.protect {
            let belief = ctx.shared.protection();
            if belief != crate::core::shared::ProtectionNews::Released {
                return Err(format!("scale-in protection not proven released ({belief:?})"));
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
        Ok(())
    }

    /// Every condition; Err says which one holds the VM. The scale set is
    /// read again when older than [`READ_SCALE_SET_EVERY`] or `fresh`; the
    /// verdict and protection are judged after the slow reads.
    async fn check(
        &self,
        ctx: &TaskContext,
        instance: &str,
        me: &str,
        cached: &mut Option<(SystemTime, Result<ScaleSet, String>)>,
        fresh: bool,
    ) -> Result<ScaleSet, String> {
        // Cheap first: a VM in use reads nothing.
        self.local_checks(ctx)?;
        let now = ctx.clock.now();
        let stale = cached.as_ref().is_none_or(|(at, _)| {
            // A clock that went back makes the read's age unknown: read again.
            fresh || now.duration_since(*at).map_or(true, |age| age >= READ_SCALE_SET_EVERY)
        });
        if stale {
            *cached = Some((now, self.read_scale_set().await));
        }
        let set = match cached.as_ref().map(|(_, read)| read.clone()) {
            Some(Ok(set)) => set,
            Some(Err(why)) => return Err(format!("cannot read the scale set: {why}")),
            None => return Err("the scale set was not read".into()),
        };
        lease::set_allows(&set, self.min_instances, me, ctx.clock.now())?;
        if !self.protect {
            let (_, model) = self.read_instance(instance).await?;
            if model.pointer("/properties/protectionPolicy/protectFromScaleIn").and_then(|p| p.as_bool()) == Some(true)
            {
                return Err("the instance is protected from scale-in".into());
            }
        }
        // The reads took time: the verdict and protection as they are now.
        self.local_checks(ctx)?;
        Ok(set)
    }

    /// Writes `tags` with If-Match: Ok(the set after), Err(pass to take).
    async fn write_tags(
        &self,
        set: &ScaleSet,
        tags: std::collections::BTreeMap<String, String>,
    ) -> Result<ScaleSet, Pass> {
        let url = format!("{}?api-version={}", self.scale_set_url(), protect::COMPUTE_API);
        // Only the tags: resending virtualMachineProfile would mark instances outdated.
        let body = serde_json::json!({ "tags": tags });
        let reply = match self.call(reqwest::Method::PATCH, &url, Some(&body), set.etag.as_deref()).await {
            Ok(reply) => reply,
            Err(why) => return Err(Pass::Retry { why: format!("the lease write got no answer ({why})"), after: None }),
        };
        match reply.status {
            200..=299 => Ok(ScaleSet::from_json(&reply.json())),
            412 => Err(Pass::Retry {
                why: "another writer changed the scale set first (412 PreconditionFailed); reading it again".into(),
                after: None,
            }),
            status => Err(Pass::Retry {
                why: format!("the lease write was refused ({status}: {})", reply.text()),
                after: reply.retry_after,
            }),
        }
    }

    /// Gives our lease back (best effort: it expires anyway).
    async fn release_lease(&self, me: &str) {
        for _ in 0..3 {
            let Ok(set) = self.read_scale_set().await else { return };
            let Some(tags) = lease::without_our_lease(&set.tags, me) else { return };
            match self.write_tags(&set, tags).await {
                Ok(_) => return,
                Err(Pass::Retry { why, .. }) if why.contains("412") => continue,
                Err(_) => return,
            }
        }
    }
}

/// Watches for the moment the VM may go; asks for its deletion, and again
/// after a refusal, until the instance is gone.
pub async fn keep(ctx: TaskContext, view: Arc<Mutex<DeleteView>>, inputs: Inputs) {
    let shown = Shown(view);
    let file = ctx.paths.state_dir().join(STATE_FILE);
    let Some(instance) = protect::instance_url(&inputs.arm_endpoint, &inputs.compute) else {
        shown.update(|v| {
            v.state = "off".into();
            v.why = "not a scale set's VM".into();
        });
        return;
    };
    let me = instance.rsplit('/').next().unwrap_or_default().to_string();
    if let Some(why) = resume(&ctx, &shown, &inputs, &file, &instance, &me).await {
        shown.update(|v| {
            v.state = "deleted".into();
            v.why = why;
        });
        return;
    }
    let mut idle_rx = ctx.shared.watch_idle();
    let mut cached = None;
    let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(300));
    let mut failing_since: Option<std::time::SystemTime> = None;
    loop {
        match attempt(&ctx, &shown, &inputs, &file, &instance, &me, &mut cached).await {
            Pass::Done(why) => {
                shown.update(|v| {
                    v.state = "deleted".into();
                    v.why = why;
                });
                return;
            }
            Pass::Retry { why, after } => {
                let wait = lease::retry_wait(after, backoff.next_delay());
                let since = *failing_since.get_or_insert(ctx.clock.now());
                let lasting = ctx.clock.now().duration_since(since).is_ok_and(|d| d >= FAILING_IS_A_PROBLEM_AFTER);
                if lasting || why.contains("403") {
                    inputs.problems.set("self-delete", Some(why.clone()));
                }
                tracing::warn!(component = "azure", "self-delete: {why}; trying again in {} s", wait.as_secs());
                shown.update(|v| {
                    v.state = "retrying".into();
                    v.why = format!("{why}; trying again in {} s", wait.as_secs());
                });
                cached = None;
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Pass::Held(why) => {
                backoff.reset();
                failing_since = None;
                inputs.problems.set("self-delete", None);
                shown.update(|v| {
                    v.state = "waiting".into();
                    v.why = why;
                });
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
    }
}

/// A record left by an earlier run: ours means a request was in flight
/// when the agent stopped, so the instance is read; another VM's (an image
/// baked with one) is ignored. `Some(why)`: the instance is going.
async fn resume(
    ctx: &TaskContext,
    shown: &Shown<DeleteView>,
    inputs: &Inputs,
    file: &Path,
    instance: &str,
    me: &str,
) -> Option<String> {
    let bytes = std::fs::read(file).ok()?;
    let record = serde_json::from_slice::<Record>(&bytes).ok();
    let ours = record.as_ref().is_some_and(|r| r.instance == me && r.vm_id == inputs.compute.vm_id);
    if !ours {
        tracing::warn!(
            component = "azure",
            "{} names another VM ({:?}): ignored and removed",
            file.display(),
            record.map(|r| (r.instance, r.vm_id))
        );
        let _ = std::fs::remove_file(file);
        return None;
    }
    shown.update(|v| {
        v.state = "requested".into();
        v.why = "a delete was in flight when the agent stopped; following the instance".into();
        v.requested_at = record.map(|r| r.at);
    });
    match follow(ctx, inputs, None, instance).await {
        Ok(why) => Some(why),
        Err(why) => {
            tracing::warn!(component = "azure", "the delete asked before did not happen ({why}); checking again");
            let _ = std::fs::remove_file(file);
            None
        }
    }
}

/// One pass: checks, random wait, checks on a fresh read, the lease, the
/// last checks, the record and the request.
async fn attempt(
    ctx: &TaskContext,
    shown: &Shown<DeleteView>,
    inputs: &Inputs,
    file: &Path,
    instance: &str,
    me: &str,
    cached: &mut Option<(SystemTime, Result<ScaleSet, String>)>,
) -> Pass {
    if let Err(why) = inputs.check(ctx, instance, me, cached, false).await {
        return Pass::Held(why);
    }
    let wait = inputs.wait.mul_f64(fastrand::f64());
    shown.update(|v| {
        v.state = "deciding".into();
        v.why = format!("every check passed; checking again in {} ms before deleting", wait.as_millis());
    });
    tokio::select! {
        _ = ctx.shutdown.cancelled() => return Pass::Held("stopping".into()),
        _ = tokio::time::sleep(wait) => {}
    }
    let set = match inputs.check(ctx, instance, me, cached, true).await {
        Ok(set) => set,
        Err(why) => return Pass::Held(why),
    };
    let until = ctx.clock.now() + lease::LEASE_FOR;
    let leased = match inputs.write_tags(&set, lease::with_lease(&set.tags, me, until)).await {
        Ok(leased) => leased,
        Err(pass) => return pass,
    };
    // The lease write took time: the verdict and protection once more, right before the request.
    if let Err(why) = inputs.local_checks(ctx) {
        inputs.release_lease(me).await;
        return Pass::Held(why);
    }
    let at = rfc3339(ctx.clock.now());
    if let Err(why) = record(file, &at, me, &inputs.compute.vm_id) {
        inputs.release_lease(me).await;
        return Pass::Held(why);
    }
    shown.update(|v| {
        v.attempts += 1;
        v.requested_at = Some(at);
    });
    let url = format!("{}/delete?api-version={}", inputs.scale_set_url(), protect::COMPUTE_API);
    let body = serde_json::json!({"instanceIds": [me]});
    let reply = match inputs.call(reqwest::Method::POST, &url, Some(&body), None).await {
        Ok(reply) => reply,
        Err(why) => {
            // It may have been applied: the instance says.
            return match follow_if_going(ctx, inputs, instance).await {
                Some(pass) => pass,
                None => {
                    let _ = std::fs::remove_file(file);
                    Pass::Retry {
                        why: format!("the delete got no answer ({why}) and the instance is not going"),
                        after: None,
                    }
                }
            };
        }
    };
    match lease::classify(reply.status, reply.retry_after) {
        Sent::Accepted => {
            tracing::warn!(component = "azure", "idle: the scale set accepted deleting this VM (instance {me})");
            shown.update(|v| {
                v.state = "requested".into();
                v.why = format!("the scale set accepted deleting instance {me} ({}); following it", reply.status);
            });
            // ARM lowered the capacity: the floor no longer needs the lease.
            if inputs.read_scale_set().await.is_ok_and(|after| after.capacity < leased.capacity) {
                inputs.release_lease(me).await;
            }
            match follow(ctx, inputs, Some(&reply), instance).await {
                Ok(why) => Pass::Done(why),
                Err(why) => {
                    let _ = std::fs::remove_file(file);
                    inputs.release_lease(me).await;
                    Pass::Retry { why: format!("the delete failed: {why}"), after: None }
                }
            }
        }
        Sent::Busy { status, after } => {
            let _ = std::fs::remove_file(file);
            Pass::Retry { why: format!("the delete was answered {status}: {}", reply.text()), after }
        }
        Sent::Refused { status } => {
            let _ = std::fs::remove_file(file);
            inputs.release_lease(me).await;
            Pass::Retry { why: format!("the delete was refused ({status}: {})", reply.text()), after: None }
        }
    }
}

/// Creates the record, never replaces it: of two triggers racing, only the
/// one that makes the file asks; without it a restart could not follow.
fn record(file: &Path, at: &str, me: &str, vm_id: &str) -> Result<(), String> {
    let record = Record { at: at.to_string(), instance: me.to_string(), vm_id: vm_id.to_string() };
    let bytes = serde_json::to_vec(&record).unwrap_or_default();
    let parent_made = file.parent().map_or(Ok(()), std::fs::create_dir_all);
    let made = parent_made.and_then(|()| std::fs::OpenOptions::new().write(true).create_new(true).open(file)).and_then(
        |mut f| {
            use std::io::Write;
            f.write_all(&bytes)?;
            f.sync_all()
        },
    );
    made.map_err(|err| match err.kind() {
        std::io::ErrorKind::AlreadyExists => "a delete request is already in flight".to_string(),
        _ => format!("cannot record the delete request in {}: {err}; not deleting", file.display()),
    })
}

/// After a request with no answer: follow it when the instance is going.
async fn follow_if_going(ctx: &TaskContext, inputs: &Inputs, instance: &str) -> Option<Pass> {
    match inputs.read_instance(instance).await {
        Ok((InstanceIs::Gone | InstanceIs::Deleting, _)) => match follow(ctx, inputs, None, instance).await {
            Ok(why) => Some(Pass::Done(why)),
            Err(why) => Some(Pass::Retry { why, after: None }),
        },
        _ => None,
    }
}

/// Follows an accepted delete: its `Azure-AsyncOperation` (else `Location`)
/// on the ARM endpoint, else reads of the instance. Ok: gone or succeeded;
/// Err: failed, or the instance stays without deleting.
async fn follow(ctx: &TaskContext, inputs: &Inputs, reply: Option<&Reply>, instance: &str) -> Result<String, String> {
    let on_arm = |url: &Option<String>| url.clone().filter(|u| lease::same_origin(u, &inputs.arm_endpoint));
    let (mut operation, location) = match reply {
        Some(reply) => (on_arm(&reply.async_operation), on_arm(&reply.location)),
        None => (None, None),
    };
    let mut location = if operation.is_none() { location } else { None };
    let mut wait = reply.and_then(|r| r.retry_after).unwrap_or(Duration::from_secs(2));
    let mut failures = 0u32;
    let mut present_reads = 0u32;
    let started = ctx.clock.now();
    loop {
        let waited = wait.clamp(Duration::from_secs(1), Duration::from_secs(60));
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Err("stopping".into()),
            _ = tokio::time::sleep(waited) => {}
        }
        if ctx.clock.now().duration_since(started).unwrap_or_default() > FOLLOW_AT_MOST {
            return Err(format!("not done after {} min", FOLLOW_AT_MOST.as_secs() / 60));
        }
        if let Some(url) = operation.clone().or_else(|| location.clone()) {
            match inputs.call(reqwest::Method::GET, &url, None, None).await {
                Ok(answer) if operation.is_some() && answer.status == 200 => {
                    wait = answer.retry_after.unwrap_or(Duration::from_secs(5));
                    match lease::operation_state(&answer.json()) {
                        Operation::Running => continue,
                        Operation::Succeeded => return Ok("the scale set's delete operation succeeded".into()),
                        Operation::Failed(why) => return Err(why),
                    }
                }
                // Location: 202 while running, 200/204 when done, an error when it failed.
                Ok(answer) if operation.is_none() && answer.status == 202 => {
                    wait = answer.retry_after.unwrap_or(Duration::from_secs(5));
                    continue;
                }
                Ok(answer) if operation.is_none() && (200..300).contains(&answer.status) => {
                    return Ok("the scale set's delete operation is done".into())
                }
                Ok(answer) if operation.is_none() && (400..500).contains(&answer.status) && answer.status != 429 => {
                    return Err(format!("the operation answered {}: {}", answer.status, answer.text()))
                }
                other => {
                    failures += 1;
                    wait = other.ok().and_then(|a| a.retry_after).unwrap_or(Duration::from_secs(5));
                    // The operation cannot be read: fall back to reading the instance.
                    if failures >= 5 {
                        operation = None;
                        location = None;
                    }
                    continue;
                }
            }
        }
        wait = Duration::from_secs(10);
        match inputs.read_instance(instance).await {
            Ok((InstanceIs::Gone, _)) => return Ok("the instance is gone from the scale set".into()),
            Ok((InstanceIs::Deleting, _)) => present_reads = 0,
            Ok((InstanceIs::Present, _)) => {
                present_reads += 1;
                // Not deleting on three reads 30 s apart: the request did not take.
                if present_reads >= 3 {
                    return Err("the instance is still there and not deleting".into());
                }
            }
            Err(_) => {}
        }
    }
}
