//! A queue's messages in memory: which are waiting, which are out for delivery, which are dead,
//! and the bytes they hold; and the choice of what to deliver next ([`QueueIndex::claim`]).
//!
//! Invariants: the index mirrors the engine (every entry in it was committed, or is being
//! settled); a message is out for delivery at most once at a time; of the messages sharing a
//! key, only the oldest may be out or chosen, so same-key messages go one at a time, in send
//! order; reserved (sent but not yet committed) messages count against the bounds like kept ones.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

/// One message's metadata, as the engine keeps it (the body is a key of its own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Stable across attempts and a dead-letter move: consumers deduplicate on it.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub sent_at_ms: u64,
    /// Not delivered before this time (a delay, or the backoff after a failed attempt).
    pub not_before_ms: u64,
    /// Attempts that failed so far.
    pub failed: u32,
    /// The body's length.
    pub size: u64,
    /// It came here from another queue's failed attempts (a `dead_letter` move): failing here
    /// too, it stays on this queue's dead side, so a cycle of dead-letter queues ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub moved: bool,
}

/// A queue's bounds: what it keeps at most, its dead side included.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub max_depth: u32,
    pub max_bytes: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        let consumer = crate::access::policy::Consumer::defaults("", "/");
        Bounds { max_depth: consumer.max_depth, max_bytes: consumer.max_bytes }
    }
}

/// One queue, in memory.
#[derive(Debug, Default)]
pub struct QueueIndex {
    /// Waiting or out for delivery, by sequence (send order).
    pub live: BTreeMap<u64, Entry>,
    /// Out for delivery now.
    pub in_flight: HashSet<u64>,
    /// Dead-lettered, kept on the queue's dead side.
    pub dead: BTreeMap<u64, Entry>,
    /// Sent in transactions not yet committed.
    pub reserved: u64,
    pub reserved_bytes: u64,
    /// Bytes charged for every kept message, live and dead ([`charged`]).
    pub bytes: u64,
}

/// What a message costs besides its body (its keys, its entry in the engine and here, their
/// versions), charged with it so that empty messages are not free.
pub const MESSAGE_OVERHEAD: u64 = 256;

/// The bytes a message of `size` body bytes is charged for.
pub fn charged(size: u64) -> u64 {
    size + MESSAGE_OVERHEAD
}

/// Why a send does not fit a queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Full {
    pub bounds: Bounds,
}

impl QueueIndex {
    /// Messages kept or reserved.
    pub fn depth(&self) -> u64 {
        (self.live.len() + self.dead.len()) as u64 + self.reserved
    }

    /// Holds room for a message of `size` bytes, or says the queue is full.
    pub fn reserve(&mut self, size: u64, bounds: Bounds) -> Result<(), Full> {
        let over_depth = self.depth() + 1 > u64::from(bounds.max_depth);
        let over_bytes = self.bytes + self.reserved_bytes + charged(size) > bounds.max_bytes;
        if over_depth || over_bytes {
            return Err(Full { bounds });
        }
        self.reserved += 1;
        self.reserved_bytes += charged(size);
        Ok(())
    }

    /// Gives back a reservation (its transaction ended, committed or not).
    pub fn unreserve(&mut self, size: u64) {
        self.reserved = self.reserved.saturating_sub(1);
        self.reserved_bytes = self.reserved_bytes.saturating_sub(charged(size));
    }

    /// Adds a committed message.
    pub fn insert(&mut self, seq: u64, entry: Entry) {
        self.bytes += charged(entry.size);
        if let Some(replaced) = self.live.insert(seq, entry) {
            self.bytes = self.bytes.saturating_sub(charged(replaced.size));
        }
    }

    /// Removes a live message, whether or not it is out for delivery.
    pub fn remove(&mut self, seq: u64) -> Option<Entry> {
        self.in_flight.remove(&seq);
        let entry = self.live.remove(&seq)?;
        self.bytes = self.bytes.saturating_sub(charged(entry.size));
        Some(entry)
    }

    /// Adds a dead-lettered message to the dead side.
    pub fn insert_dead(&mut self, seq: u64, entry: Entry) {
        self.bytes += charged(entry.size);
        if let Some(replaced) = self.dead.insert(seq, entry) {
            self.bytes = self.bytes.saturating_sub(charged(replaced.size));
        }
    }

    /// Removes a message from the dead side.
    pub fn remove_dead(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.dead.remove(&seq)?;
        self.bytes = self.bytes.saturating_sub(charged(entry.size));
        Some(entry)
    }

