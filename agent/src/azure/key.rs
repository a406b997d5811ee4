//! The share's storage key, fetched with the VM's identity instead of read
//! from a file baked into the image: a Key Vault secret (`key-vault`) or the
//! storage account's own keys through ARM `listKeys` (`storage-account`).
//!
//! The key lives in memory only (wiped on drop) and reaches the share through
//! the core's shared state; the share hands it to mount.cifs in its
//! short-lived credentials file. A mount the server refuses asks for the key
//! again (keys get rotated), at most every [`REFETCH_EVERY`].

use super::token::{self, Tokens};
use super::Compute;
use crate::config::{KeySourceKind, Settings, ShareSource};
use crate::core::credentials::StorageKey;
use crate::core::shared::KeyNews;
use crate::core::task::TaskContext;
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

/// Key Vault's data-plane version for secrets.
pub const KEY_VAULT_API: &str = "7.4";
/// The storage resource provider's version for `listKeys`.
pub const STORAGE_API: &str = "2023-05-01";
/// A refused key is fetched again at most this often.
pub const REFETCH_EVERY: Duration = Duration::from_secs(300);
/// Failed fetches are retried from this, doubling, up to [`REFETCH_EVERY`].
const FIRST_RETRY: Duration = Duration::from_secs(10);

/// What the share's config asks of Azure for its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub source: KeySourceKind,
    pub secret_url: Option<String>,
    pub account: String,
    pub account_id: Option<String>,
    pub spread: Duration,
}

/// The key Azure must fetch, if the share's key comes from Azure.
pub fn spec(settings: &Settings) -> Option<KeySpec> {
    match &settings.share.as_ref()?.source {
        ShareSource::AzureFiles {
            key_source: source @ (KeySourceKind::KeyVault | KeySourceKind::StorageAccount),
            account: Some(account),
            key_vault_secret,
            storage_account_id,
            key_fetch_spread,
            ..
        } => Some(KeySpec {
            source: *source,
            secret_url: key_vault_secret.clone(),
            account: account.clone(),
            account_id: storage_account_id.clone(),
            spread: *key_fetch_spread,
        }),
        _ => None,
    }
}

/// What `pool-agent azure` shows of the key: never the key.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct KeyView {
    /// `key-vault` or `storage-account`.
    pub source: String,
    /// Where the key in use came from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_at: Option<String>,
    /// Keys fetched since the agent started.
    #[serde(default)]
    pub fetches: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fetch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why a fetch failed, and when to try again.
#[derive(Debug)]
pub struct FetchError {
    pub why: String,
    /// The service's `Retry-After`, or a fixed wait for errors retrying soon cannot fix.
    pub retry_after: Option<Duration>,
}

impl FetchError {
    fn now(why: String) -> Self {
        Self { why, retry_after: None }
    }
}

/// Where `listKeys` is asked: the configured account, else the account of
/// that name in the VM's own subscription and resource group.
pub fn account_id(spec: &KeySpec, compute: &Compute) -> String {
    spec.account_id.clone().unwrap_or_else(|| {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Storage/storageAccounts/{}",
            compute.subscription_id, compute.resource_group_name, spec.account
        )
    })
}

