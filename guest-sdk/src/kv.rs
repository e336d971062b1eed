//! Serializable transactions on ledge's embedded key-value store.
//!
//! [`transaction`] runs a closure in a transaction and commits it; when a concurrent
//! transaction conflicts, the whole closure runs again (bounded attempts, jittered backoff), so
//! a read-modify-write is a few lines and stays correct under any concurrency:
//!
//! ```no_run
//! use ledge_sdk::kv;
//!
//! fn hit() -> Result<u64, kv::Error> {
//!     kv::transaction(|tx| {
//!         let n = tx.get_u64("hits")?.unwrap_or(0) + 1;
//!         tx.put("hits", n)?;
//!         Ok(n)
//!     })
//! }
//! ```
//!
//! The closure may run more than once, so it should only touch the transaction (no other side
//! effects). Keys are the function's own; [`Options::store`] selects a shared store the
//! function's policy grants. Integers are stored as decimal text (the encoding
//! `wasi:keyvalue/atomics.increment` uses too), strings as UTF-8, [`Tx::put_json`] values as
//! JSON.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__private::platform::ledge::platform::transactions as wit;

/// Transaction isolation; [`Isolation::Serializable`] is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Committed transactions behave as if run one at a time.
    #[default]
    Serializable,
    /// Snapshot isolation: cheaper certification, but write skew is possible.
    Snapshot,
}

/// Why a transaction failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A concurrent transaction conflicted; [`transaction`] retries these by itself.
    Conflict(String),
    /// The policy or the caller's token does not allow this access.
    Denied(String),
    /// A key, value or transaction is over a size limit.
    Limit(String),
    /// The store failed.
    Internal(String),
    /// A stored value could not be decoded as the type asked for.
    Decode(String),
    /// The closure gave up (see [`abort`]); the transaction was rolled back.
    Aborted(String),
}

impl Error {
    /// Whether running the transaction again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Conflict(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Conflict(why) => write!(f, "transaction conflict: {why}"),
            Error::Denied(why) => write!(f, "access denied: {why}"),
            Error::Limit(why) => write!(f, "limit exceeded: {why}"),
            Error::Internal(why) => write!(f, "store failure: {why}"),
            Error::Decode(why) => write!(f, "cannot decode stored value: {why}"),
            Error::Aborted(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<wit::Error> for Error {
    fn from(error: wit::Error) -> Self {
        match error {
            wit::Error::Conflict(why) => Error::Conflict(why),
            wit::Error::Denied(why) => Error::Denied(why),
            wit::Error::Limit(why) => Error::Limit(why),
            wit::Error::Internal(why) => Error::Internal(why),
        }
    }
}

/// Ends a transaction closure without committing: `return Err(kv::abort("insufficient funds"))`.
pub fn abort(reason: impl Into<String>) -> Error {
    Error::Aborted(reason.into())
}

/// How [`transaction_with`] runs.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    pub isolation: Isolation,
    /// A shared store granted by the policy; `None` is the function's own keyspace.
    pub store: Option<&'a str>,
    /// Attempts before a conflict is returned to the caller.
    pub max_attempts: u32,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options { isolation: Isolation::Serializable, store: None, max_attempts: 64 }
    }
}

/// Runs `body` in a serializable transaction on the function's keyspace and commits it,
/// retrying conflicts. Returns what `body` returned.
pub fn transaction<T>(body: impl FnMut(&mut Tx) -> Result<T, Error>) -> Result<T, Error> {
    transaction_with(Options::default(), body)
}

/// [`transaction`] with explicit [`Options`].
pub fn transaction_with<T>(
    options: Options<'_>,
    mut body: impl FnMut(&mut Tx) -> Result<T, Error>,
) -> Result<T, Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = begin(options.isolation, options.store).and_then(|mut tx| {
            let value = body(&mut tx)?;
            tx.commit()?;
            Ok(value)
        });
        match outcome {
            Err(error) if error.is_retryable() && attempt < options.max_attempts => backoff(attempt),
            other => return other,
        }
    }
}

/// Before retry number `attempt + 1`. The first retry goes at once: a conflict means the other
/// transaction has already committed, so a retry reads its writes and usually commits, and
/// the engine's conflict windows are microseconds long (sleeping here cost the counter
/// example a ~1 ms stall on 13% of its requests under load). Later retries sleep up to
/// 2^(attempt-1) milliseconds (capped at 32), jittered, so competing retries spread out.
fn backoff(attempt: u32) {
    if attempt < 2 {
        return;
    }
    let ceiling_ms = 1u64 << (attempt - 1).min(5);
    let jitter = wasip2::random::insecure::get_insecure_random_u64() % (ceiling_ms * 1_000_000);
    wasip2::clocks::monotonic_clock::subscribe_duration(jitter).block();
}

