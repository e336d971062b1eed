//! Queues: messages functions and operators send, kept in the engine's system keyspace until a
//! consumer acknowledges them. [`index`] is each queue's state in memory and the choice of what
//! to deliver next; [`store`] the engine keys and loading them at start; [`settle`] what
//! happens to a delivered message (acknowledged, retried, dead-lettered) and the operator's
//! peek, redrive and purge. Delivering (running the consumer) is the HTTP layer's
//! (`http::deliveries`), which has the registry and the recorder.
//!
//! Layer: above [`crate::access`] (a consumer's defaults), below [`crate::guest_kv`] (whose
//! `send-in` writes a message in the guest's own transaction) and the HTTP edge.
//!
//! Invariants:
//! - a message is written in the sender's transaction ([`Queues::stage`]) and enters the index
//!   only once that transaction committed ([`Queues::publish`]): a rolled-back or conflicting
//!   transaction sends nothing, and nothing uncommitted is ever delivered;
//! - room is reserved when a message is staged, so concurrent senders never overfill a queue;
//!   a reservation is given back however its transaction ends ([`Staged`]'s `Drop`);
//! - the engine is the truth: after a crash the index is rebuilt from it ([`Queues::open`]),
//!   so every committed message not yet acknowledged is delivered again (at least once);
//! - a message is acknowledged, retried or dead-lettered only by a transaction that still finds
//!   it, so a purge racing a delivery never brings a message back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ledge_kv::{Db, Isolation, Tx, TxError};
use thiserror::Error;
use tokio::sync::Notify;

pub mod index;
pub mod settle;
pub mod store;

use index::QueueIndex;
pub use index::{Bounds, Entry};

/// The longest delay a message may ask for.
pub const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The longest ordering key.
pub const MAX_KEY_BYTES: usize = 256;

/// Every queue of this node.
pub struct Queues {
    db: Db,
    indexes: Mutex<HashMap<String, QueueIndex>>,
    /// Each consumed queue's bounds (its consumer's `[[consumer]]` entry); others get defaults.
    bounds: std::sync::OnceLock<BoundsOf>,
    /// The last sequence number given out: microseconds since the epoch, made strictly rising.
    last_seq: AtomicU64,
    max_body: u64,
    /// Body bytes all queues together may keep (`--queues-max-bytes`): the engine holds them in
    /// memory, outside the guests' budget.
    max_total: u64,
    /// Held (shared) while a delivery is settled, (exclusive) while a queue is purged or
    /// redriven, so that the index never takes a settle's view over a purge's or back.
    settling: tokio::sync::RwLock<()>,
    /// Woken when a message becomes deliverable or a delivery ends.
    wake: Notify,
}

/// Where a queue's bounds come from: its consumer's entry, `None` for a queue no function here
/// consumes.
pub type BoundsOf = Box<dyn Fn(&str) -> Option<Bounds> + Send + Sync>;

/// What a sender asks of one message.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    pub delay: Duration,
    /// Messages with the same key are delivered one at a time, in send order.
    pub key: Option<String>,
}

#[derive(Debug, Error)]
pub enum QueueError {
    #[error("invalid queue name `{0}`: use 1 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit")]
    InvalidName(String),
    #[error("a message body is at most {limit} bytes (ledge serve --queue-max-body); this one has {size}")]
    TooLarge { size: u64, limit: u64 },
    #[error(
        "queue `{queue}` is full: it keeps at most {} messages and {} bytes, its dead side included (the consumer's max_depth and max_bytes); retry once messages are consumed",
        .bounds.max_depth, .bounds.max_bytes
    )]
    Full { queue: String, bounds: Bounds },
    #[error(
        "this node's queues hold {limit} bytes of messages together, their most (ledge serve --queues-max-bytes); retry once messages are consumed"
    )]
    NodeFull { limit: u64 },
    #[error("a message key is at most {MAX_KEY_BYTES} bytes")]
    KeyTooLong,
    #[error("a message may be delayed by at most {} hours", MAX_DELAY.as_secs() / 3600)]
    DelayTooLong,
    #[error("the queue store failed: {0}")]
    Engine(#[from] TxError),
    /// A global queue's limit in etcd (its bytes past the consumer's `max_bytes`, or the cluster's).
    #[error("{0}")]
    Refused(String),
    /// A global queue's transaction met a concurrent one; sending again may succeed.
    #[error("{0}")]
    Conflict(String),
    /// etcd did not answer (a global queue).
    #[error("the cluster's queue store is unavailable: {0}")]
    Unavailable(String),
}

/// A message written into an uncommitted transaction, holding its room in the queue.
pub struct Staged {
    queues: Arc<Queues>,
    queue: String,
    seq: u64,
    entry: Entry,
    published: bool,
}

impl Staged {
    pub fn id(&self) -> &str {
        &self.entry.id
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let mut indexes = self.queues.indexes.lock().expect("queue lock poisoned");
        let index = indexes.entry(self.queue.clone()).or_default();
        index.unreserve(self.entry.size);
        if self.published {
            index.insert(self.seq, self.entry.clone());
        }
    }
}

