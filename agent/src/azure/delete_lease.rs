//! Self-delete's pure parts: what one read of the scale set allows, the
//! pool's delete lease kept in a tag of the scale set, and what a delete's
//! answer means. No I/O here, so every refusal and race is tested plainly.
//!
//! The lease is a compare-and-swap on the scale set: ARM returns an `etag`
//! on the scale set and honours `If-Match` on PUT/PATCH from api-version
//! 2023-09-01 (https://github.com/Azure/azure-rest-api-specs/pull/26368;
//! `ifMatch` on VirtualMachineScaleSets_Update:
//! https://learn.microsoft.com/en-us/dotnet/api/azure.resourcemanager.compute.virtualmachinescalesetresource.updateasync),
//! and answers a stale one `412 PreconditionFailed` ("Etag provided in
//! if-match header … does not match etag … of resource",
//! https://github.com/kubernetes-sigs/cloud-provider-azure/issues/9728).
//! A VM writes `pool-agent-delete-lease = "<instance>@<expiry>"` with
//! `If-Match` of the read it judged the floor on: of VMs that read the same
//! capacity, one write wins and every other gets 412 and reads again.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

pub const LEASE_TAG: &str = "pool-agent-delete-lease";
/// How long a lease holds: the window from the write to ARM taking the
/// delete (which lowers the capacity) is seconds; the rest is margin for a
/// holder that died.
pub const LEASE_FOR: Duration = Duration::from_secs(600);
/// Every delay a server gives is capped at this.
pub const SERVER_DELAY_CAP: Duration = Duration::from_secs(3600);

/// What self-delete reads of the scale set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScaleSet {
    pub etag: Option<String>,
    pub capacity: u64,
    pub provisioning_state: String,
    pub tags: BTreeMap<String, String>,
}

impl ScaleSet {
    pub fn from_json(model: &serde_json::Value) -> Self {
        let tags = model
            .get("tags")
            .and_then(|t| t.as_object())
            .map(|t| t.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default();
        Self {
            etag: model.get("etag").and_then(|e| e.as_str()).map(str::to_string),
            capacity: model.pointer("/sku/capacity").and_then(|c| c.as_u64()).unwrap_or(0),
            provisioning_state: model
                .pointer("/properties/provisioningState")
                .and_then(|s| s.as_str())
                .unwrap_or("unknown")
                .to_string(),
            tags,
        }
    }
}

/// Who holds the pool's delete lease at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    Free,
    Ours {
        until: SystemTime,
    },
    Other {
        holder: String,
        until: SystemTime,
    },
    /// A tag that does not read as a lease: held (fail safe) until an admin removes it.
    Unreadable(String),
}

pub fn lease_of(tags: &BTreeMap<String, String>, me: &str, now: SystemTime) -> Lease {
    let Some(value) = tags.get(LEASE_TAG) else { return Lease::Free };
    let Some((holder, until)) = value.rsplit_once('@') else { return Lease::Unreadable(value.clone()) };
    let Ok(until) = humantime::parse_rfc3339(until) else { return Lease::Unreadable(value.clone()) };
    if until <= now {
        Lease::Free
    } else if holder == me {
        Lease::Ours { until }
    } else {
        Lease::Other { holder: holder.to_string(), until }
    }
}

/// The tags with our lease until `until`, every other tag kept: a PATCH's
/// `tags` replace the whole map, so this is the read-modify-write.
pub fn with_lease(tags: &BTreeMap<String, String>, me: &str, until: SystemTime) -> BTreeMap<String, String> {
    let mut tags = tags.clone();
    tags.insert(LEASE_TAG.to_string(), format!("{me}@{}", humantime::format_rfc3339_seconds(until)));
    tags
}

/// The tags without our lease; `None` when the lease is not ours (never
/// remove another VM's).
pub fn without_our_lease(tags: &BTreeMap<String, String>, me: &str) -> Option<BTreeMap<String, String>> {
    let value = tags.get(LEASE_TAG)?;
    if value.rsplit_once('@').map(|(holder, _)| holder) != Some(me) {
        return None;
    }
    let mut tags = tags.clone();
    tags.remove(LEASE_TAG);
    Some(tags)
}

