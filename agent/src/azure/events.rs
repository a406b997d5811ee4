//! Azure Scheduled Events: what the platform is about to do to this VM.
//!
//! IMDS is asked once a second (inside the one IMDS rate limiter); a changed
//! `DocumentIncarnation` is acted on. Only events that name this VM
//! (`compute.name`) in `Resources` and are still `Scheduled` are handled:
//! events reach every VM of a placement group, and an approval covers every
//! name listed, so an event naming another VM, or one already `Started`, is
//! never approved. `Terminate` and `Preempt` are drained — users told
//! (`wall`), new logins refused (`/run/nologin`), script logs copied to the
//! share, disks synced — and approved early only when the verdict is fresh
//! idle; with users at work the approval waits until the verdict turns idle
//! or `NotBefore - 30 s`, whichever comes first ([`drain::decide`]). When the
//! event leaves the document and the VM still runs, the agent's
//! `/run/nologin` is removed. Other types are approved when `azure.approve`
//! lists them. Handled event ids are kept in a state file, so a restart never
//! approves twice.

use super::imds::Imds;
use super::{drain, Shown};
use crate::core::clock::rfc3339;
use crate::core::share_write::{write_into_share, ShareFile, ShareWriteError};
use crate::core::shared::ShareNews;
use crate::core::task::TaskContext;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub const EVENTS_API: &str = "2020-07-01";
const PATH: &str = "/metadata/scheduledevents";
/// The first call can take up to 2 minutes while the service starts for this VM.
const FIRST_CALL: Duration = Duration::from_secs(150);
const POLL_EVERY: Duration = Duration::from_secs(1);
/// A drain (wall, logs, sync) is given at most this long.
const DRAIN_AT_MOST: Duration = Duration::from_secs(90);
pub const STATE_FILE: &str = "scheduled-events.json";
/// Where the drain tells users (beside `wall`).
pub const NOLOGIN: &str = "/run/nologin";
/// How the agent's nologin starts: only such a file is removed when the event leaves.
const NOLOGIN_WORDS: &str = "This VM is being removed by Azure";

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Document {
    #[serde(default)]
    document_incarnation: u64,
    #[serde(default)]
    events: Vec<Event>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Event {
    event_id: String,
    #[serde(default)]
    event_type: String,
    #[serde(default)]
    event_status: String,
    #[serde(default)]
    resources: Vec<String>,
    /// RFC 1123 (`Mon, 19 Sep 2016 18:29:47 GMT`), empty once started.
    #[serde(default)]
    not_before: String,
}

/// One event as `pool-agent events` shows it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct EventView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub not_before: String,
    /// What the agent did: `approved`, `draining`, `waiting for NotBefore`,
    /// `not ours (names …)`, `already started`.
    pub handling: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// `GET /v1/events`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct EventsReport {
    /// `watching`, `off`, `not on Azure`, `starting`.
    pub state: String,
    #[serde(default)]
    pub incarnation: u64,
    #[serde(default)]
    pub events: Vec<EventView>,
    #[serde(default)]
    pub approvals: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drain: Option<String>,
    /// Something about the scale set that keeps events from coming (no terminate notification profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What was done with each event, kept across restarts.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Handled {
    /// Event id to what was done (`approved`, `draining`).
    #[serde(default)]
    events: BTreeMap<String, String>,
}

fn load(file: &Path) -> Handled {
    std::fs::read(file).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
}

fn save(file: &Path, handled: &Handled) {
    let bytes = serde_json::to_vec(handled).unwrap_or_default();
    if let Err(err) = crate::core::atomic::replace_file(file, &bytes, 0o644) {
        tracing::warn!(component = "azure", "cannot keep the handled events in {}: {err}", file.display());
    }
}