/// A new message's entry, once its queue name, size, key and delay are checked.
pub fn new_entry(queue: &str, body: &[u8], options: &SendOptions, max_body: u64) -> Result<Entry, QueueError> {
    if !crate::access::policy::is_valid_name(queue) {
        return Err(QueueError::InvalidName(queue.to_string()));
    }
    let size = body.len() as u64;
    if size > max_body {
        return Err(QueueError::TooLarge { size, limit: max_body });
    }
    if options.key.as_ref().is_some_and(|key| key.len() > MAX_KEY_BYTES) {
        return Err(QueueError::KeyTooLong);
    }
    if options.delay > MAX_DELAY {
        return Err(QueueError::DelayTooLong);
    }
    let sent_at_ms = now_ms();
    Ok(Entry {
        id: format!("{:032x}", rand::random::<u128>()),
        key: options.key.clone(),
        sent_at_ms,
        not_before_ms: sent_at_ms + options.delay.as_millis() as u64,
        failed: 0,
        size,
        moved: false,
    })
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl Queues {
    /// The queues kept in `db`, loaded into memory; message bodies of at most `max_body` bytes,
    /// `max_total` bytes in all.
    pub fn open(db: Db, max_body: u64, max_total: u64) -> Result<Arc<Queues>, TxError> {
        let (indexes, last_seq) = store::load(&db)?;
        Ok(Arc::new(Queues {
            db,
            indexes: Mutex::new(indexes),
            bounds: std::sync::OnceLock::new(),
            last_seq: AtomicU64::new(last_seq),
            max_body,
            max_total,
            settling: tokio::sync::RwLock::new(()),
            wake: Notify::new(),
        }))
    }

    /// The largest body a message may have.
    pub fn max_body(&self) -> u64 {
        self.max_body
    }

    /// Tells where each queue's bounds come from (set once, at start).
    pub fn take_bounds_from(&self, bounds_of: BoundsOf) {
        let _ = self.bounds.set(bounds_of);
    }

    /// `queue`'s bounds: its consumer's here, else the defaults.
    pub fn bounds_of(&self, queue: &str) -> Bounds {
        self.bounds.get().and_then(|bounds_of| bounds_of(queue)).unwrap_or_default()
    }

    /// Waits until a message may have become deliverable (or a delivery ended).
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// Wakes whoever waits in [`Queues::woken`].
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn next_seq(&self) -> u64 {
        let now_us = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64;
        let previous =
            self.last_seq.fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| Some(now_us.max(last + 1)));
        let previous = previous.unwrap_or_else(|last| last);
        now_us.max(previous + 1)
    }

    /// Writes a message for `queue` into `tx`, reserving its room; it is sent once `tx` commits
    /// and [`Queues::publish`] is given it, and never otherwise.
    pub fn stage(
        self: &Arc<Self>,
        tx: &mut Tx,
        queue: &str,
        body: &[u8],
        options: &SendOptions,
    ) -> Result<Staged, QueueError> {
        let entry = new_entry(queue, body, options, self.max_body)?;
        self.stage_entry(tx, queue, body, entry)
    }

    /// Writes the message `entry` describes into `tx` under a new sequence number.
    fn stage_entry(
        self: &Arc<Self>,
        tx: &mut Tx,
        queue: &str,
        body: &[u8],
        entry: Entry,
    ) -> Result<Staged, QueueError> {
        let bounds = self.bounds_of(queue);
        {
            let mut indexes = self.indexes.lock().expect("queue lock poisoned");
            let held: u64 = indexes.values().map(|index| index.bytes + index.reserved_bytes).sum();
            if held + index::charged(entry.size) > self.max_total {
                return Err(QueueError::NodeFull { limit: self.max_total });
            }
            let index = indexes.entry(queue.to_string()).or_default();
            index
                .reserve(entry.size, bounds)
                .map_err(|full| QueueError::Full { queue: queue.to_string(), bounds: full.bounds })?;
        }
        // From here the reservation is given back if anything fails (`Staged`'s drop).
        let staged =
            Staged { queues: self.clone(), queue: queue.to_string(), seq: self.next_seq(), entry, published: false };
        store::put_message(tx, queue, staged.seq, &staged.entry, body)?;
        Ok(staged)
    }

    /// Makes messages whose transaction committed deliverable.
    pub fn publish(&self, staged: impl IntoIterator<Item = Staged>) {
        let mut any = false;
        for mut message in staged {
            // Its drop moves it from reserved to kept.
            message.published = true;
            drop(message);
            any = true;
        }
        if any {
            self.wake.notify_one();
        }
    }

    /// Sends one message in a transaction of its own; its id once it is durable.
    pub async fn send(self: &Arc<Self>, queue: &str, body: &[u8], options: &SendOptions) -> Result<String, QueueError> {
        let mut tx = self.db.begin(Isolation::Snapshot);
        let staged = self.stage(&mut tx, queue, body, options)?;
        let id = staged.id().to_string();
        let ticket = tx.commit_async()?;
        self.publish_when_durable(ticket, vec![staged]).await?;
        Ok(id)
    }

    /// Waits for a commit holding `staged` messages to be durable, then publishes them. The
    /// wait runs in a task of its own: a sender cancelled meanwhile (a timeout, a client gone)
    /// cannot leave a committed message out of the index.
    pub async fn publish_when_durable(
        self: &Arc<Self>,
        ticket: ledge_kv::CommitTicket,
        staged: Vec<Staged>,
    ) -> Result<u64, TxError> {
        let queues = self.clone();
        let finishing = tokio::spawn(async move {
            let stamp = ticket.await?;
            queues.publish(staged);
            Ok(stamp)
        });
        // The task only ends early if the runtime is shutting down: the database is closing.
        finishing.await.unwrap_or(Err(TxError::Closed))
    }
}