    /// Up to `most` messages due at `now_ms` to send out now, marked out for delivery; and
    /// when the next waiting one falls due (if none was left for lack of `most`).
    pub fn claim(&mut self, most: usize, now_ms: u64) -> (Vec<(u64, Entry)>, Option<u64>) {
        let mut chosen = Vec::new();
        let mut next_due: Option<u64> = None;
        // Keys with a message out (whatever its place: a late commit or a redrive can put an
        // older sequence behind it), or whose oldest message is not yet due, or just chosen:
        // the rest of that key waits.
        let mut blocked: HashSet<&str> =
            self.in_flight.iter().filter_map(|seq| self.live.get(seq)?.key.as_deref()).collect();
        for (seq, entry) in &self.live {
            let key = entry.key.as_deref();
            if key.is_some_and(|key| blocked.contains(key)) {
                continue;
            }
            let out = self.in_flight.contains(seq);
            let due = entry.not_before_ms <= now_ms;
            if !out && !due {
                next_due = Some(next_due.map_or(entry.not_before_ms, |next| next.min(entry.not_before_ms)));
            }
            if !out && due {
                if chosen.len() == most {
                    return (self.mark(chosen), None);
                }
                chosen.push((*seq, entry.clone()));
            }
            if let Some(key) = key {
                blocked.insert(key);
            }
        }
        (self.mark(chosen), next_due)
    }

    fn mark(&mut self, chosen: Vec<(u64, Entry)>) -> Vec<(u64, Entry)> {
        self.in_flight.extend(chosen.iter().map(|(seq, _)| *seq));
        chosen
    }

    /// How long the oldest live message has waited.
    pub fn oldest_age_ms(&self, now_ms: u64) -> u64 {
        self.live.values().map(|entry| now_ms.saturating_sub(entry.sent_at_ms)).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: Option<&str>, not_before_ms: u64) -> Entry {
        Entry {
            id: "m".into(),
            key: key.map(String::from),
            sent_at_ms: 0,
            not_before_ms,
            failed: 0,
            size: 1,
            moved: false,
        }
    }

    fn index(entries: &[(Option<&str>, u64)]) -> QueueIndex {
        let mut index = QueueIndex::default();
        for (seq, (key, due)) in entries.iter().enumerate() {
            index.insert(seq as u64, entry(*key, *due));
        }
        index
    }

    fn seqs(claimed: &[(u64, Entry)]) -> Vec<u64> {
        claimed.iter().map(|(seq, _)| *seq).collect()
    }

    #[test]
    fn same_key_messages_go_one_at_a_time_in_order_and_other_keys_in_parallel() {
        let mut index = index(&[(Some("a"), 0), (Some("a"), 0), (Some("b"), 0), (None, 0), (None, 0)]);
        let (first, _) = index.claim(10, 0);
        assert_eq!(seqs(&first), [0, 2, 3, 4]);
        assert_eq!(seqs(&index.claim(10, 0).0), Vec::<u64>::new(), "the second `a` waits for the first");
        index.remove(0);
        assert_eq!(seqs(&index.claim(10, 0).0), [1]);
    }

    #[test]
    fn a_message_waiting_for_its_time_holds_back_its_key_and_says_when() {
        let mut index = index(&[(Some("a"), 50), (Some("a"), 0), (None, 80), (None, 0)]);
        let (claimed, next_due) = index.claim(10, 10);
        assert_eq!(seqs(&claimed), [3]);
        assert_eq!(next_due, Some(50));
        assert_eq!(seqs(&index.claim(10, 60).0), [0]);
    }

    #[test]
    fn a_key_out_for_delivery_holds_back_an_older_message_of_the_same_key() {
        let mut index = index(&[(None, 0), (Some("a"), 0)]);
        assert_eq!(seqs(&index.claim(10, 0).0), [0, 1]);
        // A redriven (or late-committed) message with an older sequence and the same key.
        index.insert(0, entry(Some("a"), 0));
        index.in_flight.remove(&0);
        assert_eq!(seqs(&index.claim(10, 0).0), Vec::<u64>::new(), "the key is out");
        index.remove(1);
        assert_eq!(seqs(&index.claim(10, 0).0), [0]);
    }

    #[test]
    fn at_most_the_asked_number_is_claimed() {
        let mut index = index(&[(None, 0), (None, 0), (None, 0)]);
        assert_eq!(seqs(&index.claim(2, 0).0), [0, 1]);
        assert_eq!(seqs(&index.claim(2, 0).0), [2]);
    }

    #[test]
    fn reservations_count_against_the_bounds_until_given_back() {
        // One kept message of 1 byte; room for 2 messages and 10 body bytes besides overheads.
        let bounds = Bounds { max_depth: 2, max_bytes: 2 * MESSAGE_OVERHEAD + 10 };
        let mut index = index(&[(None, 0)]);
        index.reserve(5, bounds).unwrap();
        assert_eq!(index.reserve(1, bounds), Err(Full { bounds }), "depth");
        index.unreserve(5);
        assert_eq!(index.reserve(10, bounds), Err(Full { bounds }), "bytes: 1 kept + 10");
        index.reserve(9, bounds).unwrap();
        // Empty messages are not free.
        let mut empty = QueueIndex::default();
        let small = Bounds { max_depth: 100, max_bytes: 3 * MESSAGE_OVERHEAD };
        for _ in 0..3 {
            empty.reserve(0, small).unwrap();
        }
        assert_eq!(empty.reserve(0, small), Err(Full { bounds: small }));
    }
}
