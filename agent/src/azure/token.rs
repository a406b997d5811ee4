//! Managed identity tokens from IMDS: one cache per audience, refreshed
//! before expiry, one request at a time per audience. A token is a secret:
//! it never reaches a log line, status, metric, panic or `Debug` output.

use super::imds::{Imds, ImdsError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

/// The audiences, exactly as Azure spells them.
pub const MONITORING: &str = "https://monitoring.azure.com/";
pub const MANAGEMENT: &str = "https://management.azure.com/";
pub const KEY_VAULT: &str = "https://vault.azure.net";

/// A bearer token; its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct AccessToken(Arc<Zeroizing<String>>);

impl AccessToken {
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0.as_str())
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

#[derive(Debug, Clone)]
struct Cached {
    token: AccessToken,
    expires_at: SystemTime,
    lifetime: Duration,
}

impl Cached {
    /// Refreshed when less than 5 minutes or half its lifetime is left.
    fn fresh(&self, now: SystemTime) -> bool {
        let left = self.expires_at.duration_since(now).unwrap_or_default();
        left > Duration::from_secs(300).min(self.lifetime / 2)
    }
}

/// What `pool-agent azure` shows of a cached token: never the token.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TokenView {
    pub audience: String,
    pub expires: String,
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: String,
    /// Seconds, as a string (IMDS's own format).
    expires_in: serde_json::Value,
}

pub struct Tokens {
    imds: Arc<Imds>,
    clock: crate::core::clock::SharedClock,
    client_id: String,
    cache: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Cached>>>>>,
}

impl Tokens {
    pub fn new(imds: Arc<Imds>, client_id: &str, clock: crate::core::clock::SharedClock) -> Self {
        Self { imds, clock, client_id: client_id.to_string(), cache: Default::default() }
    }

    fn slot(&self, audience: &str) -> Arc<tokio::sync::Mutex<Option<Cached>>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.entry(audience.to_string()).or_default().clone()
    }

    /// A token for `audience`: the cached one while fresh, else a new one.
    /// `force` (after a 401 from a service) asks IMDS again whatever the cache says.
    pub async fn get(&self, audience: &str, force: bool) -> Result<AccessToken, ImdsError> {
        let slot = self.slot(audience);
        // Single flight: whoever waits here finds the token the first caller fetched.
        let mut cached = slot.lock().await;
        let now = self.clock.now();
        if let Some(token) = cached.as_ref().filter(|c| !force && c.fresh(now)) {
            return Ok(token.token.clone());
        }
        let mut path =
            format!("/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}", urlencoding(audience));
        if !self.client_id.is_empty() {
            path.push_str(&format!("&client_id={}", self.client_id));
        }
        let body = Zeroizing::new(self.imds.get(&path, Duration::from_secs(60)).await?);
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|err| ImdsError::Refused {
            status: 200,
            path: "/metadata/identity/oauth2/token".into(),
            body: format!("not a token answer: {err}"),
        })?;
        let seconds = match &answer.expires_in {
            serde_json::Value::String(text) => text.parse().unwrap_or(0),
            serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
            _ => 0,
        };
        let lifetime = Duration::from_secs(seconds.max(1));
        let token = AccessToken(Arc::new(Zeroizing::new(answer.access_token)));
        *cached = Some(Cached { token: token.clone(), expires_at: now + lifetime, lifetime });
        Ok(token)
    }

    /// The audiences cached and when each token expires.
    pub fn views(&self) -> Vec<TokenView> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut views: Vec<TokenView> = cache
            .iter()
            .filter_map(|(audience, slot)| {
                let cached = slot.try_lock().ok()?;
                let expires = cached.as_ref()?.expires_at;
                Some(TokenView { audience: audience.clone(), expires: crate::core::clock::rfc3339(expires) })
            })
            .collect();
        views.sort_by(|a, b| a.audience.cmp(&b.audience));
        views
    }
}

/// Percent-encodes a query value (the audiences are URLs).
fn urlencoding(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_refreshed_with_five_minutes_or_half_its_life_left_and_never_shown() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = AccessToken(Arc::new(Zeroizing::new("eyJ.secret".into())));
        let hour = Cached {
            token: token.clone(),
            expires_at: now + Duration::from_secs(3600),
            lifetime: Duration::from_secs(3600),
        };
        assert!(hour.fresh(now));
        assert!(!hour.fresh(now + Duration::from_secs(3301)), "under 5 minutes left");
        let short = Cached {
            token: token.clone(),
            expires_at: now + Duration::from_secs(90),
            lifetime: Duration::from_secs(90),
        };
        assert!(short.fresh(now + Duration::from_secs(44)));
        assert!(!short.fresh(now + Duration::from_secs(46)), "under half of 90 s left");
        assert!(!format!("{token:?} {hour:?}").contains("secret"));
        assert_eq!(urlencoding(MONITORING), "https%3A%2F%2Fmonitoring.azure.com%2F");
    }
}
