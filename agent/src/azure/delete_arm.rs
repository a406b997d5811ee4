//! Self-delete's ARM calls: [`super::arm::send_if_match`] under a management
//! token — the `If-Match` a lease write needs, and the headers a
//! long-running delete answers with (`Azure-AsyncOperation`, `Location`,
//! `Retry-After`).

use super::token::{self, Tokens};

/// One answer from ARM.
pub type Reply = super::arm::Answer;

/// `method url` under a management token; a 401 refreshes the token once.
/// Err: no token, or no answer (the text says which).
pub async fn call(
    http: &reqwest::Client,
    tokens: &Tokens,
    method: reqwest::Method,
    url: &str,
    body: Option<&serde_json::Value>,
    if_match: Option<&str>,
) -> Result<Reply, String> {
    super::arm::send_if_match(http, tokens, token::MANAGEMENT, method, url, body, if_match).await
}
