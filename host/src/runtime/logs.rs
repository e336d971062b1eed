//! Live logs per function (`ledge logs NAME [--follow]`): the guest's output lines and the
//! request lines of the requests that reached it, kept in a bounded buffer per function and
//! streamed to followers.
//!
//! Invariants: a function's buffer holds at most [`MAX_ENTRIES`] entries and [`MAX_BYTES`]
//! bytes of text (oldest dropped first); a follower that falls more than [`FOLLOW_BACKLOG`]
//! entries behind skips ahead and is told how many it missed; recording never blocks.

use std::collections::{HashMap, VecDeque};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;

/// Entries kept per function.
pub const MAX_ENTRIES: usize = 1000;
/// Bytes of text kept per function.
pub const MAX_BYTES: usize = 256 << 10;
/// Entries a follower may lag behind before it skips ahead.
const FOLLOW_BACKLOG: usize = 1024;

/// One log entry.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// When it happened; written as RFC 3339 with milliseconds, only when someone reads it.
    #[serde(rename = "time", serialize_with = "rfc3339_millis")]
    pub at: SystemTime,
    pub function: String,
    /// `stdout`, `stderr` (guest output) or `request`.
    pub kind: &'static str,
    /// The guest's line, or `METHOD PATH` for a request.
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Entry {
    fn new(function: &str, kind: &'static str, text: String) -> Entry {
        let at = SystemTime::now();
        Entry {
            at,
            function: function.to_string(),
            kind,
            text,
            status: None,
            duration_ms: None,
            version: None,
            request_id: None,
        }
    }
}

fn rfc3339_millis<S: serde::Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_millis(*at))
}

/// What one request contributes to its function's log.
pub struct RequestLine<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration_ms: f64,
    pub version: u64,
    pub request_id: &'a str,
}

#[derive(Default)]
struct Book {
    entries: VecDeque<Entry>,
    bytes: usize,
    /// Made when someone first follows: a channel holds its whole backlog from the start
    /// (about 180 KiB), which 10,000 functions nobody follows would otherwise hold each.
    followers: Option<broadcast::Sender<Entry>>,
}

/// Every function's log.
#[derive(Default)]
pub struct Logs {
    books: Mutex<HashMap<String, Book>>,
}

impl Logs {
    pub fn guest_line(&self, function: &str, stream: &'static str, line: &str) {
        self.record(Entry::new(function, stream, line.to_string()));
    }

    pub fn request(&self, function: &str, line: RequestLine<'_>) {
        let mut entry = Entry::new(function, "request", format!("{} {}", line.method, line.path));
        entry.status = Some(line.status);
        entry.duration_ms = Some((line.duration_ms * 1000.0).round() / 1000.0);
        entry.version = Some(line.version);
        entry.request_id = Some(line.request_id.to_string());
        self.record(entry);
    }

    fn record(&self, entry: Entry) {
        let mut books = self.books.lock();
        // Probed by `&str`: the name is copied only for a function's first entry.
        if !books.contains_key(&entry.function) {
            books.insert(entry.function.clone(), Book::default());
        }
        let book = books.get_mut(&entry.function).expect("inserted above");
        // Recording runs for every request: copy the entry only for someone following.
        if let Some(followers) = book.followers.as_ref().filter(|followers| followers.receiver_count() > 0) {
            let _ = followers.send(entry.clone());
        }
        book.bytes += entry.text.len();
        book.entries.push_back(entry);
        while book.entries.len() > MAX_ENTRIES || book.bytes > MAX_BYTES {
            let Some(dropped) = book.entries.pop_front() else { break };
            book.bytes -= dropped.text.len();
        }
    }

    /// The entries of `function` since `since`, and (to follow) a receiver of every later one.
    pub fn read(&self, function: &str, since: SystemTime) -> (Vec<Entry>, broadcast::Receiver<Entry>) {
        let mut books = self.books.lock();
        let book = books.entry(function.to_string()).or_default();
        let past = book.entries.iter().filter(|entry| entry.at >= since).cloned().collect();
        let followers = book.followers.get_or_insert_with(|| broadcast::channel(FOLLOW_BACKLOG).0);
        (past, followers.subscribe())
    }

    /// Forgets a removed function's log.
    pub fn forget(&self, function: &str) {
        self.books.lock().remove(function);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_functions_log_is_bounded_oldest_first_and_followers_see_new_entries() {
        let logs = Logs::default();
        let (_, mut follower) = logs.read("f", SystemTime::UNIX_EPOCH);
        for i in 0..(MAX_ENTRIES + 10) {
            logs.guest_line("f", "stdout", &format!("line {i}"));
        }
        let (kept, _) = logs.read("f", SystemTime::UNIX_EPOCH);
        assert_eq!(kept.len(), MAX_ENTRIES);
        assert_eq!(kept[0].text, "line 10");
        assert_eq!(follower.try_recv().unwrap().text, "line 0");
        logs.guest_line("f", "stderr", &"x".repeat(MAX_BYTES));
        let (kept, _) = logs.read("f", SystemTime::UNIX_EPOCH);
        assert_eq!(kept.len(), 1, "one huge line pushes every other out");
        assert!(logs.read("g", SystemTime::UNIX_EPOCH).0.is_empty());
    }
}