/// Watches the events until shutdown.
pub async fn watch(
    ctx: TaskContext,
    report: Arc<Mutex<EventsReport>>,
    imds: Arc<Imds>,
    vm_name: String,
    approve: Vec<String>,
) {
    let shown = Shown(report);
    let file = ctx.paths.state_dir().join(STATE_FILE);
    // A nologin left by an earlier run is looked at once too.
    let mut state =
        Watching { handled: load(&file), file, drained: BTreeSet::new(), views: Vec::new(), nologin_maybe: true };
    let mut deadline = FIRST_CALL;
    shown.update(|r| r.state = "starting".into());
    loop {
        let document = match imds.get(&format!("{PATH}?api-version={EVENTS_API}"), deadline).await {
            Ok(body) => serde_json::from_slice::<Document>(&body)
                .map_err(|err| format!("not a Scheduled Events document: {err}")),
            Err(err) => Err(err.to_string()),
        };
        deadline = Duration::from_secs(5);
        match document {
            Ok(document) => {
                shown.update(|r| {
                    r.state = "watching".into();
                    r.error = None;
                });
                // Every poll, not only a new incarnation: a waiting drain is
                // approved when the verdict turns idle or its deadline comes.
                act(&ctx, &imds, &document, &vm_name, &approve, &mut state, &shown).await;
            }
            Err(why) => shown.update(|r| r.error = Some(why.clone())),
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL_EVERY) => {}
        }
    }
}

/// What the watcher keeps between polls.
struct Watching {
    handled: Handled,
    file: PathBuf,
    /// Events drained by this process (a restart drains a `draining` one again).
    drained: BTreeSet<String>,
    views: Vec<EventView>,
    /// Whether a nologin of ours may be there (not read every second otherwise).
    nologin_maybe: bool,
}

/// How long the drain may take: until `NotBefore - 30 s` (at least 5 s, at
/// most [`DRAIN_AT_MOST`]); without a `NotBefore`, the most.
fn drain_budget(not_before: Option<SystemTime>, now: SystemTime) -> Duration {
    let until_deadline = match not_before.map(|at| at.checked_sub(drain::APPROVE_BEFORE).unwrap_or(at)) {
        Some(deadline) => deadline.duration_since(now).unwrap_or_default(),
        None => DRAIN_AT_MOST,
    };
    until_deadline.clamp(Duration::from_secs(5), DRAIN_AT_MOST)
}

/// What a record kept across restarts settles: `Some(handling)` when the
/// event is done with, `None` when it is still to drain or decide (no
/// record, or `draining`: a crash mid-drain drains again and decides again).
fn settled(record: Option<&str>) -> Option<String> {
    match record {
        Some(done @ ("approved" | "drained, not approved")) => Some(done.to_string()),
        Some(failed) if failed.starts_with("approval failed") => Some(failed.to_string()),
        _ => None,
    }
}

