//! Global queues (cluster mode, `[queues] global`): messages kept in etcd with the cluster's
//! global data, so that whichever node runs the consumer delivers them, each once per cluster.
//!
//! - `q/QUEUE/m/POS` a waiting message's entry, `q/QUEUE/d/POS` a dead one's, `q/QUEUE/b/POS`
//!   its body: global data keys (under `/ledge/kv/`), written and removed only by global
//!   transactions, so a queue's bytes are held to its quota by the same accounting as a global
//!   keyspace's (`q/QUEUE/` is the keyspace; its quota is the consumer's `max_bytes`);
//! - `/ledge/qclaim/QUEUE/POS`: a delivery in progress, on a lease of its own that the
//!   delivering node renews while the delivery runs. A message is claimed by one etcd
//!   transaction that requires no claim and the message still as listed, so two nodes never
//!   deliver it at once. Settled, the claim goes with its lease; a node that dies (or loses
//!   etcd) mid-delivery stops renewing, the claim expires, and another node delivers the message
//!   again (at least once). A settle that failed leaves its claim to expire the same way, which
//!   is the retry's backoff.
//!
//! `POS` is 16 hex digits: microseconds since the epoch in the high bits, random low bits, so
//! positions sort in send order across nodes (to within their clocks) and never collide.
//!
//! Invariant: a message is acknowledged, retried or dead-lettered by a serializable global
//! transaction that read it, so a purge or another node's settle in between makes it a conflict
//! or a no-op, never a resurrection.

//!
//! This file holds the positions, keys and sending; `claims.rs` finding and claiming due
//! messages on their leases; `settle.rs` settling them and the operator's view and tools.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use etcd_client::GetOptions;

use super::global::{GlobalError, GlobalStore, GlobalTx, MAX_TXN_BYTES};
use crate::etcd::Etcd;
use crate::queue::{Bounds, QueueError, SendOptions, new_entry};

mod claims;
mod settle;

/// Where claims live in etcd.
const CLAIM_PREFIX: &str = "/ledge/qclaim/";

/// What a message's keys and entry add to its body in a global transaction, at most.
const TXN_OVERHEAD: usize = 4096;

/// Seconds a dead node's claims outlive it.
const CLAIM_TTL_SECONDS: i64 = 15;

/// Messages looked at per listing when choosing what to deliver, and listings per look: a
/// backlog of messages not yet due (delayed, backing off, or behind their key) delays the
/// look at those after it only past this many.
const LIST_LIMIT: i64 = 1000;
const LIST_PAGES: usize = 10;

/// Messages moved or removed per global transaction (two or three keys each, under etcd's 128).
const BATCH: usize = 40;

/// A node's handle on the global queues.
pub struct GlobalQueues {
    store: Arc<GlobalStore>,
    etcd: Arc<Etcd>,
    node: String,
    max_body: u64,
    last_position: AtomicU64,
    /// The tasks renewing the leases of this node's claims, by lease.
    renewals: std::sync::Mutex<std::collections::HashMap<i64, tokio::task::AbortHandle>>,
}

#[derive(Clone, Copy)]
enum Record {
    Waiting,
    Dead,
    Body,
}

fn key(record: Record, queue: &str, position: u64) -> Vec<u8> {
    let kind = match record {
        Record::Waiting => "m",
        Record::Dead => "d",
        Record::Body => "b",
    };
    format!("q/{queue}/{kind}/{position:016x}").into_bytes()
}

fn range(record: Record, queue: &str) -> (Vec<u8>, Vec<u8>) {
    let start = key(record, queue, 0);
    let start = start[..start.len() - 16].to_vec();
    let end = ledge_kv::prefix_end(&start);
    (start, end)
}

fn claim_key(queue: &str, position: u64) -> String {
    format!("{CLAIM_PREFIX}{queue}/{position:016x}")
}

fn position_of(key: &[u8]) -> Option<u64> {
    let last = key.rsplit(|&b| b == b'/').next()?;
    u64::from_str_radix(std::str::from_utf8(last).ok()?, 16).ok()
}

fn unavailable(error: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(error.to_string())
}

