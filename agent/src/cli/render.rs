//! What every human summary shares. `--json` bypasses all of this.

use crate::core::clock::Clock;
use std::time::Duration;

/// `3m ago`, `2h ago`; empty when the time cannot be read.
pub fn age(rfc3339: &str, clock: &dyn Clock) -> String {
    let Ok(then) = humantime::parse_rfc3339(rfc3339) else {
        return String::new();
    };
    let elapsed = clock.now().duration_since(then).unwrap_or(Duration::ZERO).as_secs();
    let rounded = if elapsed >= 86_400 {
        format!("{}d", elapsed / 86_400)
    } else if elapsed >= 3600 {
        format!("{}h", elapsed / 3600)
    } else if elapsed >= 60 {
        format!("{}m", elapsed / 60)
    } else {
        format!("{elapsed}s")
    };
    format!("{rounded} ago")
}