async fn act(
    ctx: &TaskContext,
    imds: &Imds,
    document: &Document,
    vm_name: &str,
    approve: &[String],
    state: &mut Watching,
    set: &Shown<EventsReport>,
) {
    let mut views = Vec::new();
    for event in &document.events {
        let now = ctx.clock.now();
        let not_before = parse_not_before(&event.not_before);
        let facts = drain::EventFacts {
            kind: &event.event_type,
            status: &event.event_status,
            resources: &event.resources,
            not_before,
        };
        let step = drain::decide(&facts, vm_name, &ctx.shared.idle(), now);
        let record = state.handled.events.get(&event.event_id).cloned();
        let handling = match (settled(record.as_deref()), step) {
            (_, drain::Step::NotOurs) => format!("not ours (names {})", event.resources.join(", ")),
            (Some(done), drain::Step::DrainOnly { others }) if done == "drained, not approved" => {
                format!("not approved: it names other VMs too ({}); Azure proceeds at NotBefore", others.join(", "))
            }
            (Some(done), _) => done,
            (None, drain::Step::Started) => "already started".to_string(),
            (None, drain::Step::NoDrain) if approve.iter().any(|a| a == &event.event_type) => {
                approve_event(imds, event, "listed in azure.approve", state, set).await
            }
            (None, drain::Step::NoDrain) => "waiting for NotBefore (not in azure.approve)".to_string(),
            (None, _) => {
                if !state.drained.contains(&event.event_id) {
                    state.handled.events.insert(event.event_id.clone(), "draining".into());
                    save(&state.file, &state.handled);
                    let budget = drain_budget(not_before, now);
                    let summary =
                        match tokio::time::timeout(budget, drain(ctx, &event.event_type, &event.not_before)).await {
                            Ok(summary) => summary,
                            Err(_) => format!("the drain ran out of its {} s", budget.as_secs()),
                        };
                    state.drained.insert(event.event_id.clone());
                    state.nologin_maybe = true;
                    set.update(|r| r.last_drain = Some(summary.clone()));
                }
                // The drain took time: decide on the verdict and clock as they are now.
                let now = ctx.clock.now();
                match drain::decide(&facts, vm_name, &ctx.shared.idle(), now) {
                    drain::Step::Approve { why } => approve_event(imds, event, &why, state, set).await,
                    drain::Step::Wait { deadline, why } => match deadline {
                        Some(at) => format!("draining: {why}; approved when idle, at the latest {}", rfc3339(at)),
                        None => {
                            format!("draining: {why}; approved when idle (no NotBefore: Azure proceeds on its own)")
                        }
                    },
                    drain::Step::DrainOnly { others } => {
                        state.handled.events.insert(event.event_id.clone(), "drained, not approved".into());
                        save(&state.file, &state.handled);
                        format!(
                            "not approved: it names other VMs too ({}); Azure proceeds at NotBefore",
                            others.join(", ")
                        )
                    }
                    // The event changed under the drain (cannot: the same facts): say so.
                    other => format!("{other:?}"),
                }
            }
        };
        // The moment shown is when the handling last changed.
        let at = match state.views.iter().find(|v| v.id == event.event_id && v.handling == handling) {
            Some(before) => before.at.clone(),
            None => Some(rfc3339(now)),
        };
        views.push(EventView {
            id: event.event_id.clone(),
            kind: event.event_type.clone(),
            status: event.event_status.clone(),
            resources: event.resources.clone(),
            not_before: event.not_before.clone(),
            handling,
            at,
        });
    }
    // The event left the document and this VM still runs: it was cancelled
    // or is over, so new logins are welcome again.
    let ours_pending = document
        .events
        .iter()
        .any(|e| e.resources.iter().any(|r| r == vm_name) && matches!(e.event_type.as_str(), "Terminate" | "Preempt"));
    if !ours_pending && state.nologin_maybe {
        remove_our_nologin(ctx);
        state.nologin_maybe = false;
    }
    state.views = views.clone();
    let incarnation = document.document_incarnation;
    set.update(|r| {
        r.incarnation = incarnation;
        r.events = views;
    });
}

/// Removes `/run/nologin` only when the agent wrote it (its text starts with
/// the drain's words): an admin's own nologin stays.
fn remove_our_nologin(ctx: &TaskContext) {
    let nologin = ctx.paths.resolve(NOLOGIN);
    let Ok(text) = std::fs::read_to_string(&nologin) else { return };
    if !text.starts_with(NOLOGIN_WORDS) {
        return;
    }
    match std::fs::remove_file(&nologin) {
        Ok(()) => {
            tracing::warn!(component = "azure", "the event left; {} removed, logins welcome again", nologin.display())
        }
        Err(err) => {
            tracing::warn!(component = "azure", "cannot remove {}: {}", nologin.display(), crate::config::io_text(&err))
        }
    }
}

