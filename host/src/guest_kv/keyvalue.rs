//! `wasi:keyvalue@0.2.0-draft2` (store, atomics, batch) on the ledge engine, so guests written
//! for Spin or wasmCloud key-value run unmodified.
//!
//! Invariants: each operation is its own serializable transaction (a batch is one transaction,
//! so it is all-or-nothing), retried on conflict a bounded number of times; bucket `default` is
//! the function's own keyspace (the one `ledge:platform/transactions` uses too), any other
//! bucket is a shared store the policy must grant; a global keyspace (cluster mode) is reached
//! through the same [`Backend`] as `ledge:platform/transactions` uses, so it stays
//! serializable across nodes; integers written by `increment` are decimal text, the encoding
//! the SDK's typed helpers read; what a batch or a CAS buffers is charged to the write budgets
//! like any transaction's writes ([`super::budget`]), until it commits or fails.

use std::time::Duration;

use ledge_kv::Isolation;
use wasmtime::component::Resource;

use super::backend::{Backend, Source};
use super::bindings::ledge::platform::transactions::Error as WitError;
use super::bindings::wasi::keyvalue::{atomics, batch, store};
use super::spans::TxSpan;
use super::taped::{RecordedError, described, observed, taped};
use super::{Denied, Keyspace, KvCtx};

/// How often one operation is retried after a conflict before it reports failure.
const MAX_ATTEMPTS: u32 = 32;
/// Keys per `list-keys` page.
const LIST_PAGE: usize = 1000;
/// Keys per `list-keys` page of a global bucket: a serializable global scan checks every key it
/// returned at commit, and a transaction has at most [`super::global::MAX_COMPARES`] checks.
const GLOBAL_LIST_PAGE: usize = 100;
const _: () = assert!(GLOBAL_LIST_PAGE + 2 <= super::global::MAX_COMPARES);
/// The bucket name that means "the function's own keyspace", as in Spin.
const DEFAULT_BUCKET: &str = "default";

/// An opened `wasi:keyvalue/store.bucket`.
pub struct Bucket {
    keyspace: Keyspace,
    source: Source,
}

/// A `wasi:keyvalue/atomics.cas`: a transaction that has read one key and may write it.
pub struct Cas {
    tx: Backend,
    key: Vec<u8>,
    current: Option<Vec<u8>>,
    source: Source,
}

/// One operation, run whole in one transaction (and run again after a conflict).
enum Op {
    Get(Vec<Vec<u8>>),
    Put(Vec<(Vec<u8>, Vec<u8>)>),
    Delete(Vec<Vec<u8>>),
    Increment(Vec<u8>, i64),
    Scan { start: Vec<u8>, end: Vec<u8>, limit: usize },
}

