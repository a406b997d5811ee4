//! The unix socket: bound once with its final mode, one peer credential per
//! connection, bounded concurrency, graceful close on shutdown.

use super::Peer;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::fcntl::{Flock, FlockArg};
use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Connections users are served at once; more are refused at once.
const MAX_CONNECTIONS: usize = 64;
/// Connections kept for root and known admins alone, so users holding every
/// ordinary slot cannot lock them out.
const ADMIN_RESERVE: usize = 16;
/// Connections one non-root uid may hold at once, so one local user cannot
/// take every slot and lock out the others (root and the health probes).
pub const MAX_CONNECTIONS_PER_UID: usize = 8;
/// A client that has not sent its headers by then is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that does not read its answer for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections the kernel queues before the accept loop takes them.
const LISTEN_BACKLOG: i32 = 1024;
/// How long open connections get to finish when the daemon stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// A refused connection is kept this long (no task, at most [`MAX_LINGERING`])
/// so a client still writing its request reads the refusal, not a broken pipe.
const REFUSED_LINGER: Duration = Duration::from_millis(250);
const MAX_LINGERING: usize = 32;
/// At most one "refused" log line per uid class this often; the rest are counted.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long an admin confirmed by a request keeps its place in the reserve.
const ADMIN_REMEMBERED: Duration = Duration::from_secs(600);

/// Uids the access guard recently found to be admins: the accept loop must
/// not ask NSS, so it uses what requests already established.
#[derive(Clone, Default)]
pub struct KnownAdmins(Arc<Mutex<HashMap<u32, Instant>>>);

impl KnownAdmins {
    pub fn confirm(&self, uid: u32) {
        let mut known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a pool has a handful of admins; stale entries go first.
        if known.len() >= 256 {
            known.retain(|_, at| at.elapsed() < ADMIN_REMEMBERED);
        }
        if known.len() < 256 {
            known.insert(uid, Instant::now());
        }
    }

    fn contains(&self, uid: u32) -> bool {
        uid == 0
            || self
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&uid)
                .is_some_and(|at| at.elapsed() < ADMIN_REMEMBERED)
    }
}

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
    // A deeper queue than std's 128: a burst of clients waits for its turn
    // instead of being told EAGAIN (listen again only resizes the queue).
    nix::sys::socket::listen(
        &std_listener,
        nix::sys::socket::Backlog::new(LISTEN_BACKLOG).unwrap_or(nix::sys::socket::Backlog::MAXCONN),
    )
    .map_err(|errno| io_error(socket)(errno.into()))?;
    std_listener.set_nonblocking(true).map_err(io_error(socket))?;
    let listener = UnixListener::from_std(std_listener).map_err(io_error(socket))?;
    Ok(BoundSocket { listener, path: socket.to_path_buf(), _lock: lock })
}

/// Serves `app` until `shutdown` fires, then gives open connections a moment to finish.
///
/// The loop always accepts: a caller over its limits is answered 429 with a
/// non-blocking write and closed shortly after, without a task, so neither a
/// full table nor a connect loop keeps root waiting in the kernel's backlog.
pub async fn serve(listener: &UnixListener, app: Router, shutdown: CancellationToken, admins: KnownAdmins) {
    let slots = Slots::new();
    let per_uid = PerUidCount::default();
    let connections = TaskTracker::new();
    let mut lingering: VecDeque<(Instant, tokio::net::UnixStream, Refusal)> = VecDeque::new();
    let mut refusals = RefusalLog::default();
    loop {
        let next_close = lingering.front().map(|(at, _, _)| tokio::time::Instant::from_std(*at + REFUSED_LINGER));
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = sleep_until_or_never(next_close) => {
                let now = Instant::now();
                while lingering.front().is_some_and(|(at, _, _)| now.duration_since(*at) >= REFUSED_LINGER) {
                    if let Some((_, stream, why)) = lingering.pop_front() {
                        refuse(stream, why);
                    }
                }
                continue;
            }
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
        let admitted = per_uid.take(peer.uid).ok_or(Refusal::UidCap).and_then(|uid_slot| {
            slots.take(admins.contains(peer.uid)).map(|slot| (uid_slot, slot)).ok_or(Refusal::Full)
        });
        let (uid_slot, slot) = match admitted {
            Ok(admitted) => admitted,
            Err(why) => {
                refusals.note(peer.uid, why);
                if request_head_arrived(&stream) {
                    refuse(stream, why);
                    continue;
                }
                if lingering.len() >= MAX_LINGERING {
                    if let Some((_, oldest, why)) = lingering.pop_front() {
                        refuse(oldest, why);
                    }
                }
                lingering.push_back((Instant::now(), stream, why));
                continue;
            }
        };
        let app = app.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let _uid_slot = uid_slot;
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(peer);
                app.clone().oneshot(request.map(axum::body::Body::new))
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
            let stream = WriteDeadline::new(stream, WRITE_TIMEOUT);
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
    for (_, stream, why) in lingering {
        refuse(stream, why);
    }
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait()).await.is_err() {
        tracing::warn!("some API connections were still open at shutdown");
    }
}

