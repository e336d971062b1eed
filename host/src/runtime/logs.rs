//! Live logs per function (`ledge logs NAME [--follow]`): the guest's output lines and the
//! request lines of the requests that reached it, kept in a bounded buffer per function and
//! streamed to followers.
//!
//! Invariants: a function's buffer holds at most [`MAX_ENTRIES`] entries and [`MAX_BYTES`]
//! bytes of text (oldest dropped first); all functions' buffers together hold at most
//! [`NODE_MAX_BYTES`] (their slots and the entries' strings, not only the text): past it, the
//! largest buffers are cut to one level, oldest entries first, and give back their spare slots,
//! so a busy function's lines push out its own and never those of a function that holds less; a follower that falls more than [`FOLLOW_BACKLOG`] entries
//! behind skips ahead and is told how many it missed; recording never blocks.

use std::collections::{HashMap, VecDeque};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;

/// Entries kept per function.
pub const MAX_ENTRIES: usize = 1000;
/// Bytes of text kept per function.
pub const MAX_BYTES: usize = 256 << 10;
/// Bytes all functions' buffers hold together: without it, 10,000 busy functions would hold
/// about 4 GiB (1,000 entries of about 200 bytes plus their text each).
pub const NODE_MAX_BYTES: usize = 64 << 20;
/// After the node's bound is passed, the buffers are cut down to this share of it, so the
/// (sorting) cut runs once per several MiB of new lines rather than once per line.
const NODE_CUT_TO: f64 = 0.875;
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
    /// The bytes of its strings (its own size is counted in its book's slots).
    fn strings(&self) -> usize {
        self.function.len() + self.text.len() + self.request_id.as_ref().map_or(0, String::len)
    }

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
    /// The entries' text (the per-function bound).
    bytes: usize,
    /// The entries' strings (with the slots, what counts toward the node's bound).
    strings: usize,
    /// Made when someone first follows: a channel holds its whole backlog from the start
    /// (about 180 KiB), which 10,000 functions nobody follows would otherwise hold each.
    followers: Option<broadcast::Sender<Entry>>,
}

/// Every function's log.
pub struct Logs {
    books: Mutex<Books>,
    /// The node's bound ([`NODE_MAX_BYTES`] but in tests).
    node_max: usize,
}

#[derive(Default)]
struct Books {
    by_function: HashMap<String, Book>,
    /// Every book's footprint together.
    footprint: usize,
}

impl Default for Logs {
    fn default() -> Self {
        Logs::bounded(NODE_MAX_BYTES)
    }
}

impl Logs {
    fn bounded(node_max: usize) -> Self {
        Logs { books: Mutex::default(), node_max }
    }

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
        let Books { by_function, footprint } = &mut *books;
        // Probed by `&str`: the name is copied only for a function's first entry.
        if !by_function.contains_key(&entry.function) {
            by_function.insert(entry.function.clone(), Book::default());
        }
        let book = by_function.get_mut(&entry.function).expect("inserted above");
        // Recording runs for every request: copy the entry only for someone following.
        if let Some(followers) = book.followers.as_ref().filter(|followers| followers.receiver_count() > 0) {
            let _ = followers.send(entry.clone());
        }
        let before = book.footprint();
        book.push(entry);
        while book.entries.len() > MAX_ENTRIES || book.bytes > MAX_BYTES {
            book.pop_oldest();
        }
        *footprint = *footprint + book.footprint() - before;
        if *footprint > self.node_max {
            books.cut_to((self.node_max as f64 * NODE_CUT_TO) as usize);
        }
    }

    /// The entries of `function` since `since`, and (to follow) a receiver of every later one.
    pub fn read(&self, function: &str, since: SystemTime) -> (Vec<Entry>, broadcast::Receiver<Entry>) {
        let mut books = self.books.lock();
        let book = books.by_function.entry(function.to_string()).or_default();
        let past = book.entries.iter().filter(|entry| entry.at >= since).cloned().collect();
        let followers = book.followers.get_or_insert_with(|| broadcast::channel(FOLLOW_BACKLOG).0);
        (past, followers.subscribe())
    }

    /// Forgets a removed function's log.
    pub fn forget(&self, function: &str) {
        let mut books = self.books.lock();
        if let Some(book) = books.by_function.remove(function) {
            books.footprint -= book.footprint();
        }
    }
}

