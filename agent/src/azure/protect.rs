//! Scale-in protection follows the verdict. Autoscale picks which VM to
//! remove by zone and instance id, not by idleness: protection is what keeps
//! a working user's VM. The instance is protected at once when the verdict
//! turns active, unknown or stale, and released only after
//! `azure.release_after` of continuous idle, at most
//! `azure.max_releases_per_hour` times an hour (counted in a state file, so
//! a crash loop cannot reset the budget): writes per hour stay at or under
//! 2 × releases + 1.

use super::token::{self, Tokens};
use super::{Compute, Shown};
use crate::core::clock::rfc3339;
use crate::core::task::TaskContext;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Compute's version for scale set VMs.
pub const COMPUTE_API: &str = "2024-07-01";
/// After a write, the instance is read back once within this window (a
/// Uniform instance has been seen to accept a PUT and ignore a field).
const CONFIRM_AFTER: (u64, u64) = (30, 60);
/// A 409 (a concurrent request on the instance) is tried again after 10-30 s.
const CONFLICT_RETRY: (u64, u64) = (10, 30);
/// Other failures are tried again from this, doubling, up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(300);
const HOUR: Duration = Duration::from_secs(3600);
/// The release budget's file in the state directory.
pub const STATE_FILE: &str = "protection.json";

/// What the policy asks for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Protect,
    Release,
    Nothing,
}

/// The hysteresis, apart from any I/O so it can be run over simulated hours.
#[derive(Debug, Clone)]
pub struct Policy {
    release_after: Duration,
    max_releases_per_hour: u32,
    /// Since when the verdict has been idle without a break, as seen here.
    idle_seen_since: Option<SystemTime>,
    /// Releases written in the last hour (kept across restarts).
    releases: VecDeque<SystemTime>,
}

impl Policy {
    pub fn new(release_after: Duration, max_releases_per_hour: u32, releases: Vec<SystemTime>) -> Self {
        Self { release_after, max_releases_per_hour, idle_seen_since: None, releases: releases.into() }
    }

    /// `idle_now`: the verdict is made, idle and fresh. `protected`: the
    /// instance's state as last known (`None`: not read yet).
    pub fn decide(&mut self, idle_now: bool, protected: Option<bool>, now: SystemTime) -> Want {
        if !idle_now {
            self.idle_seen_since = None;
            // Protecting is never delayed, even before the state is known.
            return if protected == Some(true) { Want::Nothing } else { Want::Protect };
        }
        let since = *self.idle_seen_since.get_or_insert(now);
        if protected != Some(true) || now.duration_since(since).unwrap_or_default() < self.release_after {
            return Want::Nothing;
        }
        self.forget_old(now);
        if self.releases.len() >= self.max_releases_per_hour as usize {
            return Want::Nothing;
        }
        Want::Release
    }

    /// Counts a release before it is written: a crash after the write must not give it back.
    pub fn count_release(&mut self, at: SystemTime) {
        self.releases.push_back(at);
    }

    fn forget_old(&mut self, now: SystemTime) {
        while self.releases.front().is_some_and(|at| now.duration_since(*at).unwrap_or_default() >= HOUR) {
            self.releases.pop_front();
        }
    }

    pub fn releases(&self) -> Vec<SystemTime> {
        self.releases.iter().copied().collect()
    }

    /// When a release would be allowed: after `release_after` of idle, and
    /// when the hour's budget has room again.
    pub fn next_release(&self, now: SystemTime) -> Option<SystemTime> {
        let after_idle = self.idle_seen_since? + self.release_after;
        let budget = match self.releases.len() >= self.max_releases_per_hour as usize {
            true => self.releases.front().map(|oldest| *oldest + HOUR).unwrap_or(now),
            false => now,
        };
        Some(after_idle.max(budget))
    }
}

/// What `pool-agent azure` shows of protection.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ProtectionView {
    /// `yes`, `no`, `pending` (a write not confirmed yet), `unknown` (not read yet), `off`.
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

/// The body of a protection write.
pub fn body(location: &str, protect: bool) -> serde_json::Value {
    serde_json::json!({
        "location": location,
        "properties": {"protectionPolicy": {"protectFromScaleIn": protect, "protectFromScaleSetActions": false}}
    })
}

