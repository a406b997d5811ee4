//! The unix socket: bound once with its final mode, one peer credential per
//! connection, bounded concurrency, graceful close on shutdown.

use super::Peer;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::fcntl::{Flock, FlockArg};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// Connections one non-root uid may hold at once, so one local user cannot
/// take every slot and lock out the others (root and the health probes).
pub const MAX_CONNECTIONS_PER_UID: usize = 8;
/// A client that has not sent its headers by then is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long open connections get to finish when the daemon stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another pool-agentd is already serving {socket} (lock {lock} is held); stop it first (systemctl stop pool-agentd)")]
    AlreadyRunning { socket: String, lock: String },
    #[error("{path} exists and is not a socket; refusing to remove it")]
    NotASocket { path: String },
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> BindError + '_ {
    move |source| BindError::Io { path: path.display().to_string(), source }
}

/// A bound socket and the lock that proves this daemon owns it.
pub struct BoundSocket {
    pub listener: UnixListener,
    pub path: PathBuf,
    _lock: Flock<File>,
}

impl BoundSocket {
    /// Removes the socket file; the lock goes with the process.
    pub fn remove(&self) {
        if let Err(err) = fs::remove_file(&self.path) {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::warn!(socket = %self.path.display(), "cannot remove socket: {err}");
            }
        }
    }
}

/// Binds the API socket: directory 0755, socket 0666, stale socket replaced,
/// a live daemon's socket left alone. Must run inside a tokio runtime.
pub fn bind(socket: &Path) -> Result<BoundSocket, BindError> {
    let dir = socket.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io_error(dir))?;

    // The lock file decides ownership; the socket file alone cannot (a crash leaves it behind).
    let lock_path = socket.with_extension("lock");
    let lock_file =
        OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io_error(&lock_path))?;
    let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            BindError::AlreadyRunning { socket: socket.display().to_string(), lock: lock_path.display().to_string() }
        } else {
            BindError::Io { path: lock_path.display().to_string(), source: errno.into() }
        }
    })?;

    match fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            tracing::info!(socket = %socket.display(), "replacing a stale socket left by an earlier run");
            fs::remove_file(socket).map_err(io_error(socket))?;
        }
        Ok(_) => return Err(BindError::NotASocket { path: socket.display().to_string() }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_error(socket)(err)),
    }

    let std_listener = std::os::unix::net::UnixListener::bind(socket).map_err(io_error(socket))?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o666)).map_err(io_error(socket))?;
    std_listener.set_nonblocking(true).map_err(io_error(socket))?;
    let listener = UnixListener::from_std(std_listener).map_err(io_error(socket))?;
    Ok(BoundSocket { listener, path: socket.to_path_buf(), _lock: lock })
}

/// Serves `app` until `shutdown` fires, then gives open connections a moment to finish.
pub async fn serve(listener: &UnixListener, app: Router, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_uid = PerUidCount::default();
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let peer = match stream.peer_cred() {
            Ok(cred) => Peer { uid: cred.uid(), gid: cred.gid(), pid: cred.pid() },
            Err(err) => {
                tracing::warn!("dropping a connection without peer credentials: {err}");
                continue;
            }
        };
        let Some(uid_slot) = per_uid.take(peer.uid) else {
            tracing::warn!(uid = peer.uid, "refusing a connection: uid holds {MAX_CONNECTIONS_PER_UID} already");
            connections.spawn(refuse_busy(stream));
            continue;
        };
        let app = app.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _uid_slot = uid_slot;
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(peer);
                app.clone().oneshot(request.map(axum::body::Body::new))
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(uid = peer.uid, "connection ended: {err}");
                    }
                }
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait()).await.is_err() {
        tracing::warn!("some API connections were still open at shutdown");
    }
}

/// Open connections per uid; a slot is given back when its guard drops.
#[derive(Default, Clone)]
struct PerUidCount(Arc<Mutex<HashMap<u32, usize>>>);

struct UidSlot {
    uid: u32,
    counts: PerUidCount,
}

impl PerUidCount {
    fn take(&self, uid: u32) -> Option<UidSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let held = counts.entry(uid).or_insert(0);
        if uid != 0 && *held >= MAX_CONNECTIONS_PER_UID {
            return None;
        }
        *held += 1;
        Some(UidSlot { uid, counts: self.clone() })
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = counts.get_mut(&self.uid) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

/// A one-line JSON answer for a caller over its connection cap, then close.
async fn refuse_busy(mut stream: tokio::net::UnixStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Read the request's head first (briefly), so the client is not cut off
    // while still writing and sees the answer.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let body = format!(
        "{{\"error\":\"too_many_connections\",\"message\":\"this user already holds {MAX_CONNECTIONS_PER_UID} connections to the agent; close some and retry\"}}"
    );
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_uid_cannot_take_every_slot_and_slots_come_back() {
        let counts = PerUidCount::default();
        let held: Vec<_> = (0..MAX_CONNECTIONS_PER_UID).map(|_| counts.take(1002).unwrap()).collect();
        assert!(counts.take(1002).is_none(), "over the cap");
        assert!(counts.take(1003).is_some(), "another user still gets in");
        assert!((0..100).all(|_| counts.take(0).is_some()), "root is not capped");
        drop(held);
        assert!(counts.take(1002).is_some());
    }
}
