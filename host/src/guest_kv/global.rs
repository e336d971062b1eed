//! Global key-value data (cluster mode, `[kv] scope = "global"` and `global_stores`): guest
//! transactions on keys that live in etcd, serializable across nodes.
//!
//! The protocol is optimistic, in the manner of etcd's own STM, extended to ranges:
//! - the first read fixes the transaction's base revision; every later read and scan reads at
//!   it, so the transaction sees one consistent snapshot of the cluster;
//! - writes are buffered (a transaction reads its own writes);
//! - commit is one etcd transaction whose compares check that nothing read changed after the
//!   base: each key read (`mod_revision == seen`, 0 when it was absent), each scanned range
//!   (`mod_revision < base + 1` over the range: inserts and updates) together with every key
//!   the scan returned (deletes), and each key written (first committer wins). Any failed
//!   compare is a retryable conflict, so every committed transaction behaves as if it ran
//!   alone at its commit revision. `snapshot` isolation checks only the written keys.
//! - A commit whose answer was lost (an etcd member died mid-request) is resolved, never
//!   guessed: each commit also creates a unique marker key, required absent by its compares;
//!   after a lost answer the node tries to create the same marker itself (a fence). If the
//!   fence wins, the commit can never apply (a conflict, retried by the guest); if the marker
//!   is there, the commit applied. Markers expire with a lease after a few minutes.
//! - The same etcd transaction keeps the keyspace's storage accounting (`usage.rs`): the
//!   function's `[kv] max_bytes` and the cluster's `--global-kv-max-bytes` hold for global
//!   data as the engine's quotas hold for local data (`commit.rs` sends it).
//!
//! Bounds (etcd 3.4: 128 operations per transaction, 1.5 MiB per request): at most
//! [`MAX_WRITES`] keys written and [`MAX_COMPARES`] keys and ranges read per transaction, at most
//! [`MAX_TXN_BYTES`] written; past them a guest-visible `limit` error.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use thiserror::Error;

use crate::etcd::{Etcd, EtcdError};

mod commit;
mod usage;

/// Where global data lives in etcd: this prefix, then the engine key (`f/NAME/...`,
/// `s/STORE/...`).
const DATA_PREFIX: &str = "/ledge/kv/";

/// Keys one transaction may write (etcd allows 128 operations; the marker and the storage
/// accounting take the others).
pub const MAX_WRITES: usize = 120;

/// Keys and ranges one transaction may read under serializable isolation (each is a compare).
pub const MAX_COMPARES: usize = 120;

/// Bytes of keys and values one transaction may write (under etcd's 1.5 MiB request limit).
pub const MAX_TXN_BYTES: usize = 1 << 20;

/// Seconds a commit marker outlives its commit (it only has to outlive a lost answer).
const MARKER_TTL_SECONDS: i64 = 300;

/// A marker lease is replaced after this long, so markers expire in bounded batches.
const MARKER_LEASE_ROTATION: Duration = Duration::from_secs(60);

