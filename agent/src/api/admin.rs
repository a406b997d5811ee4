//! "Is this caller an admin?", answered cheaply and safely. The answer may
//! need NSS (sssd, LDAP), which can hang in the kernel for minutes. So each
//! answer is kept per (uid, gid, group) for [`REMEMBERED`] (a changed group
//! shows within that), one look-up runs per key however many requests wait
//! on it (single flight), and at most [`MAX_STUCK_LOOKUPS`] look-ups may hold
//! a thread at once ([`StuckWork`]); past that bound, or past the deadline,
//! the caller learns at once that nobody can tell, and no thread is added.

use crate::core::stuck::{StuckError, StuckWork};
use futures_util::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How long an answer is believed; a group change shows within this.
pub const REMEMBERED: Duration = Duration::from_secs(30);
/// A look-up (sssd, LDAP) that takes longer than this has no answer.
pub const LOOKUP_DEADLINE: Duration = Duration::from_secs(2);
/// Look-ups stuck in the kernel at once; a hung directory service cannot
/// take more threads than this from the pool the probes and sampler need.
pub const MAX_STUCK_LOOKUPS: usize = 4;
/// Keys kept at most; stale answers go first (a pool has few callers).
const MAX_KEPT: usize = 1024;

/// The look-up itself: (uid, gid of the connection, admin group) -> admin?
pub type Lookup = Arc<dyn Fn(u32, u32, &str) -> bool + Send + Sync>;

type Key = (u32, u32, String);
type Answer = Result<bool, StuckError>;

enum Entry {
    Known { admin: bool, at: Instant },
    Pending(Shared<BoxFuture<'static, Answer>>),
}

#[derive(Clone)]
pub struct AdminLookups {
    lookup: Lookup,
    work: StuckWork,
    entries: Arc<Mutex<HashMap<Key, Entry>>>,
}

impl AdminLookups {
    pub fn new(lookup: Lookup) -> Self {
        Self { lookup, work: StuckWork::new("admin group look-ups", MAX_STUCK_LOOKUPS), entries: Arc::default() }
    }

    /// Look-ups running now and since when, for anyone who reports them.
    pub fn in_flight(&self) -> crate::core::stuck::InFlight {
        self.work.in_flight()
    }

    /// Root, a remembered answer, or the one look-up in flight for this key
    /// (started here if there is none). A failed look-up is not remembered.
    pub async fn is_admin(&self, uid: u32, gid: u32, group: &str) -> Answer {
        if uid == 0 {
            return Ok(true);
        }
        let key: Key = (uid, gid, group.to_string());
        let answer = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            match entries.get(&key) {
                Some(Entry::Known { admin, at }) if at.elapsed() < REMEMBERED => return Ok(*admin),
                Some(Entry::Pending(answer)) => answer.clone(),
                _ => {
                    let answer = self.start(key.clone());
                    if entries.len() >= MAX_KEPT {
                        entries
                            .retain(|_, entry| matches!(entry, Entry::Known { at, .. } if at.elapsed() < REMEMBERED));
                    }
                    entries.insert(key, Entry::Pending(answer.clone()));
                    answer
                }
            }
        };
        answer.await
    }

    /// Starts the look-up on its own task, so it finishes and is remembered
    /// even when every request waiting on it has given up.
    fn start(&self, key: Key) -> Shared<BoxFuture<'static, Answer>> {
        let (tell, told) = oneshot::channel();
        let (lookup, work, entries) = (self.lookup.clone(), self.work.clone(), self.entries.clone());
        tokio::spawn(async move {
            let (uid, gid, group) = key.clone();
            let answer = work.run(LOOKUP_DEADLINE, move || lookup(uid, gid, &group)).await;
            {
                let mut entries = entries.lock().unwrap_or_else(|p| p.into_inner());
                match &answer {
                    Ok(admin) => {
                        entries.insert(key, Entry::Known { admin: *admin, at: Instant::now() });
                    }
                    Err(_) => {
                        entries.remove(&key);
                    }
                }
            }
            let _ = tell.send(answer);
        });
        let what = "admin group look-ups";
        async move { told.await.unwrap_or(Err(StuckError::Panicked { what })) }.boxed().shared()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    /// Counts its calls; answers "admin" for uid 1001 after `delay` of real
    /// blocking (a directory service taking its time).
    fn counting(delay: Duration) -> (AdminLookups, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let lookups = AdminLookups::new(Arc::new(move |uid, _, _| {
            seen.fetch_add(1, Ordering::SeqCst);
            let (_keep, wait) = mpsc::channel::<()>();
            let _ = wait.recv_timeout(delay);
            uid == 1001
        }));
        (lookups, calls)
    }

