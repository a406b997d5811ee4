//! Work that may get stuck in the kernel: a stat on a dead hard mount, an NSS
//! call to a hung sssd, a walk of homes on a share that stopped answering.
//! Such a call cannot be cancelled; its thread stays until the kernel lets go.
//! [`StuckWork`] bounds how many such threads one kind of work may hold at
//! once, remembers since when each has been running (for status), and runs
//! each piece on a blocking thread under a deadline so the caller never waits
//! longer than it chose. The ticket leaves the table when the thread ends,
//! however late, so a thread that comes back frees its place.
//!
//! Every kind of work is also entered in one table of the process
//! ([`stuck_now`]): a thread stuck in the kernel belongs to the process, not
//! to the capability that started it (it outlives a reload that drops its
//! owner), so status reads them all from here without knowing who made them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A piece taken by hand ([`StuckWork::try_start`]) has no deadline of its
/// own; past this it is reported as stuck.
pub const HAND_HELD_STUCK_AFTER: Duration = Duration::from_secs(60);

/// Every kind of work made in this process; dead entries are pruned as new
/// ones come (kinds are made at start and on reloads, a handful each).
static EVERY_KIND: Mutex<Vec<Weak<Mutex<Table>>>> = Mutex::new(Vec::new());

/// One kind of work, at most `limit` pieces in flight at once.
#[derive(Clone)]
pub struct StuckWork {
    what: &'static str,
    limit: usize,
    table: Arc<Mutex<Table>>,
}

struct Table {
    what: &'static str,
    /// Which one of its kind, when there are several (an idle signal's name).
    of: Option<&'static str>,
    limit: usize,
    next: u64,
    /// Each piece in flight, by ticket number.
    running: BTreeMap<u64, Piece>,
}

struct Piece {
    started: Instant,
    /// Past this the piece is stuck, not just running.
    stuck_after: Duration,
}

/// Holds one place while its work runs; dropping it (the work's thread
/// ending, even by a panic) gives the place back.
pub struct Ticket {
    id: u64,
    table: Arc<Mutex<Table>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        lock(&self.table).running.remove(&self.id);
    }
}

/// What is in flight now, for status and refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    pub count: usize,
    pub limit: usize,
    /// How long the oldest piece has been running.
    pub oldest: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StuckError {
    #[error("{limit} earlier {what} are still waiting on the kernel (the oldest for {}s); not starting another", oldest.as_secs())]
    Full { what: &'static str, limit: usize, oldest: Duration },
    #[error("{what} did not answer within {}s", after.as_secs_f64())]
    TimedOut { what: &'static str, after: Duration },
    #[error("{what} failed (its thread panicked); see the journal")]
    Panicked { what: &'static str },
}

fn lock(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(|p| p.into_inner())
}

impl StuckWork {
    /// `what` names the work in messages, in the plural ("share probes").
    pub fn new(what: &'static str, limit: usize) -> Self {
        Self::of_kind(what, None, limit)
    }

    /// One of several of a kind, `of` naming which (in status only).
    pub fn new_of(what: &'static str, of: &'static str, limit: usize) -> Self {
        Self::of_kind(what, Some(of), limit)
    }

    fn of_kind(what: &'static str, of: Option<&'static str>, limit: usize) -> Self {
        let limit = limit.max(1);
        let table = Arc::new(Mutex::new(Table { what, of, limit, next: 0, running: BTreeMap::new() }));
        let mut every = EVERY_KIND.lock().unwrap_or_else(|p| p.into_inner());
        every.retain(|kind| kind.strong_count() > 0);
        every.push(Arc::downgrade(&table));
        Self { what, limit, table }
    }

    /// A place, or why there is none: `limit` pieces are still in flight.
    pub fn try_start(&self) -> Result<Ticket, StuckError> {
        self.start(HAND_HELD_STUCK_AFTER)
    }

    fn start(&self, stuck_after: Duration) -> Result<Ticket, StuckError> {
        let mut table = lock(&self.table);
        if table.running.len() >= self.limit {
            let oldest = table.oldest().unwrap_or_default();
            return Err(StuckError::Full { what: self.what, limit: self.limit, oldest });
        }
        table.next += 1;
        let id = table.next;
        table.running.insert(id, Piece { started: Instant::now(), stuck_after });
        Ok(Ticket { id, table: self.table.clone() })
    }

    /// Runs `work` on a blocking thread holding a place, waiting at most
    /// `deadline`; past it the thread keeps its place until it returns.
    pub async fn run<T, F>(&self, deadline: Duration, work: F) -> Result<T, StuckError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let ticket = self.start(deadline)?;
        let task = tokio::task::spawn_blocking(move || {
            let _ticket = ticket;
            work()
        });
        match tokio::time::timeout(deadline, task).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(StuckError::Panicked { what: self.what }),
            Err(_) => Err(StuckError::TimedOut { what: self.what, after: deadline }),
        }
    }

    pub fn in_flight(&self) -> InFlight {
        let table = lock(&self.table);
        InFlight { count: table.running.len(), limit: self.limit, oldest: table.oldest() }
    }
}

impl Table {
    fn oldest(&self) -> Option<Duration> {
        self.running.values().map(|piece| piece.started.elapsed()).max()
    }
}

/// One kind of work with pieces past their deadline, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    pub what: &'static str,
    pub of: Option<&'static str>,
    /// Pieces past their deadline, and the kind's bound.
    pub count: usize,
    pub limit: usize,
    /// How long the oldest of them has been waiting.
    pub oldest: Duration,
}

