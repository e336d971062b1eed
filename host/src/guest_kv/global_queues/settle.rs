//! Settling a global queue's deliveries (acknowledged, retried, dead-lettered) and the
//! operator's view and tools: list, peek, redrive, purge (see the folder's `mod.rs`).

use std::time::Duration;

use etcd_client::GetOptions;

use super::{BATCH, CLAIM_PREFIX, GlobalQueues, Record, data_key, from_global, key, position_of, range, unavailable};
use crate::guest_kv::global::{GlobalError, GlobalTx};
use crate::queue::settle::{Delivery, Outcome, PEEK_MAX_BYTES, Peeked, QueueStats};
use crate::queue::{Bounds, Entry, QueueError, now_ms};

impl GlobalQueues {
    /// Settles a delivery this node claimed, then gives up the claim. A settle that fails
    /// leaves the claim to expire: the message is tried again after [`CLAIM_TTL_SECONDS`].
    pub async fn settle(
        &self,
        delivery: &Delivery,
        outcome: Outcome,
        dead_letter_bounds: Bounds,
    ) -> Result<(), QueueError> {
        let Some(lease) = delivery.claim_lease else { return Ok(()) };
        let Delivery { queue, seq: position, body, .. } = delivery;
        let decided = match outcome {
            Outcome::NotDelivered { retry_at_ms } => {
                // Held a little longer, so that a busy consumer is not asked again at once.
                tokio::time::sleep(Duration::from_millis(retry_at_ms.saturating_sub(now_ms()))).await;
                self.release(lease).await;
                return Ok(());
            }
            decided => decided,
        };
        // A claim whose renewals failed may be another node's now: that node settles it.
        if !self.still_claimed(queue, *position, lease).await? {
            self.abandon(lease);
            tracing::warn!(queue, "a delivery's claim expired before it was settled; its new holder settles it");
            return Ok(());
        }
        let mut settled = self.settle_in_etcd(queue, *position, &decided, body, dead_letter_bounds).await;
        if let Err(QueueError::Refused(why)) = &settled {
            // A retry or a move the etcd quotas refuse (a full dead-letter queue): the message
            // goes to the queue's own dead side rather than being tried forever.
            tracing::warn!(queue, %why, "settling refused by the quotas; the message goes to the queue's dead side");
            let dead = Outcome::DeadLetter { to: None };
            settled = self.settle_in_etcd(queue, *position, &dead, body, dead_letter_bounds).await;
        }
        match settled {
            Ok(()) => {
                self.release(lease).await;
                Ok(())
            }
            Err(error) => {
                self.abandon(lease);
                Err(error)
            }
        }
    }

    /// Applies `outcome` to the message at `position`, as it is in etcd now (attempts counted
    /// from the entry read here, not the one delivered).
    async fn settle_in_etcd(
        &self,
        queue: &str,
        position: u64,
        outcome: &Outcome,
        body: &[u8],
        dead_letter_bounds: Bounds,
    ) -> Result<(), QueueError> {
        let waiting = key(Record::Waiting, queue, position);
        let mut tx = self.store.begin(true);
        let Some(stored) = tx.get(&waiting).await.map_err(from_global)? else { return Ok(()) };
        let Ok(entry) = serde_json::from_slice::<Entry>(&stored) else {
            return Err(QueueError::Unavailable(format!("message {position:016x} of `{queue}` is unreadable")));
        };
        let failed = Entry { failed: entry.failed + 1, ..entry.clone() };
        let encode = |entry: &Entry| serde_json::to_vec(entry).expect("an entry serializes");
        let to_dead_side = |tx: &mut GlobalTx| -> Result<(), GlobalError> {
            tx.delete(&waiting)?;
            tx.put(&key(Record::Dead, queue, position), &encode(&failed))
        };
        match outcome {
            Outcome::Acknowledged => {
                tx.delete(&waiting).map_err(from_global)?;
                tx.delete(&key(Record::Body, queue, position)).map_err(from_global)?;
            }
            // Settled in `settle`, never here.
            Outcome::NotDelivered { .. } => return Ok(()),
            Outcome::Retry { not_before_ms } => {
                let retried = Entry { not_before_ms: *not_before_ms, ..failed.clone() };
                tx.put(&waiting, &encode(&retried)).map_err(from_global)?;
            }
            Outcome::DeadLetter { to: Some(target) } if !entry.moved => {
                let depth = self.count(target, Record::Waiting).await? + self.count(target, Record::Dead).await?;
                if depth >= u64::from(dead_letter_bounds.max_depth) {
                    tracing::warn!(
                        queue,
                        target,
                        "dead-letter queue is full; the message stays on the queue's dead side"
                    );
                    to_dead_side(&mut tx).map_err(from_global)?;
                } else {
                    let moved = Entry { failed: 0, not_before_ms: now_ms(), moved: true, ..entry.clone() };
                    let target_position = self.free_position(&mut tx, target).await?;
                    tx.put(&key(Record::Body, target, target_position), body).map_err(from_global)?;
                    tx.put(&key(Record::Waiting, target, target_position), &encode(&moved)).map_err(from_global)?;
                    tx.delete(&waiting).map_err(from_global)?;
                    tx.delete(&key(Record::Body, queue, position)).map_err(from_global)?;
                }
            }
            // No dead-letter queue, or the message failed in one already.
            Outcome::DeadLetter { .. } => to_dead_side(&mut tx).map_err(from_global)?,
        }
        tx.commit().await.map_err(from_global)?;
        Ok(())
    }

