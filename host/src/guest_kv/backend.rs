//! One guest transaction on either backend: this node's engine, or the cluster's global data
//! in etcd ([`super::global`]). Both guest APIs (`ledge:platform/transactions` and
//! `wasi:keyvalue`) run their transactions through it, so a keyspace behaves the same whichever
//! API reaches it.
//!
//! Invariants: a transaction touches one backend only; which one is the keyspace's
//! ([`Keyspace::global`]), fixed when it begins. Every byte it buffers for writing is charged
//! to its instance's [`WriteBudget`] first, and given back when it ends ([`Charge`]).

use std::sync::Arc;

use ledge_kv::{Db, Isolation, Tx, TxError};

use super::bindings::ledge::platform::transactions::Error as WitError;
use super::budget::{Charge, WriteBudget};
use super::global::{GlobalError, GlobalStore, GlobalTx};
use super::global_queues::GlobalQueues;
use super::{Denied, Keyspace, KvAccess, Quota};
use crate::queue::{QueueError, Queues, SendOptions, Staged};
use crate::record::Tape;

/// An open transaction and what its buffered writes hold of the write budgets.
pub struct Backend {
    tx: Engine,
    charge: Charge,
    /// A verification run's tape, told what each commit deleted.
    verifying: Option<Arc<Tape>>,
}

enum Engine {
    Local(Tx),
    Global(GlobalTx),
}

/// Where a keyspace's transactions begin, and the write budget they draw on.
#[derive(Clone)]
pub struct Source {
    place: Place,
    budget: WriteBudget,
    verifying: Option<Arc<Tape>>,
}

#[derive(Clone)]
enum Place {
    Local { db: Db, quota: Quota },
    Global(Arc<GlobalStore>),
}

impl Source {
    pub fn begin(&self, isolation: Isolation) -> Backend {
        let tx = match &self.place {
            Place::Local { db, quota } => Engine::Local(quota.begin(db, isolation)),
            Place::Global(store) => Engine::Global(store.begin(isolation == Isolation::Serializable)),
        };
        Backend { tx, charge: self.budget.charge(), verifying: self.verifying.clone() }
    }

    /// Its transactions commit in etcd (cluster mode).
    pub fn is_global(&self) -> bool {
        matches!(self.place, Place::Global(_))
    }
}

impl KvAccess {
    /// Where transactions on `keyspace` begin (denied where that backend is not available).
    pub fn source(&self, keyspace: &Keyspace) -> Result<Source, Denied> {
        let place = if keyspace.global {
            Place::Global(self.global()?.clone())
        } else {
            Place::Local { db: self.db()?.clone(), quota: keyspace.quota() }
        };
        Ok(Source { place, budget: self.write_budget.clone(), verifying: self.verifying.clone() })
    }
}

// The etcd futures are several KiB (the gRPC client's state): boxed, so that a local
// transaction's futures, which wasmtime moves into a box for every host call, stay small.
impl Backend {
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, WitError> {
        match &mut self.tx {
            Engine::Local(tx) => tx.get(key).map_err(tx_error),
            Engine::Global(tx) => Box::pin(tx.get(key)).await.map_err(global_error),
        }
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), WitError> {
        self.charged(key.len() + value.len(), |tx| match tx {
            Engine::Local(tx) => tx.put(key, value).map_err(tx_error),
            Engine::Global(tx) => tx.put(key, value).map_err(global_error),
        })
    }

    pub fn delete(&mut self, key: &[u8]) -> Result<(), WitError> {
        self.charged(key.len(), |tx| match tx {
            Engine::Local(tx) => tx.delete(key).map_err(tx_error),
            Engine::Global(tx) => tx.delete(key).map_err(global_error),
        })
    }

    /// Bytes this transaction buffers for writing.
    fn buffered(&self) -> u64 {
        match &self.tx {
            Engine::Local(tx) => tx.write_bytes() as u64,
            Engine::Global(tx) => tx.written_bytes() as u64,
        }
    }

    /// Writes a message for the global queue `queue` into this transaction (on the cluster's
    /// global data only, where global queues live), sent iff it commits; its id.
    pub async fn stage_global_message(
        &mut self,
        queues: &GlobalQueues,
        queue: &str,
        body: &[u8],
        options: &SendOptions,
    ) -> Result<String, WitError> {
        let local = || {
            WitError::Denied(format!(
                "queue `{queue}` is global (in etcd), and this transaction on this node's engine: send it with `send`, or from a transaction on a global keyspace"
            ))
        };
        let Engine::Global(tx) = &mut self.tx else { return Err(local()) };
        let position = queues.free_position(tx, queue).await.map_err(queue_error)?;
        self.charged(body.len() + 1024, |tx| match tx {
            Engine::Global(tx) => queues.stage(tx, queue, position, body, options).map_err(queue_error),
            Engine::Local(_) => Err(local()),
        })
    }