/// How one ARM call ended.
#[derive(Debug)]
enum Outcome {
    /// `protectFromScaleIn` as the instance says.
    Done(bool),
    /// The instance is gone or no longer active: nothing more to do.
    Gone(String),
    /// Try again after this long.
    Later(Duration, String),
    /// An error waiting will not fix (the model is out of date, a missing role).
    Refused(String),
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
        let answer =
            match super::arm::send(&self.http, &self.tokens, token::MANAGEMENT, method, &url, write.as_ref()).await {
                Ok(answer) => answer,
                Err(why) => return Outcome::Later(FIRST_RETRY, format!("ARM: {why}")),
            };
        let (status, text) = (answer.status, answer.text());
        match status {
            200..=299 => match protected_in(&String::from_utf8_lossy(&answer.body)) {
                Some(protected) => Outcome::Done(protected),
                // A 202 without the model: read it back to know.
                None => Outcome::Later(Duration::from_secs(5), "accepted; reading the instance back".into()),
            },
            404 => Outcome::Gone(format!("the instance is gone (404): {text}")),
            400 if text.to_ascii_lowercase().contains("not active") => {
                Outcome::Gone(format!("the instance is no longer active: {text}"))
            }
            400 => Outcome::Refused(format!("ARM refused the write (400): {text}")),
            403 => Outcome::Refused(format!(
                "the VM's identity may not change its instance: give it Microsoft.Compute/virtualMachineScaleSets/virtualMachines/write on the scale set: {text}"
            )),
            409 => Outcome::Later(between(CONFLICT_RETRY), format!("a concurrent request on the instance (409): {text}")),
            429 => Outcome::Later(answer.retry_after.unwrap_or(Duration::from_secs(30)), format!("ARM throttled (429): {text}")),
            _ => Outcome::Later(answer.retry_after.unwrap_or(FIRST_RETRY), format!("ARM answered {status}: {text}")),
        }
    }
}

fn between((low, high): (u64, u64)) -> Duration {
    Duration::from_secs(fastrand::u64(low..=high))
}

/// `properties.protectionPolicy.protectFromScaleIn` of an instance model (absent: false).
fn protected_in(text: &str) -> Option<bool> {
    let model: serde_json::Value = serde_json::from_str(text).ok()?;
    let properties = model.get("properties")?;
    Some(properties.pointer("/protectionPolicy/protectFromScaleIn").and_then(|p| p.as_bool()).unwrap_or(false))
}

