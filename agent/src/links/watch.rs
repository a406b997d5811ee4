//! Seeing new users within a second: inotify on the passwd file's directory
//! and on every directory that holds homes; a change there starts a pass.

use super::report::LinksReport;
use crate::config::Settings;
use crate::core::stuck::StuckWork;
use crate::core::task::{self, TaskContext};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// inotify on the passwd file's directory (useradd replaces the file by
/// rename) and on every directory that holds homes (pam_mkhomedir makes a
/// home on first login): a change there starts a pass.
///
/// Only changes are asked of the kernel — entries made, removed, moved,
/// their attributes changed, passwd or group written — never opens, reads or
/// closes (notify's inotify backend always asks for opens, so every read of
/// `/etc` by anyone, the agent included, woke it and started a pass). In the
/// passwd file's directory only the passwd and group files count.
pub(super) struct DirWatcher {
    events: mpsc::Sender<()>,
    watches: Option<inotify::Watches>,
    /// Per watched directory: its watch.
    watched: HashMap<PathBuf, inotify::WatchDescriptor>,
    /// The passwd file's directory's watch: only these names count there.
    passwd_dir: Arc<Mutex<Option<inotify::WatchDescriptor>>>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

/// The account files whose change in the passwd file's directory starts a pass.
const ACCOUNT_FILES: [&str; 2] = ["passwd", "group"];

impl DirWatcher {
    pub(super) fn new(events: mpsc::Sender<()>) -> Self {
        Self { events, watches: None, watched: HashMap::new(), passwd_dir: Default::default(), reader: None }
    }

    fn start(&mut self) -> std::io::Result<inotify::Watches> {
        if let Some(watches) = &self.watches {
            return Ok(watches.clone());
        }
        use futures_util::StreamExt;
        let inotify = inotify::Inotify::init()?;
        let mut stream = inotify.into_event_stream(vec![0u8; 4096])?;
        let watches = stream.watches();
        let events = self.events.clone();
        let passwd_dir = self.passwd_dir.clone();
        self.reader = Some(tokio::spawn(async move {
            while let Some(Ok(event)) = stream.next().await {
                let in_passwd_dir = passwd_dir.lock().unwrap_or_else(|p| p.into_inner()).as_ref() == Some(&event.wd);
                let counts = !in_passwd_dir
                    || event.name.as_deref().is_some_and(|name| ACCOUNT_FILES.iter().any(|f| name == *f));
                if counts {
                    let _ = events.try_send(());
                }
            }
        }));
        self.watches = Some(watches.clone());
        Ok(watches)
    }

    /// Watches the passwd file's directory and every directory holding homes.
    /// Looking at those directories may touch a home on a network share, so
    /// it runs on a blocking thread; one that does not return in time is not
    /// started again until it does.
    pub(super) async fn watch(
        &mut self,
        ctx: &TaskContext,
        settings: &Settings,
        report: &LinksReport,
        running: &StuckWork,
    ) {
        let passwd_dir = ctx.paths.passwd().parent().map(Path::to_path_buf);
        let mut wanted = BTreeSet::new();
        wanted.extend(passwd_dir.clone());
        wanted.insert(ctx.paths.resolve("/home"));
        for user in &report.users {
            if let Some(parent) = Path::new(&*user.link).ancestors().nth(1 + settings.links.link.components().count()) {
                wanted.insert(parent.to_path_buf());
            }
        }
        let watches = match self.start() {
            Ok(watches) => watches,
            Err(err) => {
                tracing::warn!(
                    component = "links",
                    "cannot watch for new users ({err}); resyncing every interval only"
                );
                return;
            }
        };
        let Ok(guard) = running.try_start() else {
            tracing::debug!(component = "links", "the last look at the homes' directories has not returned");
            return;
        };
        let watched = std::mem::take(&mut self.watched);
        let passwd_wd = self.passwd_dir.clone();
        let looked = task::blocking("watching the homes' directories", WATCH_DEADLINE, move || {
            let _running = guard;
            update_watches(watches, watched, wanted, passwd_dir, &passwd_wd)
        });
        match looked.await {
            Ok(watched) => self.watched = watched,
            Err(err) => tracing::warn!(component = "links", "{err}; new users are seen at the next resync"),
        }
    }
}

/// Looking at the homes' directories does not take longer than this.
const WATCH_DEADLINE: Duration = Duration::from_secs(10);

/// The watches made to match `wanted` (those of directories that exist).
fn update_watches(
    mut watches: inotify::Watches,
    mut watched: HashMap<PathBuf, inotify::WatchDescriptor>,
    mut wanted: BTreeSet<PathBuf>,
    passwd_dir: Option<PathBuf>,
    passwd_wd: &Mutex<Option<inotify::WatchDescriptor>>,
) -> HashMap<PathBuf, inotify::WatchDescriptor> {
    use inotify::WatchMask;
    wanted.retain(|dir| dir.is_dir());
    if wanted.iter().all(|dir| watched.contains_key(dir)) && watched.len() == wanted.len() {
        return watched;
    }
    for (dir, wd) in std::mem::take(&mut watched) {
        if wanted.contains(&dir) {
            watched.insert(dir, wd);
        } else {
            let _ = watches.remove(wd);
        }
    }
    let changes = WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ATTRIB
        | WatchMask::CLOSE_WRITE
        | WatchMask::DONT_FOLLOW
        | WatchMask::ONLYDIR;
    let missing: Vec<PathBuf> = wanted.into_iter().filter(|dir| !watched.contains_key(dir)).collect();
    for dir in missing {
        match watches.add(&dir, changes) {
            Ok(wd) => {
                if passwd_dir.as_ref() == Some(&dir) {
                    *passwd_wd.lock().unwrap_or_else(|p| p.into_inner()) = Some(wd.clone());
                }
                watched.insert(dir, wd);
            }
            Err(err) => tracing::warn!(component = "links", "cannot watch {}: {err}", dir.display()),
        }
    }
    watched
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}