/// Approves one event (recorded first: a restart never approves it again).
async fn approve_event(
    imds: &Imds,
    event: &Event,
    why: &str,
    state: &mut Watching,
    set: &Shown<EventsReport>,
) -> String {
    state.handled.events.insert(event.event_id.clone(), "approved".into());
    save(&state.file, &state.handled);
    let body = serde_json::json!({"StartRequests": [{"EventId": event.event_id}]});
    match imds.post(&format!("{PATH}?api-version={EVENTS_API}"), &body).await {
        Ok(()) => {
            tracing::warn!(component = "azure", "approved {} {} for this VM: {why}", event.event_type, event.event_id);
            set.update(|r| r.approvals += 1);
            "approved".to_string()
        }
        Err(err) => {
            // Azure goes ahead at NotBefore anyway; asking again could approve twice.
            tracing::warn!(component = "azure", "approving {} failed: {err}", event.event_id);
            let failed = format!("approval failed ({err}); Azure proceeds at NotBefore");
            state.handled.events.insert(event.event_id.clone(), failed.clone());
            save(&state.file, &state.handled);
            failed
        }
    }
}

fn parse_not_before(text: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(text).ok()
}

/// Tells users, refuses new logins, copies script logs to the share and
/// syncs. Returns what was done, for `pool-agent events`.
async fn drain(ctx: &TaskContext, kind: &str, not_before: &str) -> String {
    let message = format!(
        "{NOLOGIN_WORDS} ({kind}, not before {not_before}). Save your work to the share now; new logins are refused."
    );
    let mut done = Vec::new();
    let nologin = ctx.paths.resolve(NOLOGIN);
    match std::fs::write(&nologin, format!("{message}\n")) {
        Ok(()) => done.push(format!("{} written", nologin.display())),
        Err(err) => done.push(format!("{} not written: {}", nologin.display(), crate::config::io_text(&err))),
    }
    // A sandbox (tests) has no users of its own to tell.
    if !ctx.paths.is_sandbox() {
        done.push(tell_everyone(&message).await);
    }
    let logs = ctx.paths.script_log_dir();
    let share = ctx.shared.share();
    let instance = ctx.shared.instance_name();
    let copied = crate::core::task::blocking("copying script logs to the share", Duration::from_secs(20), move || {
        copy_logs(&logs, &share, &instance)
    })
    .await;
    done.push(match copied {
        Ok(text) => text,
        Err(err) => format!("script logs not copied: {err}"),
    });
    let synced = crate::core::task::blocking("syncing disks", Duration::from_secs(20), nix::unistd::sync).await;
    done.push(if synced.is_ok() { "synced".to_string() } else { "sync did not finish in 20 s".to_string() });
    tracing::warn!(component = "azure", "drained for {kind}: {}", done.join("; "));
    done.join("; ")
}

async fn tell_everyone(message: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let child = tokio::process::Command::new("wall")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else { return "wall could not run".to_string() };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(message.as_bytes()).await;
    }
    match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(Ok(status)) if status.success() => "users told (wall)".to_string(),
        _ => "wall failed".to_string(),
    }
}

/// Copies the local script logs to `Logs/<instance>/drain/` on the share
/// through the core's one way of writing there (no symlink followed, the
/// share's identity checked). The drain cannot tell a root script's log from
/// a user's, so all are private: a share that does not keep file modes gets
/// none (each script's own copy after its run still carries users' logs).
fn copy_logs(logs: &Path, share: &ShareNews, instance: &str) -> String {
    let ShareNews::Mounted { root, identity, .. } = share else {
        return "script logs not copied: the share is not mounted".to_string();
    };
    let dir: PathBuf = Path::new("Logs").join(instance).join("drain");
    let (mut copied, mut refused) = (0, Vec::new());
    for entry in std::fs::read_dir(logs).into_iter().flatten().flatten() {
        // Regular files only: a symlink planted among the local logs is not followed.
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(mut input) = open_local(&entry.path()) else { continue };
        let file = ShareFile { dir: &dir, name: &name, mode: 0o600, dir_mode: 0o700, owner: None, private: true };
        match write_into_share(root, *identity, &file, &mut input) {
            Ok(_) => copied += 1,
            Err(err @ ShareWriteError::ModesNotKept { .. }) => {
                return format!("script logs not copied: {err}; they stay on the VM in {}", logs.display())
            }
            Err(err) => refused.push(err.to_string()),
        }
    }
    let mut text = format!("{copied} script log(s) copied to {}", root.join(&dir).display());
    if !refused.is_empty() {
        text.push_str(&format!("; {} refused: {}", refused.len(), refused.join("; ")));
    }
    text
}