/// Keeps the instance's protection in step with the verdict until shutdown.
#[allow(clippy::too_many_arguments)]
pub async fn keep(
    ctx: TaskContext,
    view: Arc<Mutex<ProtectionView>>,
    http: reqwest::Client,
    tokens: Arc<Tokens>,
    compute: Compute,
    arm_endpoint: String,
    release_after: Duration,
    max_releases_per_hour: u32,
) {
    let shown = Shown(view);
    let set_view = &shown;
    let Some(url) = instance_url(&arm_endpoint, &compute) else {
        set_view.update(|v| v.protected = "off".into());
        set_view.update(|v| v.error = Some("not a scale set's VM: nothing to protect".into()));
        return;
    };
    let file: PathBuf = ctx.paths.state_dir().join(STATE_FILE);
    let saved: Saved = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let mut policy = Policy::new(release_after, max_releases_per_hour, saved.releases.iter().map(|s| s.0).collect());
    let arm = Arm { http, tokens, url: url.clone() };
    set_view.update(|v| {
        v.instance = url.rsplit('/').next().unwrap_or_default().to_string();
        v.protected = "unknown".into();
    });
    let mut idle_rx = ctx.shared.watch_idle();
    let mut protected: Option<bool> = None;
    // A write waiting for its read-back, and when to read.
    let mut confirm: Option<(bool, SystemTime)> = None;
    let mut retry_at: Option<SystemTime> = None;
    let mut retry = FIRST_RETRY;
    let mut gone = false;
    // The release being written was counted already (its retries are not counted again).
    let mut release_counted = false;
    loop {
        let now = ctx.clock.now();
        let due = |at: Option<SystemTime>| at.is_none_or(|at| now >= at);
        if !gone && due(retry_at) {
            retry_at = None;
            let idle_now = ctx.shared.idle().idle_now(now);
            let want = match (confirm, protected) {
                // A read-back is due, or the state is not known yet.
                (Some((_, at)), _) if now >= at => None,
                (_, None) if idle_now => None,
                _ => Some(policy.decide(idle_now, protected, now)),
            };
            let write = match want {
                Some(Want::Protect) => {
                    // A release given up for a protect was not made: the next one counts.
                    release_counted = false;
                    Some(true)
                }
                Some(Want::Release) => {
                    // A release retried after a 409 or 429 is still the same release.
                    if !release_counted {
                        policy.count_release(now);
                        save(&file, &policy);
                        release_counted = true;
                    }
                    Some(false)
                }
                Some(Want::Nothing) => None,
                None => {
                    // Read the instance: at start, or to confirm a write.
                    match arm.call(None).await {
                        Outcome::Done(actual) => {
                            if let Some((wrote, _)) = confirm.take() {
                                if actual != wrote {
                                    let why = format!("the instance accepted protectFromScaleIn = {wrote} but reads {actual}; writing again later");
                                    tracing::warn!(component = "azure", "{why}");
                                    set_view.update(|v| v.error = Some(why.clone()));
                                    // Not at once: a write the instance ignores must not loop.
                                    retry_at = Some(now + MAX_RETRY);
                                }
                            }
                            if protected != Some(actual) {
                                set_view.update(|v| v.since = Some(rfc3339(now)));
                            }
                            protected = Some(actual);
                            retry = FIRST_RETRY;
                        }
                        outcome => {
                            handle_failure(outcome, &mut retry_at, &mut retry, &mut gone, ctx.clock.now(), set_view)
                        }
                    }
                    None
                }
            };
            if let Some(protect) = write {
                set_view.update(|v| {
                    v.since = Some(rfc3339(now));
                    v.writes += 1;
                });
                match arm.call(Some(body(&compute.location, protect))).await {
                    Outcome::Done(_) => {
                        let what = if protect { "set (in use, unknown or stale)" } else { "released (idle)" };
                        tracing::info!(component = "azure", "scale-in protection {what}");
                        // What was written counts until the read-back says otherwise.
                        protected = Some(protect);
                        release_counted = false;
                        confirm = Some((protect, now + between(CONFIRM_AFTER)));
                        retry = FIRST_RETRY;
                        set_view.update(|v| v.error = None);
                    }
                    // From when the answer came: a Retry-After counts from there.
                    outcome => handle_failure(outcome, &mut retry_at, &mut retry, &mut gone, ctx.clock.now(), set_view),
                }
            }
        }
        let now = ctx.clock.now();
        set_view.update(|v| {
            v.protected = match (gone, protected, confirm.is_some()) {
                (true, _, _) => "gone",
                (_, Some(_), true) => "pending",
                (_, Some(true), false) => "yes",
                (_, Some(false), false) => "no",
                (_, None, _) => "unknown",
            }
            .to_string();
            v.releases_last_hour =
                policy.releases().iter().filter(|at| now.duration_since(**at).unwrap_or_default() < HOUR).count();
            v.next_release = match protected {
                Some(true) => policy.next_release(now).map(rfc3339),
                _ => None,
            };
        });
        // Wake for a verdict change, a read-back, a retry, or a release coming due.
        let mut wake = [confirm.map(|c| c.1), retry_at].into_iter().flatten().min();
        if protected == Some(true) && retry_at.is_none() {
            if let Some(at) = policy.next_release(now) {
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
        }
        let wait = wake.map(|at| at.duration_since(now).unwrap_or_default());
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            changed = idle_rx.changed() => if changed.is_err() { return },
            _ = sleep_or_forever(wait) => {}
        }
    }
}

fn handle_failure(
    outcome: Outcome,
    retry_at: &mut Option<SystemTime>,
    retry: &mut Duration,
    gone: &mut bool,
    now: SystemTime,
    set_view: &Shown<ProtectionView>,
) {
    match outcome {
        Outcome::Done(_) => {}
        Outcome::Gone(why) => {
            tracing::info!(component = "azure", "{why}; protection is no longer kept");
            *gone = true;
            set_view.update(|v| v.error = Some(why.clone()));
        }
        Outcome::Later(wait, why) => {
            *retry_at = Some(now + wait);
            set_view.update(|v| v.error = Some(why.clone()));
        }
        Outcome::Refused(why) => {
            tracing::warn!(component = "azure", "{why}");
            // Protection stays as it was; asking again soon would not help.
            *retry_at = Some(now + *retry);
            *retry = (*retry * 2).min(MAX_RETRY);
            set_view.update(|v| v.error = Some(why.clone()));
        }
    }
}

