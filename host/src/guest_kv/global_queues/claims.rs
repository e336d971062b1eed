//! Finding a global queue's due messages and claiming them, each on a lease of its own that
//! this node renews while the delivery runs (see the folder's `mod.rs`).

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::{
    CLAIM_PREFIX, CLAIM_TTL_SECONDS, GlobalQueues, LIST_LIMIT, LIST_PAGES, Record, claim_key, data_key, key,
    position_of, range, unavailable,
};
use crate::etcd::Retry;
use crate::queue::settle::Delivery;
use crate::queue::{Entry, QueueError, index::QueueIndex, now_ms};

/// How long one renewal may take before the next endpoint is tried.
const RENEW_TIMEOUT: Duration = Duration::from_secs(3);

impl GlobalQueues {
    /// Up to `most` due messages of `queue`, now claimed by this node; and when the next one
    /// waiting falls due. Looks at most [`LIST_PAGES`] pages of waiting messages.
    pub async fn claim(&self, queue: &str, most: usize) -> Result<(Vec<Delivery>, Option<u64>), QueueError> {
        let claims = self
            .etcd
            .get(format!("{CLAIM_PREFIX}{queue}/"), Some(GetOptions::new().with_prefix().with_keys_only()))
            .await
            .map_err(unavailable)?;
        let mut index = QueueIndex::default();
        let mut revisions = std::collections::HashMap::new();
        let (mut start, end) = range(Record::Waiting, queue);
        let mut chosen = Vec::new();
        let mut next_due = None;
        for _ in 0..LIST_PAGES {
            let options = GetOptions::new().with_range(data_key(&end)).with_limit(LIST_LIMIT);
            let listed = self.etcd.get(data_key(&start), Some(options)).await.map_err(unavailable)?;
            for kv in listed.kvs() {
                let (Some(position), Ok(entry)) = (position_of(kv.key()), serde_json::from_slice::<Entry>(kv.value()))
                else {
                    continue;
                };
                revisions.insert(position, kv.mod_revision());
                index.insert(position, entry);
            }
            index.in_flight.extend(claims.kvs().iter().filter_map(|kv| position_of(kv.key())));
            let (more, due) = index.claim(most - chosen.len(), now_ms());
            chosen.extend(more);
            next_due = due;
            let last = listed.kvs().last().map(|kv| kv.key()[b"/ledge/kv/".len()..].to_vec());
            match last {
                Some(last) if listed.more() && chosen.len() < most => {
                    // The next page, with what this one chose counted as out.
                    start = [last.as_slice(), &[0]].concat();
                }
                _ => break,
            }
        }
        let mut deliveries = Vec::new();
        for (position, entry) in chosen {
            let Some(revision) = revisions.get(&position).copied() else { continue };
            match self.claim_one(queue, position, revision).await {
                Ok(Some((lease, body))) => deliveries.push(Delivery {
                    queue: queue.to_string(),
                    seq: position,
                    entry,
                    body,
                    claim_lease: Some(lease),
                }),
                Ok(None) => {}
                Err(error) => {
                    // What was claimed so far is delivered; the rest waits for the next look.
                    tracing::warn!(queue, %error, "claiming a global queue message failed");
                    break;
                }
            }
        }
        Ok((deliveries, next_due))
    }

    /// Claims one message on a lease of its own, renewed from now on; its lease and body, or
    /// `None` when another node has it (or it is gone).
    async fn claim_one(&self, queue: &str, position: u64, revision: i64) -> Result<Option<(i64, Vec<u8>)>, QueueError> {
        let lease = self.etcd.lease_grant(CLAIM_TTL_SECONDS).await.map_err(unavailable)?.id();
        let message = data_key(&key(Record::Waiting, queue, position));
        let claim = claim_key(queue, position);
        let txn = Txn::new()
            .when(vec![
                Compare::version(claim.clone(), CompareOp::Equal, 0),
                Compare::mod_revision(message, CompareOp::Equal, revision),
            ])
            .and_then(vec![TxnOp::put(claim.clone(), self.node.clone(), Some(PutOptions::new().with_lease(lease)))])
            .or_else(vec![TxnOp::get(claim, None)]);
        let claimed = match self.etcd.txn(Retry::Any, txn).await {
            Ok(response) if response.succeeded() => true,
            // A retry after a lost answer finds the claim it made itself: on this lease.
            Ok(response) => response.op_responses().into_iter().any(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().is_some_and(|kv| kv.lease() == lease),
                _ => false,
            }),
            Err(error) => {
                self.revoke(lease).await;
                return Err(unavailable(error));
            }
        };
        if !claimed {
            self.revoke(lease).await;
            return Ok(None);
        }
        self.renew(lease);
        match self.etcd.get(data_key(&key(Record::Body, queue, position)), None).await {
            Ok(body) => match body.kvs().first() {
                Some(kv) => Ok(Some((lease, kv.value().to_vec()))),
                None => {
                    self.release(lease).await;
                    Ok(None)
                }
            },
            Err(error) => {
                self.release(lease).await;
                Err(unavailable(error))
            }
        }
    }

    /// Renews `lease` every quarter of its time to live until [`GlobalQueues::release`] or
    /// [`GlobalQueues::abandon`] stops it, or etcd says it expired (the claim is lost then: the
    /// settle finds the claim gone and leaves the message to whoever holds it now).
    fn renew(&self, lease: i64) {
        let etcd = self.etcd.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(CLAIM_TTL_SECONDS as u64) / 4).await;
                // One call sends a renewal and reads its answer; an expired lease is an error.
                let renewed = tokio::time::timeout(RENEW_TIMEOUT, etcd.client().lease_keep_alive(lease)).await;
                match renewed {
                    Ok(Ok(_)) => {}
                    Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => return,
                    // This endpoint did not answer: the next one is asked next time, while the
                    // lease still has three quarters of its time.
                    _ => etcd.next_endpoint(),
                }
            }
        });
        self.renewals.lock().expect("renewals lock poisoned").insert(lease, task.abort_handle());
    }

    /// Whether the claim on `position` is still on `lease` (its renewals held).
    pub(super) async fn still_claimed(&self, queue: &str, position: u64, lease: i64) -> Result<bool, QueueError> {
        let claim = self.etcd.get(claim_key(queue, position), None).await.map_err(unavailable)?;
        Ok(claim.kvs().first().is_some_and(|kv| kv.lease() == lease))
    }

    /// Stops renewing `lease`: its claim expires within [`CLAIM_TTL_SECONDS`] (a backoff).
    pub(super) fn abandon(&self, lease: i64) {
        if let Some(task) = self.renewals.lock().expect("renewals lock poisoned").remove(&lease) {
            task.abort();
        }
    }

    /// Gives up a claim at once (the message waits for any node again).
    pub(super) async fn release(&self, lease: i64) {
        self.abandon(lease);
        self.revoke(lease).await;
    }

    async fn revoke(&self, lease: i64) {
        let revoked = self.etcd.call(Retry::Any, |mut client| async move { client.lease_revoke(lease).await }).await;
        if let Err(error) = revoked {
            tracing::warn!(%error, "giving up a queue claim failed; it expires with its lease");
        }
    }
}
