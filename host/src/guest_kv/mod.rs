//! Guest access to the key-value engine, the capabilities a function gets besides WASI:
//! `ledge:platform/transactions` (interactive transactions, [`transactions`]) and
//! `wasi:keyvalue` ([`keyvalue`]), both on the one [`ledge_kv::Db`] of the process, or in
//! cluster mode on global data in etcd ([`global`]); [`backend`] is the one transaction type
//! both APIs use; [`recorded`] reads back what a recorded run read (deploy verification seeds
//! its scratch engine with it); [`websocket`] is `ledge:platform/websocket`, a run's reach to
//! its function's WebSocket connections ([`crate::websocket`]).
//!
//! Layer: below the runtime (which links these bindings into every instance), above
//! [`crate::record`] (every call goes through the run's tape), [`crate::access`] (the verified
//! [`Caller`] and the [`Policy`] decide what a guest may touch) and [`crate::etcd`] (global
//! transactions).
//!
//! Invariants:
//! - every key a guest names is confined to a [`Keyspace`]: the function's own
//!   (`f/NAME/…` in the engine) or a shared store its policy grants (`s/STORE/…`); a guest can
//!   never form a key outside it, so one function cannot see another's keys;
//! - the caller's token may narrow that further (a key prefix, read-only); those checks happen
//!   at call time and fail with a guest-visible `denied`, never a trap;
//! - a transaction left open when the request ends is rolled back: it lives in the request's
//!   resource table and `Drop` of [`ledge_kv::Tx`] aborts it;
//! - the writes open transactions buffer are held to the instance's and the node's write
//!   budgets ([`budget`]), and given back when the transaction ends, however it ends;
//! - commits await their group fsync without blocking a request worker.

use ledge_kv::{Db, Isolation, Tx, TxError, prefix_end};
use wasmtime::component::{HasData, ResourceTable};

use crate::access::policy::Policy;
use crate::access::tokens::Caller;

pub mod backend;
pub mod budget;
pub mod global;
pub mod global_queues;
pub mod keyvalue;
pub mod queues;
pub mod recorded;
pub mod spans;
pub mod taped;
pub mod transactions;
pub mod websocket;

pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../guest-sdk/wit",
        world: "ledge:platform/platform-host",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "ledge:platform/transactions.transaction": crate::guest_kv::transactions::OpenTransaction,
            "wasi:keyvalue/store.bucket": crate::guest_kv::keyvalue::Bucket,
            "wasi:keyvalue/atomics.cas": crate::guest_kv::keyvalue::Cas,
        },
    });
}

/// Handles one instance may hold open at once: transactions, `wasi:keyvalue` buckets and CAS
/// handles (each CAS holds a transaction). A full table is a guest-visible `limit` error.
const MAX_OPEN_HANDLES: usize = 32;

/// One request's key-value access: which engine, which keyspaces, which caller limits.
pub struct KvAccess {
    /// `None` where no access is allowed (pre-initialization at deploy).
    db: Option<Db>,
    /// Cluster mode: the global data in etcd.
    global: Option<std::sync::Arc<global::GlobalStore>>,
    function: String,
    shared_stores: Vec<String>,
    /// The function's own keyspace is global (`[kv] scope = "global"`).
    global_scope: bool,
    global_stores: Vec<String>,
    /// Storage quota of each keyspace this function writes to (`[kv] max_bytes`).
    max_bytes: u64,
    caller: Caller,
    open_handles: usize,
    /// The write budgets its transactions draw on: this instance's own and the node's.
    write_budget: budget::WriteBudget,
    /// The run's span, which each transaction's span is a child of.
    trace: crate::telemetry::TraceCx,
    /// The node's queues, and those the function may send to (`[queues]`).
    queues: Option<std::sync::Arc<crate::queue::Queues>>,
    /// Cluster mode: the queues in etcd.
    global_queues: Option<std::sync::Arc<global_queues::GlobalQueues>>,
    queues_send: Vec<String>,
    queues_global: Vec<String>,
    /// A verification run's tape ([`Self::verified_by`]).
    verifying: Option<std::sync::Arc<crate::record::Tape>>,
    /// The node's WebSocket connections, which the function's runs may reach.
    websockets: Option<std::sync::Arc<crate::websocket::Hub>>,
}

