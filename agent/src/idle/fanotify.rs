//! The kernel's word on writes: one fanotify group (fanotify(7)) with mount
//! marks (`FAN_MARK_MOUNT`, `FAN_MODIFY | FAN_CLOSE_WRITE`) on the mounts
//! holding users' homes and the share. Two threads of its own:
//! - the reader sleeps in poll(2) until the kernel has events, so it costs
//!   nothing while nobody writes; for each event it reads the file's path
//!   (`/proc/self/fd/N`) and, for a path under a watched root, the writer's
//!   owner, into the [`Ledger`];
//! - the marker marks the roots again every minute (a remounted share, a
//!   new user's home) and keeps the set of roots the reader filters by.
//!
//! A mount mark sees every write on that mount (on a VM, `/home` shares the
//! root file system with journald): writes elsewhere cost one event each and
//! are dropped by path before any other look-up, and a file outside the roots
//! written a second time gets an ignore mark, so the kernel stops reporting
//! it (a log, the journal) — at rest that leaves nearly no events at all.

use super::write_ledger::{Ledger, Write};
use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The directories whose writes count, asked at every re-mark.
pub type Roots = Arc<dyn Fn() -> Vec<PathBuf> + Send + Sync>;

/// Roots are marked again this often: a remounted share, a new user's home.
const REMARK: Duration = Duration::from_secs(60);
/// Every write and truncation; a close after writing adds nothing a write did not say.
const EVENTS: u64 = libc::FAN_MODIFY;
/// Files outside the roots written again are silenced in the kernel (an
/// ignore mark: journald's files, a log), at most this many: each mark
/// holds its inode in memory until the file is deleted.
const IGNORE_AT_MOST: usize = 1024;
/// Files outside the roots seen written once, forgotten past this many.
const SEEN_AT_MOST: usize = 4096;

/// A running watch; dropping it stops both threads.
pub struct Watcher {
    /// Closing the pipe's write end wakes the reader, which then ends.
    _stop_reader: OwnedFd,
    _stop_marker: std::sync::mpsc::Sender<()>,
    state: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Roots that could not be marked (not "missing": a home not made yet).
    problems: Mutex<Vec<String>>,
    /// The reader's end: its writes go unseen from then on.
    failed: Mutex<Option<String>>,
    /// Set while the reader handles a batch: a look-up stuck in the kernel
    /// (a file on a hung NFS server) shows as a batch that does not end.
    busy_since: Mutex<Option<Instant>>,
    /// The roots as bytes: looked up by each prefix of a path (cheap to hash).
    roots: RwLock<HashSet<Vec<u8>>>,
}

fn os_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

impl Watcher {
    /// A fanotify group and its two threads. Err (why) without CAP_SYS_ADMIN
    /// or where the kernel has no fanotify.
    pub fn start(
        roots: Roots,
        users: crate::core::user_uids::UserUids,
        gap: Duration,
        ledger: Arc<Mutex<Ledger>>,
    ) -> Result<Self, String> {
        let flags = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC;
        let event_flags = (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint;
        // SAFETY: plain system call; the descriptor it returns is owned below.
        let fd = unsafe { libc::fanotify_init(flags, event_flags) };
        if fd < 0 {
            let err = std::io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EPERM) => format!("fanotify needs CAP_SYS_ADMIN (fanotify_init: {err})"),
                _ => format!("fanotify_init: {err}"),
            });
        }
        // SAFETY: fd is a fresh descriptor nothing else owns.
        let group = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut ends = [0 as libc::c_int; 2];
        // SAFETY: ends has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(os_error("pipe2"));
        }
        // SAFETY: both are fresh descriptors nothing else owns.
        let (stop_read, stop_write) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
        let state = Arc::new(Shared::default());
        let (stop_marker, stopped) = std::sync::mpsc::channel::<()>();
        let (marker_group, marker_state) = (group.clone(), state.clone());
        std::thread::Builder::new()
            .name("writes-marker".into())
            .spawn(move || mark_until_stopped(&marker_group, &roots, &marker_state, &stopped))
            .map_err(|err| format!("cannot start the marker thread: {err}"))?;
        let reader_state = state.clone();
        std::thread::Builder::new()
            .name("writes-reader".into())
            .spawn(move || {
                let why = read_until_stopped(&group, &stop_read, &reader_state, &users, gap, &ledger);
                if let Some(why) = why {
                    tracing::warn!(component = "idle", "writes: the reader stopped: {why}");
                    *reader_state.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                }
            })
            .map_err(|err| format!("cannot start the reader thread: {err}"))?;
        Ok(Self { _stop_reader: stop_write, _stop_marker: stop_marker, state })
    }

    /// Roots that could not be watched, said among the signal's reasons.
    pub fn problems(&self) -> Vec<String> {
        self.state.problems.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Why writes are not read now, if they are not: the reader ended, or
    /// has been stuck on one batch longer than `patience`.
    pub fn failed(&self, patience: Duration) -> Option<String> {
        if let Some(why) = self.state.failed.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Some(why);
        }
        stuck(*self.state.busy_since.lock().unwrap_or_else(|p| p.into_inner()), Instant::now(), patience)
    }
}

