//! Delivering from a queue and settling what was delivered: claiming the next messages
//! ([`Queues::claim`]), then acknowledging, retrying or dead-lettering each ([`Queues::settle`]);
//! and the operator's view and tools: [`Queues::list`], [`Queues::peek`], [`Queues::redrive`],
//! [`Queues::purge`].
//!
//! Invariants: every change is one engine transaction that first reads the message's record, so
//! a message a purge removed meanwhile is left alone (and a conflict between the two is retried);
//! the index changes only after that transaction committed.

use std::sync::Arc;

use ledge_kv::{Isolation, Tx, TxError};
use serde::Serialize;

use super::store::{self, Record};
use super::{Entry, QueueError, Queues, now_ms};

/// Attempts at a settling transaction that conflicted (with a purge or redrive).
const SETTLE_TRIES: usize = 3;

/// How long a message the engine failed to read or settle waits before it is delivered again.
const SETTLE_FAILED_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Messages moved or removed per transaction by redrive and purge.
const BATCH: usize = 500;

/// Attempts at one page of a redrive or purge that conflicted with sends or settles.
const SWEEP_TRIES: usize = 10;

/// Body bytes one peek returns at most (the rest of the page is left out).
pub const PEEK_MAX_BYTES: u64 = 8 << 20;

/// A message out for delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub queue: String,
    pub seq: u64,
    pub entry: Entry,
    pub body: Vec<u8>,
    /// A global queue's delivery: the etcd lease its claim is on.
    pub claim_lease: Option<i64>,
}

/// What becomes of a delivered message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The consumer acknowledged it: removed.
    Acknowledged,
    /// It failed: delivered again at `not_before_ms`.
    Retry { not_before_ms: u64 },
    /// It failed its last attempt: to the queue's dead side, or to another queue.
    DeadLetter { to: Option<String> },
    /// It was not delivered (the consumer was busy or gone): waits until `retry_at_ms`, no
    /// attempt counted.
    NotDelivered { retry_at_ms: u64 },
}

/// One queue as `GET /v1/queues` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStats {
    pub name: String,
    pub depth: u64,
    pub in_flight: u64,
    pub oldest_age_ms: u64,
    pub dead: u64,
}

/// A kept message as `peek` shows it.
#[derive(Debug, Clone)]
pub struct Peeked {
    pub entry: Entry,
    pub body: Vec<u8>,
}

impl Queues {
    /// Up to `most` of `queue`'s due messages, now out for delivery; and when the next waiting
    /// one falls due.
    pub fn claim(&self, queue: &str, most: usize) -> (Vec<Delivery>, Option<u64>) {
        let (claimed, next_due) = {
            let mut indexes = self.indexes.lock().expect("queue lock poisoned");
            let Some(index) = indexes.get_mut(queue) else { return (Vec::new(), None) };
            index.claim(most, now_ms())
        };
        let mut tx = self.db.begin(Isolation::Snapshot);
        let mut deliveries = Vec::with_capacity(claimed.len());
        for (seq, entry) in claimed {
            match tx.get(&store::key(Record::Body, queue, seq)) {
                Ok(Some(body)) => {
                    deliveries.push(Delivery { queue: queue.to_string(), seq, entry, body, claim_lease: None })
                }
                // Purged since it was claimed.
                Ok(None) => drop(self.forget(queue, seq)),
                Err(error) => {
                    tracing::warn!(queue, %error, "reading a message to deliver failed; it waits");
                    let waits = Entry { not_before_ms: now_ms() + SETTLE_FAILED_WAIT.as_millis() as u64, ..entry };
                    self.apply(queue, seq, Change::Waits(waits));
                }
            }
        }
        (deliveries, next_due)
    }

    /// In-flight deliveries of `queue`.
    pub fn in_flight(&self, queue: &str) -> usize {
        self.indexes.lock().expect("queue lock poisoned").get(queue).map_or(0, |index| index.in_flight.len())
    }

    fn forget(&self, queue: &str, seq: u64) -> Option<Entry> {
        let removed = self.indexes.lock().expect("queue lock poisoned").get_mut(queue).and_then(|i| i.remove(seq));
        self.wake.notify_one();
        removed
    }