fn from_global(error: GlobalError) -> QueueError {
    match error {
        GlobalError::Limit(why) => QueueError::Refused(why),
        GlobalError::Conflict(why) => QueueError::Conflict(why),
        GlobalError::Unavailable(why) => QueueError::Unavailable(why),
    }
}

impl GlobalQueues {
    pub fn new(store: Arc<GlobalStore>, etcd: Arc<Etcd>, node: &str, max_body: u64) -> Arc<GlobalQueues> {
        Arc::new(GlobalQueues {
            store,
            etcd,
            node: node.to_string(),
            max_body,
            last_position: AtomicU64::new(0),
            renewals: Default::default(),
        })
    }

    fn next_position(&self) -> u64 {
        let now_us = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64;
        let candidate = |last: u64| ((now_us << 12) | u64::from(rand::random::<u16>() & 0xfff)).max(last + 1);
        let previous =
            self.last_position.fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| Some(candidate(last)));
        candidate(previous.unwrap_or_else(|last| last))
    }

    /// Refuses a send to `queue` when it holds `bounds.max_depth` messages in etcd now (its
    /// bytes are held to the queue's quota when the sending transaction commits).
    pub async fn check_depth(&self, queue: &str, bounds: Bounds) -> Result<(), QueueError> {
        let depth = self.count(queue, Record::Waiting).await? + self.count(queue, Record::Dead).await?;
        if depth >= u64::from(bounds.max_depth) {
            return Err(QueueError::Full { queue: queue.to_string(), bounds });
        }
        Ok(())
    }

    /// A position for a new message of `queue`, read as free in `tx`: should another node write
    /// the same one first, `tx` fails its commit (a conflict) instead of overwriting it.
    pub async fn free_position(&self, tx: &mut GlobalTx, queue: &str) -> Result<u64, QueueError> {
        let position = self.next_position();
        // The body key: a waiting or a dead message at this position has one.
        match tx.get(&key(Record::Body, queue, position)).await.map_err(from_global)? {
            None => Ok(position),
            Some(_) => Err(QueueError::Conflict("a message position was taken by another node; send again".into())),
        }
    }

    /// Writes a message into the global transaction `tx` at `position` (see
    /// [`GlobalQueues::free_position`]), sent iff `tx` commits; its id.
    pub fn stage(
        &self,
        tx: &mut GlobalTx,
        queue: &str,
        position: u64,
        body: &[u8],
        options: &SendOptions,
    ) -> Result<String, QueueError> {
        // The body travels in one etcd transaction with its keys and entry.
        let max_body = self.max_body.min((MAX_TXN_BYTES - TXN_OVERHEAD) as u64);
        let entry = new_entry(queue, body, options, max_body)?;
        let encoded = serde_json::to_vec(&entry).expect("an entry serializes");
        tx.put(&key(Record::Body, queue, position), body).map_err(from_global)?;
        tx.put(&key(Record::Waiting, queue, position), &encoded).map_err(from_global)?;
        Ok(entry.id)
    }

    /// Sends one message in a global transaction of its own; its id once committed.
    pub async fn send(
        &self,
        queue: &str,
        body: &[u8],
        options: &SendOptions,
        bounds: Bounds,
    ) -> Result<String, QueueError> {
        self.check_depth(queue, bounds).await?;
        let mut tx = self.store.begin(false);
        let position = self.free_position(&mut tx, queue).await?;
        let id = self.stage(&mut tx, queue, position, body, options)?;
        tx.commit().await.map_err(from_global)?;
        Ok(id)
    }

    async fn count(&self, queue: &str, record: Record) -> Result<u64, QueueError> {
        let (start, end) = range(record, queue);
        let options = GetOptions::new().with_range(data_key(&end)).with_count_only();
        let response = self.etcd.get(data_key(&start), Some(options)).await.map_err(unavailable)?;
        Ok(response.count().max(0) as u64)
    }
}

/// The etcd key of a global data key.
fn data_key(key: &[u8]) -> Vec<u8> {
    [b"/ledge/kv/".as_slice(), key].concat()
}
