//! One guest transaction on either backend: this node's engine, or the cluster's global data
//! in etcd ([`super::global`]). Both guest APIs (`ledge:platform/transactions` and
//! `wasi:keyvalue`) run their transactions through it, so a keyspace behaves the same whichever
//! API reaches it.
//!
//! Invariant: a transaction touches one backend only; which one is the keyspace's
//! ([`Keyspace::global`]), fixed when it begins.

use std::sync::Arc;

use ledge_kv::{Db, Isolation, Tx, TxError};

use super::bindings::ledge::platform::transactions::Error as WitError;
use super::global::{GlobalError, GlobalStore, GlobalTx};
use super::{Denied, Keyspace, KvAccess, Quota};

pub enum Backend {
    Local(Tx),
    Global(GlobalTx),
}

/// Where a keyspace's transactions begin.
#[derive(Clone)]
pub enum Source {
    Local { db: Db, quota: Quota },
    Global(Arc<GlobalStore>),
}

impl Source {
    pub fn begin(&self, isolation: Isolation) -> Backend {
        match self {
            Source::Local { db, quota } => Backend::Local(quota.begin(db, isolation)),
            Source::Global(store) => Backend::Global(store.begin(isolation == Isolation::Serializable)),
        }
    }
}

impl KvAccess {
    /// Where transactions on `keyspace` begin (denied where that backend is not available).
    pub fn source(&self, keyspace: &Keyspace) -> Result<Source, Denied> {
        if keyspace.global {
            Ok(Source::Global(self.global()?.clone()))
        } else {
            Ok(Source::Local { db: self.db()?.clone(), quota: keyspace.quota() })
        }
    }
}

// The etcd futures are several KiB (the gRPC client's state): boxed, so that a local
// transaction's futures, which wasmtime moves into a box for every host call, stay small.
impl Backend {
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, WitError> {
        match self {
            Backend::Local(tx) => tx.get(key).map_err(tx_error),
            Backend::Global(tx) => Box::pin(tx.get(key)).await.map_err(global_error),
        }
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), WitError> {
        match self {
            Backend::Local(tx) => tx.put(key, value).map_err(tx_error),
            Backend::Global(tx) => tx.put(key, value).map_err(global_error),
        }
    }

    pub fn delete(&mut self, key: &[u8]) -> Result<(), WitError> {
        match self {
            Backend::Local(tx) => tx.delete(key).map_err(tx_error),
            Backend::Global(tx) => tx.delete(key).map_err(global_error),
        }
    }

    pub async fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>, WitError> {
        match self {
            Backend::Local(tx) => tx.scan(start, end, limit).map_err(tx_error),
            Backend::Global(tx) => Box::pin(tx.scan(start, end, limit)).await.map_err(global_error),
        }
    }

    pub async fn commit(self) -> Result<u64, WitError> {
        match self {
            // Conflicts come back at once; only the wait for the group fsync is awaited.
            Backend::Local(tx) => match tx.commit_async() {
                Ok(ticket) => ticket.await.map_err(tx_error),
                Err(error) => Err(tx_error(error)),
            },
            Backend::Global(tx) => Box::pin(tx.commit()).await.map_err(global_error),
        }
    }
}

fn global_error(error: GlobalError) -> WitError {
    match error {
        GlobalError::Conflict(why) => WitError::Conflict(why),
        GlobalError::Limit(why) => WitError::Limit(why),
        GlobalError::Unavailable(why) => WitError::Internal(why),
    }
}

fn tx_error(error: TxError) -> WitError {
    match error {
        retryable if retryable.is_retryable() => WitError::Conflict(retryable.to_string()),
        TxError::KeyTooLarge { .. }
        | TxError::ValueTooLarge { .. }
        | TxError::TooLarge { .. }
        | TxError::TooManyReads { .. }
        | TxError::ScanTooLarge { .. }
        | TxError::QuotaExceeded { .. }
        | TxError::OutOfSpace { .. } => WitError::Limit(error.to_string()),
        other => WitError::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    /// The size of the future an async fn taking one argument returns.
    fn future_size<A, F: std::future::Future>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_commit_future_stays_small_whichever_backend() {
        // Unboxed, the etcd commit made every local commit's future ~7.5 KiB, copied on each
        // host call (measured: ~6% of the counter's CPU in memmove).
        assert!(future_size(super::GlobalTx::commit) > 4096, "the etcd commit is the large one");
        assert!(future_size(super::Backend::commit) < 1024, "{} bytes", future_size(super::Backend::commit));
    }
}