    /// Settles a delivery. On an engine failure the message stays as it was, to be delivered
    /// again after [`SETTLE_FAILED_WAIT`].
    pub async fn settle(self: &Arc<Self>, delivery: &Delivery, outcome: Outcome) -> Result<(), QueueError> {
        let Delivery { queue, seq, entry, .. } = delivery;
        // Purge and redrive wait until this settle's commit and its index change are both done.
        let _settling = self.settling.read().await;
        let decided = match outcome {
            Outcome::NotDelivered { retry_at_ms } => {
                // Only the index waits: nothing about the message changed.
                let waits = Entry { not_before_ms: retry_at_ms, ..entry.clone() };
                self.apply(queue, *seq, Change::Waits(waits));
                return Ok(());
            }
            Outcome::Acknowledged => Decided::Remove,
            Outcome::Retry { not_before_ms } => Decided::Retry { not_before_ms },
            Outcome::DeadLetter { to } => Decided::DeadLetter { to },
        };
        let mut tries = 0;
        let settled = loop {
            tries += 1;
            let attempt = self.settle_once(queue, *seq, entry, &decided, &delivery.body).await;
            match attempt {
                Err(QueueError::Engine(error)) if error.is_retryable() && tries < SETTLE_TRIES => continue,
                other => break other,
            }
        };
        match settled {
            Ok(None) => drop(self.forget(queue, *seq)),
            Ok(Some(change)) => self.apply(queue, *seq, change),
            Err(error) => {
                // The engine refused (a full disk, a failed WAL): the message waits a while as
                // it was, rather than running its consumer again at once.
                let waits = Entry { not_before_ms: now_ms() + SETTLE_FAILED_WAIT.as_millis() as u64, ..entry.clone() };
                self.apply(queue, *seq, Change::Waits(waits));
                return Err(error);
            }
        }
        Ok(())
    }

    /// One try at settling; `None` when the message is gone (acknowledged, or purged meanwhile).
    async fn settle_once(
        self: &Arc<Self>,
        queue: &str,
        seq: u64,
        entry: &Entry,
        decided: &Decided,
        body: &[u8],
    ) -> Result<Option<Change>, QueueError> {
        let waiting = store::key(Record::Waiting, queue, seq);
        // Snapshot isolation is enough: every outcome writes the record it read, so a purge or
        // redrive changing it meanwhile conflicts with this transaction (first committer wins).
        let mut tx = self.db.begin(Isolation::Snapshot);
        if tx.get(&waiting)?.is_none() {
            return Ok(None);
        }
        let failed = Entry { failed: entry.failed + 1, ..entry.clone() };
        let change = match decided {
            Decided::Remove => {
                remove_message(&mut tx, queue, seq)?;
                None
            }
            Decided::Retry { not_before_ms } => {
                let retried = Entry { not_before_ms: *not_before_ms, ..failed };
                tx.put(&waiting, &store::encode(&retried))?;
                Some(Change::Waits(retried))
            }
            Decided::DeadLetter { to: Some(target) } if !entry.moved => {
                // The same message on another queue: its id, key and send time stay.
                let moved = Entry { failed: 0, not_before_ms: now_ms(), moved: true, ..entry.clone() };
                match self.stage_entry(&mut tx, target, body, moved) {
                    Ok(staged) => {
                        remove_message(&mut tx, queue, seq)?;
                        let ticket = tx.commit_async()?;
                        self.publish_when_durable(ticket, vec![staged]).await?;
                        return Ok(None);
                    }
                    Err(error) => {
                        tracing::warn!(queue, target, %error, "dead-letter queue refused the message; it stays on the queue's dead side");
                        tx.delete(&waiting)?;
                        tx.put(&store::key(Record::Dead, queue, seq), &store::encode(&failed))?;
                        Some(Change::Dead(failed))
                    }
                }
            }
            // No dead-letter queue, or the message failed in one already.
            Decided::DeadLetter { .. } => {
                tx.delete(&waiting)?;
                tx.put(&store::key(Record::Dead, queue, seq), &store::encode(&failed))?;
                Some(Change::Dead(failed))
            }
        };
        tx.commit_async()?.await?;
        Ok(change)
    }

    fn apply(&self, queue: &str, seq: u64, change: Change) {
        {
            let mut indexes = self.indexes.lock().expect("queue lock poisoned");
            let index = indexes.entry(queue.to_string()).or_default();
            match change {
                Change::Waits(entry) => {
                    index.in_flight.remove(&seq);
                    index.insert(seq, entry);
                }
                Change::Dead(entry) => {
                    if index.remove(seq).is_some() {
                        index.insert_dead(seq, entry);
                    }
                }
            }
        }
        self.wake.notify_one();
    }

