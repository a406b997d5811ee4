//! The verdict to Azure Monitor: one bucket of custom metrics per interval
//! (after a per-VM random offset, so a pool does not post in step), a
//! backlog posted oldest first until Azure takes it, and the scale set's
//! userData read again every few minutes.

use super::Compute;
use super::{imds, metadata, monitor, publish_user_data, token, Azure, Imds, LastPost, Tokens, USER_DATA_EVERY};
use crate::core::shared::ProtectionNews;
use crate::core::task::{TaskContext, TaskResult};
use std::time::{Duration, SystemTime};

/// One bucket per interval (after a per-VM random offset, so a pool does not
/// post in step), and the backlog posted oldest first until Azure takes it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn publish_metrics(
    ctx: &TaskContext,
    azure: &Azure,
    http: &reqwest::Client,
    imds: &Imds,
    tokens: &Tokens,
    url: &str,
    compute: &Compute,
) -> TaskResult {
    let mut backlog = monitor::Backlog::default();
    let interval = ctx.settings.borrow().azure.metrics_interval;
    let offset = Duration::from_secs_f64(fastrand::f64() * (interval.as_secs_f64() / 2.0).min(30.0));
    let mut boundary = next_boundary(ctx.clock.now(), interval);
    let mut retry_at: Option<SystemTime> = None;
    let mut failures = 0u32;
    let mut reloads = ctx.shared.watch_reloads();
    let mut user_data_at = ctx.clock.now() + USER_DATA_EVERY;
    loop {
        let due = boundary + offset;
        let wake = retry_at.map_or(due, |at| at.min(due)).min(user_data_at);
        let wait = wake.duration_since(ctx.clock.now()).unwrap_or_default();
        let reloaded = tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => false,
            Ok(()) = reloads.changed() => true,
        };
        // Every few minutes, and at a reload: the scale set's fragment may have changed.
        if reloaded || ctx.clock.now() >= user_data_at {
            user_data_at = ctx.clock.now() + USER_DATA_EVERY;
            if let Ok(fresh) = metadata(imds).await {
                publish_user_data(ctx, azure, &fresh);
            }
            if reloaded {
                continue;
            }
        }
        let now = ctx.clock.now();
        let settings = ctx.settings.borrow().clone();
        if now >= due {
            let protected = match ctx.shared.protection() {
                ProtectionNews::NotKept | ProtectionNews::Gone => None,
                ProtectionNews::Released => Some(false),
                // Protected or unknown: not removable until a release is proven.
                ProtectionNews::Protected | ProtectionNews::Unknown => Some(true),
            };
            let offer = azure.offer_now().unwrap_or(super::demand::Offer {
                in_use: false,
                booting: true,
                free: false,
                ready: Err("starting".into()),
            });
            let (idle, share) = (ctx.shared.idle(), ctx.shared.share());
            let capacity = (monitor::MAX_AGE.as_secs_f64() / interval.as_secs_f64()).ceil() as usize + 1;
            let (stamps, next) = due_stamps(boundary, offset, interval, now);
            for stamp in stamps {
                backlog.push(monitor::bucket(stamp, now, &idle, &share, protected, &offer), capacity);
            }
            boundary = next;
        }
        let expired = backlog.expire(now);
        if expired > 0 {
            azure.0.dropped.get_or_create(&vec![("reason".into(), "too_old".into())]).inc_by(expired);
            tracing::warn!(component = "azure", "{expired} metric bucket(s) older than Azure takes were dropped");
        }
        let instance = settings.azure.instance_dimension.then_some(compute.name.as_str());
        match post_backlog(azure, http, tokens, url, &settings.azure.metrics_namespace, instance, &mut backlog).await {
            Ok(()) => {
                retry_at = None;
                failures = 0;
            }
            Err(after) => {
                failures += 1;
                let backoff = Duration::from_secs(5).saturating_mul(1 << failures.min(4)).min(Duration::from_secs(60));
                // A server may ask for any delay: an hour at most, and no arithmetic that can overflow.
                let wait = after.unwrap_or(backoff.mul_f64(0.5 + fastrand::f64() / 2.0)).min(Duration::from_secs(3600));
                retry_at = Some(now.checked_add(wait).unwrap_or(now));
            }
        }
        azure.update(|r| {
            r.backlog = backlog.len();
            r.dropped_too_old = backlog.dropped_too_old;
            r.dropped_rejected = backlog.dropped_rejected;
        });
    }
}

/// A loop woken late (a slow post, a busy host) still posts every interval it
/// passed, with the values as they are now, up to this many; a VM that slept
/// or a clock step starts again from now instead of describing a past it did
/// not see.
const MAX_CATCH_UP: u32 = 3;

