//! Self-delete's ARM calls: like [`super::arm::send`], plus the `If-Match`
//! a lease write needs and the headers a long-running delete answers with
//! (`Azure-AsyncOperation`, `Location`, `Retry-After`).

use super::token::{self, Tokens};
use std::time::Duration;

/// One answer from ARM (nothing secret in these bodies).
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub retry_after: Option<Duration>,
    pub async_operation: Option<String>,
    pub location: Option<String>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// The start of the body, for status lines (ARM names its code and message).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).chars().take(300).collect()
    }
}

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
    let mut forced = false;
    loop {
        let token = tokens
            .get(token::MANAGEMENT, forced)
            .await
            .map_err(|err| format!("no token for {}: {err}", token::MANAGEMENT))?;
        let mut request = http.request(method.clone(), url).header(reqwest::header::AUTHORIZATION, token.bearer());
        if let Some(etag) = if_match {
            request = request.header(reqwest::header::IF_MATCH, etag);
        }
        request = match body {
            Some(body) => request.json(body),
            None if method == reqwest::Method::POST => request.header(reqwest::header::CONTENT_LENGTH, "0"),
            None => request,
        };
        let answer = request.send().await.map_err(|err| format!("no answer: {}", super::imds::describe(&err)))?;
        let status = answer.status().as_u16();
        if status == 401 && !forced {
            forced = true;
            continue;
        }
        let header = |name: &str| answer.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let async_operation = header("azure-asyncoperation");
        let location = header("location");
        let retry_after = super::imds::retry_after(&answer);
        let body = answer
            .bytes()
            .await
            .map_err(|err| format!("the answer broke off: {}", super::imds::describe(&err)))?
            .to_vec();
        return Ok(Reply { status, body, retry_after, async_operation, location });
    }
}