impl KvAccess {
    /// `write_buffers`: the node's write budget, which every instance's transactions share.
    pub fn new(
        db: Db,
        global: Option<std::sync::Arc<global::GlobalStore>>,
        function: &str,
        policy: &Policy,
        caller: Caller,
        write_buffers: &std::sync::Arc<budget::Pool>,
    ) -> Self {
        KvAccess {
            db: Some(db),
            global,
            function: function.to_string(),
            shared_stores: policy.kv_stores.clone(),
            global_scope: policy.kv_scope == crate::access::policy::KvScope::Global,
            global_stores: policy.kv_global_stores.clone(),
            max_bytes: policy.kv_max_bytes,
            caller,
            open_handles: 0,
            write_budget: budget::WriteBudget::for_instance(write_buffers),
            trace: Default::default(),
            queues: None,
            global_queues: None,
            queues_send: policy.queues_send.clone(),
            queues_global: policy.queues_global.clone(),
            verifying: None,
            websockets: None,
        }
    }

    /// The same access, its sends going to `queues` (and, for global queues, `global`).
    pub fn with_queues(
        mut self,
        queues: Option<std::sync::Arc<crate::queue::Queues>>,
        global: Option<std::sync::Arc<global_queues::GlobalQueues>>,
    ) -> Self {
        self.queues = queues;
        self.global_queues = global;
        self
    }

    /// The same access, telling `tape` what its commits delete when it verifies a build.
    pub fn verified_by(mut self, tape: Option<std::sync::Arc<crate::record::Tape>>) -> Self {
        self.verifying = tape.filter(|tape| tape.is_verify());
        self
    }

    /// The same access, reaching the function's WebSocket connections in `hub`.
    pub fn with_websockets(mut self, hub: Option<std::sync::Arc<crate::websocket::Hub>>) -> Self {
        self.websockets = hub;
        self
    }

    /// The same access, its transactions traced as children of `trace`.
    pub fn traced(mut self, trace: crate::telemetry::TraceCx) -> Self {
        self.trace = trace;
        self
    }

    /// A span for a transaction of `isolation` about to begin on a `global` keyspace or a
    /// node-local one.
    pub fn tx_span(&self, isolation: ledge_kv::Isolation, global: bool) -> spans::TxSpan {
        let isolation = match isolation {
            ledge_kv::Isolation::Serializable => "serializable",
            ledge_kv::Isolation::Snapshot => "snapshot",
        };
        spans::TxSpan::begin(&self.trace, isolation, global)
    }

    /// No key-value access at all.
    pub fn none() -> Self {
        KvAccess {
            db: None,
            global: None,
            function: String::new(),
            shared_stores: Vec::new(),
            global_scope: false,
            global_stores: Vec::new(),
            max_bytes: 0,
            caller: Caller::default(),
            open_handles: 0,
            write_budget: budget::WriteBudget::for_instance(&budget::Pool::new(0)),
            trace: Default::default(),
            queues: None,
            global_queues: None,
            queues_send: Vec::new(),
            queues_global: Vec::new(),
            verifying: None,
            websockets: None,
        }
    }

    pub fn db(&self) -> Result<&Db, Denied> {
        self.db.as_ref().ok_or_else(|| Denied("key-value access is not available here".into()))
    }

    /// The global data, for a keyspace that lives in the cluster.
    pub fn global(&self) -> Result<&std::sync::Arc<global::GlobalStore>, Denied> {
        self.global.as_ref().ok_or_else(|| {
            Denied(
                "global stores (`[kv] scope = \"global\"`, `global_stores`) need cluster mode: ledge serve --cluster"
                    .into(),
            )
        })
    }