/// What an [`Op`] found; each operation fills the part it produces.
#[derive(Default)]
struct Found {
    values: Vec<Option<Vec<u8>>>,
    number: i64,
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Op {
    async fn run(&self, tx: &mut Backend) -> Result<Found, WitError> {
        let mut found = Found::default();
        match self {
            Op::Get(keys) => {
                for key in keys {
                    found.values.push(tx.get(key).await?);
                }
            }
            Op::Put(entries) => entries.iter().try_for_each(|(key, value)| tx.put(key, value))?,
            Op::Delete(keys) => keys.iter().try_for_each(|key| tx.delete(key))?,
            Op::Increment(key, delta) => {
                let current = match tx.get(key).await? {
                    None => 0,
                    Some(bytes) => std::str::from_utf8(&bytes)
                        .ok()
                        .and_then(|text| text.trim().parse::<i64>().ok())
                        .ok_or_else(|| WitError::Internal("the stored value is not a decimal integer".into()))?,
                };
                found.number =
                    current.checked_add(*delta).ok_or_else(|| WitError::Internal("increment overflows i64".into()))?;
                tx.put(key, found.number.to_string().as_bytes())?;
            }
            Op::Scan { start, end, limit } => found.entries = tx.scan(start, end, *limit).await?,
        }
        Ok(found)
    }
}

/// Runs `op` (unless the keys were denied) in its own serializable transaction on `source`,
/// committing it and retrying conflicts, and hands what it found to `answer`.
async fn transact<T>(
    mut span: TxSpan,
    source: Source,
    op: Result<Op, Denied>,
    answer: impl FnOnce(Found) -> Result<T, store::Error>,
) -> wasmtime::Result<Result<T, store::Error>> {
    let op = match op {
        Ok(op) => op,
        Err(denied) => {
            // wasi:keyvalue's `access-denied` carries no detail; the reason is logged instead.
            tracing::debug!(reason = %denied.0, "wasi:keyvalue access denied");
            span.note(&Err::<(), _>(WitError::from(denied)));
            return Ok(Err(store::Error::AccessDenied));
        }
    };
    let mut attempt = 0;
    let outcome = loop {
        attempt += 1;
        let mut tx = source.begin(Isolation::Serializable);
        let outcome = match op.run(&mut tx).await {
            Ok(found) => tx.commit().await.map(|_| found),
            Err(error) => Err(error),
        };
        match outcome {
            Err(WitError::Conflict(_)) if attempt < MAX_ATTEMPTS => {
                // Across nodes every attempt is a round trip to etcd: contenders back off (with
                // jitter) instead of colliding again at once. A local conflict retries at once.
                if source.is_global() {
                    let ceiling = 1u64 << attempt.min(7);
                    tokio::time::sleep(Duration::from_millis(rand::random_range(1..=ceiling))).await;
                }
            }
            other => break other,
        }
    };
    span.retries(attempt - 1);
    span.finish(&outcome);
    Ok(outcome.map_err(|error| store::Error::from(RecordedError::from(error))).and_then(answer))
}

impl KvCtx<'_> {
    fn bucket(&self, bucket: &Resource<Bucket>) -> wasmtime::Result<(Keyspace, Source)> {
        let bucket = self.table.get(bucket)?;
        Ok((bucket.keyspace.clone(), bucket.source.clone()))
    }
}

impl store::Host for KvCtx<'_> {
    async fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<Bucket>, store::Error>> {
        let opened = self.open_bucket(&identifier);
        observed(self.tape, "wasi:keyvalue/store.open", || format!("{identifier:?}"), &opened)?;
        match opened {
            Ok(bucket) => Ok(Ok(self.table.push(bucket)?)),
            Err(error) => Ok(Err(error)),
        }
    }
}

impl KvCtx<'_> {
    fn open_bucket(&mut self, identifier: &str) -> Result<Bucket, store::Error> {
        let store = (!identifier.is_empty() && identifier != DEFAULT_BUCKET).then_some(identifier);
        let opened = self.access.keyspace(store).and_then(|keyspace| Ok((self.access.source(&keyspace)?, keyspace)));
        let Ok((source, keyspace)) = opened else {
            return Err(store::Error::AccessDenied);
        };
        let bucket = Bucket { keyspace, source };
        self.access.open_handle().map_err(store::Error::Other)?;
        Ok(bucket)
    }
}