#[derive(Debug, Error, Clone, PartialEq)]
pub enum GlobalError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Limit(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<EtcdError> for GlobalError {
    fn from(error: EtcdError) -> Self {
        if error.is_compacted() {
            GlobalError::Conflict("the transaction's snapshot was compacted in etcd; run it again".into())
        } else if error.is_reply_too_large() {
            GlobalError::Limit(
                "the entries read exceed what one reply from etcd may carry (4 MiB): scan fewer at a time".into(),
            )
        } else {
            GlobalError::Unavailable(error.to_string())
        }
    }
}

/// A node's handle on the cluster's global data.
pub struct GlobalStore {
    etcd: Arc<Etcd>,
    /// The lease commit markers are attached to, and when it was granted.
    marker_lease: tokio::sync::Mutex<Option<(i64, Instant)>>,
    /// The storage accounting: quotas, the cluster's ceiling, the usage last seen.
    accounts: usage::Accounts,
}

impl GlobalStore {
    /// `max_total`: the bytes all global data may take in etcd (`--global-kv-max-bytes`).
    /// Until [`GlobalStore::set_quotas`] is called, no keyspace may grow.
    pub fn new(etcd: Arc<Etcd>, max_total: u64) -> Arc<GlobalStore> {
        let accounts = usage::Accounts::new(max_total);
        Arc::new(GlobalStore { etcd, marker_lease: tokio::sync::Mutex::new(None), accounts })
    }

    /// Where the quota of a keyspace (`f/NAME/`, `s/STORE/`) comes from: the `[kv] max_bytes`
    /// of the function that owns it, or of those a shared store is granted to.
    pub fn set_quotas(&self, quota_of: impl Fn(&[u8]) -> u64 + Send + Sync + 'static) {
        self.accounts.set_quotas(Box::new(quota_of));
    }

    /// A transaction on global data.
    pub fn begin(self: &Arc<Self>, serializable: bool) -> GlobalTx {
        GlobalTx {
            store: self.clone(),
            serializable,
            base: None,
            reads: BTreeMap::new(),
            sizes: BTreeMap::new(),
            ranges: Vec::new(),
            writes: BTreeMap::new(),
            written_bytes: 0,
        }
    }

    async fn marker_lease(&self) -> Result<i64, EtcdError> {
        let mut lease = self.marker_lease.lock().await;
        if let Some((id, granted)) = *lease
            && granted.elapsed() < MARKER_LEASE_ROTATION
        {
            return Ok(id);
        }
        let granted = self.etcd.lease_grant(MARKER_TTL_SECONDS).await?;
        *lease = Some((granted.id(), Instant::now()));
        Ok(granted.id())
    }
}

/// An open transaction on global data. Keys are engine keys (keyspace prefix included).
pub struct GlobalTx {
    store: Arc<GlobalStore>,
    serializable: bool,
    /// The etcd revision every read is made at (fixed by the first read).
    base: Option<i64>,
    /// Keys read, with the `mod_revision` seen (0: absent).
    reads: BTreeMap<Vec<u8>, i64>,
    /// The bytes (key plus value; 0: absent) of each key read, as of the base revision.
    sizes: BTreeMap<Vec<u8>, u64>,
    /// Ranges scanned, as etcd keys `[start, end)`.
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
    /// Buffered writes (`None`: delete).
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    written_bytes: usize,
}

fn etcd_key(key: &[u8]) -> Vec<u8> {
    [DATA_PREFIX.as_bytes(), key].concat()
}

/// The guest's retryable error when what a transaction read changed before it committed.
fn conflict() -> GlobalError {
    GlobalError::Conflict("a concurrent transaction changed what this one read; run it again".into())
}

/// The keyspace of an engine key (`f/NAME/`, `s/STORE/`), as quotas are charged.
fn keyspace(key: &[u8]) -> &[u8] {
    super::keyspace_of(key).map_or(key, |end| &key[..end])
}

/// The bytes an entry counts for in its keyspace's usage, as the engine counts them: key plus
/// value (engine key, keyspace prefix included); nothing when absent.
fn entry_bytes(key: &[u8], value: Option<&[u8]>) -> u64 {
    value.map_or(0, |value| (key.len() + value.len()) as u64)
}

impl GlobalTx {
    fn read_options(&self) -> GetOptions {
        match self.base {
            Some(base) => GetOptions::new().with_revision(base),
            None => GetOptions::new(),
        }
    }

    fn fix_base(&mut self, header: Option<&etcd_client::ResponseHeader>) {
        if self.base.is_none() {
            self.base = header.map(|h| h.revision());
        }
    }

    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, GlobalError> {
        if let Some(written) = self.writes.get(key) {
            return Ok(written.clone());
        }
        let (etcd_key, options) = (etcd_key(key), self.read_options());
        let response = self.store.etcd.get(etcd_key.clone(), Some(options.clone())).await?;
        self.fix_base(response.header());
        let found = response.kvs().first();
        self.note_read(key, found.map_or((0, None), |kv| (kv.mod_revision(), Some(kv.value()))))?;
        Ok(found.map(|kv| kv.value().to_vec()))
    }

    /// Notes a key read at the base: its `mod_revision` and value (`None`: absent).
    fn note_read(&mut self, key: &[u8], (mod_revision, value): (i64, Option<&[u8]>)) -> Result<(), GlobalError> {
        if self.serializable && !self.reads.contains_key(key) && self.reads.len() + self.ranges.len() >= MAX_COMPARES {
            return Err(GlobalError::Limit(format!(
                "a serializable global transaction reads at most {MAX_COMPARES} keys and ranges"
            )));
        }
        self.reads.entry(key.to_vec()).or_insert(mod_revision);
        self.sizes.entry(key.to_vec()).or_insert_with(|| entry_bytes(key, value));
        Ok(())
    }

    /// Entries in `[start, end)` (engine keys), this transaction's writes included.
    pub async fn scan(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, GlobalError> {
        let in_range = |key: &Vec<u8>| key.as_slice() >= start && key.as_slice() < end;
        // Buffered deletes can hide stored entries: read that many more.
        let hidden = self.writes.iter().filter(|(key, value)| value.is_none() && in_range(key)).count();
        let (start_key, end_key) = (etcd_key(start), etcd_key(end));
        let options = self.read_options().with_range(end_key.clone()).with_limit((limit + hidden) as i64);
        let response = self.store.etcd.get(start_key.clone(), Some(options.clone())).await?;
        self.fix_base(response.header());
        if self.serializable {
            if self.reads.len() + self.ranges.len() >= MAX_COMPARES {
                return Err(GlobalError::Limit(format!(
                    "a serializable global transaction reads at most {MAX_COMPARES} keys and ranges"
                )));
            }
            self.ranges.push((start_key, end_key));
        }
        let mut merged = BTreeMap::new();
        for kv in response.kvs() {
            let key = kv.key()[DATA_PREFIX.len()..].to_vec();
            self.note_read(&key, (kv.mod_revision(), Some(kv.value())))?;
            merged.insert(key, kv.value().to_vec());
        }
        for (key, value) in self.writes.iter().filter(|(key, _)| in_range(key)) {
            match value {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    /// Bytes of keys and values written so far (as [`MAX_TXN_BYTES`] counts them).
    pub fn written_bytes(&self) -> usize {
        self.written_bytes
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), GlobalError> {
        self.write(key, Some(value.to_vec()))
    }

    pub fn delete(&mut self, key: &[u8]) -> Result<(), GlobalError> {
        self.write(key, None)
    }

    fn write(&mut self, key: &[u8], value: Option<Vec<u8>>) -> Result<(), GlobalError> {
        let size = key.len() + value.as_ref().map_or(0, Vec::len);
        if !self.writes.contains_key(key) && self.writes.len() >= MAX_WRITES {
            return Err(GlobalError::Limit(format!("a global transaction writes at most {MAX_WRITES} keys")));
        }
        if self.written_bytes + size > MAX_TXN_BYTES {
            return Err(GlobalError::Limit(format!(
                "a global transaction writes at most {MAX_TXN_BYTES} bytes of keys and values"
            )));
        }
        self.written_bytes += size;
        self.writes.insert(key.to_vec(), value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transaction on a store whose etcd is never dialled (writes are buffered locally).
    async fn transaction() -> GlobalTx {
        let etcd = Etcd::connect(&["http://127.0.0.1:9".to_string()], None).await.unwrap();
        GlobalStore::new(Arc::new(etcd), 1 << 20).begin(true)
    }

    #[tokio::test]
    async fn a_transaction_writes_at_most_max_writes_keys() {
        let mut tx = transaction().await;
        for i in 0..MAX_WRITES {
            tx.put(format!("f/app/{i}").as_bytes(), b"v").unwrap();
        }
        // Writing a key again is not a new key.
        tx.put(b"f/app/0", b"w").unwrap();
        let refused = tx.put(b"f/app/one-more", b"v").unwrap_err();
        assert!(matches!(&refused, GlobalError::Limit(why) if why.contains("120 keys")), "{refused:?}");
    }

    #[test]
    fn a_reply_too_large_for_the_client_is_a_limit_not_an_outage() {
        // tonic's wording for a reply past the client's 4 MiB decoding limit.
        let status = "status: OutOfRange, message: \"Error, decoded message length too large: found 5242880 bytes, the limit is: 4194304 bytes\"";
        let error = GlobalError::from(EtcdError::Refused(status.into()));
        assert!(matches!(&error, GlobalError::Limit(why) if why.contains("4 MiB")), "{error:?}");
        let outage = GlobalError::from(EtcdError::Unreachable("no endpoint".into()));
        assert!(matches!(outage, GlobalError::Unavailable(_)));
    }

    #[tokio::test]
    async fn a_transaction_writes_at_most_max_txn_bytes() {
        let mut tx = transaction().await;
        tx.put(b"f/app/a", &vec![0u8; MAX_TXN_BYTES - 100]).unwrap();
        let refused = tx.put(b"f/app/b", &[0u8; 200]).unwrap_err();
        assert!(matches!(refused, GlobalError::Limit(_)), "{refused:?}");
        tx.delete(b"f/app/c").unwrap();
    }

    #[tokio::test]
    async fn reads_see_the_transactions_own_writes_without_etcd() {
        let mut tx = transaction().await;
        tx.put(b"f/app/k", b"v").unwrap();
        assert_eq!(tx.get(b"f/app/k").await.unwrap(), Some(b"v".to_vec()));
        tx.delete(b"f/app/k").unwrap();
        assert_eq!(tx.get(b"f/app/k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_unreachable_etcd_is_a_clear_error_within_the_timeouts() {
        let mut tx = transaction().await;
        let started = Instant::now();
        let error = tx.get(b"f/app/k").await.unwrap_err();
        assert!(matches!(&error, GlobalError::Unavailable(why) if why.contains("etcd")), "{error:?}");
        assert!(started.elapsed() < crate::etcd::REQUEST_TIMEOUT * 2);
    }
}
