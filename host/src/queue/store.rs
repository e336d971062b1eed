//! Where queues live in the engine's system keyspace, and loading them at start.
//!
//! - `sys/qm/QUEUE/SEQ`: a waiting message's [`Entry`] (JSON);
//! - `sys/qd/QUEUE/SEQ`: a dead-lettered message's entry;
//! - `sys/qb/QUEUE/SEQ`: the message's body, for both.
//!
//! `SEQ` is 16 hex digits, so keys sort in send order. Metadata and bodies have prefixes of their
//! own so that loading reads only the small entries.

use std::collections::HashMap;

use ledge_kv::{Db, Isolation, Tx, TxError, prefix_end};

use super::QueueIndex;
use super::index::Entry;

/// Entries read per transaction when loading.
const LOAD_PAGE: usize = 1000;

/// Which record of a message a key names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Record {
    Waiting,
    Dead,
    Body,
}

impl Record {
    fn prefix(self) -> &'static str {
        match self {
            Record::Waiting => "sys/qm/",
            Record::Dead => "sys/qd/",
            Record::Body => "sys/qb/",
        }
    }
}

pub fn key(record: Record, queue: &str, seq: u64) -> Vec<u8> {
    format!("{}{queue}/{seq:016x}", record.prefix()).into_bytes()
}

/// The range of `queue`'s records of one kind.
pub fn range(record: Record, queue: &str) -> (Vec<u8>, Vec<u8>) {
    let start = format!("{}{queue}/", record.prefix()).into_bytes();
    let end = prefix_end(&start);
    (start, end)
}

pub fn encode(entry: &Entry) -> Vec<u8> {
    serde_json::to_vec(entry).expect("an entry serializes")
}

fn decode(value: &[u8]) -> Option<Entry> {
    serde_json::from_slice(value).ok()
}

/// `(queue, seq)` of a metadata key under `prefix`.
fn parse_key<'a>(key: &'a [u8], prefix: &str) -> Option<(&'a str, u64)> {
    let rest = std::str::from_utf8(key.strip_prefix(prefix.as_bytes())?).ok()?;
    let (queue, seq) = rest.split_once('/')?;
    Some((queue, u64::from_str_radix(seq, 16).ok()?))
}

/// Writes a new message (entry and body) into `tx`.
pub fn put_message(tx: &mut Tx, queue: &str, seq: u64, entry: &Entry, body: &[u8]) -> Result<(), TxError> {
    tx.put(&key(Record::Body, queue, seq), body)?;
    tx.put(&key(Record::Waiting, queue, seq), &encode(entry))
}

/// Every queue's messages, and the highest sequence number in use.
pub fn load(db: &Db) -> Result<(HashMap<String, QueueIndex>, u64), TxError> {
    let mut indexes: HashMap<String, QueueIndex> = HashMap::new();
    let mut last_seq = 0;
    for record in [Record::Waiting, Record::Dead] {
        let prefix = record.prefix();
        let mut start = prefix.as_bytes().to_vec();
        let end = prefix_end(prefix.as_bytes());
        loop {
            let page = db.begin(Isolation::Snapshot).scan(&start, &end, LOAD_PAGE)?;
            for (key, value) in &page {
                // A record this version cannot read is left where it is, not lost.
                let (Some((queue, seq)), Some(entry)) = (parse_key(key, prefix), decode(value)) else {
                    tracing::warn!(key = %String::from_utf8_lossy(key), "unreadable queue record skipped");
                    continue;
                };
                last_seq = last_seq.max(seq);
                let index = indexes.entry(queue.to_string()).or_default();
                match record {
                    Record::Dead => index.insert_dead(seq, entry),
                    _ => index.insert(seq, entry),
                }
            }
            match page.last() {
                Some((key, _)) if page.len() == LOAD_PAGE => start = [key.as_slice(), &[0]].concat(),
                _ => break,
            }
        }
    }
    Ok((indexes, last_seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_in_send_order_and_parse_back() {
        let (a, b) = (key(Record::Waiting, "orders", 9), key(Record::Waiting, "orders", 10));
        assert!(a < b);
        assert_eq!(parse_key(&b, "sys/qm/"), Some(("orders", 10)));
        let (start, end) = range(Record::Waiting, "orders");
        assert!(start < a && b < end);
        let other = key(Record::Waiting, "orders-dlq", 1);
        assert!(!(start <= other && other < end), "another queue is outside the range");
    }
}