impl store::HostBucket for KvCtx<'_> {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        let args = described(self.tape, || format!("{key:?}"));
        let (keyspace, source) = self.bucket(&bucket)?;
        let op = keyspace.read_key(key.as_bytes()).map(|key| Op::Get(vec![key]));
        let live = transact(self.access.tx_span(Isolation::Serializable, source.is_global()), source, op, |found| {
            Ok(found.values.into_iter().next().flatten())
        });
        taped(self.tape, "wasi:keyvalue/store.bucket.get", args, live).await
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let args = described(self.tape, || format!("{key:?}, {}", crate::record::tape::show_bytes(&value)));
        let (keyspace, source) = self.bucket(&bucket)?;
        let op = keyspace.write_key(key.as_bytes()).map(|key| Op::Put(vec![(key, value)]));
        let live = transact(self.access.tx_span(Isolation::Serializable, source.is_global()), source, op, |_| Ok(()));
        taped(self.tape, "wasi:keyvalue/store.bucket.set", args, live).await
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> wasmtime::Result<Result<(), store::Error>> {
        let args = described(self.tape, || format!("{key:?}"));
        let (keyspace, source) = self.bucket(&bucket)?;
        let op = keyspace.write_key(key.as_bytes()).map(|key| Op::Delete(vec![key]));
        let live = transact(self.access.tx_span(Isolation::Serializable, source.is_global()), source, op, |_| Ok(()));
        taped(self.tape, "wasi:keyvalue/store.bucket.delete", args, live).await
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> wasmtime::Result<Result<bool, store::Error>> {
        let args = described(self.tape, || format!("{key:?}"));
        let (keyspace, source) = self.bucket(&bucket)?;
        let op = keyspace.read_key(key.as_bytes()).map(|key| Op::Get(vec![key]));
        let live = transact(self.access.tx_span(Isolation::Serializable, source.is_global()), source, op, |found| {
            Ok(found.values.into_iter().next().flatten().is_some())
        });
        taped(self.tape, "wasi:keyvalue/store.bucket.exists", args, live).await
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        let args = described(self.tape, || format!("{cursor:?}"));
        let (keyspace, source) = self.bucket(&bucket)?;
        // The cursor is the last key of the previous page; this page starts right after it.
        let start = cursor.as_ref().map(|c| [c.as_bytes(), &[0]].concat()).unwrap_or_default();
        let (start, end) = keyspace.range(&start, b"");
        let page = if keyspace.global { GLOBAL_LIST_PAGE } else { LIST_PAGE };
        let op = Ok(Op::Scan { start, end, limit: page + 1 });
        let live =
            transact(self.access.tx_span(Isolation::Serializable, source.is_global()), source, op, move |found| {
                let mut entries = found.entries;
                let more = entries.len() > page;
                entries.truncate(page);
                let keys = entries
                    .iter()
                    .map(|(key, _)| String::from_utf8(keyspace.guest_key(key).to_vec()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| store::Error::Other("the bucket holds a key that is not UTF-8".into()))?;
                let cursor = if more { keys.last().cloned() } else { None };
                Ok((keys, cursor))
            });
        let listed = taped(self.tape, "wasi:keyvalue/store.bucket.list-keys", args, live).await?;
        Ok(listed.map(|(keys, cursor)| store::KeyResponse { keys, cursor }))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        self.access.close_handle();
        Ok(())
    }
}

impl atomics::Host for KvCtx<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, store::Error>> {
        let args = described(self.tape, || format!("{key:?}, {delta}"));
        let (keyspace, source) = self.bucket(&bucket)?;
        let op = keyspace.write_key(key.as_bytes()).map(|key| Op::Increment(key, delta));
        let live = transact(self.access.tx_span(Isolation::Serializable, source.is_global()), source, op, |found| {
            Ok(found.number)
        });
        taped(self.tape, "wasi:keyvalue/atomics.increment", args, live).await
    }

    async fn swap(&mut self, cas: Resource<Cas>, value: Vec<u8>) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let args = described(self.tape, || crate::record::tape::show_bytes(&value));
        let Cas { mut tx, key, source, .. } = self.table.delete(cas)?;
        self.access.close_handle();
        let span = self.access.tx_span(Isolation::Serializable, source.is_global());
        let written = key.clone();
        // A failed swap is recorded as `conflict`: the fresh CAS handed back is made below.
        let live = async move {
            let outcome = match tx.put(&written, &value) {
                Ok(()) => tx.commit().await,
                Err(error) => Err(error),
            };
            span.finish(&outcome);
            Ok(outcome.map(drop).map_err(RecordedError::from))
        };
        match taped(self.tape, "wasi:keyvalue/atomics.swap", args, live).await? {
            Ok(()) => Ok(Ok(())),
            // Someone wrote the key since `new`: hand back a fresh CAS on its current value.
            Err(RecordedError::Conflict(_)) => match self.new_cas(source, key).await? {
                Ok(fresh) => Ok(Err(atomics::CasError::CasFailed(fresh))),
                Err(error) => Ok(Err(atomics::CasError::StoreError(error))),
            },
            Err(error) => Ok(Err(atomics::CasError::StoreError(error.into()))),
        }
    }
}

