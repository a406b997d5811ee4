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

/// A moment kept as a time and shown as RFC 3339: 16 bytes where the text
/// would take a 24-byte string and its allocation (the links report keeps one
/// per user, 10,000 of them on a large pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(pub SystemTime);

impl serde::Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_seconds(self.0))
    }
}

impl<'de> serde::Deserialize<'de> for Stamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        humantime::parse_rfc3339(&text).map(Stamp).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_seconds(self.0))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_stamp_travels_as_rfc3339_and_back() {
        let at = Stamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_865_709));
        let json = serde_json::to_string(&at).unwrap();
        assert_eq!(json, "\"2026-11-28T11:35:09Z\"");
        assert_eq!(serde_json::from_str::<Stamp>(&json).unwrap(), at);
        assert!(serde_json::from_str::<Stamp>("\"yesterday\"").is_err());
    }
}
