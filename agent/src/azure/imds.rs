//! The Instance Metadata Service: one HTTP client that never goes through a
//! proxy, one rate limiter for every IMDS call of the agent (IMDS allows 5
//! requests a second per VM), and the retry rules IMDS's documentation gives.

use prometheus_client::metrics::counter::Counter;
use reqwest::StatusCode;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// IMDS's limit, with no room to spare taken.
const REQUESTS_PER_SECOND: usize = 5;
/// A 410 means "not ready yet, ask again": every 10 s, for up to 70 s.
const GONE_RETRY: Duration = Duration::from_secs(10);
const GONE_FOR_AT_MOST: Duration = Duration::from_secs(70);
const BACKOFF_CEILING: Duration = Duration::from_secs(30);
/// Nothing at the address for this long: not on Azure (or no network yet).
const UNANSWERED_FOR_AT_MOST: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
pub enum ImdsError {
    /// Nothing answers at the address: not on Azure (or the network is not up).
    #[error("IMDS at {0} does not answer: {1}")]
    Unreachable(String, String),
    /// An answer that no retry will change (400, 401, 403, 405, ...).
    #[error("IMDS answered {status} to {path}: {body}")]
    Refused { status: u16, path: String, body: String },
    #[error("IMDS gave no usable answer to {path} within {after}: {last}")]
    GaveUp { path: String, after: String, last: String },
}

pub struct Imds {
    http: reqwest::Client,
    base: String,
    sent: Mutex<VecDeque<Instant>>,
    requests: Counter,
    retries: Counter,
}

/// Counts of every IMDS request and retry, for `/metrics` and `pool-agent azure`.
#[derive(Debug, Clone, Default)]
pub struct ImdsCounters {
    pub requests: Counter,
    pub retries: Counter,
}

/// What to do after an answer or a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Done,
    RetryAfter(Duration),
    GiveUp,
}

/// The retry rule for one answer. `attempt` counts from 1; `gone_since` is
/// how long 410s have been coming.
pub fn next_step(status: Option<StatusCode>, retry_after: Option<Duration>, attempt: u32, gone_for: Duration) -> Next {
    let backoff = || {
        let base = Duration::from_millis(500).saturating_mul(1 << attempt.min(8)).min(BACKOFF_CEILING);
        // Jitter, so a pool's VMs booted together do not retry in step.
        let spread = 0.5 + fastrand::f64() / 2.0;
        base.mul_f64(spread)
    };
    match status {
        Some(status) if status.is_success() => Next::Done,
        Some(StatusCode::GONE) if gone_for < GONE_FOR_AT_MOST => Next::RetryAfter(GONE_RETRY),
        Some(StatusCode::GONE) => Next::GiveUp,
        Some(StatusCode::TOO_MANY_REQUESTS) => {
            Next::RetryAfter(retry_after.unwrap_or_else(|| Duration::from_secs(1) * 2u32.pow(attempt.min(5) - 1)))
        }
        Some(StatusCode::NOT_FOUND) => Next::RetryAfter(backoff()),
        Some(status) if status.is_server_error() => Next::RetryAfter(backoff()),
        Some(_) => Next::GiveUp,
        // A timeout or a dropped connection.
        None => Next::RetryAfter(backoff()),
    }
}