/// Begins a transaction by hand; prefer [`transaction`], which retries conflicts.
pub fn begin(isolation: Isolation, store: Option<&str>) -> Result<Tx, Error> {
    let isolation = match isolation {
        Isolation::Serializable => wit::Isolation::Serializable,
        Isolation::Snapshot => wit::Isolation::Snapshot,
    };
    let inner = match store {
        None => wit::begin(isolation)?,
        Some(store) => wit::begin_in(store, isolation)?,
    };
    Ok(Tx { inner })
}

/// An open transaction. Dropped without [`Tx::commit`], it rolls back.
pub struct Tx {
    inner: wit::Transaction,
}

impl Tx {
    /// The raw bytes stored under `key`.
    pub fn get(&mut self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.inner.get(key.as_ref())?)
    }

    /// The value under `key` as UTF-8 text.
    pub fn get_string(&mut self, key: impl AsRef<[u8]>) -> Result<Option<String>, Error> {
        self.get(key)?.map(|bytes| String::from_utf8(bytes).map_err(|e| Error::Decode(e.to_string()))).transpose()
    }

    /// The value under `key` as an unsigned integer (stored as decimal text).
    pub fn get_u64(&mut self, key: impl AsRef<[u8]>) -> Result<Option<u64>, Error> {
        self.get_parsed(key)
    }

    /// The value under `key` as a signed integer (stored as decimal text).
    pub fn get_i64(&mut self, key: impl AsRef<[u8]>) -> Result<Option<i64>, Error> {
        self.get_parsed(key)
    }

    /// The value under `key` decoded from JSON.
    pub fn get_json<T: DeserializeOwned>(&mut self, key: impl AsRef<[u8]>) -> Result<Option<T>, Error> {
        self.get(key)?.map(|bytes| serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))).transpose()
    }

    fn get_parsed<T: std::str::FromStr>(&mut self, key: impl AsRef<[u8]>) -> Result<Option<T>, Error>
    where
        T::Err: fmt::Display,
    {
        self.get_string(key)?
            .map(|text| text.trim().parse().map_err(|e: T::Err| Error::Decode(e.to_string())))
            .transpose()
    }

    /// Stores `value` under `key`: bytes as they are, strings as UTF-8, integers as decimal text.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl Encode) -> Result<(), Error> {
        Ok(self.inner.put(key.as_ref(), &value.encode())?)
    }

    /// Stores `value` as JSON.
    pub fn put_json<T: Serialize + ?Sized>(&mut self, key: impl AsRef<[u8]>, value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Decode(e.to_string()))?;
        Ok(self.inner.put(key.as_ref(), &bytes)?)
    }

    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<(), Error> {
        Ok(self.inner.delete(key.as_ref())?)
    }

    /// Keys in `[start, end)` in order, at most `limit`; an empty `end` means unbounded.
    pub fn scan(
        &mut self,
        start: impl AsRef<[u8]>,
        end: impl AsRef<[u8]>,
        limit: u32,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error> {
        Ok(self.inner.scan(start.as_ref(), end.as_ref(), limit)?)
    }

    /// Keys starting with `prefix` in order, at most `limit`.
    pub fn scan_prefix(&mut self, prefix: impl AsRef<[u8]>, limit: u32) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error> {
        let prefix = prefix.as_ref();
        self.scan(prefix, prefix_end(prefix), limit)
    }

    /// Sends `body` to `queue` as part of this transaction: delivered if and only if it
    /// commits (see [`crate::queue`]). Returns the message's id.
    pub fn send(
        &mut self,
        queue: &str,
        body: impl AsRef<[u8]>,
        options: crate::queue::SendOptions,
    ) -> Result<String, Error> {
        crate::queue::send_in(&self.inner, queue, body.as_ref(), &options)
    }

    /// Commits; returns the commit stamp.
    pub fn commit(self) -> Result<u64, Error> {
        Ok(wit::Transaction::commit(self.inner)?)
    }

    /// Discards the writes (dropping the transaction does the same).
    pub fn rollback(self) {
        wit::Transaction::rollback(self.inner)
    }
}

/// The smallest key greater than every key starting with `prefix` (empty: no upper bound).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// Values [`Tx::put`] accepts.
pub trait Encode {
    fn encode(&self) -> Vec<u8>;
}

impl Encode for &[u8] {
    fn encode(&self) -> Vec<u8> {
        self.to_vec()
    }
}

impl Encode for Vec<u8> {
    fn encode(&self) -> Vec<u8> {
        self.clone()
    }
}

impl Encode for &str {
    fn encode(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl Encode for String {
    fn encode(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

macro_rules! encode_integers {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn encode(&self) -> Vec<u8> {
                self.to_string().into_bytes()
            }
        }
    )*};
}

encode_integers!(u8, u16, u32, u64, i8, i16, i32, i64);
