//! The clock seam: wall time for reports, monotonic time for intervals.
//! Everything that reads the time goes through [`Clock`] so tests can pin it.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
    fn monotonic(&self) -> Instant;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place wall time is read
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    fn monotonic(&self) -> Instant {
        Instant::now()
    }
}

pub type SharedClock = Arc<dyn Clock>;

pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// RFC 3339 in UTC with seconds, the one time format of the API.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
pub mod fake {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A clock that only moves when told to.
    pub struct FakeClock {
        wall: Mutex<SystemTime>,
        start: Instant,
        elapsed: Mutex<Duration>,
    }

    impl FakeClock {
        pub fn at(wall: SystemTime) -> Arc<Self> {
            Arc::new(Self { wall: Mutex::new(wall), start: Instant::now(), elapsed: Mutex::new(Duration::ZERO) })
        }
        pub fn advance(&self, by: Duration) {
            *self.wall.lock().unwrap() += by;
            *self.elapsed.lock().unwrap() += by;
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> SystemTime {
            *self.wall.lock().unwrap()
        }
        fn monotonic(&self) -> Instant {
            self.start + *self.elapsed.lock().unwrap()
        }
    }
}