impl Book {
    /// What the book holds in memory, near enough: its slots (held, used or not) and the
    /// entries' strings.
    fn footprint(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>() + self.strings
    }

    fn push(&mut self, entry: Entry) {
        self.bytes += entry.text.len();
        self.strings += entry.strings();
        self.entries.push_back(entry);
    }

    fn pop_oldest(&mut self) {
        if let Some(dropped) = self.entries.pop_front() {
            self.bytes -= dropped.text.len();
            self.strings -= dropped.strings();
        }
    }

    /// Drops the oldest entries until what is left fits in `level` with half as many spare
    /// slots again (so the next lines do not grow the book at once), and gives back the rest.
    fn cut_to(&mut self, level: usize) {
        let kept = |book: &Book| book.entries.len() * 3 / 2 * std::mem::size_of::<Entry>() + book.strings;
        while kept(self) > level && !self.entries.is_empty() {
            self.pop_oldest();
        }
        self.entries.shrink_to(self.entries.len() * 3 / 2);
    }

    fn followed(&self) -> bool {
        self.followers.as_ref().is_some_and(|followers| followers.receiver_count() > 0)
    }
}

impl Books {
    /// Cuts the largest books, oldest entries first, to one level: the highest at which all
    /// books together hold at most `target` (water-filling; the books under it keep all).
    fn cut_to(&mut self, target: usize) {
        let mut sizes: Vec<usize> = self.by_function.values().map(Book::footprint).collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        // With the largest `k` books cut to `level`, the total is `level * k` plus the rest.
        let mut rest: usize = sizes.iter().sum();
        let mut level = 0;
        for (k, size) in sizes.iter().enumerate() {
            rest -= size;
            let next = sizes.get(k + 1).copied().unwrap_or(0);
            let room = target.saturating_sub(rest) / (k + 1);
            if room >= next {
                level = room;
                break;
            }
        }
        for book in self.by_function.values_mut().filter(|book| book.footprint() > level) {
            book.cut_to(level);
        }
        // A follow channel nobody listens to any more goes (it holds up to its backlog of
        // entries), and so does a book left empty and followed by nobody (its function's next
        // line makes it anew).
        for book in self.by_function.values_mut().filter(|book| !book.followed()) {
            book.followers = None;
        }
        self.by_function.retain(|_, book| !book.entries.is_empty() || book.followed());
        self.footprint = self.by_function.values().map(Book::footprint).sum();
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

    #[test]
    fn all_logs_together_stay_under_the_node_bound_and_the_busiest_lose_their_lines_first() {
        let node_max = 2 << 20;
        let logs = Logs::bounded(node_max);
        for i in 0..5 {
            logs.guest_line("quiet", "stdout", &format!("quiet {i}"));
        }
        // 40 busy functions, each filling its own buffer: 40 times the node's bound over all.
        for round in 0..MAX_ENTRIES {
            for function in 0..40 {
                logs.guest_line(&format!("busy-{function}"), "stdout", &format!("{round:0>200}"));
            }
            let total = logs.books.lock().footprint;
            assert!(total <= node_max, "{total} bytes held after round {round}");
        }
        let books = logs.books.lock();
        let counted: usize = books.by_function.values().map(Book::footprint).sum();
        assert_eq!(books.footprint, counted, "the running total is the sum");
        drop(books);
        let (quiet, _) = logs.read("quiet", SystemTime::UNIX_EPOCH);
        assert_eq!(quiet.len(), 5, "a quiet function keeps every line");
        let (busy, _) = logs.read("busy-7", SystemTime::UNIX_EPOCH);
        assert!(!busy.is_empty() && busy.len() < MAX_ENTRIES, "{} lines", busy.len());
        assert_eq!(busy.last().unwrap().text, format!("{:0>200}", MAX_ENTRIES - 1), "the newest lines stay");
        logs.forget("busy-7");
        let books = logs.books.lock();
        assert_eq!(books.footprint, books.by_function.values().map(Book::footprint).sum::<usize>());
    }
}
