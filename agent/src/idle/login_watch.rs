//! Seeing a login at once, not a sample later: inotify on utmp and on
//! logind's session records; a change there asks for a sample now.
//!
//! A login on a VM whose protection was released must reach the verdict (and
//! so the protection write) before a scale-in can take the VM; at one sample
//! every `idle.interval` (10 s) that window was the interval. Only what a
//! login or logout does is asked of the kernel: utmp written, utmp made or
//! renamed into place, a session record written, renamed into place or
//! removed, the records' directory made (logind may start after the agent),
//! other files in `/run` only when made or renamed into place — so a VM
//! nobody logs into never wakes for it.

use crate::core::paths::SystemPaths;
use futures_util::{FutureExt, StreamExt};
use inotify::{Inotify, WatchDescriptor, WatchMask, Watches};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// A login writes utmp and logind's record within milliseconds: one sample
/// for the lot, a little after the first.
const SETTLE: Duration = Duration::from_millis(200);
/// At most one sample a second from here, whatever a burst of logins writes.
const AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// The watch, for as long as it is kept (dropping it stops the reader).
pub(super) struct LoginWatch {
    /// `None`: the watch could not start.
    reader: Option<tokio::task::JoinHandle<()>>,
    /// Why the watch did not start, stopped or sees less than it should;
    /// `None`: all well.
    trouble: Arc<Mutex<Option<String>>>,
}

impl LoginWatch {
    /// What `pool-agent idle` says under the sessions signal, if anything.
    pub(super) fn trouble(&self) -> Option<String> {
        self.trouble.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for LoginWatch {
    fn drop(&mut self) {
        if let Some(reader) = &self.reader {
            reader.abort();
        }
    }
}

/// What each watch descriptor stands for.
struct Watched {
    watches: Watches,
    run: WatchDescriptor,
    utmp_name: Option<OsString>,
    utmp_path: PathBuf,
    utmp: Option<WatchDescriptor>,
    systemd: Option<WatchDescriptor>,
    sessions_path: PathBuf,
    sessions: Option<WatchDescriptor>,
}

impl Watched {
    fn watch_utmp(&mut self) {
        self.utmp = self.watches.add(&self.utmp_path, WatchMask::MODIFY | WatchMask::CLOSE_WRITE).ok();
    }

    fn watch_sessions(&mut self) {
        let changed = WatchMask::MOVED_TO | WatchMask::DELETE | WatchMask::CLOSE_WRITE;
        self.sessions = self.watches.add(&self.sessions_path, changed).ok();
    }

    fn watch_systemd(&mut self) {
        let dir = self.sessions_path.parent().unwrap_or(Path::new("/")).to_path_buf();
        self.systemd = self.watches.add(&dir, WatchMask::CREATE | WatchMask::MOVED_TO).ok();
    }

    /// Whether the event is a login's or logout's (watches added as their
    /// files appear).
    fn counts(&mut self, event: &inotify::Event<OsString>) -> bool {
        let name = event.name.as_deref();
        if event.wd == self.run {
            // utmp made or renamed into place: watch the new file.
            if name.is_some() && name == self.utmp_name.as_deref() {
                self.watch_utmp();
                return true;
            }
            // systemd's runtime directory made after the agent started.
            if name.is_some_and(|n| n == "systemd") && self.systemd.is_none() {
                self.watch_systemd();
                self.watch_sessions();
                return self.sessions.is_some();
            }
            false
        } else if Some(&event.wd) == self.utmp.as_ref() {
            true
        } else if Some(&event.wd) == self.systemd.as_ref() {
            if name.is_some_and(|n| n == "sessions") {
                self.watch_sessions();
                return true;
            }
            false
        } else {
            // logind's temporary files start with a dot.
            Some(&event.wd) == self.sessions.as_ref() && name.is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        }
    }
}

/// Starts watching; if it cannot, its trouble says why (the interval still
/// finds logins).
pub(super) fn start(paths: &SystemPaths, resample: Arc<Notify>) -> LoginWatch {
    match watch(paths, resample) {
        Ok(watch) => watch,
        Err(e) => {
            let why = format!("logins show at the next sample, not at once: {e}");
            tracing::warn!("idle: {why}");
            LoginWatch { reader: None, trouble: Arc::new(Mutex::new(Some(why))) }
        }
    }
}

fn watch(paths: &SystemPaths, resample: Arc<Notify>) -> std::io::Result<LoginWatch> {
    let inotify = Inotify::init()?;
    let watches = inotify.watches();
    let utmp_path = paths.resolve("/run/utmp");
    let run_dir = utmp_path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let run = watches.clone().add(&run_dir, WatchMask::CREATE | WatchMask::MOVED_TO)?;
    let sessions_path = paths.resolve("/run/systemd/sessions");
    let mut watched = Watched {
        watches,
        run,
        utmp_name: utmp_path.file_name().map(|n| n.to_os_string()),
        utmp_path,
        utmp: None,
        systemd: None,
        sessions_path,
        sessions: None,
    };
    watched.watch_utmp();
    watched.watch_systemd();
    watched.watch_sessions();
    let mut stream = inotify.into_event_stream(vec![0u8; 4096])?;
    let trouble = Arc::new(Mutex::new(None));
    let said = trouble.clone();
    let reader = tokio::spawn(async move {
        let mut last: Option<tokio::time::Instant> = None;
        let why = loop {
            let event = match stream.next().await {
                Some(Ok(event)) => event,
                Some(Err(e)) => break format!("the watch on logins failed ({e})"),
                None => break "the watch on logins ended".to_string(),
            };
            if !watched.counts(&event) {
                continue;
            }
            let mut at = tokio::time::Instant::now() + SETTLE;
            if let Some(last) = last {
                at = at.max(last + AT_MOST_EVERY);
            }
            tokio::time::sleep_until(at).await;
            // What came meanwhile is in this sample too.
            while let Some(Some(Ok(event))) = stream.next().now_or_never() {
                watched.counts(&event);
            }
            last = Some(tokio::time::Instant::now());
            resample.notify_one();
        };
        tracing::warn!("idle: {why}; logins show at the next sample");
        *said.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{why}: logins show at the next sample"));
    });
    Ok(LoginWatch { reader: Some(reader), trouble })
}
