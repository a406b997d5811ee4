//! A small TCP listener for probes (the Application Health extension asks
//! `GET /health`): at most [`MAX_CONNECTIONS`] at once, one request per
//! connection, short read and write deadlines. A connection past the bound
//! is closed as soon as it is accepted, so nothing a local user does to the
//! port can hold the agent's file descriptors (the share probe and the
//! sampler need them).

use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Probes come one at a time; a few spare for a slow one.
pub const MAX_CONNECTIONS: usize = 8;
/// A whole request, read and answered, within this.
const DEADLINE: Duration = Duration::from_secs(2);
/// A probe's request is a line and a few headers.
const MAX_REQUEST: usize = 2048;
/// A port still held by the listener being replaced is tried again this often, this many times.
const BIND_RETRY: Duration = Duration::from_millis(250);
const BIND_TRIES: u32 = 20;

/// What the probe path answers now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// `200 OK` when true, `503 Service Unavailable` when not.
    pub ok: bool,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn json(body: String) -> Self {
        Self { ok: true, content_type: "application/json", body }
    }
}

/// The answer for the probe path.
pub type Answer = Arc<dyn Fn() -> Reply + Send + Sync>;

/// A running listener; dropped, it stops and frees its port.
pub struct ProbeListener {
    addr: String,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl ProbeListener {
    /// Binds `addr` (trying again while the port is still in use) and
    /// answers `GET {path}` with `answer()`.
    pub async fn bind(addr: &str, path: &'static str, answer: Answer, shutdown: CancellationToken) -> io::Result<Self> {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(err) if err.kind() == io::ErrorKind::AddrInUse && tries < BIND_TRIES => {
                    tries += 1;
                    tokio::time::sleep(BIND_RETRY).await;
                }
                Err(err) => return Err(err),
            }
        };
        let task = tokio::spawn(serve(listener, path, answer, shutdown));
        Ok(Self { addr: addr.to_string(), _task: tokio_util::task::AbortOnDropHandle::new(task) })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }
}

async fn serve(listener: TcpListener, path: &'static str, answer: Answer, shutdown: CancellationToken) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // Out of descriptors or a connection reset before accept: breathe, go on.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Full: closed now, holding nothing.
            drop(stream);
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(DEADLINE, answer_one(stream, path, answer)).await;
        });
    }
}

async fn answer_one(mut stream: TcpStream, path: &str, answer: Answer) -> io::Result<()> {
    let mut request = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut chunk).await?;
        if read == 0 || request.len() + read > MAX_REQUEST {
            return Ok(());
        }
        request.extend_from_slice(&chunk[..read]);
    }
    let line = String::from_utf8_lossy(&request);
    let target = line.lines().next().unwrap_or_default().split(' ').collect::<Vec<_>>();
    let json = "application/json";
    let (status, content_type, body) = match target.as_slice() {
        ["GET", asked, _] if asked.split('?').next() == Some(path) => {
            let reply = answer();
            (if reply.ok { "200 OK" } else { "503 Service Unavailable" }, reply.content_type, reply.body)
        }
        ["GET", ..] => ("404 Not Found", json, r#"{"error":"not_found"}"#.to_string()),
        _ => ("405 Method Not Allowed", json, r#"{"error":"method_not_allowed"}"#.to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(port: u16, request: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text).await;
        text
    }

    #[tokio::test]
    async fn answers_the_probe_path_and_nothing_else_and_stays_answering_while_connections_are_held() {
        let shutdown = CancellationToken::new();
        let answer: Answer = Arc::new(|| Reply::json(r#"{"ApplicationHealthState":"Healthy"}"#.to_string()));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let _probe = ProbeListener::bind(&addr, "/health", answer, shutdown.clone()).await.unwrap();
        let ok = ask(port, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK") && ok.ends_with(r#"{"ApplicationHealthState":"Healthy"}"#), "{ok}");
        assert!(ask(port, "GET /v1/status HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
        assert!(ask(port, "POST /health HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405"));
        // Many connections held open and silent: each is dropped at its
        // deadline or at once when full, and a probe still gets through.
        let mut held = Vec::new();
        for _ in 0..200 {
            held.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        }
        let answered = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let text = ask(port, "GET /health HTTP/1.1\r\n\r\n").await;
                if text.starts_with("HTTP/1.1 200") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        assert!(answered.is_ok(), "no answer while 200 connections were held");
        shutdown.cancel();
    }
}