/// One fetch. `refused`: the key a mount was refused with; the storage
/// account's other key is taken when the first one is still that key.
pub async fn fetch(
    http: &reqwest::Client,
    tokens: &Tokens,
    spec: &KeySpec,
    compute: &Compute,
    arm_endpoint: &str,
    refused: Option<&StorageKey>,
) -> Result<(StorageKey, String), FetchError> {
    match spec.source {
        KeySourceKind::KeyVault => {
            let secret = spec.secret_url.clone().unwrap_or_default();
            let url = format!("{secret}?api-version={KEY_VAULT_API}");
            let body = call(http, tokens, token::KEY_VAULT, reqwest::Method::GET, &url, "Key Vault").await?;
            #[derive(serde::Deserialize)]
            struct Secret {
                value: String,
            }
            let secret_value = serde_json::from_slice::<Secret>(&body)
                .map_err(|_| FetchError::now("Key Vault's answer carries no secret value".to_string()))?;
            let key = StorageKey::fetched(Zeroizing::new(secret_value.value))
                .map_err(|why| FetchError::now(format!("the Key Vault secret is not a storage key: {why}")))?;
            Ok((key, format!("Key Vault secret {secret}")))
        }
        _ => {
            let id = account_id(spec, compute);
            let url = format!("{arm_endpoint}{id}/listKeys?api-version={STORAGE_API}");
            let body =
                call(http, tokens, token::MANAGEMENT, reqwest::Method::POST, &url, "the storage account").await?;
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Keys {
                keys: Vec<AccountKey>,
            }
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct AccountKey {
                key_name: String,
                value: String,
            }
            let keys = serde_json::from_slice::<Keys>(&body)
                .map_err(|_| FetchError::now("listKeys answered without keys".to_string()))?
                .keys;
            let mut candidates = Vec::new();
            for account_key in keys {
                let name = account_key.key_name.clone();
                if let Ok(key) = StorageKey::fetched(Zeroizing::new(account_key.value)) {
                    candidates.push((name, key));
                }
            }
            // key1 first; after a refusal, the first key that is not the refused one.
            candidates.sort_by(|a, b| a.0.cmp(&b.0));
            let pick =
                candidates.iter().position(|(_, key)| refused.is_none_or(|refused| !key.same_as(refused))).unwrap_or(0);
            if candidates.is_empty() {
                return Err(FetchError::now("listKeys answered without a usable key".to_string()));
            }
            let (name, key) = candidates.swap_remove(pick);
            Ok((key, format!("{name} of storage account {}", spec.account)))
        }
    }
}

/// One authenticated call; a 401 refreshes the token once and tries again.
async fn call(
    http: &reqwest::Client,
    tokens: &Tokens,
    audience: &str,
    method: reqwest::Method,
    url: &str,
    service: &str,
) -> Result<Zeroizing<Vec<u8>>, FetchError> {
    let answer = super::arm::send(http, tokens, audience, method, url, None)
        .await
        .map_err(|why| FetchError::now(format!("{service}: {why}")))?;
    if answer.success() {
        return Ok(answer.body);
    }
    // An error body names the problem (its code and message), never a key.
    let (status, text) = (answer.status, answer.text());
    let why = match (status, audience) {
        (403, token::KEY_VAULT) => {
            "the VM's identity may not read the secret: give it the Key Vault Secrets User role on the vault".to_string()
        }
        (403, _) => "the VM's identity may not list the account's keys: give it a role with Microsoft.Storage/storageAccounts/listkeys/action (Storage Account Key Operator Service Role) on the account".to_string(),
        (404, _) => format!("{service} has no such resource (404): {text}"),
        _ => format!("{service} answered {status}: {text}"),
    };
    // Waiting will not fix a missing role or resource soon: ask again rarely.
    let retry_after = match status {
        403 | 404 => Some(REFETCH_EVERY),
        _ => answer.retry_after,
    };
    Err(FetchError { why, retry_after })
}

