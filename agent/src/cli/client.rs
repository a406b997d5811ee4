//! HTTP/1.1 over the daemon's unix socket, every call under one deadline.

use crate::api::types::ErrorBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::UnixStream;

/// Answers larger than this are not the daemon's.
const MAX_REPLY_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach pool-agentd at {socket} ({reason}); start it with `sudo systemctl start pool-agentd`, or try `pool-agentd --demo`")]
    Unreachable { socket: String, reason: String },
    #[error("permission denied on {socket}: run it with sudo, or ask an admin to add you to the {admin_group} group (sudo usermod -aG {admin_group} $USER, then log in again)")]
    Denied { socket: String, admin_group: String },
    #[error("pool-agentd at {socket} did not answer within {}", crate::config::duration::format_rounded(*after))]
    Timeout { socket: String, after: Duration },
    #[error("talking to pool-agentd at {socket}: {reason}")]
    Protocol { socket: String, reason: String },
    #[error("{}", .body.message)]
    Api { status: StatusCode, body: ErrorBody },
}

impl ClientError {
    /// 3 when the daemon cannot be reached at all, 1 when it refused or failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } | ClientError::Denied { .. } | ClientError::Timeout { .. } => 3,
            ClientError::Protocol { .. } | ClientError::Api { .. } => 1,
        }
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(socket: &Path, timeout: Duration) -> Self {
        Self { socket: socket.to_path_buf(), timeout }
    }

    fn socket_name(&self) -> String {
        self.socket.display().to_string()
    }

    /// Sends one request; an error status becomes [`ClientError::Api`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Reply, ClientError> {
        let reply = tokio::time::timeout(self.timeout, self.exchange(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout { socket: self.socket_name(), after: self.timeout })??;
        if reply.status.is_success() {
            return Ok(reply);
        }
        let body = serde_json::from_slice::<ErrorBody>(&reply.body).unwrap_or_else(|_| ErrorBody {
            error: "http_error".to_string(),
            message: format!("HTTP {} from the daemon", reply.status),
        });
        Err(ClientError::Api { status: reply.status, body })
    }

    /// Connects; a full queue (EAGAIN) is waited out, as a blocking connect
    /// would, until the caller's timeout ends the call.
    async fn connect(&self) -> Result<UnixStream, ClientError> {
        loop {
            match UnixStream::connect(&self.socket).await {
                Ok(stream) => return Ok(stream),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
                    let admin_group = crate::config::DEFAULT_ADMIN_GROUP.to_string();
                    return Err(ClientError::Denied { socket: self.socket_name(), admin_group });
                }
                Err(err) => {
                    let reason = crate::config::io_text(&err);
                    return Err(ClientError::Unreachable { socket: self.socket_name(), reason });
                }
            }
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Reply, ClientError> {
        let protocol = |reason: String| ClientError::Protocol { socket: self.socket_name(), reason };
        let stream = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| protocol(err.to_string()))?;
        let driver = tokio::spawn(connection);

        let payload = match &body {
            Some(value) => Bytes::from(serde_json::to_vec(value).map_err(|err| protocol(err.to_string()))?),
            None => Bytes::new(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::USER_AGENT, concat!("pool-agent/", env!("CARGO_PKG_VERSION")));
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(payload)).map_err(|err| protocol(err.to_string()))?;
        let response = sender.send_request(request).await.map_err(|err| protocol(err.to_string()))?;
        let status = response.status();
        let limited = http_body_util::Limited::new(response.into_body(), MAX_REPLY_BYTES);
        let bytes = limited.collect().await.map_err(|err| protocol(err.to_string()))?.to_bytes();
        driver.abort();
        Ok(Reply { status, body: bytes })
    }
}
