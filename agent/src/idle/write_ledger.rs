//! The ledger of the writes signal: who wrote under the watched folders
//! and when, and how long one writer may count (`idle.writes_max`). Fed by
//! [`super::fanotify`]'s reader, judged by [`super::writes`].

use super::signal::Sample;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// One write the kernel reported, with its owner found.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub pid: u32,
    /// The user it counts for.
    pub uid: u32,
    pub comm: String,
    pub path: PathBuf,
    pub at: Instant,
}

#[derive(Debug, Clone)]
struct Writer {
    uid: u32,
    comm: String,
    path: PathBuf,
    /// The start of its writing without a pause of `gap`.
    first: Instant,
    last: Instant,
    /// Writes since the last sample.
    fresh: u64,
}

/// Who wrote, since when, and whether the kernel lost writes.
#[derive(Debug, Default)]
pub struct Ledger {
    writers: HashMap<u32, Writer>,
    overflowed: bool,
    /// The last write that counted (for the idle count of quiet windows).
    last_counted: Option<Instant>,
}

/// How [`Ledger::judge`] bounds writers.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// A pause this long ends a writer's run (`idle.timeout`).
    pub gap: Duration,
    /// A run longer than this no longer counts (`idle.writes_max`).
    pub max: Duration,
}

const SHOWN: usize = 5;

impl Ledger {
    pub fn record(&mut self, write: Write, gap: Duration) {
        let writer = self.writers.entry(write.pid).or_insert_with(|| Writer {
            uid: write.uid,
            comm: write.comm.clone(),
            path: write.path.clone(),
            first: write.at,
            last: write.at,
            fresh: 0,
        });
        // A pid reused by another user's process, or a pause: a new run.
        if writer.uid != write.uid || write.at.saturating_duration_since(writer.last) >= gap {
            writer.first = write.at;
        }
        writer.uid = write.uid;
        writer.comm = write.comm;
        writer.path = write.path;
        writer.last = writer.last.max(write.at);
        writer.fresh += 1;
    }

    /// The kernel's queue overflowed: writes were lost.
    pub fn overflow(&mut self) {
        self.overflowed = true;
    }

    /// This window's sample; the window starts again.
    pub fn judge(&mut self, now: Instant, wall: SystemTime, bounds: Bounds, name: &dyn Fn(u32) -> String) -> Sample {
        let to_wall = |at: Instant| wall.checked_sub(now.saturating_duration_since(at)).unwrap_or(wall);
        let mut counted = Vec::new();
        let mut over = Vec::new();
        let mut writers: Vec<(&u32, &Writer)> = self.writers.iter().filter(|(_, w)| w.fresh > 0).collect();
        writers.sort_by_key(|(pid, w)| (std::cmp::Reverse(w.last), **pid));
        for (pid, writer) in writers {
            let ran = writer.last.saturating_duration_since(writer.first);
            let what = format!(
                "{} wrote {} ({} pid {pid}, {} write(s) this window)",
                name(writer.uid),
                writer.path.display(),
                writer.comm,
                writer.fresh
            );
            if ran <= bounds.max {
                counted.push(what);
                self.last_counted = self.last_counted.max(Some(writer.last));
            } else {
                // Its writes up to the bound counted; the quiet count starts there.
                self.last_counted = self.last_counted.max(Some(writer.first + bounds.max));
                over.push(format!(
                    "{what}: writing without a pause for {}m, longer than idle.writes_max ({}): not counted",
                    ran.as_secs() / 60,
                    crate::config::duration::format(bounds.max)
                ));
            }
        }
        let overflowed = std::mem::take(&mut self.overflowed);
        for writer in self.writers.values_mut() {
            writer.fresh = 0;
        }
        // A writer quiet for a whole gap has ended its run: forgotten.
        self.writers.retain(|_, w| now.saturating_duration_since(w.last) < bounds.gap);
        let writers = counted.len() as f64;
        let sample = if overflowed {
            Sample::unknown("the kernel's fanotify queue overflowed: this window's writes were lost")
        } else if !counted.is_empty() {
            let more = counted.len().saturating_sub(SHOWN);
            counted.truncate(SHOWN);
            if more > 0 {
                counted.push(format!("and {more} more writer(s)"));
            }
            counted.extend(over);
            Sample::active(counted)
        } else {
            let mut reasons = vec!["no user wrote under the homes or the share this window".to_string()];
            reasons.extend(over);
            Sample { reasons, ..Sample::idle("") }.at(self.last_counted.map(to_wall))
        };
        sample.with_figure("writers", writers)
    }
}
