//! Durations as admins write them: `30s`, `15m`, `2h`, `1d`.

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

/// A duration read from the config; deserializes from `"15m"`-style text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let hint = "use a whole number and a unit: 30s, 15m, 2h, 1d";
    let count: u64 = number.parse().map_err(|_| format!("invalid duration {text:?}: {hint}"))?;
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid duration {text:?}: {hint}")),
    };
    count.checked_mul(seconds_per_unit).map(Duration::from_secs).ok_or_else(|| format!("duration {text:?} is too long"))
}

/// A duration as the config writes them, for messages: whole units, and
/// below a second in milliseconds (`250ms`, `10s`, `5m`).
pub fn format_rounded(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        return format!("{}ms", duration.as_millis());
    }
    format(Duration::from_secs(duration.as_secs()))
}

/// The shortest exact text for a duration, the inverse of [`parse`].
pub fn format(duration: Duration) -> String {
    let seconds = duration.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if seconds != 0 && seconds % size == 0 {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a quoted duration such as \"30s\", \"15m\" or \"2h\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ConfigDuration, E> {
                parse(text).map(ConfigDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Text)
    }
}

pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_four_units() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in ["", "15", "m", "15x", "1.5h", "-1m", "15 m", "99999999999999999999d"] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn formats_back_to_the_largest_exact_unit() {
        assert_eq!(format(Duration::from_secs(900)), "15m");
        assert_eq!(format(Duration::from_secs(90)), "90s");
        assert_eq!(format(Duration::from_secs(86_400)), "1d");
        assert_eq!(format(Duration::ZERO), "0s");
        for text in ["30s", "15m", "2h", "1d", "25h"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }
}