/// Whether one read of the scale set lets `me` go: `Succeeded` (not
/// `Updating`), the floor kept after this VM goes, and no live lease of
/// another VM.
pub fn set_allows(set: &ScaleSet, min_instances: u32, me: &str, now: SystemTime) -> Result<(), String> {
    if set.provisioning_state != "Succeeded" {
        return Err(format!("the scale set is {}, not Succeeded", set.provisioning_state));
    }
    // Capacity 0 while this VM runs is a read to distrust, not a floor of 0.
    if set.capacity == 0 || set.capacity - 1 < u64::from(min_instances) {
        return Err(format!("capacity {} - 1 would go below idle.min_instances = {min_instances}", set.capacity));
    }
    match lease_of(&set.tags, me, now) {
        Lease::Free | Lease::Ours { .. } => {}
        Lease::Other { holder, until } => {
            return Err(format!(
                "instance {holder} holds the pool's delete lease until {}",
                humantime::format_rfc3339_seconds(until)
            ))
        }
        Lease::Unreadable(value) => {
            return Err(format!("the scale set's {LEASE_TAG} tag {value:?} is not a lease; an admin can remove it"))
        }
    }
    if set.etag.is_none() {
        // Without an etag there is no compare-and-swap: two VMs could both go.
        return Err("the scale set has no etag (api-version 2023-09-01 or later needed); not deleting".into());
    }
    Ok(())
}

/// What the answer to the delete request means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// 200/202: follow the operation (or the instance).
    Accepted,
    /// 429 or 5xx, or 409 (another operation on the scale set): try again later.
    Busy { status: u16, after: Option<Duration> },
    /// Any other refusal: try again after a backoff, every check again.
    Refused { status: u16 },
}

pub fn classify(status: u16, retry_after: Option<Duration>) -> Sent {
    match status {
        200..=299 => Sent::Accepted,
        409 | 429 | 500..=599 => Sent::Busy { status, after: retry_after.map(|d| d.min(SERVER_DELAY_CAP)) },
        _ => Sent::Refused { status },
    }
}

/// How long to wait before trying again: the server's delay (capped), never
/// less than our own backoff.
pub fn retry_wait(server: Option<Duration>, backoff: Duration) -> Duration {
    server.map_or(backoff, |d| d.min(SERVER_DELAY_CAP).max(backoff))
}

/// The state of an asynchronous operation, from its `Azure-AsyncOperation`
/// answer (`status`), per
/// https://learn.microsoft.com/en-us/azure/azure-resource-manager/management/async-operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Running,
    Succeeded,
    Failed(String),
}

pub fn operation_state(body: &serde_json::Value) -> Operation {
    match body.get("status").and_then(|s| s.as_str()) {
        Some("Succeeded") => Operation::Succeeded,
        Some(done @ ("Failed" | "Canceled")) => {
            let why = body.pointer("/error/message").and_then(|m| m.as_str()).unwrap_or("no reason given");
            Operation::Failed(format!("{done}: {why}"))
        }
        // InProgress, or a status this agent does not know: not done.
        _ => Operation::Running,
    }
}

