//! Committing a global transaction: one etcd transaction whose compares check what the guest
//! read (the protocol in `global.rs`), with, nested in it, a transaction that keeps the storage
//! accounting (`usage.rs`) and creates the commit marker. The outer compares failing is the
//! guest's conflict; the inner ones failing only means the usage moved meanwhile: the commit
//! is planned again on the usage the inner transaction read back, and sent again.
//!
//! Invariants: the writes, the usage they change and the marker apply together or not at all;
//! a commit whose answer was lost is resolved by its marker, never sent twice; a transaction
//! that read nothing (its base fixed here, at commit) is retried here on a conflict, since no
//! guest decision rests on its reads.

use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse};

use super::usage::Before;
use super::{GlobalError, GlobalStore, GlobalTx, conflict, etcd_key};
use crate::etcd::{EtcdError, Retry};

/// Operations (and compares) etcd allows in one transaction, at each nesting level.
const MAX_TXN_OPS: usize = 128;

/// Times a commit is planned and sent before a moving usage (or, for a transaction that read
/// nothing, moving keys) becomes a conflict for the guest to retry.
const ATTEMPTS: usize = 8;

/// How long a lost commit answer is worked on before the outcome is given up as unknown.
const RESOLVE_FOR: Duration = Duration::from_secs(10);

impl GlobalTx {
    /// Commits; returns the etcd revision it committed at.
    pub async fn commit(self) -> Result<u64, GlobalError> {
        if self.writes.is_empty() {
            return Ok(self.base.unwrap_or(0).max(0) as u64);
        }
        let marker = marker_key()?;
        let lease = self.store.marker_lease().await?;
        let mut before = self.prepare().await?;
        let mut reread = false;
        for _ in 0..ATTEMPTS {
            let plan = match self.store.accounts.plan(&before.deltas) {
                // Refused on usage as last seen: refused only on usage read now.
                Err(GlobalError::Limit(_)) if !reread => {
                    self.store.reread(&before.deltas).await?;
                    reread = true;
                    continue;
                }
                plan => plan?,
            };
            let mut writes: Vec<TxnOp> = self
                .writes
                .iter()
                .map(|(key, value)| match value {
                    Some(value) => TxnOp::put(etcd_key(key), value.clone(), None),
                    None => TxnOp::delete(etcd_key(key), None),
                })
                .chain(plan.puts.iter().cloned())
                .collect();
            writes.push(TxnOp::put(marker.clone(), "c", Some(PutOptions::new().with_lease(lease))));
            let mut checks = plan.compares.clone();
            checks.push(Compare::version(marker.clone(), CompareOp::Equal, 0));
            if writes.len() > MAX_TXN_OPS {
                return Err(GlobalError::Limit(format!(
                    "this global transaction needs {} operations; etcd allows {MAX_TXN_OPS}",
                    writes.len()
                )));
            }
            let inner = Txn::new().when(checks).and_then(writes).or_else(plan.rereads.clone());
            let txn = Txn::new().when(self.compares(&before)?).and_then(vec![TxnOp::txn(inner)]);
            match self.store.etcd.txn(Retry::Unsent, txn).await {
                Ok(response) if !response.succeeded() => {
                    if !before.blind {
                        return Err(conflict());
                    }
                    before = self.prepare().await?;
                }
                Ok(response) => {
                    let revision = response.header().map_or(0, |h| h.revision());
                    let inner = nested(&response).ok_or_else(|| {
                        GlobalError::Unavailable("etcd answered without the nested transaction's result".into())
                    })?;
                    if inner.succeeded() {
                        self.store.accounts.committed(&plan, revision);
                        return Ok(revision.max(0) as u64);
                    }
                    self.store.accounts.note_reads(&plan.reread_keys, &inner);
                }
                Err(EtcdError::Unknown(why)) => {
                    self.store.accounts.forget(&plan);
                    return self.store.resolve(&marker, lease, &why).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(GlobalError::Conflict(
            "concurrent commits kept changing this keyspace's storage usage; run it again".into(),
        ))
    }

    /// The compares that check, at commit, that nothing this transaction read changed after
    /// the base, and that no key it writes did (first committer wins): each written key is
    /// still at the `mod_revision` its replaced bytes were counted at (a key deleted since
    /// fails too).
    fn compares(&self, before: &Before) -> Result<Vec<Compare>, GlobalError> {
        let base = before.base;
        let mut compares = Vec::new();
        if self.serializable {
            for (key, seen) in &self.reads {
                compares.push(Compare::mod_revision(etcd_key(key), CompareOp::Equal, *seen));
            }
            for (start, end) in &self.ranges {
                compares.push(Compare::mod_revision(start.clone(), CompareOp::Less, base + 1).with_range(end.clone()));
            }
        }
        for key in self.writes.keys().filter(|key| !self.serializable || !self.reads.contains_key(*key)) {
            let compare = match self.reads.get(key).or_else(|| before.seen.get(key)) {
                Some(seen) => Compare::mod_revision(etcd_key(key), CompareOp::Equal, *seen),
                None => Compare::mod_revision(etcd_key(key), CompareOp::Less, base + 1),
            };
            compares.push(compare);
        }
        if compares.len() > MAX_TXN_OPS {
            return Err(GlobalError::Limit(format!(
                "this global transaction needs {} checks; etcd allows {MAX_TXN_OPS}",
                compares.len()
            )));
        }
        Ok(compares)
    }
}

/// The result of the transaction nested in a commit's.
fn nested(response: &TxnResponse) -> Option<TxnResponse> {
    response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Txn(inner) => Some(inner),
        _ => None,
    })
}

impl GlobalStore {
    /// Settles a commit whose answer was lost: fence its marker, or find it committed.
    async fn resolve(&self, marker: &[u8], lease: i64, why: &str) -> Result<u64, GlobalError> {
        let started = Instant::now();
        let fence = Txn::new()
            .when(vec![Compare::version(marker.to_vec(), CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(marker.to_vec(), "f", Some(PutOptions::new().with_lease(lease)))])
            .or_else(vec![TxnOp::get(marker.to_vec(), None)]);
        while started.elapsed() < RESOLVE_FOR {
            match self.etcd.txn(Retry::Any, fence.clone()).await {
                Ok(response) if response.succeeded() => {
                    return Err(GlobalError::Conflict(format!("the commit did not apply ({why}); run it again")));
                }
                Ok(response) => {
                    let committed = response.op_responses().into_iter().any(|op| match op {
                        TxnOpResponse::Get(get) => get.kvs().first().is_some_and(|kv| kv.value() == b"c"),
                        _ => false,
                    });
                    let revision = response.header().map_or(0, |h| h.revision()).max(0) as u64;
                    return if committed {
                        Ok(revision)
                    } else {
                        Err(GlobalError::Conflict(format!("the commit did not apply ({why}); run it again")))
                    };
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        Err(GlobalError::Unavailable(format!("the commit's outcome is unknown: etcd stopped answering ({why})")))
    }
}

/// A fresh marker key, unique across nodes and restarts.
fn marker_key() -> Result<Vec<u8>, GlobalError> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| GlobalError::Unavailable(e.to_string()))?;
    Ok(format!("/ledge/txn/{}", hex::encode(id)).into_bytes())
}