    /// `queues` as `GET /v1/queues` shows them.
    pub async fn list(&self, queues: &[String]) -> Result<Vec<QueueStats>, QueueError> {
        let now = now_ms();
        let mut stats = Vec::new();
        for queue in queues {
            let (_, waiting) = self
                .etcd
                .list(&String::from_utf8_lossy(&data_key(&range(Record::Waiting, queue).0)), false)
                .await
                .map_err(unavailable)?;
            let claims = self
                .etcd
                .get(format!("{CLAIM_PREFIX}{queue}/"), Some(GetOptions::new().with_prefix().with_count_only()))
                .await
                .map_err(unavailable)?;
            let oldest = waiting
                .iter()
                .filter_map(|kv| serde_json::from_slice::<Entry>(kv.value()).ok())
                .map(|entry| now.saturating_sub(entry.sent_at_ms))
                .max()
                .unwrap_or(0);
            stats.push(QueueStats {
                name: queue.clone(),
                depth: waiting.len() as u64,
                in_flight: claims.count().max(0) as u64,
                oldest_age_ms: oldest,
                dead: self.count(queue, Record::Dead).await?,
            });
        }
        Ok(stats)
    }

    /// Up to `limit` of `queue`'s waiting (or dead) messages, oldest first.
    pub async fn peek(&self, queue: &str, dead: bool, limit: usize) -> Result<Vec<Peeked>, QueueError> {
        let record = if dead { Record::Dead } else { Record::Waiting };
        let (start, end) = range(record, queue);
        let options = GetOptions::new().with_range(data_key(&end)).with_limit(limit as i64);
        let listed = self.etcd.get(data_key(&start), Some(options)).await.map_err(unavailable)?;
        let (mut peeked, mut shown) = (Vec::new(), 0);
        for kv in listed.kvs() {
            let (Some(position), Ok(entry)) = (position_of(kv.key()), serde_json::from_slice::<Entry>(kv.value()))
            else {
                continue;
            };
            shown += entry.size;
            if shown > PEEK_MAX_BYTES && !peeked.is_empty() {
                break;
            }
            let body = self.etcd.get(data_key(&key(Record::Body, queue, position)), None).await.map_err(unavailable)?;
            peeked.push(Peeked { entry, body: body.kvs().first().map(|kv| kv.value().to_vec()).unwrap_or_default() });
        }
        Ok(peeked)
    }

    /// Moves every dead message of `queue` back to waiting, attempts counted afresh; how many.
    /// A record this version cannot read stays where it is.
    pub async fn redrive(&self, queue: &str) -> Result<u64, QueueError> {
        self.sweep(queue, Record::Dead, |tx, found, position, value| {
            let Ok(entry) = serde_json::from_slice::<Entry>(value) else { return Ok(false) };
            let revived = Entry { failed: 0, not_before_ms: now_ms(), ..entry };
            let encoded = serde_json::to_vec(&revived).expect("an entry serializes");
            tx.delete(found)?;
            tx.put(&key(Record::Waiting, queue, position), &encoded)?;
            Ok(true)
        })
        .await
    }

    /// Removes every waiting (or dead) message of `queue`; how many.
    pub async fn purge(&self, queue: &str, dead: bool) -> Result<u64, QueueError> {
        let record = if dead { Record::Dead } else { Record::Waiting };
        self.sweep(queue, record, |tx, found, position, _| {
            tx.delete(found)?;
            tx.delete(&key(Record::Body, queue, position))?;
            Ok(true)
        })
        .await
    }

    /// Applies `change` to each of `queue`'s `record`s, a batch per global transaction, paging
    /// forward; how many it changed.
    async fn sweep(
        &self,
        queue: &str,
        record: Record,
        change: impl Fn(&mut GlobalTx, &[u8], u64, &[u8]) -> Result<bool, GlobalError>,
    ) -> Result<u64, QueueError> {
        let (mut start, end) = range(record, queue);
        let mut done = 0;
        loop {
            let mut tx = self.store.begin(true);
            let page = tx.scan(&start, &end, BATCH).await.map_err(from_global)?;
            let mut changed = 0;
            for (found, value) in &page {
                let Some(position) = position_of(found) else { continue };
                if change(&mut tx, found, position, value).map_err(from_global)? {
                    changed += 1;
                }
            }
            tx.commit().await.map_err(from_global)?;
            done += changed;
            match page.last() {
                Some((last, _)) if page.len() == BATCH => start = [last.as_slice(), &[0]].concat(),
                _ => return Ok(done),
            }
        }
    }
}