    /// Writes a message for `queue` into this transaction, sent if and only if it commits; its
    /// bytes are charged to the write budgets like a put. Only a transaction on this node's
    /// engine holds one: node-local queues live there.
    pub fn stage_message(
        &mut self,
        queues: &Arc<Queues>,
        queue: &str,
        body: &[u8],
        options: &SendOptions,
    ) -> Result<Staged, WitError> {
        // The body, its entry and the keys: a few hundred bytes over the body at most.
        self.charged(body.len() + 1024, |tx| match tx {
            Engine::Local(tx) => queues.stage(tx, queue, body, options).map_err(queue_error),
            Engine::Global(_) => Err(WitError::Denied(format!(
                "queue `{queue}` lives on this node, and this transaction in the cluster's global data: send it with `send`, or from a transaction on a node-local keyspace"
            ))),
        })
    }

    /// Runs `write`, which buffers at most `most` more bytes, once the budgets have them; then
    /// holds exactly what is buffered (less where it replaced an earlier write of the key).
    fn charged<T>(
        &mut self,
        most: usize,
        write: impl FnOnce(&mut Engine) -> Result<T, WitError>,
    ) -> Result<T, WitError> {
        self.charge.grow_to(self.buffered() + most as u64).map_err(WitError::Limit)?;
        let written = write(&mut self.tx);
        self.charge.shrink_to(self.buffered());
        written
    }

    pub async fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>, WitError> {
        match &mut self.tx {
            Engine::Local(tx) => tx.scan(start, end, limit).map_err(tx_error),
            Engine::Global(tx) => Box::pin(tx.scan(start, end, limit)).await.map_err(global_error),
        }
    }

    /// Commits a transaction that sent `staged` messages (on this node's engine: see
    /// [`Backend::stage_message`]), publishing them once it is durable.
    pub async fn commit_publishing(self, queues: &Arc<Queues>, staged: Vec<Staged>) -> Result<u64, WitError> {
        let Backend { tx, charge, verifying } = self;
        let committed = match tx {
            Engine::Local(tx) => {
                let deleted = deleted_keys(&tx, &verifying);
                match tx.commit_async() {
                    Ok(ticket) => {
                        let committed = queues.publish_when_durable(ticket, staged).await.map_err(tx_error);
                        tell_deleted(&verifying, &committed, deleted);
                        committed
                    }
                    Err(error) => Err(tx_error(error)),
                }
            }
            Engine::Global(_) => Err(WitError::Internal("a global transaction holds no node-local message".into())),
        };
        drop(charge);
        committed
    }

    /// Commits; the budgets get the buffered bytes back once the commit is done.
    pub async fn commit(self) -> Result<u64, WitError> {
        let Backend { tx, charge, verifying } = self;
        let committed = match tx {
            Engine::Local(tx) => {
                let deleted = deleted_keys(&tx, &verifying);
                // Conflicts come back at once; only the wait for the group fsync is awaited.
                let committed = match tx.commit_async() {
                    Ok(ticket) => ticket.await.map_err(tx_error),
                    Err(error) => Err(tx_error(error)),
                };
                tell_deleted(&verifying, &committed, deleted);
                committed
            }
            Engine::Global(tx) => Box::pin(tx.commit()).await.map_err(global_error),
        };
        drop(charge);
        committed
    }
}

/// The keys `tx` deletes, when a verification wants them (on a scratch engine: never global).
fn deleted_keys(tx: &Tx, verifying: &Option<Arc<Tape>>) -> Vec<Vec<u8>> {
    match verifying {
        Some(_) => tx.deleted_keys().map(<[u8]>::to_vec).collect(),
        None => Vec::new(),
    }
}

fn tell_deleted(verifying: &Option<Arc<Tape>>, committed: &Result<u64, WitError>, deleted: Vec<Vec<u8>>) {
    if let (Some(tape), Ok(_)) = (verifying, committed) {
        tape.committed_deletes(deleted.iter().map(Vec::as_slice));
    }
}

/// A queue's refusal as a guest sees it: the sender's mistakes and a full queue are limits.
pub fn queue_error(error: QueueError) -> WitError {
    match error {
        QueueError::Engine(error) => tx_error(error),
        QueueError::InvalidName(_) => WitError::Denied(error.to_string()),
        QueueError::Conflict(why) => WitError::Conflict(why),
        QueueError::Unavailable(_) => WitError::Internal(error.to_string()),
        limit => WitError::Limit(limit.to_string()),
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