fn save(file: &std::path::Path, policy: &Policy) {
    let saved = Saved { releases: policy.releases().into_iter().map(crate::core::clock::Stamp).collect() };
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

    /// Runs the policy over `hours` of simulated time, a step a second, with a
    /// verdict active for `on` and idle for `off` in turn; every write takes
    /// effect at once. Returns (writes, releases).
    fn flap(release_after: Duration, on: u64, off: u64, hours: u64) -> (u32, u32, Vec<u32>) {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut policy = Policy::new(release_after, 4, Vec::new());
        let mut protected = Some(false);
        let (mut writes, mut releases) = (0, 0);
        let mut per_hour = vec![0u32; hours as usize];
        for second in 0..hours * 3600 {
            let now = start + Duration::from_secs(second);
            let idle = second % (on + off) >= on;
            match policy.decide(idle, protected, now) {
                Want::Protect => {
                    writes += 1;
                    protected = Some(true);
                }
                Want::Release => {
                    policy.count_release(now);
                    writes += 1;
                    releases += 1;
                    per_hour[(second / 3600) as usize] += 1;
                    protected = Some(false);
                }
                Want::Nothing => {}
            }
        }
        (writes, releases, per_hour)
    }

    #[test]
    fn flapping_with_the_default_release_after_writes_once() {
        // 60 s in use, 5 min idle, for two hours: never 15 min idle, so protected once and kept.
        let (writes, releases, _) = flap(Duration::from_secs(900), 60, 300, 2);
        assert_eq!((writes, releases), (1, 0));
    }

    #[test]
    fn fast_flapping_is_held_to_the_release_budget() {
        // release_after 1m, 60 s on / 2 min off: 20 chances an hour, 4 taken.
        let (writes, releases, per_hour) = flap(Duration::from_secs(60), 60, 120, 2);
        assert!(per_hour.iter().all(|&n| n <= 4), "{per_hour:?}");
        assert!(releases >= 4, "the budget is used: {releases}");
        assert!(writes <= 2 * releases + 1, "{writes} writes for {releases} releases");
    }

    #[test]
    fn protection_is_immediate_and_release_waits_for_continuous_idle() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut policy = Policy::new(Duration::from_secs(900), 4, Vec::new());
        // Not known yet and in use: protect now.
        assert_eq!(policy.decide(false, None, t0), Want::Protect);
        // Idle 14 min, a minute of use, idle 14 min: never released.
        assert_eq!(policy.decide(true, Some(true), t0 + Duration::from_secs(840)), Want::Nothing);
        assert_eq!(policy.decide(false, Some(true), t0 + Duration::from_secs(850)), Want::Nothing);
        assert_eq!(policy.decide(true, Some(true), t0 + Duration::from_secs(900)), Want::Nothing);
        assert_eq!(policy.decide(true, Some(true), t0 + Duration::from_secs(1740)), Want::Nothing);
        assert_eq!(policy.decide(true, Some(true), t0 + Duration::from_secs(1800)), Want::Release);
        // Not known and idle: nothing is written before the state is read.
        let mut fresh = Policy::new(Duration::from_secs(60), 4, Vec::new());
        assert_eq!(fresh.decide(true, None, t0 + Duration::from_secs(3600)), Want::Nothing);
    }

    #[test]
    fn releases_counted_before_a_restart_still_count() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let earlier: Vec<SystemTime> = (0..4).map(|i| t0 + Duration::from_secs(i * 60)).collect();
        let mut policy = Policy::new(Duration::from_secs(60), 4, earlier);
        assert_eq!(policy.decide(true, Some(true), t0 + Duration::from_secs(600)), Want::Nothing);
        assert_eq!(policy.decide(true, Some(true), t0 + Duration::from_secs(1200)), Want::Nothing, "budget spent");
        assert_eq!(policy.decide(true, Some(true), t0 + Duration::from_secs(3600)), Want::Release, "an hour later");
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
        assert_eq!(
            body("westeurope", true),
            serde_json::json!({"location": "westeurope", "properties": {"protectionPolicy": {"protectFromScaleIn": true, "protectFromScaleSetActions": false}}})
        );
    }
}
