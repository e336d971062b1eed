//! Guest access to the key-value engine: `ledge:platform/transactions` (interactive
//! transactions) here, `wasi:keyvalue` in [`crate::keyvalue`]; both on the one
//! [`ledge_kv::Db`] of the process.
//!
//! Invariants:
//! - every key a guest names is confined to a [`Keyspace`]: the function's own
//!   (`f/NAME/…` in the engine) or a shared store its policy grants (`s/STORE/…`); a guest can
//!   never form a key outside it, so one function cannot see another's keys;
//! - the caller's token may narrow that further (a key prefix, read-only); those checks happen
//!   at call time and fail with a guest-visible `denied`, never a trap;
//! - a transaction left open when the request ends is rolled back: it lives in the request's
//!   resource table and `Drop` of [`ledge_kv::Tx`] aborts it;
//! - commits await their group fsync without blocking a request worker.

use ledge_kv::{Db, Isolation, Tx, TxError};
use wasmtime::component::{HasData, Resource, ResourceTable};

use crate::policy::{Policy, RateQuota};

pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../guest-sdk/wit",
        world: "ledge:platform/platform-host",
        imports: { default: async | trappable },
        with: {
            "ledge:platform/transactions.transaction": crate::kv::OpenTransaction,
            "wasi:keyvalue/store.bucket": crate::keyvalue::Bucket,
            "wasi:keyvalue/atomics.cas": crate::keyvalue::Cas,
        },
    });
}

use bindings::ledge::platform::transactions::{self as wit, Error as WitError};

/// Transactions one instance may hold open at once.
const MAX_OPEN_TRANSACTIONS: usize = 16;
/// Most entries one scan may return.
const MAX_SCAN_LIMIT: u32 = 10_000;

/// The verified caller: its token's facts (readable by the guest) and what its caveats allow
/// on top of the function's policy. The default is an anonymous caller of a public function.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Caller {
    pub token_id: Option<String>,
    /// Every first-party caveat of the token and its discharges, as written.
    pub caveats: Vec<String>,
    /// Keys must start with every one of these (`kv-prefix` caveats).
    pub key_prefixes: Vec<Vec<u8>>,
    /// No writes (`kv = read` caveat).
    pub read_only: bool,
    /// `rate` caveats, handed to the rate limiter.
    pub rates: Vec<RateQuota>,
}

impl Caller {
    /// The longest `kv-prefix`, when all of them agree (each a prefix of it); `Err` when two
    /// contradict, which allows no key at all.
    fn narrowest_prefix(&self) -> Result<Option<&[u8]>, ()> {
        let Some(longest) = self.key_prefixes.iter().max_by_key(|p| p.len()) else {
            return Ok(None);
        };
        if self.key_prefixes.iter().all(|p| longest.starts_with(p)) { Ok(Some(longest)) } else { Err(()) }
    }
}

/// One request's key-value access: which engine, which keyspaces, which caller limits.
pub struct KvAccess {
    /// `None` where no access is allowed (pre-initialization at deploy).
    db: Option<Db>,
    function: String,
    shared_stores: Vec<String>,
    caller: Caller,
    open_transactions: usize,
}

impl KvAccess {
    pub fn new(db: Db, function: &str, policy: &Policy, caller: Caller) -> Self {
        KvAccess {
            db: Some(db),
            function: function.to_string(),
            shared_stores: policy.kv_stores.clone(),
            caller,
            open_transactions: 0,
        }
    }

    /// No key-value access at all.
    pub fn none() -> Self {
        KvAccess {
            db: None,
            function: String::new(),
            shared_stores: Vec::new(),
            caller: Caller::default(),
            open_transactions: 0,
        }
    }

    pub fn db(&self) -> Result<&Db, Denied> {
        self.db.as_ref().ok_or_else(|| Denied("key-value access is not available here".into()))
    }

    /// The keyspace for `store`: `None` is the function's own, a name must be granted.
    pub fn keyspace(&self, store: Option<&str>) -> Result<Keyspace, Denied> {
        let prefix = match store {
            None => format!("f/{}/", self.function),
            Some(name) if self.shared_stores.iter().any(|granted| granted == name) => format!("s/{name}/"),
            Some(name) => return Err(Denied(format!("the function's policy does not grant store `{name}`"))),
        };
        Ok(Keyspace { prefix: prefix.into_bytes(), caller: self.caller.clone() })
    }

    /// Counts a transaction against the per-instance cap.
    pub fn open_transaction(&mut self) -> Result<(), String> {
        if self.open_transactions >= MAX_OPEN_TRANSACTIONS {
            return Err(format!("at most {MAX_OPEN_TRANSACTIONS} transactions may be open at once"));
        }
        self.open_transactions += 1;
        Ok(())
    }

    pub fn close_transaction(&mut self) {
        self.open_transactions = self.open_transactions.saturating_sub(1);
    }
}

/// An access the caller may not make; the message says which rule refused it.
#[derive(Debug, Clone, PartialEq)]
pub struct Denied(pub String);