fn open_local(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)
}

/// Reads the scale set's model once: without a terminate notification
/// profile a VM removed by autoscale gets no Terminate event, and no drain.
pub async fn check_terminate_profile(
    report: Arc<Mutex<EventsReport>>,
    http: reqwest::Client,
    tokens: Arc<super::token::Tokens>,
    scale_set_url: String,
) {
    let url = format!("{scale_set_url}?api-version={}", super::protect::COMPUTE_API);
    let answer = super::arm::send(&http, &tokens, super::token::MANAGEMENT, reqwest::Method::GET, &url, None).await;
    let Ok(answer) = answer else { return };
    if !answer.success() {
        return;
    }
    let Ok(model) = serde_json::from_slice::<serde_json::Value>(&answer.body) else { return };
    let enabled = model
        .pointer("/properties/virtualMachineProfile/scheduledEventsProfile/terminateNotificationProfile/enable")
        .and_then(|e| e.as_bool())
        == Some(true);
    if !enabled {
        let why = "the scale set has no terminate notification profile: a VM that autoscale removes gets no Terminate event, so users are not warned (README: Scale to zero on Azure)";
        tracing::warn!(component = "azure", "{why}");
        Shown(report).update(|r| r.warning = Some(why.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_before_is_read_in_the_form_imds_gives() {
        let at = parse_not_before("Mon, 19 Sep 2016 18:29:47 GMT").unwrap();
        assert_eq!(rfc3339(at), "2016-09-19T18:29:47Z");
        assert_eq!(parse_not_before(""), None);
    }

    #[test]
    fn the_document_is_read_with_azure_s_field_names() {
        let text = r#"{"DocumentIncarnation": 3, "Events": [{"EventId": "A1", "EventType": "Terminate",
            "ResourceType": "VirtualMachine", "Resources": ["pool_3"], "EventStatus": "Scheduled",
            "NotBefore": "Mon, 19 Sep 2016 18:29:47 GMT", "Description": "", "EventSource": "Platform", "DurationInSeconds": -1}]}"#;
        let document: Document = serde_json::from_str(text).unwrap();
        assert_eq!(document.document_incarnation, 3);
        assert_eq!(document.events[0].resources, ["pool_3"]);
        assert_eq!(document.events[0].event_status, "Scheduled");
    }

    #[test]
    fn a_record_left_draining_by_a_crash_is_drained_and_decided_again_and_a_settled_one_never() {
        assert_eq!(settled(Some("draining")), None);
        assert_eq!(settled(None), None);
        assert_eq!(settled(Some("approved")).as_deref(), Some("approved"));
        assert_eq!(settled(Some("drained, not approved")).as_deref(), Some("drained, not approved"));
        let failed = "approval failed (IMDS answered 400); Azure proceeds at NotBefore";
        assert_eq!(settled(Some(failed)).as_deref(), Some(failed), "a failed approval is not sent twice");
    }

    #[test]
    fn the_drain_gets_the_time_until_the_deadline_within_bounds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(drain_budget(Some(now + Duration::from_secs(90)), now), Duration::from_secs(60));
        assert_eq!(drain_budget(Some(now + Duration::from_secs(600)), now), DRAIN_AT_MOST);
        assert_eq!(drain_budget(Some(now), now), Duration::from_secs(5), "a deadline past still drains a little");
        assert_eq!(drain_budget(None, now), DRAIN_AT_MOST, "no NotBefore is no reason to cut the drain short");
    }
}