/// A batch begun at `busy_since` and not ended by `now`, past `patience`.
fn stuck(busy_since: Option<Instant>, now: Instant, patience: Duration) -> Option<String> {
    let stuck = now.saturating_duration_since(busy_since?);
    (stuck > patience).then(|| format!("the reader has been stuck on one batch of writes for {}s", stuck.as_secs()))
}

fn mark(group: &OwnedFd, root: &Path) -> std::io::Result<()> {
    let path = CString::new(root.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let flags = libc::FAN_MARK_ADD | libc::FAN_MARK_MOUNT;
    // SAFETY: path is a valid C string for the duration of the call.
    let done = unsafe { libc::fanotify_mark(group.as_raw_fd(), flags, EVENTS, libc::AT_FDCWD, path.as_ptr()) };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Asks the kernel to stop reporting writes to this file, for good.
fn ignore(group: &OwnedFd, file: BorrowedFd<'_>) -> std::io::Result<()> {
    let flags = libc::FAN_MARK_ADD | libc::FAN_MARK_IGNORED_MASK | libc::FAN_MARK_IGNORED_SURV_MODIFY;
    // SAFETY: a null path marks the object `file` refers to.
    let done = unsafe { libc::fanotify_mark(group.as_raw_fd(), flags, EVENTS, file.as_raw_fd(), std::ptr::null()) };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Files outside the roots: seen once, then silenced (bounded).
#[derive(Default)]
struct Outside {
    seen: HashSet<Vec<u8>>,
    ignored: usize,
}

impl Outside {
    fn written(&mut self, group: &OwnedFd, file: BorrowedFd<'_>, path: Vec<u8>) {
        if self.ignored >= IGNORE_AT_MOST {
            return;
        }
        if self.seen.remove(&path) {
            if ignore(group, file).is_ok() {
                self.ignored += 1;
            }
            return;
        }
        if self.seen.len() >= SEEN_AT_MOST {
            self.seen.clear();
        }
        self.seen.insert(path);
    }
}

fn mark_until_stopped(group: &OwnedFd, roots: &Roots, state: &Shared, stopped: &std::sync::mpsc::Receiver<()>) {
    loop {
        let list = roots();
        let mut problems = Vec::new();
        for root in &list {
            match mark(group, root) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => problems.push(format!("cannot watch {}: {err}", root.display())),
            }
        }
        let list = list.into_iter().map(|root| root.into_os_string().into_vec());
        *state.roots.write().unwrap_or_else(|p| p.into_inner()) = list.collect();
        *state.problems.lock().unwrap_or_else(|p| p.into_inner()) = problems;
        match stopped.recv_timeout(REMARK) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            _ => return,
        }
    }
}

/// Reads events until the stop pipe closes; Some(why) when reading failed.
fn read_until_stopped(
    group: &OwnedFd,
    stop: &OwnedFd,
    state: &Shared,
    users: &crate::core::user_uids::UserUids,
    gap: Duration,
    ledger: &Mutex<Ledger>,
) -> Option<String> {
    let me = std::process::id() as i32;
    let mut outside = Outside::default();
    // Aligned for the kernel's records (u64 fields).
    let mut buffer = vec![0u64; 4096];
    loop {
        let mut fds = [
            libc::pollfd { fd: group.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: fds is a valid array of two pollfd; -1: no timeout (asleep until an event).
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Some(os_error("poll"));
        }
        if fds[1].revents != 0 {
            return None;
        }
        let bytes = std::mem::size_of_val(buffer.as_slice());
        // SAFETY: buffer is valid for `bytes` bytes of writing.
        let read = unsafe { libc::read(group.as_raw_fd(), buffer.as_mut_ptr().cast(), bytes) };
        if read < 0 {
            match std::io::Error::last_os_error().kind() {
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock => continue,
                _ => return Some(os_error("read")),
            }
        }
        // SAFETY: the kernel wrote `read` bytes; viewed as bytes for parsing.
        let bytes = unsafe { std::slice::from_raw_parts(buffer.as_ptr().cast::<u8>(), read as usize) };
        *state.busy_since.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        // Held while the batch is read (the marker writes once a minute): no copy per batch.
        let roots = state.roots.read().unwrap_or_else(|p| p.into_inner());
        for event in events(bytes) {
            // The event's descriptor is ours to close, whatever the event.
            let file = (event.fd >= 0).then(|| {
                // SAFETY: the kernel opened this descriptor for us.
                unsafe { OwnedFd::from_raw_fd(event.fd) }
            });
            if event.mask & libc::FAN_Q_OVERFLOW != 0 {
                ledger.lock().unwrap_or_else(|p| p.into_inner()).overflow();
                continue;
            }
            let Some(file) = file else { continue };
            if event.pid == me {
                continue;
            }
            let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) else { continue };
            if !under(&roots, path.as_os_str().as_bytes()) {
                outside.written(group, file.as_fd(), path.into_os_string().into_vec());
                continue;
            }
            let Some((uid, comm)) = owner(event.pid, file.as_fd(), users) else { continue };
            let write = Write { pid: event.pid.max(0) as u32, uid, comm, path, at: Instant::now() };
            ledger.lock().unwrap_or_else(|p| p.into_inner()).record(write, gap);
        }
        drop(roots);
        *state.busy_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Whether `path` is one of the roots or below one.
fn under(roots: &HashSet<Vec<u8>>, path: &[u8]) -> bool {
    let parents = path.iter().enumerate().filter(|(at, byte)| **byte == b'/' && *at > 0).map(|(at, _)| &path[..at]);
    roots.contains(path) || parents.into_iter().any(|dir| roots.contains(dir))
}

/// The kernel's event records in a buffer it filled (fanotify(7)).
fn events(bytes: &[u8]) -> Vec<libc::fanotify_event_metadata> {
    let size = std::mem::size_of::<libc::fanotify_event_metadata>();
    let mut found = Vec::new();
    let mut at = 0;
    while at + size <= bytes.len() {
        // SAFETY: at least `size` bytes remain; read_unaligned needs no alignment.
        let event = unsafe { std::ptr::read_unaligned(bytes[at..].as_ptr().cast::<libc::fanotify_event_metadata>()) };
        let len = event.event_len as usize;
        if len < size || event.vers != libc::FANOTIFY_METADATA_VERSION {
            break;
        }
        found.push(event);
        at += len;
    }
    found
}

/// The user a write counts for and the writer's name: its uid when in the
/// user range, or the user whose slice it runs in. A writer gone by now is
/// judged by the file's owner.
fn owner(pid: i32, file: BorrowedFd<'_>, users: &crate::core::user_uids::UserUids) -> Option<(u32, String)> {
    let proc = Path::new("/proc");
    let process = proc.join(pid.to_string());
    match std::fs::metadata(&process) {
        Ok(meta) => {
            let path = super::cpu::cgroup_of(proc, pid.max(0) as u32).unwrap_or_default();
            match super::cpu::classify(&path, meta.uid(), users, &[])? {
                (super::cpu::Owner::User(uid), _) => {
                    let comm = std::fs::read_to_string(process.join("comm")).unwrap_or_default();
                    Some((uid, comm.trim().to_string()))
                }
                _ => None,
            }
        }
        Err(_) => {
            let file = std::fs::File::from(file.try_clone_to_owned().ok()?);
            let uid = file.metadata().ok()?.uid();
            users.contains(&uid).then(|| (uid, "a process since ended".to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::user_uids::UserUids;
    use crate::idle::signal::SignalState;
    use crate::idle::writes::Bounds;

    #[test]
    fn a_batch_that_does_not_end_is_said_once_past_the_patience() {
        let start = Instant::now();
        let patience = Duration::from_secs(5);
        assert_eq!(stuck(None, start + Duration::from_secs(60), patience), None, "not busy");
        assert_eq!(stuck(Some(start), start + Duration::from_secs(5), patience), None);
        let said = stuck(Some(start), start + Duration::from_secs(9), patience);
        assert_eq!(said.as_deref(), Some("the reader has been stuck on one batch of writes for 9s"));
    }

    #[test]
    fn a_path_is_under_a_root_only_by_whole_components() {
        let roots: HashSet<Vec<u8>> = [b"/home/alice".to_vec(), b"/data/notebooks".to_vec()].into();
        assert!(under(&roots, b"/home/alice/notes.ipynb"));
        assert!(under(&roots, b"/data/notebooks/notebooks/bob/x/y.csv"));
        assert!(under(&roots, b"/home/alice"));
        assert!(!under(&roots, b"/home/alicette/notes"), "a sibling with a longer name");
        assert!(!under(&roots, b"/var/log/journal/system.journal"));
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a real process writes; the kernel's events take real time
    fn a_process_writing_under_a_root_is_recorded_writes_elsewhere_are_not_and_dropping_stops_the_threads() {
        let tmp = tempfile::tempdir().unwrap();
        let (home, elsewhere) = (tmp.path().join("home"), tmp.path().join("elsewhere"));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        let listed = vec![home.clone()];
        let roots: Roots = Arc::new(move || listed.clone());
        let watcher = match Watcher::start(roots, UserUids::new(me, me), Duration::from_secs(60), ledger.clone()) {
            Ok(watcher) => watcher,
            Err(why) => {
                assert!(me != 0, "root has fanotify: {why}");
                eprintln!("SKIP: {why}");
                return;
            }
        };
        let marked = || !watcher.state.roots.read().unwrap().is_empty();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !marked() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let script = format!("echo a >> '{}/log'; echo b >> '{}/notes'", elsewhere.display(), home.display());
        assert!(std::process::Command::new("sh").args(["-c", &script]).status().unwrap().success());
        let wall = std::time::SystemTime::UNIX_EPOCH;
        let bounds = Bounds { gap: Duration::from_secs(60), max: Duration::from_secs(3600) };
        let mut sample = None;
        while Instant::now() < deadline + Duration::from_secs(5) {
            let judged = ledger.lock().unwrap().judge(Instant::now(), wall, bounds, &|uid| uid.to_string());
            if judged.state == SignalState::Active {
                sample = Some(judged);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let sample = sample.expect("the write under the root was recorded");
        assert_eq!(sample.reasons.len(), 1, "{sample:?}");
        assert!(sample.reasons[0].contains("/home/notes ("), "{sample:?}");
        assert_eq!(watcher.failed(Duration::from_secs(5)), None);
        drop(watcher);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&ledger) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(Arc::strong_count(&ledger), 1, "the reader thread ended with its watcher");
    }
}
