//! How `ledge logs` shows a log entry: one readable line, or the JSON line the server sent.
//!
//! Invariant: unless `--raw`, nothing a guest (or a caller: the request line's path, the
//! request id) put in an entry reaches the operator's terminal as a control character, so a
//! guest cannot drive it (an OSC 52 write to the clipboard, cursor movement, a carriage return
//! that hides a line). Readable lines are escaped by [`escape`]: `\\` for a backslash, `\t`,
//! `\r`, `\n`, `\xNN` for the other C0 controls and DEL, `\u{NN}` for C1 controls and Unicode's
//! bidirectional formatting characters (which reorder what the terminal shows); the rest as it
//! is, so the escaped text is unambiguous. JSON lines stay exact: JSON escapes C0 controls in
//! strings already, and DEL, C1 and bidirectional characters (which JSON leaves raw) are written
//! as `\uXXXX`, so every string decodes to the guest's text.

use std::borrow::Cow;
use std::fmt::Write;

/// What `ledge logs` prints for `line`, a JSON line from the server.
pub fn shown(line: &str, json: bool, raw: bool) -> Cow<'_, str> {
    match (json, raw) {
        (true, true) => Cow::Borrowed(line),
        (true, false) => escape_json(line),
        (false, true) => Cow::Owned(readable(line)),
        // The formats below hold no control character or backslash of their own: escaping the
        // whole line escapes exactly the fields.
        (false, false) => Cow::Owned(escape(&readable(line)).into_owned()),
    }
}

/// `TIME FUNCTION stdout: text`, or `TIME FUNCTION GET /path -> 200 in 1.2 ms (v3, id …)`.
fn readable(line: &str) -> String {
    let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else { return line.to_string() };
    let field = |key: &str| entry[key].as_str().unwrap_or_default().to_string();
    match entry["kind"].as_str() {
        Some("request") => format!(
            "{} {} {} -> {} in {} ms (v{}, id {})",
            field("time"),
            field("function"),
            field("text"),
            entry["status"],
            entry["duration_ms"],
            entry["version"],
            field("request_id")
        ),
        Some("lagged") => format!("(missed {} lines)", entry["missed"]),
        _ => format!("{} {} {}: {}", field("time"), field("function"), field("kind"), field("text")),
    }
}

/// Bidirectional formatting characters: they reorder the text around them on the screen.
fn is_bidi(c: char) -> bool {
    matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with control characters (C0, DEL, C1), bidirectional formatting characters and
/// backslashes escaped.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c == '\\' || c.is_control() || is_bidi(c)) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '\t' => escaped.push_str("\\t"),
            '\r' => escaped.push_str("\\r"),
            '\n' => escaped.push_str("\\n"),
            '\0'..='\x1f' | '\x7f' => {
                let _ = write!(escaped, "\\x{:02x}", c as u32);
            }
            c if c.is_control() || is_bidi(c) => {
                let _ = write!(escaped, "\\u{{{:x}}}", c as u32);
            }
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// A JSON line with its raw control and bidirectional characters written as `\uXXXX`. In valid
/// JSON they can only stand inside strings (a tab aside, which may separate tokens), so the
/// line decodes to the same values.
pub(super) fn escape_json(line: &str) -> Cow<'_, str> {
    let needs = |c: char| (c.is_control() && c != '\t') || is_bidi(c);
    if !line.chars().any(needs) {
        return Cow::Borrowed(line);
    }
    let mut escaped = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if needs(c) {
            let _ = write!(escaped, "\\u{:04x}", c as u32);
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "a\x1b]52;c;aGk=\x07b\x1b[2Ac\rd\te\\f\x7fg\u{9b}31mh\u{202e}i\0é";

    #[test]
    fn control_characters_are_escaped_unambiguously() {
        assert_eq!(escape(HOSTILE), "a\\x1b]52;c;aGk=\\x07b\\x1b[2Ac\\rd\\te\\\\f\\x7fg\\u{9b}31mh\\u{202e}i\\x00é");
        assert!(matches!(escape("plain text, ünïcode"), Cow::Borrowed(_)));
        // A guest that prints an escape's text cannot pass it off as an escaped control.
        assert_ne!(escape("\\x1b"), escape("\x1b"));
    }

    #[test]
    fn readable_lines_escape_every_field_unless_raw() {
        let entry = serde_json::json!({
            "time": "2025-01-01T00:00:00.000Z", "function": "f", "kind": "stdout", "text": HOSTILE,
        })
        .to_string();
        let shown_line = shown(&entry, false, false);
        assert!(!shown_line.chars().any(|c| c.is_control()), "{shown_line:?}");
        assert!(
            shown_line
                .ends_with("f stdout: a\\x1b]52;c;aGk=\\x07b\\x1b[2Ac\\rd\\te\\\\f\\x7fg\\u{9b}31mh\\u{202e}i\\x00é")
        );
        assert_eq!(shown(&entry, false, true), format!("2025-01-01T00:00:00.000Z f stdout: {HOSTILE}"));
        let request = serde_json::json!({
            "time": "t", "function": "f", "kind": "request", "text": "GET /\u{9b}x", "status": 200,
            "duration_ms": 1.5, "version": 2, "request_id": "id\x1b[2J",
        })
        .to_string();
        assert_eq!(shown(&request, false, false), "t f GET /\\u{9b}x -> 200 in 1.5 ms (v2, id id\\x1b[2J)");
        assert_eq!(shown("not json \x1b[2J", false, false), "not json \\x1b[2J");
    }

    #[test]
    fn json_lines_stay_exact_and_hold_no_raw_control_character() {
        let entry = serde_json::json!({ "kind": "stdout", "text": HOSTILE });
        let line = entry.to_string();
        assert!(line.contains('\u{9b}'), "serde_json leaves C1 raw: the client must escape it");
        let shown_line = shown(&line, true, false);
        assert!(!shown_line.chars().any(|c| c.is_control() || is_bidi(c)), "{shown_line:?}");
        let decoded: serde_json::Value = serde_json::from_str(&shown_line).unwrap();
        assert_eq!(decoded, entry);
        assert_eq!(shown(&line, true, true), line);
        assert!(matches!(shown("{\"text\":\"plain\"}", true, false), Cow::Borrowed(_)));
    }
}
