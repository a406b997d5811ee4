//! Keep-awake holds: any local user keeps the VM active for themselves for a
//! while (`pool-agent hold 4h --reason training`). The owner is the caller
//! the kernel reported (SO_PEERCRED); only the owner or an admin releases a
//! hold. Holds live in `/var/lib/pool-agent/holds.json`, replaced
//! atomically (mode 0600), so they survive an agent restart.
//!
//! A holds file that cannot be parsed is moved aside
//! (`holds.json.bad-<unix seconds>`), never overwritten: a hold it held may
//! still be running, so the holds signal stays unknown for `idle.max_hold`
//! after the move (the longest such a hold could last) unless an admin
//! clears it (`pool-agent hold release lost`, which renames the file to
//! `….cleared`). A file that cannot be read at all is unknown until it can.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// A user may hold the VM this many times at once.
pub const MAX_HOLDS_PER_USER: usize = 5;
pub const MAX_REASON_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: String,
    pub owner_uid: u32,
    pub owner: String,
    pub reason: String,
    pub created: String,
    pub expires: String,
}

impl Hold {
    pub fn expires_at(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.expires).ok()
    }

    pub fn live(&self, now: SystemTime) -> bool {
        self.expires_at().is_some_and(|at| at > now)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HoldError {
    #[error("{0}")]
    Refused(String),
    #[error("no hold {0:?}; `pool-agent hold list` shows yours")]
    NotFound(String),
    #[error("hold {id} belongs to {owner}; only its owner or an admin may release it")]
    NotYours { id: String, owner: String },
    #[error("cannot save the holds: {0}")]
    Store(String),
}

pub struct Holds {
    file: PathBuf,
    holds: Mutex<Vec<Hold>>,
    /// The holds file could not be read (the error), so saving would lose what it holds.
    unreadable: Mutex<Option<String>>,
    /// Files moved aside and not cleared, with when they were moved: listed
    /// once at load (only a load moves a file aside), emptied by an admin.
    bad_files: Mutex<Vec<(PathBuf, SystemTime)>>,
}

/// Holds the agent may have lost: a file moved aside, and when the last hold it
/// could have held ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub file: PathBuf,
    pub until: SystemTime,
}

const BAD_SUFFIX: &str = ".bad-";
const CLEARED_SUFFIX: &str = ".cleared";
/// The id an admin releases to clear lost holds.
pub const LOST_ID: &str = "lost";