async fn sleep_until_or_never(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The ordinary slots and the admins' reserve.
struct Slots {
    users: Arc<Semaphore>,
    reserve: Arc<Semaphore>,
}

impl Slots {
    fn new() -> Self {
        Self { users: Arc::new(Semaphore::new(MAX_CONNECTIONS)), reserve: Arc::new(Semaphore::new(ADMIN_RESERVE)) }
    }

    /// An admin takes from the reserve first, then from the ordinary slots.
    fn take(&self, admin: bool) -> Option<OwnedSemaphorePermit> {
        if admin {
            if let Ok(permit) = self.reserve.clone().try_acquire_owned() {
                return Some(permit);
            }
        }
        self.users.clone().try_acquire_owned().ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The uid holds [`MAX_CONNECTIONS_PER_UID`] already.
    UidCap,
    /// Every slot it may use is taken.
    Full,
}

/// Rate-limited refusal lines: the first at once, then a count every
/// [`REFUSAL_LOG_EVERY`], so a connect loop cannot flood the journal.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    since_last: u64,
}

impl RefusalLog {
    fn note(&mut self, uid: u32, why: Refusal) {
        self.since_last += 1;
        if self.last.is_some_and(|at| at.elapsed() < REFUSAL_LOG_EVERY) {
            return;
        }
        let what = match why {
            Refusal::UidCap => format!("uid {uid} holds {MAX_CONNECTIONS_PER_UID} connections already"),
            Refusal::Full => "every connection slot is taken".to_string(),
        };
        tracing::warn!(uid, refused = self.since_last, "refusing API connections: {what}");
        self.last = Some(Instant::now());
        self.since_last = 0;
    }
}

/// True once the client's request head is in the socket (a peek, nothing
/// consumed): the refusal may then be answered at once.
fn request_head_arrived(stream: &tokio::net::UnixStream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut head = [0u8; 2048];
    let peeked = recv(stream.as_raw_fd(), &mut head, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT);
    peeked.is_ok_and(|n| n > 0 && head[..n].windows(4).any(|w| w == b"\r\n\r\n"))
}

/// Reads what the client sent (so the close is an end of file for it, not a
/// reset), answers 429 without waiting (a fresh socket's buffer takes it
/// whole) and closes.
fn refuse(stream: tokio::net::UnixStream, why: Refusal) {
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match stream.try_read(&mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let message = match why {
        Refusal::UidCap => {
            format!("this user already holds {MAX_CONNECTIONS_PER_UID} connections to the agent; close some and retry")
        }
        Refusal::Full => "the agent is serving as many connections as it takes; retry in a moment".to_string(),
    };
    let body = format!("{{\"error\":\"too_many_connections\",\"message\":\"{message}\"}}");
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

/// A stream whose writes fail when the peer has not made room for this long:
/// a client that stops reading cannot hold its slot and buffers for ever.
struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Self { inner, limit, stalled: None }
    }

    /// Pending with a deadline armed; an error once it has passed.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let limit = self.limit;
        let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "client did not read its answer")),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_stall(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_stall(cx).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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

    #[test]
    fn admins_keep_a_reserve_when_users_hold_every_slot() {
        let slots = Slots::new();
        let users: Vec<_> = (0..MAX_CONNECTIONS).map(|_| slots.take(false).unwrap()).collect();
        assert!(slots.take(false).is_none(), "a user over the table is refused");
        let admins: Vec<_> = (0..ADMIN_RESERVE).map(|_| slots.take(true).unwrap()).collect();
        assert!(slots.take(true).is_none(), "the reserve is bounded too");
        drop(users);
        assert!(slots.take(true).is_some(), "an admin falls back to the ordinary slots");
        drop(admins);
    }

    #[test]
    fn only_root_and_confirmed_admins_are_known() {
        let known = KnownAdmins::default();
        assert!(known.contains(0));
        assert!(!known.contains(1001));
        known.confirm(1001);
        assert!(known.contains(1001));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_loses_its_connection() {
        use tokio::io::AsyncWriteExt;
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut stream = WriteDeadline::new(ours, WRITE_TIMEOUT);
        stream.write_all(&[b'x'; 64]).await.unwrap();
        let started = tokio::time::Instant::now();
        let err = stream.write_all(b"more").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), WRITE_TIMEOUT);
    }
}