/// Whether an operation URL ARM handed back may be asked with our token:
/// only on the ARM endpoint the agent was configured with.
pub fn same_origin(url: &str, arm_endpoint: &str) -> bool {
    let base = arm_endpoint.trim_end_matches('/');
    url.strip_prefix(base).is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn set(capacity: u64, tags: &[(&str, &str)]) -> ScaleSet {
        ScaleSet {
            etag: Some("\"7\"".into()),
            capacity,
            provisioning_state: "Succeeded".into(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn the_scale_set_is_read_as_arm_gives_it() {
        let model = serde_json::json!({"etag": "\"3\"", "tags": {"team": "ds", "n": 1},
            "sku": {"capacity": 6}, "properties": {"provisioningState": "Updating"}});
        let read = ScaleSet::from_json(&model);
        assert_eq!(read.etag.as_deref(), Some("\"3\""));
        assert_eq!(read.capacity, 6);
        assert_eq!(read.provisioning_state, "Updating");
        assert_eq!(read.tags.len(), 1, "a tag that is not a string is not kept: {:?}", read.tags);
        assert_eq!(ScaleSet::from_json(&serde_json::json!({})).provisioning_state, "unknown");
    }

    #[test]
    fn the_floor_the_state_and_another_s_lease_each_hold_the_vm() {
        assert_eq!(set_allows(&set(6, &[]), 5, "3", t(0)), Ok(()));
        assert!(set_allows(&set(5, &[]), 5, "3", t(0)).unwrap_err().contains("min_instances = 5"));
        assert!(set_allows(&set(0, &[]), 0, "3", t(0)).is_err(), "an empty set has nothing of ours to remove");
        let updating = ScaleSet { provisioning_state: "Updating".into(), ..set(6, &[]) };
        assert!(set_allows(&updating, 5, "3", t(0)).unwrap_err().contains("Updating"));
        let leased = set(6, &[(LEASE_TAG, "2@2027-01-15T08:10:00Z")]);
        let now = humantime::parse_rfc3339("2027-01-15T08:05:00Z").unwrap();
        assert!(set_allows(&leased, 5, "3", now).unwrap_err().contains("instance 2 holds"));
        assert_eq!(set_allows(&leased, 5, "2", now), Ok(()), "our own lease does not hold us");
        let later = humantime::parse_rfc3339("2027-01-15T08:10:00Z").unwrap();
        assert_eq!(set_allows(&leased, 5, "3", later), Ok(()), "an expired lease is free");
        let no_etag = ScaleSet { etag: None, ..set(6, &[]) };
        assert!(set_allows(&no_etag, 5, "3", t(0)).unwrap_err().contains("etag"));
    }

    #[test]
    fn an_unreadable_lease_holds_everyone() {
        for value in ["garbage", "2@yesterday", "@"] {
            let odd = set(9, &[(LEASE_TAG, value)]);
            assert!(matches!(lease_of(&odd.tags, "3", t(0)), Lease::Unreadable(_)), "{value}");
            assert!(set_allows(&odd, 1, "3", t(0)).is_err(), "{value}");
        }
    }

    #[test]
    fn the_lease_write_keeps_every_other_tag_and_removes_only_our_own() {
        let tags = set(6, &[("team", "ds"), ("cost-centre", "42")]).tags;
        let leased = with_lease(&tags, "3", t(600));
        assert_eq!(leased.len(), 3);
        assert_eq!(leased["team"], "ds");
        assert!(matches!(lease_of(&leased, "3", t(0)), Lease::Ours { until } if until == t(600)));
        assert!(matches!(lease_of(&leased, "4", t(0)), Lease::Other { ref holder, .. } if holder == "3"));
        assert_eq!(without_our_lease(&leased, "3"), Some(tags.clone()));
        assert_eq!(without_our_lease(&leased, "4"), None, "never another VM's lease");
        assert_eq!(without_our_lease(&tags, "3"), None);
        // Instance ids that are prefixes of one another are different holders.
        let leased_33 = with_lease(&tags, "33", t(600));
        assert_eq!(without_our_lease(&leased_33, "3"), None);
    }

    #[test]
    fn answers_are_sorted_into_go_wait_and_refused_with_server_delays_capped() {
        assert_eq!(classify(202, None), Sent::Accepted);
        assert_eq!(classify(200, None), Sent::Accepted);
        assert_eq!(
            classify(429, Some(Duration::from_secs(u64::MAX))),
            Sent::Busy { status: 429, after: Some(SERVER_DELAY_CAP) }
        );
        assert_eq!(classify(503, None), Sent::Busy { status: 503, after: None });
        assert_eq!(classify(409, None), Sent::Busy { status: 409, after: None });
        assert_eq!(classify(403, None), Sent::Refused { status: 403 });
        assert_eq!(classify(400, None), Sent::Refused { status: 400 });
        assert_eq!(retry_wait(Some(Duration::from_secs(3)), Duration::from_secs(2)), Duration::from_secs(3));
        assert_eq!(retry_wait(Some(Duration::from_secs(1)), Duration::from_secs(2)), Duration::from_secs(2));
        assert_eq!(retry_wait(Some(Duration::MAX), Duration::from_secs(2)), SERVER_DELAY_CAP);
        assert_eq!(retry_wait(None, Duration::from_secs(2)), Duration::from_secs(2));
    }

    #[test]
    fn operations_are_done_only_on_a_final_status_and_followed_only_on_arm() {
        assert_eq!(operation_state(&serde_json::json!({"status": "InProgress"})), Operation::Running);
        assert_eq!(operation_state(&serde_json::json!({})), Operation::Running);
        assert_eq!(operation_state(&serde_json::json!({"status": "Succeeded"})), Operation::Succeeded);
        let failed = serde_json::json!({"status": "Failed", "error": {"code": "X", "message": "disk busy"}});
        assert_eq!(operation_state(&failed), Operation::Failed("Failed: disk busy".into()));
        assert!(matches!(operation_state(&serde_json::json!({"status": "Canceled"})), Operation::Failed(_)));
        let arm = "https://management.azure.com";
        assert!(same_origin("https://management.azure.com/subscriptions/s/providers/x/operations/1?a=b", arm));
        assert!(!same_origin("https://management.azure.com.evil.example/operations/1", arm));
        assert!(!same_origin("http://169.254.169.254/metadata", arm));
    }
}
