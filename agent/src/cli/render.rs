//! What every human summary shares. `--json` bypasses all of this.

use crate::core::clock::Clock;
use std::time::Duration;

/// Characters that reorder or hide text on a terminal: bidi embeddings,
/// overrides and isolates, and the invisible marks.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// What a user wrote (script output, a hold's reason) made safe to print on a
/// terminal: control characters other than newline and tab (escape
/// sequences, carriage returns that overwrite a line) and bidi controls
/// (text that reads differently from what it is) are dropped.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| (c.is_control() && c != '\n' && c != '\t') || is_bidi_control(c);
    if text.chars().any(unsafe_char) {
        text.chars().filter(|c| !unsafe_char(*c)).collect::<String>().into()
    } else {
        text.into()
    }
}

/// JSON as serde writes it leaves bidi controls raw inside strings; written
/// as `\uXXXX` they mean the same to a parser and nothing to a terminal.
pub fn json_for_terminal(json: &str) -> std::borrow::Cow<'_, str> {
    if !json.chars().any(is_bidi_control) {
        return json.into();
    }
    json.chars()
        .map(|c| if is_bidi_control(c) { format!("\\u{:04x}", c as u32) } else { c.to_string() })
        .collect::<String>()
        .into()
}

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

#[cfg(test)]
mod printing_tests {
    use super::*;

    #[test]
    fn escapes_carriage_returns_and_bidi_controls_never_reach_the_terminal() {
        let planted = "done\r\u{1b}[2Kall good \u{202E}txt.exe\u{202C}\n\tnext";
        assert_eq!(printable(planted), "done[2Kall good txt.exe\n\tnext");
        assert_eq!(printable("plain\n"), "plain\n");
        let json = serde_json::to_string(&serde_json::json!({"reason": "a\u{2067}b\u{1b}"})).unwrap();
        let shown = json_for_terminal(&json);
        assert!(!shown.contains('\u{2067}') && !shown.contains('\u{1b}'), "{shown}");
        let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(back["reason"], "a\u{2067}b\u{1b}", "the same value to a parser");
    }
}
