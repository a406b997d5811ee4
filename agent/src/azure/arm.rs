//! One authenticated call to an Azure service (ARM, Key Vault) with the VM's
//! managed identity: a 401 refreshes the token once and tries again.

use super::token::Tokens;
use std::time::Duration;
use zeroize::Zeroizing;

/// What came back. The body is wiped on drop: it may carry a key.
pub struct Answer {
    pub status: u16,
    pub body: Zeroizing<Vec<u8>>,
    pub retry_after: Option<Duration>,
    /// A long-running operation's status URLs (`Azure-AsyncOperation`, `Location`).
    pub async_operation: Option<String>,
    pub location: Option<String>,
}

impl Answer {
    pub fn success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// The start of the body, for status lines (error answers name their code and message).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).chars().take(400).collect()
    }
}

/// Sends `method url` (with a JSON body, if any) under a token for `audience`.
/// Err: no token, or no answer (the text says which).
pub async fn send(
    http: &reqwest::Client,
    tokens: &Tokens,
    audience: &str,
    method: reqwest::Method,
    url: &str,
    body: Option<&serde_json::Value>,
) -> Result<Answer, String> {
    send_if_match(http, tokens, audience, method, url, body, None).await
}

/// [`send`], with `If-Match: <etag>` when given (a compare-and-swap write).
#[allow(clippy::too_many_arguments)]
pub async fn send_if_match(
    http: &reqwest::Client,
    tokens: &Tokens,
    audience: &str,
    method: reqwest::Method,
    url: &str,
    body: Option<&serde_json::Value>,
    if_match: Option<&str>,
) -> Result<Answer, String> {
    let mut forced = false;
    loop {
        let token = tokens.get(audience, forced).await.map_err(|err| format!("no token for {audience}: {err}"))?;
        let mut request = http.request(method.clone(), url).header(reqwest::header::AUTHORIZATION, token.bearer());
        if let Some(etag) = if_match {
            request = request.header(reqwest::header::IF_MATCH, etag);
        }
        request = match body {
            Some(body) => request.json(body),
            // ARM wants a length on a POST without a body (listKeys).
            None if method == reqwest::Method::POST => request.header(reqwest::header::CONTENT_LENGTH, "0"),
            None => request,
        };
        let answer = request.send().await.map_err(|err| format!("no answer: {}", super::imds::describe(&err)))?;
        let status = answer.status().as_u16();
        if status == 401 && !forced {
            forced = true;
            continue;
        }
        let retry_after = super::imds::retry_after(&answer);
        let header = |name: &str| answer.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (async_operation, location) = (header("azure-asyncoperation"), header("location"));
        let bytes =
            answer.bytes().await.map_err(|err| format!("the answer broke off: {}", super::imds::describe(&err)))?;
        return Ok(Answer { status, body: Zeroizing::new(bytes.to_vec()), retry_after, async_operation, location });
    }
}