impl Holds {
    /// Loads the holds kept by an earlier run. A missing file is none; a
    /// corrupt one is moved aside (see the module's doc); one that cannot be
    /// read stays where it is and the holds are unknown until it can be.
    pub fn load(file: PathBuf, now: SystemTime) -> Self {
        let (holds, unreadable) = match fs::read(&file) {
            Ok(bytes) => match serde_json::from_slice::<Vec<Hold>>(&bytes) {
                Ok(holds) => (holds, None),
                Err(err) => {
                    let seconds = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                    let mut aside = file.clone().into_os_string();
                    aside.push(format!("{BAD_SUFFIX}{seconds}"));
                    match fs::rename(&file, &aside) {
                        Ok(()) => {
                            tracing::warn!(
                                component = "idle",
                                "holds file {} is corrupt ({err}); moved to {}; holds count as unknown for idle.max_hold unless an admin runs `pool-agent hold release lost`",
                                file.display(),
                                PathBuf::from(&aside).display()
                            );
                            (Vec::new(), None)
                        }
                        Err(move_err) => (
                            Vec::new(),
                            Some(format!(
                                "{} is corrupt ({err}) and cannot be moved aside: {move_err}",
                                file.display()
                            )),
                        ),
                    }
                }
            },
            Err(err) if err.kind() == io::ErrorKind::NotFound => (Vec::new(), None),
            Err(err) => (Vec::new(), Some(format!("cannot read {}: {err}", file.display()))),
        };
        if let Some(why) = &unreadable {
            tracing::warn!(component = "idle", "holds: {why}; holds count as unknown");
        }
        let bad_files = Mutex::new(bad_files(&file));
        Self { file, holds: Mutex::new(holds), unreadable: Mutex::new(unreadable), bad_files }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Hold>> {
        self.holds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the holds cannot be known now, if they cannot.
    pub fn unreadable(&self) -> Option<String> {
        self.unreadable.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The newest corrupt file moved aside whose holds could still be running
    /// (moved less than `max_hold` ago) and that no admin cleared.
    pub fn lost(&self, max_hold: Duration, now: SystemTime) -> Option<Lost> {
        self.bad_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(file, moved)| {
                let until = *moved + max_hold;
                (until > now).then(|| Lost { file: file.clone(), until })
            })
            .max_by_key(|lost| lost.until)
    }

    /// An admin says the lost holds are over: the files moved aside are kept,
    /// renamed `….cleared`. How many were cleared.
    pub fn clear_lost(&self) -> Result<usize, HoldError> {
        let mut bad = self.bad_files.lock().unwrap_or_else(|p| p.into_inner());
        let mut cleared = 0;
        while let Some((file, moved)) = bad.pop() {
            let mut to = file.clone().into_os_string();
            to.push(CLEARED_SUFFIX);
            if let Err(err) = fs::rename(&file, &to) {
                let why = format!("cannot rename {}: {err}", file.display());
                bad.push((file, moved));
                return Err(HoldError::Store(why));
            }
            cleared += 1;
        }
        Ok(cleared)
    }

    /// Live holds (expired ones are dropped).
    pub fn live(&self, now: SystemTime) -> Vec<Hold> {
        self.lock().iter().filter(|h| h.live(now)).cloned().collect()
    }

    pub fn add(
        &self,
        owner_uid: u32,
        owner: &str,
        duration: Duration,
        reason: &str,
        max: Duration,
        now: SystemTime,
    ) -> Result<Hold, HoldError> {
        if duration.is_zero() {
            return Err(HoldError::Refused("a hold must last longer than 0s".into()));
        }
        if duration > max {
            return Err(HoldError::Refused(format!(
                "a hold may last at most {} (idle.max_hold)",
                crate::config::duration::format(max)
            )));
        }
        if reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
            return Err(HoldError::Refused(format!(
                "the reason must be one line of at most {MAX_REASON_CHARS} characters"
            )));
        }
        if let Some(why) = self.unreadable() {
            return Err(HoldError::Store(format!("{why}; not overwriting it")));
        }
        let mut holds = self.lock();
        holds.retain(|h| h.live(now));
        if holds.iter().filter(|h| h.owner_uid == owner_uid).count() >= MAX_HOLDS_PER_USER {
            return Err(HoldError::Refused(format!(
                "{owner} holds the VM {MAX_HOLDS_PER_USER} times already; release one first"
            )));
        }
        let hold = Hold {
            id: new_id(now),
            owner_uid,
            owner: owner.to_string(),
            reason: reason.to_string(),
            created: crate::core::clock::rfc3339(now),
            expires: crate::core::clock::rfc3339(now + duration),
        };
        let mut next = holds.clone();
        next.push(hold.clone());
        self.save(&next).map_err(|err| HoldError::Store(err.to_string()))?;
        *holds = next;
        Ok(hold)
    }

    pub fn release(&self, id: &str, caller_uid: u32, admin: bool, now: SystemTime) -> Result<Hold, HoldError> {
        if let Some(why) = self.unreadable() {
            return Err(HoldError::Store(format!("{why}; not overwriting it")));
        }
        let mut holds = self.lock();
        holds.retain(|h| h.live(now));
        let Some(index) = holds.iter().position(|h| h.id == id) else {
            return Err(HoldError::NotFound(id.to_string()));
        };
        if holds[index].owner_uid != caller_uid && !admin {
            return Err(HoldError::NotYours { id: id.to_string(), owner: holds[index].owner.clone() });
        }
        let mut next = holds.clone();
        let released = next.remove(index);
        self.save(&next).map_err(|err| HoldError::Store(err.to_string()))?;
        *holds = next;
        Ok(released)
    }

    fn save(&self, holds: &[Hold]) -> io::Result<()> {
        let body = serde_json::to_vec_pretty(holds).map_err(io::Error::other)?;
        crate::core::atomic::replace_file(&self.file, &body, 0o600)
    }
}

/// The files `file` was moved aside to and no admin cleared, with when they were moved.
fn bad_files(file: &std::path::Path) -> Vec<(PathBuf, SystemTime)> {
    let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else { return Vec::new() };
    let prefix = format!("{}{BAD_SUFFIX}", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let seconds: u64 = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((entry.path(), SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)))
        })
        .collect()
}

