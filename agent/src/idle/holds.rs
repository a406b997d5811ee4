//! Keep-awake holds: any local user keeps the VM active for themselves for a
//! while (`pool-agent hold 4h --reason training`). The owner is the caller
//! the kernel reported (SO_PEERCRED); only the owner or an admin releases a
//! hold. Holds live in `/var/lib/pool-agent/holds.json`, replaced
//! atomically, so they survive an agent restart.

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
    fn expires_at(&self) -> Option<SystemTime> {
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
}

impl Holds {
    /// Loads the holds kept by an earlier run; a missing or unreadable file is none.
    pub fn load(file: PathBuf) -> Self {
        let holds = fs::read(&file).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default();
        Self { file, holds: Mutex::new(holds) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Hold>> {
        self.holds.lock().unwrap_or_else(|p| p.into_inner())
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
        crate::core::atomic::replace_file(&self.file, &body, 0o644)
    }
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
        let holds = Holds::load(file.clone());
        let hold = holds.add(1001, "alice", 4 * HOUR, "training", 24 * HOUR, now).unwrap();
        assert_eq!(hold.owner, "alice");
        let again = Holds::load(file.clone());
        assert_eq!(again.live(now), vec![hold.clone()], "kept across a restart");
        assert_eq!(
            again.release(&hold.id, 1002, false, now),
            Err(HoldError::NotYours { id: hold.id.clone(), owner: "alice".into() })
        );
        assert!(again.release(&hold.id, 0, true, now).is_ok(), "an admin releases anyone's");
        assert!(Holds::load(file.clone()).live(now).is_empty());
        let short = again.add(1001, "alice", HOUR, "", 24 * HOUR, now).unwrap();
        assert!(again.live(now + HOUR + Duration::from_secs(1)).is_empty(), "expired");
        assert_eq!(again.release(&short.id, 1001, false, now + 2 * HOUR), Err(HoldError::NotFound(short.id.clone())));
    }

    #[test]
    fn a_hold_longer_than_max_hold_or_with_a_multiline_reason_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let holds = Holds::load(tmp.path().join("holds.json"));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let err = holds.add(1001, "alice", 25 * HOUR, "", 24 * HOUR, now).unwrap_err();
        assert!(err.to_string().contains("at most 1d"), "{err}");
        assert!(holds.add(1001, "alice", HOUR, "a\nb", 24 * HOUR, now).is_err());
        for _ in 0..MAX_HOLDS_PER_USER {
            holds.add(1001, "alice", HOUR, "", 24 * HOUR, now).unwrap();
        }
        assert!(holds.add(1001, "alice", HOUR, "", 24 * HOUR, now).is_err());
        assert!(holds.add(1002, "bob", HOUR, "", 24 * HOUR, now).is_ok());
    }
}