/// A guest-visible keyspace: maps the guest's keys to engine keys and back.
#[derive(Debug, Clone)]
pub struct Keyspace {
    prefix: Vec<u8>,
    caller: Caller,
}

impl Keyspace {
    /// The engine key for a guest key the caller may read.
    pub fn read_key(&self, key: &[u8]) -> Result<Vec<u8>, Denied> {
        if let Some(allowed) = self.caller.key_prefixes.iter().find(|allowed| !key.starts_with(allowed)) {
            return Err(Denied(format!(
                "the token's kv-prefix caveat allows only keys starting with {:?}",
                String::from_utf8_lossy(allowed)
            )));
        }
        Ok([self.prefix.as_slice(), key].concat())
    }

    /// The engine key for a guest key the caller may write.
    pub fn write_key(&self, key: &[u8]) -> Result<Vec<u8>, Denied> {
        if self.caller.read_only {
            return Err(Denied("the token's `kv = read` caveat allows no writes".into()));
        }
        self.read_key(key)
    }

    /// The engine range for the guest range `[start, end)` (empty `end`: unbounded), narrowed
    /// to the keys the caller may see (an empty range when its caveats contradict).
    pub fn range(&self, start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut start = start.to_vec();
        let mut end = if end.is_empty() { None } else { Some(end.to_vec()) };
        let Ok(narrowest) = self.caller.narrowest_prefix() else {
            return (self.prefix.clone(), self.prefix.clone());
        };
        if let Some(allowed) = narrowest {
            if start.as_slice() < allowed {
                start = allowed.to_vec();
            }
            let allowed_end = prefix_end(allowed);
            if !allowed_end.is_empty() && end.as_ref().is_none_or(|e| *e > allowed_end) {
                end = Some(allowed_end);
            }
        }
        let engine_start = [self.prefix.as_slice(), &start].concat();
        let engine_end = match end {
            Some(end) => [self.prefix.as_slice(), &end].concat(),
            None => prefix_end(&self.prefix),
        };
        (engine_start, engine_end)
    }

    /// The guest key for an engine key inside this keyspace.
    pub fn guest_key<'a>(&self, engine_key: &'a [u8]) -> &'a [u8] {
        engine_key.strip_prefix(self.prefix.as_slice()).unwrap_or(engine_key)
    }
}

/// The smallest key greater than every key starting with `prefix` (empty when none is).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// An open `ledge:platform/transactions.transaction`.
pub struct OpenTransaction {
    tx: Tx,
    keyspace: Keyspace,
}

/// The host side of the binding: the request's resource table and key-value access.
pub struct KvCtx<'a> {
    pub table: &'a mut ResourceTable,
    pub access: &'a mut KvAccess,
}

/// [`HasData`] for the key-value interfaces.
pub struct KvBinding;

impl HasData for KvBinding {
    type Data<'a> = KvCtx<'a>;
}

fn tx_error(error: TxError) -> WitError {
    match error {
        retryable if retryable.is_retryable() => WitError::Conflict(retryable.to_string()),
        TxError::KeyTooLarge { .. } | TxError::ValueTooLarge { .. } | TxError::TooLarge { .. } => {
            WitError::Limit(error.to_string())
        }
        other => WitError::Internal(other.to_string()),
    }
}

impl From<Denied> for WitError {
    fn from(denied: Denied) -> Self {
        WitError::Denied(denied.0)
    }
}

impl KvCtx<'_> {
    fn begin_in(&mut self, store: Option<&str>, isolation: wit::Isolation) -> Result<OpenTransaction, WitError> {
        let keyspace = self.access.keyspace(store)?;
        let db = self.access.db()?.clone();
        self.access.open_transaction().map_err(WitError::Limit)?;
        let isolation = match isolation {
            wit::Isolation::Serializable => Isolation::Serializable,
            wit::Isolation::Snapshot => Isolation::Snapshot,
        };
        Ok(OpenTransaction { tx: db.begin(isolation), keyspace })
    }

    fn push(&mut self, open: OpenTransaction) -> wasmtime::Result<Resource<OpenTransaction>> {
        Ok(self.table.push(open)?)
    }
}

impl wit::Host for KvCtx<'_> {
    async fn begin(
        &mut self,
        isolation: wit::Isolation,
    ) -> wasmtime::Result<Result<Resource<OpenTransaction>, WitError>> {
        match self.begin_in(None, isolation) {
            Ok(open) => Ok(Ok(self.push(open)?)),
            Err(error) => Ok(Err(error)),
        }
    }

    async fn begin_in(
        &mut self,
        store: String,
        isolation: wit::Isolation,
    ) -> wasmtime::Result<Result<Resource<OpenTransaction>, WitError>> {
        match KvCtx::begin_in(self, Some(&store), isolation) {
            Ok(open) => Ok(Ok(self.push(open)?)),
            Err(error) => Ok(Err(error)),
        }
    }
}