    /// Every queue this node keeps or has been sent to, by name.
    pub fn list(&self) -> Vec<QueueStats> {
        let now = now_ms();
        let indexes = self.indexes.lock().expect("queue lock poisoned");
        let mut stats: Vec<QueueStats> = indexes
            .iter()
            .map(|(name, index)| QueueStats {
                name: name.clone(),
                depth: index.live.len() as u64,
                in_flight: index.in_flight.len() as u64,
                oldest_age_ms: index.oldest_age_ms(now),
                dead: index.dead.len() as u64,
            })
            .collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    /// Up to `limit` of `queue`'s waiting (or dead) messages, oldest first, and no more than
    /// [`PEEK_MAX_BYTES`] of bodies (at least one message).
    pub fn peek(&self, queue: &str, dead: bool, limit: usize) -> Result<Vec<Peeked>, QueueError> {
        let record = if dead { Record::Dead } else { Record::Waiting };
        let (start, end) = store::range(record, queue);
        let mut tx = self.db.begin(Isolation::Snapshot);
        let (mut peeked, mut shown) = (Vec::new(), 0);
        for (key, value) in tx.scan(&start, &end, limit)? {
            let (Some(seq), Ok(entry)) = (seq_of(&key), serde_json::from_slice::<Entry>(&value)) else { continue };
            shown += entry.size;
            if shown > PEEK_MAX_BYTES && !peeked.is_empty() {
                break;
            }
            let body = tx.get(&store::key(Record::Body, queue, seq))?.unwrap_or_default();
            peeked.push(Peeked { entry, body });
        }
        Ok(peeked)
    }

    /// Moves every dead message of `queue` back to waiting, its attempts counted afresh;
    /// returns how many. A record this version cannot read stays where it is.
    pub async fn redrive(&self, queue: &str) -> Result<u64, QueueError> {
        let _exclusive = self.settling.write().await;
        let (mut start, end) = store::range(Record::Dead, queue);
        let mut moved = 0;
        loop {
            let (page, revived) = retried(|| {
                let mut tx = self.db.begin(Isolation::Serializable);
                let page = tx.scan(&start, &end, BATCH)?;
                let now = now_ms();
                let mut revived = Vec::new();
                for (key, value) in &page {
                    let (Some(seq), Ok(entry)) = (seq_of(key), serde_json::from_slice::<Entry>(value)) else {
                        continue;
                    };
                    let entry = Entry { failed: 0, not_before_ms: now, ..entry };
                    tx.delete(key)?;
                    tx.put(&store::key(Record::Waiting, queue, seq), &store::encode(&entry))?;
                    revived.push((seq, entry));
                }
                Ok((tx, (page, revived)))
            })
            .await?;
            moved += revived.len() as u64;
            {
                let mut indexes = self.indexes.lock().expect("queue lock poisoned");
                let index = indexes.entry(queue.to_string()).or_default();
                for (seq, entry) in revived {
                    index.remove_dead(seq);
                    index.insert(seq, entry);
                }
            }
            self.wake.notify_one();
            match page.last() {
                Some((last, _)) if page.len() == BATCH => start = [last.as_slice(), &[0]].concat(),
                _ => return Ok(moved),
            }
        }
    }

    /// Removes every waiting (or dead) message of `queue`, those out for delivery included;
    /// returns how many.
    pub async fn purge(&self, queue: &str, dead: bool) -> Result<u64, QueueError> {
        let _exclusive = self.settling.write().await;
        let record = if dead { Record::Dead } else { Record::Waiting };
        let (start, end) = store::range(record, queue);
        let mut removed = 0;
        loop {
            let seqs = retried(|| {
                let mut tx = self.db.begin(Isolation::Serializable);
                let page = tx.scan(&start, &end, BATCH)?;
                let mut seqs = Vec::new();
                for (key, _) in &page {
                    tx.delete(key)?;
                    if let Some(seq) = seq_of(key) {
                        tx.delete(&store::key(Record::Body, queue, seq))?;
                        seqs.push(seq);
                    }
                }
                Ok((tx, (page.len(), seqs)))
            })
            .await?;
            if seqs.0 == 0 {
                return Ok(removed);
            }
            removed += seqs.0 as u64;
            let mut indexes = self.indexes.lock().expect("queue lock poisoned");
            let index = indexes.entry(queue.to_string()).or_default();
            for seq in seqs.1 {
                if dead {
                    index.remove_dead(seq);
                } else {
                    index.remove(seq);
                }
            }
        }
    }
}

/// Commits the transaction `prepare` makes (and returns what it found), preparing it again
/// while it conflicts with sends and settles racing it, a bounded number of times. The commit's
/// fsync is awaited, never waited for on a runtime worker.
async fn retried<T>(mut prepare: impl FnMut() -> Result<(Tx, T), TxError>) -> Result<T, QueueError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let committed = match prepare() {
            Ok((tx, found)) => match tx.commit_async() {
                Ok(ticket) => ticket.await.map(|_| found),
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        match committed {
            Err(error) if error.is_retryable() && tries < SWEEP_TRIES => continue,
            other => return other.map_err(QueueError::from),
        }
    }
}

/// What a delivery's outcome asks of the engine.
enum Decided {
    Remove,
    Retry { not_before_ms: u64 },
    DeadLetter { to: Option<String> },
}

/// A settled message's new state.
enum Change {
    Waits(Entry),
    Dead(Entry),
}

fn remove_message(tx: &mut Tx, queue: &str, seq: u64) -> Result<(), TxError> {
    tx.delete(&store::key(Record::Waiting, queue, seq))?;
    tx.delete(&store::key(Record::Body, queue, seq))
}

/// The sequence number a record's key ends with.
fn seq_of(key: &[u8]) -> Option<u64> {
    let last = key.rsplit(|&b| b == b'/').next()?;
    u64::from_str_radix(std::str::from_utf8(last).ok()?, 16).ok()
}