    /// The keyspace for `store`: `None` is the function's own, a name must be granted (as a
    /// global store or a node-local one; a global grant wins).
    pub fn keyspace(&self, store: Option<&str>) -> Result<Keyspace, Denied> {
        let (prefix, global) = match store {
            None => (format!("f/{}/", self.function), self.global_scope),
            Some(name) if self.global_stores.iter().any(|granted| granted == name) => (format!("s/{name}/"), true),
            Some(name) if self.shared_stores.iter().any(|granted| granted == name) => (format!("s/{name}/"), false),
            Some(name) => return Err(Denied(format!("the function's policy does not grant store `{name}`"))),
        };
        Ok(Keyspace { prefix: prefix.into_bytes(), caller: self.caller.clone(), max_bytes: self.max_bytes, global })
    }

    /// Counts a handle against the per-instance cap.
    pub fn open_handle(&mut self) -> Result<(), String> {
        if self.open_handles >= MAX_OPEN_HANDLES {
            return Err(format!("at most {MAX_OPEN_HANDLES} transactions and key-value handles may be open at once"));
        }
        self.open_handles += 1;
        Ok(())
    }

    pub fn close_handle(&mut self) {
        self.open_handles = self.open_handles.saturating_sub(1);
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
    max_bytes: u64,
    /// The keyspace lives in etcd (cluster mode), not in this node's engine.
    pub global: bool,
}

/// A keyspace's storage quota, applied to every transaction that writes to it.
#[derive(Debug, Clone)]
pub struct Quota {
    prefix: Vec<u8>,
    max_bytes: u64,
}

impl Quota {
    /// A transaction on `db` held to this quota.
    pub fn begin(&self, db: &Db, isolation: Isolation) -> Tx {
        let mut tx = db.begin(isolation);
        tx.limit_keyspace(&self.prefix, self.max_bytes);
        tx
    }
}

impl Keyspace {
    /// This keyspace's storage quota.
    pub fn quota(&self) -> Quota {
        Quota { prefix: self.prefix.clone(), max_bytes: self.max_bytes }
    }

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

/// The engine's accounting unit for a key: its keyspace, `f/NAME/`, `s/STORE/` or a system
/// prefix such as `sys/revoked/` (the first two `/`-separated segments). Names never contain
/// `/`, so no keyspace is a prefix of another.
pub fn keyspace_of(key: &[u8]) -> Option<usize> {
    let first = key.iter().position(|&b| b == b'/')?;
    let second = key[first + 1..].iter().position(|&b| b == b'/')?;
    Some(first + second + 2)
}

/// Deletes every key of function `name`'s own keyspace, in transactions of at most
/// [`DELETE_BATCH`] keys; returns how many were deleted.
pub fn delete_function_data(db: &Db, name: &str) -> Result<u64, TxError> {
    let start = format!("f/{name}/").into_bytes();
    let end = prefix_end(&start);
    let mut deleted = 0;
    loop {
        let mut tx = db.begin(Isolation::Snapshot);
        let keys = tx.scan(&start, &end, DELETE_BATCH)?;
        if keys.is_empty() {
            return Ok(deleted);
        }
        for (key, _) in &keys {
            tx.delete(key)?;
        }
        tx.commit()?;
        deleted += keys.len() as u64;
    }
}

/// Keys deleted per transaction when a function's keyspace is removed: small enough for the
/// engine's per-transaction and per-scan bounds whatever the values hold.
const DELETE_BATCH: usize = 1000;

/// The host side of the binding: the request's resource table and key-value access.
pub struct KvCtx<'a> {
    pub table: &'a mut ResourceTable,
    pub access: &'a mut KvAccess,
    /// The run's recording or replay.
    pub tape: Option<&'a crate::record::Tape>,
}

/// [`HasData`] for the key-value interfaces.
pub struct KvBinding;

impl HasData for KvBinding {
    type Data<'a> = KvCtx<'a>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyspace(caller: Caller) -> Keyspace {
        Keyspace { prefix: b"f/app/".to_vec(), caller, max_bytes: 1 << 20, global: false }
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