impl wit::HostTransaction for KvCtx<'_> {
    async fn get(
        &mut self,
        this: Resource<OpenTransaction>,
        key: Vec<u8>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, WitError>> {
        let open = self.table.get_mut(&this)?;
        Ok(open.keyspace.read_key(&key).map_err(WitError::from).and_then(|key| open.tx.get(&key).map_err(tx_error)))
    }

    async fn put(
        &mut self,
        this: Resource<OpenTransaction>,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let open = self.table.get_mut(&this)?;
        Ok(open
            .keyspace
            .write_key(&key)
            .map_err(WitError::from)
            .and_then(|key| open.tx.put(&key, &value).map_err(tx_error)))
    }

    async fn delete(
        &mut self,
        this: Resource<OpenTransaction>,
        key: Vec<u8>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let open = self.table.get_mut(&this)?;
        Ok(open.keyspace.write_key(&key).map_err(WitError::from).and_then(|key| open.tx.delete(&key).map_err(tx_error)))
    }

    async fn scan(
        &mut self,
        this: Resource<OpenTransaction>,
        start: Vec<u8>,
        end: Vec<u8>,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<(Vec<u8>, Vec<u8>)>, WitError>> {
        if limit > MAX_SCAN_LIMIT {
            return Ok(Err(WitError::Limit(format!(
                "a scan returns at most {MAX_SCAN_LIMIT} entries; page with a start key"
            ))));
        }
        let open = self.table.get_mut(&this)?;
        let (start, end) = open.keyspace.range(&start, &end);
        if !end.is_empty() && start >= end {
            return Ok(Ok(Vec::new()));
        }
        Ok(open.tx.scan(&start, &end, limit as usize).map_err(tx_error).map(|entries| {
            entries.into_iter().map(|(key, value)| (open.keyspace.guest_key(&key).to_vec(), value)).collect()
        }))
    }

    async fn commit(&mut self, this: Resource<OpenTransaction>) -> wasmtime::Result<Result<u64, WitError>> {
        let open = self.table.delete(this)?;
        self.access.close_transaction();
        // Conflicts come back at once; only the wait for the group fsync is awaited.
        let outcome = match open.tx.commit_async() {
            Ok(ticket) => ticket.await,
            Err(error) => Err(error),
        };
        Ok(outcome.map_err(tx_error))
    }

    async fn rollback(&mut self, this: Resource<OpenTransaction>) -> wasmtime::Result<()> {
        self.drop(this).await
    }

    async fn drop(&mut self, this: Resource<OpenTransaction>) -> wasmtime::Result<()> {
        // Dropping the engine transaction aborts it.
        drop(self.table.delete(this)?);
        self.access.close_transaction();
        Ok(())
    }
}

impl bindings::ledge::platform::caller::Host for KvCtx<'_> {
    async fn get_token(&mut self) -> wasmtime::Result<Option<bindings::ledge::platform::caller::Token>> {
        let caller = &self.access.caller;
        Ok(caller
            .token_id
            .as_ref()
            .map(|id| bindings::ledge::platform::caller::Token { id: id.clone(), caveats: caller.caveats.clone() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyspace(caller: Caller) -> Keyspace {
        Keyspace { prefix: b"f/app/".to_vec(), caller }
    }

    #[test]
    fn keys_are_confined_to_the_functions_prefix() {
        let space = keyspace(Caller::default());
        assert_eq!(space.read_key(b"x").unwrap(), b"f/app/x");
        assert_eq!(space.range(b"", b""), (b"f/app/".to_vec(), b"f/app0".to_vec()));
        assert_eq!(space.guest_key(b"f/app/k"), b"k");
    }

    #[test]
    fn a_caller_prefix_narrows_keys_and_ranges() {
        let space =
            keyspace(Caller { key_prefixes: vec![b"user/".to_vec(), b"user/42/".to_vec()], ..Caller::default() });
        assert!(space.read_key(b"user/42/cart").is_ok());
        assert!(space.read_key(b"user/43/cart").is_err());
        assert_eq!(space.range(b"", b""), (b"f/app/user/42/".to_vec(), b"f/app/user/420".to_vec()));
        assert_eq!(space.range(b"user/42/b", b"zzz"), (b"f/app/user/42/b".to_vec(), b"f/app/user/420".to_vec()));
    }

    #[test]
    fn contradicting_prefixes_allow_nothing() {
        let space = keyspace(Caller { key_prefixes: vec![b"a/".to_vec(), b"b/".to_vec()], ..Caller::default() });
        assert!(space.read_key(b"a/x").is_err() && space.read_key(b"b/x").is_err());
        let (start, end) = space.range(b"", b"");
        assert_eq!(start, end);
    }

    #[test]
    fn a_read_only_caller_cannot_write() {
        let space = keyspace(Caller { read_only: true, ..Caller::default() });
        assert!(space.read_key(b"k").is_ok());
        assert!(space.write_key(b"k").is_err());
    }
}