impl Imds {
    pub fn new(base: &str, counters: &ImdsCounters) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            // Never a proxy, not even one from the environment: IMDS is link-local.
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|err| format!("cannot build the IMDS client: {err}"))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            sent: Mutex::new(VecDeque::new()),
            requests: counters.requests.clone(),
            retries: counters.retries.clone(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Waits until one more request keeps the last second at 5 or fewer.
    async fn take_a_slot(&self) {
        loop {
            let wait = {
                let mut sent = self.sent.lock().await;
                let now = Instant::now();
                while sent.front().is_some_and(|at| now.duration_since(*at) >= Duration::from_secs(1)) {
                    sent.pop_front();
                }
                if sent.len() < REQUESTS_PER_SECOND {
                    sent.push_back(now);
                    return;
                }
                sent.front().map(|oldest| Duration::from_secs(1) - now.duration_since(*oldest)).unwrap_or_default()
            };
            tokio::time::sleep(wait + Duration::from_millis(5)).await;
        }
    }

    /// One GET with `Metadata: true`, retried by [`next_step`] until
    /// `deadline` has passed. Returns the body of a 2xx answer.
    pub async fn get(&self, path_and_query: &str, deadline: Duration) -> Result<Vec<u8>, ImdsError> {
        let started = Instant::now();
        let mut attempt = 0u32;
        let mut gone_since: Option<Instant> = None;
        let mut ever_answered = false;
        let mut last;
        loop {
            attempt += 1;
            self.take_a_slot().await;
            self.requests.inc();
            let url = format!("{}{path_and_query}", self.base);
            let sent = self.http.get(&url).header("Metadata", "true").send().await;
            let (status, retry_after) = match sent {
                Ok(answer) => {
                    ever_answered = true;
                    let status = answer.status();
                    let retry_after = retry_after(&answer);
                    let body = answer.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                    if status.is_success() {
                        return Ok(body);
                    }
                    last = format!("HTTP {}", status.as_u16());
                    if status == StatusCode::GONE {
                        gone_since.get_or_insert_with(Instant::now);
                    }
                    if next_step(Some(status), retry_after, attempt, Duration::ZERO) == Next::GiveUp
                        && status != StatusCode::GONE
                    {
                        let body = String::from_utf8_lossy(&body).chars().take(300).collect();
                        return Err(ImdsError::Refused {
                            status: status.as_u16(),
                            path: strip_query(path_and_query),
                            body,
                        });
                    }
                    (Some(status), retry_after)
                }
                Err(err) => {
                    last = if err.is_timeout() { "no answer in time".to_string() } else { describe(&err) };
                    (None, None)
                }
            };
            let gone_for = gone_since.map(|at| at.elapsed()).unwrap_or_default();
            let wait = match next_step(status, retry_after, attempt, gone_for) {
                Next::RetryAfter(wait) => wait,
                Next::Done | Next::GiveUp => Duration::MAX,
            };
            let unanswered_too_long = !ever_answered && started.elapsed() + wait > UNANSWERED_FOR_AT_MOST;
            if wait == Duration::MAX || started.elapsed() + wait > deadline || unanswered_too_long {
                let after = crate::config::duration::format_rounded(started.elapsed());
                return Err(match ever_answered {
                    false => ImdsError::Unreachable(self.base.clone(), last),
                    true => ImdsError::GaveUp { path: strip_query(path_and_query), after, last },
                });
            }
            self.retries.inc();
            tokio::time::sleep(wait).await;
        }
    }
}

impl Imds {
    /// One POST with `Metadata: true` (a Scheduled Events approval), inside
    /// the same rate limit; tried again once after a 429 or 5xx.
    pub async fn post(&self, path_and_query: &str, body: &serde_json::Value) -> Result<(), ImdsError> {
        let mut last = String::new();
        for attempt in 0..2 {
            self.take_a_slot().await;
            self.requests.inc();
            let url = format!("{}{path_and_query}", self.base);
            match self.http.post(&url).header("Metadata", "true").json(body).send().await {
                Ok(answer) if answer.status().is_success() => return Ok(()),
                Ok(answer) => {
                    let status = answer.status();
                    let wait = retry_after(&answer).unwrap_or(Duration::from_secs(1));
                    let text: String = answer.text().await.unwrap_or_default().chars().take(300).collect();
                    if !(status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()) || attempt == 1 {
                        return Err(ImdsError::Refused {
                            status: status.as_u16(),
                            path: strip_query(path_and_query),
                            body: text,
                        });
                    }
                    last = format!("HTTP {}", status.as_u16());
                    self.retries.inc();
                    tokio::time::sleep(wait.min(Duration::from_secs(10))).await;
                }
                Err(err) => {
                    last = describe(&err);
                    self.retries.inc();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        Err(ImdsError::Unreachable(self.base.clone(), last))
    }
}

/// An answer's `Retry-After` in seconds (the form Azure sends), if any.
pub fn retry_after(answer: &reqwest::Response) -> Option<Duration> {
    let value = answer.headers().get(reqwest::header::RETRY_AFTER)?;
    value.to_str().ok()?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A request's path without its query (which may carry a client id).
fn strip_query(path: &str) -> String {
    path.split('?').next().unwrap_or(path).to_string()
}

/// reqwest's error chain in a line, without the URL it repeats.
pub fn describe(err: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(err);
    while let Some(cause) = source {
        text = cause.to_string();
        source = cause.source();
    }
    if text.is_empty() {
        text = err.to_string();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_follow_imds_rules() {
        let gone = Some(StatusCode::GONE);
        assert_eq!(next_step(gone, None, 1, Duration::ZERO), Next::RetryAfter(GONE_RETRY));
        assert_eq!(next_step(gone, None, 8, Duration::from_secs(71)), Next::GiveUp, "410 for 70 s at most");
        let busy = Some(StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            next_step(busy, Some(Duration::from_secs(3)), 1, Duration::ZERO),
            Next::RetryAfter(Duration::from_secs(3))
        );
        assert_eq!(next_step(busy, None, 1, Duration::ZERO), Next::RetryAfter(Duration::from_secs(1)));
        for never in [400, 401, 403, 405] {
            assert_eq!(next_step(StatusCode::from_u16(never).ok(), None, 1, Duration::ZERO), Next::GiveUp, "{never}");
        }
        for backoff in [Some(StatusCode::NOT_FOUND), Some(StatusCode::SERVICE_UNAVAILABLE), None] {
            match next_step(backoff, None, 20, Duration::ZERO) {
                Next::RetryAfter(wait) => assert!(wait <= BACKOFF_CEILING && wait >= BACKOFF_CEILING / 2, "{wait:?}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