/// The buckets due at `now` (their stamps), and the next boundary to wait for.
fn due_stamps(
    boundary: SystemTime,
    offset: Duration,
    interval: Duration,
    now: SystemTime,
) -> (Vec<SystemTime>, SystemTime) {
    let mut stamps = vec![boundary];
    let mut stamp = boundary + interval;
    while stamp + offset <= now {
        if stamps.len() as u32 >= MAX_CATCH_UP {
            // Far behind: from now on, never a bucket ahead of the clock.
            return (stamps, next_boundary(now, interval).max(stamp));
        }
        stamps.push(stamp);
        stamp += interval;
    }
    (stamps, stamp)
}

/// The next interval boundary after `now` (whole minutes for 1m).
fn next_boundary(now: SystemTime, interval: Duration) -> SystemTime {
    let since = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis();
    let step = interval.as_millis().max(1);
    SystemTime::UNIX_EPOCH + Duration::from_millis(((since / step + 1) * step) as u64)
}

/// Posts the backlog oldest first. Err: stop and try again later (with the
/// endpoint's `Retry-After` if it gave one).
#[allow(clippy::too_many_arguments)]
async fn post_backlog(
    azure: &Azure,
    http: &reqwest::Client,
    tokens: &Tokens,
    url: &str,
    namespace: &str,
    instance: Option<&str>,
    backlog: &mut monitor::Backlog,
) -> Result<(), Option<Duration>> {
    while let Some(bucket) = backlog.oldest() {
        let body = monitor::body(bucket, namespace, instance);
        let mut forced = false;
        let answer = loop {
            let token = match tokens.get(token::MONITORING, forced).await {
                Ok(token) => token,
                Err(err) => {
                    record(azure, 0, format!("no token for {}: {err}", token::MONITORING), "no_token");
                    return Err(None);
                }
            };
            let sent = http
                .post(url)
                .header(reqwest::header::AUTHORIZATION, token.bearer())
                .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
                .body(body.clone())
                .send()
                .await;
            match sent {
                // One forced refresh and one retry after a 401: a token revoked or rotated early.
                Ok(answer) if answer.status() == reqwest::StatusCode::UNAUTHORIZED && !forced => forced = true,
                other => break other,
            }
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(err) => {
                record(azure, 0, imds::describe(&err), "unreachable");
                return Err(None);
            }
        };
        let status = answer.status();
        let retry_after = imds::retry_after(&answer);
        let text: String = answer.text().await.unwrap_or_default().chars().take(500).collect();
        match status.as_u16() {
            200..=299 => {
                backlog.accepted();
                azure.update(|r| r.buckets_posted += 1);
                record(azure, status.as_u16(), "accepted".into(), "accepted");
                azure.0.problems.set("metrics", None);
            }
            400 => {
                tracing::warn!(component = "azure", "Azure Monitor refused a metric bucket (400): {text}");
                backlog.rejected();
                azure.0.dropped.get_or_create(&vec![("reason".into(), "rejected".into())]).inc();
                record(azure, 400, text, "rejected");
            }
            403 => {
                let why = "the VM's identity may not publish metrics: give it the Monitoring Metrics Publisher role on the scale set";
                azure.0.problems.set("metrics", Some(format!("Azure Monitor refused the post (403): {why}")));
                record(azure, 403, format!("{why}: {text}"), "forbidden");
                return Err(None);
            }
            code => {
                record(azure, code, text, "retry");
                return Err(retry_after);
            }
        }
    }
    Ok(())
}

fn record(azure: &Azure, status: u16, detail: String, outcome: &str) {
    azure.0.posts.get_or_create(&vec![("outcome".into(), outcome.into())]).inc();
    let at = crate::core::clock::rfc3339(azure.now());
    azure.update(|r| r.last_post = Some(LastPost { at, status, detail }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_start_on_boundaries() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_030);
        assert_eq!(
            next_boundary(at, Duration::from_secs(60)),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_060)
        );
    }

    #[test]
    fn a_late_wake_posts_every_interval_it_passed_and_a_long_sleep_starts_again_from_now() {
        let minute = Duration::from_secs(60);
        let offset = Duration::from_secs(20);
        let b = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000); // a whole minute
        let at = |secs: u64| b + Duration::from_secs(secs);
        // On time: one bucket, the next boundary a minute on.
        assert_eq!(due_stamps(b, offset, minute, at(21)), (vec![b], at(60)));
        // Woken 85 s late (a slow post on a busy host): the minute passed meanwhile is not lost.
        assert_eq!(due_stamps(b, offset, minute, at(85)), (vec![b, at(60)], at(120)));
        // Just before the next one is due: that one waits for its own offset.
        assert_eq!(due_stamps(b, offset, minute, at(79)), (vec![b], at(60)));
        // An hour asleep: three at most, then from now (never a bucket ahead of the clock).
        let (stamps, next) = due_stamps(b, offset, minute, at(3600 + 5));
        assert_eq!(stamps, vec![b, at(60), at(120)]);
        assert_eq!(next, at(3660));
    }
}
