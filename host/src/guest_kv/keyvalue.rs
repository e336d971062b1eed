//! `wasi:keyvalue@0.2.0-draft2` (store, atomics, batch) on the ledge engine, so guests written
//! for Spin or wasmCloud key-value run unmodified.
//!
//! Invariants: each operation is its own serializable transaction (a batch is one transaction,
//! so it is all-or-nothing), retried on conflict a bounded number of times on a blocking
//! thread; bucket `default` is the function's own keyspace (the one `ledge:platform/transactions`
//! uses too), any other bucket is a shared store the policy must grant; integers written by
//! `increment` are decimal text, the encoding the SDK's typed helpers read.

use ledge_kv::{Db, Isolation, Tx, TxError};
use wasmtime::component::Resource;

use super::bindings::wasi::keyvalue::{atomics, batch, store};
use super::taped::{RecordedError, described, observed, taped};
use super::{Denied, Keyspace, KvCtx, Quota};

/// How often one operation is retried after a conflict before it reports failure.
const MAX_ATTEMPTS: u32 = 32;
/// Keys per `list-keys` page.
const LIST_PAGE: usize = 1000;
/// The bucket name that means "the function's own keyspace", as in Spin.
const DEFAULT_BUCKET: &str = "default";

/// An opened `wasi:keyvalue/store.bucket`.
pub struct Bucket {
    keyspace: Keyspace,
    db: Db,
}

/// A `wasi:keyvalue/atomics.cas`: a transaction that has read one key and may write it.
pub struct Cas {
    tx: Tx,
    key: Vec<u8>,
    current: Option<Vec<u8>>,
    db: Db,
    quota: Quota,
}

/// Why one operation failed, before it is told to the guest.
enum OpError {
    Tx(TxError),
    /// wasi:keyvalue's `access-denied` carries no detail; the reason is logged instead.
    Denied,
    Other(String),
}

impl From<TxError> for OpError {
    fn from(error: TxError) -> Self {
        OpError::Tx(error)
    }
}

impl From<Denied> for OpError {
    fn from(denied: Denied) -> Self {
        tracing::debug!(reason = %denied.0, "wasi:keyvalue access denied");
        OpError::Denied
    }
}

impl From<OpError> for store::Error {
    fn from(error: OpError) -> Self {
        match error {
            OpError::Denied => store::Error::AccessDenied,
            OpError::Tx(error) => store::Error::Other(error.to_string()),
            OpError::Other(message) => store::Error::Other(message),
        }
    }
}

/// Runs `body` in its own serializable transaction on a blocking thread, committing it and
/// retrying conflicts.
async fn transact<T: Send + 'static>(
    db: &Db,
    quota: Quota,
    mut body: impl FnMut(&mut Tx) -> Result<T, OpError> + Send + 'static,
) -> wasmtime::Result<Result<T, store::Error>> {
    let db = db.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = quota.begin(&db, Isolation::Serializable);
            let result = body(&mut tx).and_then(|value| Ok(tx.commit().map(|_| value)?));
            match result {
                Err(OpError::Tx(error)) if error.is_retryable() && attempt < MAX_ATTEMPTS => continue,
                other => return other,
            }
        }
    })
    .await?;
    Ok(outcome.map_err(store::Error::from))
}