/// Fetches the key once the spread has passed, publishes it, and fetches
/// again when a mount says the server refused it.
#[allow(clippy::too_many_arguments)]
pub async fn keep(
    ctx: TaskContext,
    view: std::sync::Arc<std::sync::Mutex<KeyView>>,
    problems: super::Problems,
    http: reqwest::Client,
    tokens: std::sync::Arc<Tokens>,
    spec: KeySpec,
    compute: Compute,
    arm_endpoint: String,
) {
    let set_view = super::Shown(view);
    let first = spec.spread.mul_f64(fastrand::f64());
    let previous = ctx.shared.storage_key();
    let mut generation = previous.generation;
    let mut current = previous.key.clone();
    if current.is_none() {
        let at = crate::core::clock::rfc3339(ctx.clock.now() + first);
        set_view.update(|v| v.next_fetch = Some(at.clone()));
        ctx.shared.publish_storage_key(KeyNews {
            error: Some(format!(
                "first fetch at {at} (a random point within share.key_fetch_spread, so a pool does not ask at once)"
            )),
            ..previous
        });
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tokio::time::sleep(first) => {}
        }
    }
    let mut wanted = ctx.shared.watch_fresh_key_wanted();
    let mut refused: Option<StorageKey> = None;
    let mut last_refetch: Option<SystemTime> = None;
    let mut retry = FIRST_RETRY;
    loop {
        if current.is_none() {
            match fetch(&http, &tokens, &spec, &compute, &arm_endpoint, refused.as_ref()).await {
                Ok((key, from)) => {
                    generation += 1;
                    let at = ctx.clock.now();
                    tracing::info!(component = "azure", "fetched the storage key ({from}), generation {generation}");
                    set_view.update(|v| {
                        v.from = from.clone();
                        v.fetched_at = Some(crate::core::clock::rfc3339(at));
                        v.fetches += 1;
                        v.next_fetch = None;
                        v.error = None;
                    });
                    problems.set("share key", None);
                    ctx.shared.publish_storage_key(KeyNews {
                        generation,
                        key: Some(key.clone()),
                        from,
                        fetched_at: Some(at),
                        error: None,
                    });
                    current = Some(key);
                    retry = FIRST_RETRY;
                }
                Err(err) => {
                    // A server may ask for any delay: an hour at most, and no arithmetic that can overflow.
                    let wait = err
                        .retry_after
                        .unwrap_or_else(|| retry.mul_f64(0.5 + fastrand::f64() / 2.0))
                        .min(Duration::from_secs(3600));
                    retry = (retry * 2).min(REFETCH_EVERY);
                    let now = ctx.clock.now();
                    let next = crate::core::clock::rfc3339(now.checked_add(wait).unwrap_or(now));
                    problems.set("share key", Some(err.why.clone()));
                    tracing::warn!(component = "azure", "cannot fetch the storage key: {}; again at {next}", err.why);
                    set_view.update(|v| {
                        v.error = Some(err.why.clone());
                        v.next_fetch = Some(next.clone());
                    });
                    // The key in hand (if any) stays: the failure may be the service's, not the key's.
                    let mut news = ctx.shared.storage_key();
                    news.error = Some(err.why);
                    ctx.shared.publish_storage_key(news);
                    tokio::select! {
                        _ = ctx.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            }
        }
        // Until a mount says the server refused this generation.
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                changed = wanted.changed() => if changed.is_err() { return },
            }
            if *wanted.borrow_and_update() >= generation {
                break;
            }
        }
        // A refused key is fetched again, but at most every REFETCH_EVERY.
        let now = ctx.clock.now();
        if let Some(wait) = last_refetch.and_then(|at| (at + REFETCH_EVERY).duration_since(now).ok()) {
            let at = crate::core::clock::rfc3339(now + wait);
            tracing::warn!(component = "azure", "the storage key was refused; fetching it again at {at}");
            set_view.update(|v| v.next_fetch = Some(at.clone()));
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        last_refetch = Some(ctx.clock.now());
        refused = current.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_keys_defaults_to_the_account_in_the_vm_s_resource_group() {
        let spec = KeySpec {
            source: KeySourceKind::StorageAccount,
            secret_url: None,
            account: "poolstore".into(),
            account_id: None,
            spread: Duration::ZERO,
        };
        let compute =
            Compute { subscription_id: "sub-1".into(), resource_group_name: "rg-pool".into(), ..Compute::default() };
        assert_eq!(
            account_id(&spec, &compute),
            "/subscriptions/sub-1/resourceGroups/rg-pool/providers/Microsoft.Storage/storageAccounts/poolstore"
        );
        let elsewhere = KeySpec {
            account_id: Some(
                "/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/other".into(),
            ),
            ..spec
        };
        assert!(account_id(&elsewhere, &compute).ends_with("/g/providers/Microsoft.Storage/storageAccounts/other"));
    }
}
