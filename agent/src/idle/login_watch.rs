//! Seeing a login at once, not a sample later: inotify on utmp's directory
//! and on logind's session records; a change there asks for a sample now.
//!
//! A login on a VM whose protection was released must reach the verdict (and
//! so the protection write) before a scale-in can take the VM; at one sample
//! every `idle.interval` (10 s) that window was the interval. Only changes
//! are asked of the kernel (written, made, moved in, removed), so a VM
//! nobody logs into never wakes for it.

use crate::core::paths::SystemPaths;
use futures_util::{FutureExt, StreamExt};
use inotify::{Inotify, WatchMask};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// A login writes utmp and logind's record within milliseconds: one sample
/// for the lot, a little after the first.
const SETTLE: Duration = Duration::from_millis(200);
/// At most one sample a second from here, whatever a burst of logins writes.
const AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// The watch, for as long as it is kept (dropping it stops the reader).
pub(super) struct LoginWatch {
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for LoginWatch {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Starts watching; `Err` says why not (the interval still finds logins).
pub(super) fn start(paths: &SystemPaths, resample: Arc<Notify>) -> std::io::Result<LoginWatch> {
    let inotify = Inotify::init()?;
    let utmp = paths.resolve("/run/utmp");
    let utmp_name = utmp.file_name().map(|n| n.to_os_string());
    let changed = WatchMask::MODIFY | WatchMask::CLOSE_WRITE | WatchMask::CREATE | WatchMask::MOVED_TO;
    let utmp_dir = utmp.parent().unwrap_or(Path::new("/")).to_path_buf();
    let utmp_wd = inotify.watches().add(&utmp_dir, changed)?;
    // logind replaces a session's record by rename when it starts, changes or ends.
    let sessions = paths.resolve("/run/systemd/sessions");
    let sessions_wd = inotify.watches().add(&sessions, WatchMask::MOVED_TO | WatchMask::DELETE).ok();
    let mut stream = inotify.into_event_stream(vec![0u8; 4096])?;
    let reader = tokio::spawn(async move {
        let mut last: Option<tokio::time::Instant> = None;
        while let Some(Ok(event)) = stream.next().await {
            let counts = if event.wd == utmp_wd {
                event.name.is_some() && event.name == utmp_name
            } else {
                // logind's temporary files start with a dot.
                Some(&event.wd) == sessions_wd.as_ref()
                    && event.name.as_ref().is_some_and(|n| !n.to_string_lossy().starts_with('.'))
            };
            if !counts {
                continue;
            }
            let mut at = tokio::time::Instant::now() + SETTLE;
            if let Some(last) = last {
                at = at.max(last + AT_MOST_EVERY);
            }
            tokio::time::sleep_until(at).await;
            // What came meanwhile is in this sample too.
            while let Some(Some(Ok(_))) = stream.next().now_or_never() {}
            last = Some(tokio::time::Instant::now());
            resample.notify_one();
        }
    });
    Ok(LoginWatch { reader })
}