/// Eight hex digits from the kernel's random pool: short to type, not guessable.
fn new_id(now: SystemTime) -> String {
    let mut bytes = [0u8; 4];
    if fs::File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut bytes)).is_err() {
        let nanos = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        bytes = nanos.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn holds_survive_a_reload_expire_and_only_the_owner_or_an_admin_releases_one() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("holds.json");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let holds = Holds::load(file.clone(), now);
        let hold = holds.add(1001, "alice", 4 * HOUR, "training", 24 * HOUR, now).unwrap();
        assert_eq!(hold.owner, "alice");
        let again = Holds::load(file.clone(), now);
        assert_eq!(again.live(now), vec![hold.clone()], "kept across a restart");
        assert_eq!(
            again.release(&hold.id, 1002, false, now),
            Err(HoldError::NotYours { id: hold.id.clone(), owner: "alice".into() })
        );
        assert!(again.release(&hold.id, 0, true, now).is_ok(), "an admin releases anyone's");
        assert!(Holds::load(file.clone(), now).live(now).is_empty());
        let short = again.add(1001, "alice", HOUR, "", 24 * HOUR, now).unwrap();
        assert!(again.live(now + HOUR + Duration::from_secs(1)).is_empty(), "expired");
        assert_eq!(again.release(&short.id, 1001, false, now + 2 * HOUR), Err(HoldError::NotFound(short.id.clone())));
    }

    #[test]
    fn a_hold_longer_than_max_hold_or_with_a_multiline_reason_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let holds = Holds::load(tmp.path().join("holds.json"), now);
        let err = holds.add(1001, "alice", 25 * HOUR, "", 24 * HOUR, now).unwrap_err();
        assert!(err.to_string().contains("at most 1d"), "{err}");
        assert!(holds.add(1001, "alice", HOUR, "a\nb", 24 * HOUR, now).is_err());
        for _ in 0..MAX_HOLDS_PER_USER {
            holds.add(1001, "alice", HOUR, "", 24 * HOUR, now).unwrap();
        }
        assert!(holds.add(1001, "alice", HOUR, "", 24 * HOUR, now).is_err());
        assert!(holds.add(1002, "bob", HOUR, "", 24 * HOUR, now).is_ok());
    }

    #[test]
    fn a_corrupt_holds_file_is_moved_aside_and_holds_are_lost_for_max_hold_unless_an_admin_clears_them() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("holds.json");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        std::fs::write(&file, "[{\"id\": \"1234\", \"owner_uid\": 10").unwrap();
        let holds = Holds::load(file.clone(), now);
        let aside = tmp.path().join("holds.json.bad-1800000000");
        assert!(aside.exists() && !file.exists(), "moved aside, not left to be overwritten");
        let lost = holds.lost(24 * HOUR, now + HOUR).expect("lost holds");
        assert_eq!(lost, Lost { file: aside.clone(), until: now + 24 * HOUR });
        // A new hold is kept in a new file; the bad one stays.
        holds.add(1001, "alice", HOUR, "", 24 * HOUR, now).unwrap();
        assert!(aside.exists());
        // Across a restart it is still lost; past max_hold it is not.
        let again = Holds::load(file.clone(), now + HOUR);
        assert!(again.lost(24 * HOUR, now + 2 * HOUR).is_some());
        assert!(again.lost(24 * HOUR, now + 24 * HOUR).is_none());
        assert_eq!(again.clear_lost().unwrap(), 1);
        assert!(again.lost(24 * HOUR, now + 2 * HOUR).is_none());
        assert!(tmp.path().join("holds.json.bad-1800000000.cleared").exists(), "kept, renamed");
    }

    #[test]
    fn an_unreadable_holds_file_is_not_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        // A directory where the file should be: reading fails, not with NotFound.
        let file = tmp.path().join("holds.json");
        std::fs::create_dir(&file).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let holds = Holds::load(file.clone(), now);
        assert!(holds.unreadable().is_some());
        let err = holds.add(1001, "alice", HOUR, "", 24 * HOUR, now).unwrap_err();
        assert!(matches!(err, HoldError::Store(ref why) if why.contains("not overwriting")), "{err}");
        assert!(file.is_dir());
    }
}