    /// Hangs every call until the returned sender is dropped (sssd stuck).
    fn hung() -> (AdminLookups, Arc<AtomicUsize>, mpsc::Sender<()>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let (release, wait) = mpsc::channel::<()>();
        let wait = Arc::new(Mutex::new(wait));
        let lookups = AdminLookups::new(Arc::new(move |_, _, _| {
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = wait.lock().unwrap().recv();
            true
        }));
        (lookups, calls, release)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hundred_concurrent_requests_from_one_uid_make_one_look_up() {
        let (lookups, calls) = counting(Duration::from_millis(200));
        let asked = (0..100).map(|_| {
            let lookups = lookups.clone();
            tokio::spawn(async move { lookups.is_admin(1001, 1001, "pool-agent-admin").await })
        });
        let answers = futures_util::future::join_all(asked).await;
        assert!(answers.into_iter().all(|a| a.unwrap() == Ok(true)));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one look-up for one uid");
        // Remembered: the next request asks nobody.
        assert_eq!(lookups.is_admin(1001, 1001, "pool-agent-admin").await, Ok(true));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Another uid, or another group name, is its own question.
        assert_eq!(lookups.is_admin(1002, 1002, "pool-agent-admin").await, Ok(false));
        assert_eq!(lookups.is_admin(1001, 1001, "other-admins").await, Ok(true));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn root_is_never_looked_up() {
        let (lookups, calls) = counting(Duration::ZERO);
        assert_eq!(lookups.is_admin(0, 0, "pool-agent-admin").await, Ok(true));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_group_shows_once_the_answer_is_old() {
        let admin = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let now_admin = admin.clone();
        let lookups = AdminLookups::new(Arc::new(move |_, _, _| now_admin.load(Ordering::SeqCst)));
        assert_eq!(lookups.is_admin(1001, 1001, "g").await, Ok(false));
        admin.store(true, Ordering::SeqCst);
        assert_eq!(lookups.is_admin(1001, 1001, "g").await, Ok(false), "still the remembered answer");
        tokio::time::advance(REMEMBERED + Duration::from_secs(1)).await;
        assert_eq!(lookups.is_admin(1001, 1001, "g").await, Ok(true), "asked again once old");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_look_up_is_an_error_within_the_deadline_and_threads_stay_bounded() {
        let (lookups, calls, release) = hung();
        let started = std::time::Instant::now();
        let err = lookups.is_admin(1001, 1001, "g").await.unwrap_err();
        assert!(matches!(err, StuckError::TimedOut { .. }), "{err}");
        let took = started.elapsed();
        assert!(took >= LOOKUP_DEADLINE && took < LOOKUP_DEADLINE + Duration::from_secs(1), "took {took:?}");
        // A failure is not remembered: each later request may try again,
        // until the stuck threads reach the bound; past it, refused at once.
        for _ in 1..MAX_STUCK_LOOKUPS {
            assert!(lookups.is_admin(1001, 1001, "g").await.is_err());
        }
        assert_eq!(lookups.in_flight().count, MAX_STUCK_LOOKUPS);
        let started = std::time::Instant::now();
        let refused = lookups.is_admin(1002, 1002, "g").await.unwrap_err();
        assert!(matches!(refused, StuckError::Full { .. }), "{refused}");
        assert!(started.elapsed() < Duration::from_millis(500), "refused at once, no thread added");
        assert_eq!(calls.load(Ordering::SeqCst), MAX_STUCK_LOOKUPS, "never more threads than the bound");
        drop(release);
    }
}