impl KvCtx<'_> {
    fn bucket(&self, bucket: &Resource<Bucket>) -> wasmtime::Result<(Keyspace, Db)> {
        let bucket = self.table.get(bucket)?;
        Ok((bucket.keyspace.clone(), bucket.db.clone()))
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
        let (Ok(keyspace), Ok(db)) = (self.access.keyspace(store), self.access.db()) else {
            return Err(store::Error::AccessDenied);
        };
        if keyspace.global {
            return Err(store::Error::Other(
                "wasi:keyvalue does not reach global stores yet; use ledge:platform/transactions for them".into(),
            ));
        }
        let bucket = Bucket { keyspace, db: db.clone() };
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
        let (keyspace, db) = self.bucket(&bucket)?;
        let live = transact(&db, keyspace.quota(), move |tx| Ok(tx.get(&keyspace.read_key(key.as_bytes())?)?));
        taped(self.tape, "wasi:keyvalue/store.bucket.get", args, live).await
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let args = described(self.tape, || format!("{key:?}, {}", crate::record::tape::show_bytes(&value)));
        let (keyspace, db) = self.bucket(&bucket)?;
        let live = transact(&db, keyspace.quota(), move |tx| Ok(tx.put(&keyspace.write_key(key.as_bytes())?, &value)?));
        taped(self.tape, "wasi:keyvalue/store.bucket.set", args, live).await
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> wasmtime::Result<Result<(), store::Error>> {
        let args = described(self.tape, || format!("{key:?}"));
        let (keyspace, db) = self.bucket(&bucket)?;
        let live = transact(&db, keyspace.quota(), move |tx| Ok(tx.delete(&keyspace.write_key(key.as_bytes())?)?));
        taped(self.tape, "wasi:keyvalue/store.bucket.delete", args, live).await
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> wasmtime::Result<Result<bool, store::Error>> {
        let args = described(self.tape, || format!("{key:?}"));
        let (keyspace, db) = self.bucket(&bucket)?;
        let live =
            transact(&db, keyspace.quota(), move |tx| Ok(tx.get(&keyspace.read_key(key.as_bytes())?)?.is_some()));
        taped(self.tape, "wasi:keyvalue/store.bucket.exists", args, live).await
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        let args = described(self.tape, || format!("{cursor:?}"));
        let (keyspace, db) = self.bucket(&bucket)?;
        let live = transact(&db, keyspace.quota(), move |tx| {
            // The cursor is the last key of the previous page; this page starts right after it.
            let start = cursor.as_ref().map(|c| [c.as_bytes(), &[0]].concat()).unwrap_or_default();
            let (start, end) = keyspace.range(&start, b"");
            let mut entries = tx.scan(&start, &end, LIST_PAGE + 1)?;
            let more = entries.len() > LIST_PAGE;
            entries.truncate(LIST_PAGE);
            let keys = entries
                .iter()
                .map(|(key, _)| String::from_utf8(keyspace.guest_key(key).to_vec()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| OpError::Other("the bucket holds a key that is not UTF-8".into()))?;
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
        let (keyspace, db) = self.bucket(&bucket)?;
        let live = transact(&db, keyspace.quota(), move |tx| {
            let key = keyspace.write_key(key.as_bytes())?;
            let current = match tx.get(&key)? {
                None => 0,
                Some(bytes) => std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|text| text.trim().parse::<i64>().ok())
                    .ok_or_else(|| OpError::Other("the stored value is not a decimal integer".into()))?,
            };
            let next = current.checked_add(delta).ok_or_else(|| OpError::Other("increment overflows i64".into()))?;
            tx.put(&key, next.to_string().as_bytes())?;
            Ok(next)
        });
        taped(self.tape, "wasi:keyvalue/atomics.increment", args, live).await
    }

    async fn swap(&mut self, cas: Resource<Cas>, value: Vec<u8>) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let args = described(self.tape, || crate::record::tape::show_bytes(&value));
        let Cas { mut tx, key, db, quota, .. } = self.table.delete(cas)?;
        self.access.close_handle();
        let written = key.clone();
        // A failed swap is recorded as `conflict`: the fresh CAS handed back is made below.
        let live = async move {
            let outcome = tokio::task::spawn_blocking(move || {
                tx.put(&written, &value)?;
                tx.commit()
            })
            .await?;
            Ok(match outcome {
                Ok(_) => Ok(()),
                Err(error) if error.is_retryable() => Err(RecordedError::Conflict(error.to_string())),
                Err(error) => Err(RecordedError::Other(error.to_string())),
            })
        };
        match taped(self.tape, "wasi:keyvalue/atomics.swap", args, live).await? {
            Ok(()) => Ok(Ok(())),
            // Someone wrote the key since `new`: hand back a fresh CAS on its current value.
            Err(RecordedError::Conflict(_)) => match self.new_cas(db, key, quota)? {
                Ok(fresh) => Ok(Err(atomics::CasError::CasFailed(fresh))),
                Err(error) => Ok(Err(atomics::CasError::StoreError(error))),
            },
            Err(error) => Ok(Err(atomics::CasError::StoreError(error.into()))),
        }
    }
}

impl KvCtx<'_> {
    /// A CAS handle holds an open transaction: it counts against the instance's handles.
    fn new_cas(
        &mut self,
        db: Db,
        engine_key: Vec<u8>,
        quota: Quota,
    ) -> wasmtime::Result<Result<Resource<Cas>, store::Error>> {
        if let Err(limit) = self.access.open_handle() {
            return Ok(Err(store::Error::Other(limit)));
        }
        let mut tx = quota.begin(&db, Isolation::Serializable);
        let current = match tx.get(&engine_key) {
            Ok(current) => current,
            Err(error) => {
                self.access.close_handle();
                return Ok(Err(store::Error::Other(error.to_string())));
            }
        };
        Ok(Ok(self.table.push(Cas { tx, key: engine_key, current, db, quota })?))
    }
}

impl atomics::HostCas for KvCtx<'_> {
    async fn new(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<Cas>, store::Error>> {
        let (keyspace, db) = self.bucket(&bucket)?;
        let made = match keyspace.write_key(key.as_bytes()) {
            Ok(engine_key) => self.new_cas(db, engine_key, keyspace.quota())?,
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
        let (keyspace, db) = self.bucket(&bucket)?;
        let live = transact(&db, keyspace.quota(), move |tx| {
            keys.iter().map(|key| Ok((key.clone(), tx.get(&keyspace.read_key(key.as_bytes())?)?))).collect()
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
        let (keyspace, db) = self.bucket(&bucket)?;
        let live = transact(&db, keyspace.quota(), move |tx| {
            entries.iter().try_for_each(|(key, value)| Ok(tx.put(&keyspace.write_key(key.as_bytes())?, value)?))
        });
        taped(self.tape, "wasi:keyvalue/batch.set-many", args, live).await
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let args = described(self.tape, || format!("{keys:?}"));
        let (keyspace, db) = self.bucket(&bucket)?;
        let live = transact(&db, keyspace.quota(), move |tx| {
            keys.iter().try_for_each(|key| Ok(tx.delete(&keyspace.write_key(key.as_bytes())?)?))
        });
        taped(self.tape, "wasi:keyvalue/batch.delete-many", args, live).await
    }
}