/// Every piece of work in this process that is past its deadline, by kind,
/// longest stuck first. Work running within its deadline is not listed.
pub fn stuck_now() -> Vec<Stuck> {
    let kinds: Vec<_> = {
        let every = EVERY_KIND.lock().unwrap_or_else(|p| p.into_inner());
        every.iter().filter_map(Weak::upgrade).collect()
    };
    let mut stuck: Vec<Stuck> = kinds
        .iter()
        .filter_map(|table| {
            let table = lock(table);
            let late: Vec<Duration> = table
                .running
                .values()
                .filter_map(|piece| {
                    let ran = piece.started.elapsed();
                    (ran > piece.stuck_after).then_some(ran)
                })
                .collect();
            let oldest = late.iter().max().copied()?;
            Some(Stuck { what: table.what, of: table.of, count: late.len(), limit: table.limit, oldest })
        })
        .collect();
    stuck.sort_by(|a, b| b.oldest.cmp(&a.oldest).then(a.what.cmp(b.what)).then(a.of.cmp(&b.of)));
    stuck
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A piece of work that blocks its thread until the test lets it go, the
    /// way a syscall on a dead server does.
    fn hang() -> (mpsc::Sender<()>, impl FnOnce() + Send + 'static) {
        let (release, wait) = mpsc::channel::<()>();
        (release, move || {
            let _ = wait.recv();
        })
    }

    #[tokio::test]
    async fn answers_in_time_and_gives_its_place_back() {
        let work = StuckWork::new("probes", 1);
        assert_eq!(work.run(Duration::from_secs(5), || 7).await, Ok(7));
        assert_eq!(work.in_flight(), InFlight { count: 0, limit: 1, oldest: None });
        assert_eq!(work.run(Duration::from_secs(5), || 8).await, Ok(8), "the place came back");
    }

    #[tokio::test]
    async fn stuck_work_times_out_keeps_its_place_and_refuses_more_until_it_returns() {
        let work = StuckWork::new("probes", 2);
        let (first, hang1) = hang();
        let (second, hang2) = hang();
        let started = Instant::now();
        let err = work.run(Duration::from_millis(50), hang1).await.unwrap_err();
        assert!(matches!(err, StuckError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1), "the caller was held");
        assert!(work.run(Duration::from_millis(50), hang2).await.is_err());
        let seen = work.in_flight();
        assert_eq!((seen.count, seen.limit), (2, 2));
        assert!(seen.oldest.is_some_and(|d| d >= Duration::from_millis(50)), "{seen:?}");

        // Full: refused at once, with no thread started and the oldest named.
        let ran = Arc::new(Mutex::new(false));
        let flag = ran.clone();
        let refused = work.run(Duration::from_secs(5), move || *flag.lock().unwrap() = true).await.unwrap_err();
        assert!(matches!(refused, StuckError::Full { limit: 2, .. }), "{refused}");
        assert!(refused.to_string().contains("2 earlier probes"), "{refused}");
        assert!(!*ran.lock().unwrap(), "no work ran past the bound");

        // One thread comes back: exactly one place frees.
        first.send(()).unwrap();
        for _ in 0..200 {
            if work.in_flight().count == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(work.in_flight().count, 1);
        assert_eq!(work.run(Duration::from_secs(5), || 1).await, Ok(1));
        second.send(()).unwrap();
    }

    #[tokio::test]
    async fn a_panicking_piece_is_an_error_and_frees_its_place() {
        let work = StuckWork::new("look-ups", 1);
        let err = work.run(Duration::from_secs(5), || panic!("boom")).await.unwrap_err();
        assert_eq!(err, StuckError::Panicked { what: "look-ups" });
        assert_eq!(work.in_flight().count, 0);
    }

    #[test]
    fn a_ticket_taken_by_hand_holds_its_place_until_dropped() {
        let work = StuckWork::new("passes", 1);
        let ticket = work.try_start().unwrap();
        assert!(matches!(work.try_start(), Err(StuckError::Full { .. })));
        drop(ticket);
        assert!(work.try_start().is_ok());
    }

    /// This kind's entry in the process's table (other tests add their own).
    fn listed(what: &'static str) -> Option<Stuck> {
        stuck_now().into_iter().find(|stuck| stuck.what == what)
    }

    #[tokio::test]
    async fn only_work_past_its_deadline_is_listed_by_name_until_its_thread_returns() {
        let work = StuckWork::new_of("test reads", "sessions", 3);
        let (slow, hang_slow) = hang();
        let (stuck, hang_stuck) = hang();
        // Within its (long) deadline: running, not stuck.
        let within = work.clone();
        let pending = tokio::spawn(async move { within.run(Duration::from_secs(60), hang_slow).await });
        assert!(work.run(Duration::from_millis(30), hang_stuck).await.is_err());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let seen = listed("test reads").expect("the stuck read is listed");
        assert_eq!((seen.of, seen.count, seen.limit), (Some("sessions"), 1, 3), "{seen:?}");
        assert!(seen.oldest >= Duration::from_millis(30), "{seen:?}");
        assert_eq!(work.in_flight().count, 2, "both are in flight");

        stuck.send(()).unwrap();
        for _ in 0..200 {
            if listed("test reads").is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(listed("test reads"), None, "a returned thread leaves the list");
        slow.send(()).unwrap();
        pending.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_stuck_thread_stays_listed_after_its_owner_is_dropped() {
        let work = StuckWork::new("orphan reads", 1);
        let (release, hang) = hang();
        assert!(work.run(Duration::from_millis(10), hang).await.is_err());
        drop(work);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(listed("orphan reads").map(|s| s.count), Some(1), "the thread is still there");
        release.send(()).unwrap();
        for _ in 0..200 {
            if listed("orphan reads").is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the returned thread is still listed");
    }
}