impl KvCtx<'_> {
    /// A CAS handle holds an open transaction: it counts against the instance's handles.
    async fn new_cas(
        &mut self,
        source: Source,
        engine_key: Vec<u8>,
    ) -> wasmtime::Result<Result<Resource<Cas>, store::Error>> {
        if let Err(limit) = self.access.open_handle() {
            return Ok(Err(store::Error::Other(limit)));
        }
        let mut tx = source.begin(Isolation::Serializable);
        let current = match tx.get(&engine_key).await {
            Ok(current) => current,
            Err(error) => {
                self.access.close_handle();
                return Ok(Err(RecordedError::from(error).into()));
            }
        };
        Ok(Ok(self.table.push(Cas { tx, key: engine_key, current, source })?))
    }
}

impl atomics::HostCas for KvCtx<'_> {
    async fn new(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<Cas>, store::Error>> {
        let (keyspace, source) = self.bucket(&bucket)?;
        let made = match keyspace.write_key(key.as_bytes()) {
            Ok(engine_key) => self.new_cas(source, engine_key).await?,
            Err(_) => Err(store::Error::AccessDenied),
        };
        observed(self.tape, "wasi:keyvalue/atomics.cas.new", || format!("{key:?}"), &made)?;
        Ok(made)
    }

    async fn current(&mut self, cas: Resource<Cas>) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        let current = self.table.get(&cas)?.current.clone();
        taped(self.tape, "wasi:keyvalue/atomics.cas.current", String::new(), async { Ok(Ok(current)) }).await
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        self.access.close_handle();
        Ok(())
    }
}

impl batch::Host for KvCtx<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, store::Error>> {
        let args = described(self.tape, || format!("{keys:?}"));
        let (keyspace, source) = self.bucket(&bucket)?;
        let op = keys.iter().map(|key| keyspace.read_key(key.as_bytes())).collect::<Result<_, _>>().map(Op::Get);
        let live = transact(self.access.tx_span(Isolation::Serializable, source.is_global()), source, op, |found| {
            Ok(keys.into_iter().zip(found.values).collect())
        });
        taped(self.tape, "wasi:keyvalue/batch.get-many", args, live).await
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        entries: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let args = described(self.tape, || {
            let shown: Vec<String> =
                entries.iter().map(|(k, v)| format!("{k:?}={}", crate::record::tape::show_bytes(v))).collect();
            shown.join(", ")
        });
        let (keyspace, source) = self.bucket(&bucket)?;
        let op = entries
            .into_iter()
            .map(|(key, value)| Ok((keyspace.write_key(key.as_bytes())?, value)))
            .collect::<Result<_, _>>()
            .map(Op::Put);
        let live = transact(self.access.tx_span(Isolation::Serializable, source.is_global()), source, op, |_| Ok(()));
        taped(self.tape, "wasi:keyvalue/batch.set-many", args, live).await
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let args = described(self.tape, || format!("{keys:?}"));
        let (keyspace, source) = self.bucket(&bucket)?;
        let op = keys.iter().map(|key| keyspace.write_key(key.as_bytes())).collect::<Result<_, _>>().map(Op::Delete);
        let live = transact(self.access.tx_span(Isolation::Serializable, source.is_global()), source, op, |_| Ok(()));
        taped(self.tape, "wasi:keyvalue/batch.delete-many", args, live).await
    }
}
