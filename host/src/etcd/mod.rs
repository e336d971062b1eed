//! The etcd client of a node: one connection per endpoint, and failover done here.
//!
//! `etcd-client` balances over its endpoints with tonic's balancer, which has been known to
//! stall on a dead endpoint instead of moving on; ledge does not depend on it. Each endpoint
//! gets its own client; a call goes to the one that answered last and, when it cannot be
//! reached or does not answer within [`REQUEST_TIMEOUT`], to the next.
//!
//! Invariants:
//! - no call waits longer than `REQUEST_TIMEOUT` per endpoint and pass, so a dead etcd never
//!   stalls a node for longer than that times the number of endpoints, twice (calls that may be
//!   repeated get a second pass, to ride out an election);
//! - only calls that are safe to repeat are retried on another endpoint ([`Retry::Any`]); a
//!   write whose fate is unknown is reported as [`EtcdError::Unknown`] and resolved by its
//!   caller, never sent twice blindly.
//!
//! Layer: near the bottom, below the cluster (control state) and the guest bindings (global
//! transactions), which both talk to etcd through it; it uses nothing of ledge's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, KeyValue, PutOptions, Txn};
use thiserror::Error;

/// How long one endpoint has to answer one call.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The pause before a second pass over the endpoints (etcd's default election timeout is 1 s).
const ELECTION_PAUSE: Duration = Duration::from_millis(500);

/// How long a connection attempt to one endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Keys a listing asks for per page at most; fewer while pages of large values would not fit
/// one reply (the client takes replies of at most 4 MiB).
const LIST_PAGE: i64 = 256;

#[derive(Debug, Error, Clone)]
pub enum EtcdError {
    /// No endpoint answered: the node serves what it has, control writes wait.
    #[error("the cluster's store (etcd) cannot be reached: {0}")]
    Unreachable(String),
    /// The write reached etcd but its outcome was not heard.
    #[error("etcd did not confirm the write: {0}")]
    Unknown(String),
    /// etcd answered with an error (a compacted revision, a request over its limits...).
    #[error("etcd refused the request: {0}")]
    Refused(String),
}

impl EtcdError {
    /// etcd answered that the revision read at was compacted away.
    pub fn is_compacted(&self) -> bool {
        matches!(self, EtcdError::Refused(message) if message.contains("compacted"))
    }

    /// The reply passed the client's 4 MiB decoding limit (tonic's wording).
    pub fn is_reply_too_large(&self) -> bool {
        matches!(self, EtcdError::Refused(message) if message.contains("message length too large"))
    }
}

/// Whether a call may be sent again to another endpoint after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads, and writes that are idempotent (a put-if-absent, a put of the same value).
    Any,
    /// Writes that must not apply twice: retried only when they certainly never left.
    Unsent,
}

/// TLS for `https://` endpoints: the CA that signed etcd's certificates, and a client
/// certificate when etcd asks for one.
pub struct EtcdTls {
    pub ca: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

pub struct Etcd {
    clients: Vec<(String, Client)>,
    /// The endpoint that answered last: calls start there.
    current: AtomicUsize,
}

impl Etcd {
    /// Clients for `endpoints` (nothing is dialled yet: a node starts while etcd is down).
    pub async fn connect(endpoints: &[String], tls: Option<&EtcdTls>) -> anyhow::Result<Etcd> {
        let mut clients = Vec::new();
        for endpoint in endpoints {
            let mut options = ConnectOptions::new()
                .with_connect_timeout(CONNECT_TIMEOUT)
                .with_timeout(REQUEST_TIMEOUT)
                .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
                .with_keep_alive_while_idle(true);
            if let Some(tls) = tls.filter(|_| endpoint.starts_with("https://")) {
                let mut config =
                    etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(&tls.ca));
                if let Some((cert, key)) = &tls.identity {
                    config = config.identity(etcd_client::Identity::from_pem(cert, key));
                }
                options = options.with_tls(config);
            }
            let client = Client::connect([endpoint.as_str()], Some(options))
                .await
                .map_err(|e| anyhow::anyhow!("etcd endpoint {endpoint}: {e}"))?;
            clients.push((endpoint.clone(), client));
        }
        anyhow::ensure!(!clients.is_empty(), "--cluster names no etcd endpoint");
        Ok(Etcd { clients, current: AtomicUsize::new(0) })
    }

    /// Runs `op` on the endpoint that answered last, then on the others as `retry` allows.
    pub async fn call<T, F, Fut>(&self, retry: Retry, mut op: F) -> Result<T, EtcdError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let start = self.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        let passes = if retry == Retry::Any { 2 } else { 1 };
        for attempt in 0..self.clients.len() * passes {
            if attempt == self.clients.len() {
                // Every endpoint failed once: typically an election in progress (a member
                // lost, "leader changed"); one more pass after it has had time to settle.
                tokio::time::sleep(ELECTION_PAUSE).await;
            }
            let index = (start + attempt) % self.clients.len();
            let (endpoint, client) = &self.clients[index];
            let unsent = match tokio::time::timeout(REQUEST_TIMEOUT, op(client.clone())).await {
                Ok(Ok(value)) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(value);
                }
                Ok(Err(error)) if !is_unavailable(&error) => return Err(EtcdError::Refused(error.to_string())),
                Ok(Err(error)) => {
                    failures.push(format!("{endpoint}: {}", summary(&error)));
                    never_sent(&error)
                }
                Err(_) => {
                    failures.push(format!("{endpoint}: no answer within {REQUEST_TIMEOUT:?}"));
                    false
                }
            };
            if retry == Retry::Unsent && !unsent {
                return Err(EtcdError::Unknown(failures.join("; ")));
            }
        }
        Err(EtcdError::Unreachable(failures.join("; ")))
    }

    /// Reads (retried on every endpoint).
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, EtcdError> {
        let key = key.into();
        self.call(Retry::Any, |mut client| {
            let (key, options) = (key.clone(), options.clone());
            async move { client.get(key, options).await }
        })
        .await
    }

    /// Every key under `prefix` (values too unless `keys_only`), and the revision they were
    /// read at: read in pages at that one revision, so the listing is one consistent snapshot
    /// however large (each page continues after the last key of the one before). A page whose
    /// reply would pass the client's 4 MiB limit is asked for again with fewer keys. Fails on a
    /// revision compacted meanwhile (the caller lists again).
    pub async fn list(&self, prefix: &str, keys_only: bool) -> Result<(i64, Vec<KeyValue>), EtcdError> {
        let end = prefix_end(prefix.as_bytes());
        let (mut start, mut revision, mut limit) = (prefix.as_bytes().to_vec(), 0, LIST_PAGE);
        let mut listed = Vec::new();
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit).with_revision(revision);
            if keys_only {
                options = options.with_keys_only();
            }
            let mut page = match self.get(start.clone(), Some(options)).await {
                Ok(page) => page,
                Err(error) if error.is_reply_too_large() && limit > 1 => {
                    limit /= 2;
                    continue;
                }
                Err(error) => return Err(error),
            };
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            let more = page.more();
            let kvs = page.take_kvs();
            let Some(last) = kvs.last() else { return Ok((revision, listed)) };
            start = [last.key(), &[0]].concat();
            listed.extend(kvs);
            if !more {
                return Ok((revision, listed));
            }
            limit = (limit * 2).min(LIST_PAGE);
        }
    }

    /// A put whose repetition is harmless (the same value again).
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> Result<etcd_client::PutResponse, EtcdError> {
        let (key, value) = (key.into(), value.into());
        self.call(Retry::Any, |mut client| {
            let (key, value, options) = (key.clone(), value.clone(), options.clone());
            async move { client.put(key, value, options).await }
        })
        .await
    }

    /// A transaction, sent again only as `retry` allows.
    pub async fn txn(&self, retry: Retry, txn: Txn) -> Result<etcd_client::TxnResponse, EtcdError> {
        self.call(retry, |mut client| {
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })
        .await
    }

    /// The value of `key`, a random 32-byte hex secret put there first if it was absent (the
    /// first node to ask creates it; every node ends with the same one).
    pub async fn shared_secret(&self, key: &str) -> Result<Vec<u8>, EtcdError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| EtcdError::Refused(e.to_string()))?;
        let absent = etcd_client::Compare::version(key, etcd_client::CompareOp::Equal, 0);
        let put = etcd_client::TxnOp::put(key, hex::encode(secret), None);
        self.txn(Retry::Any, Txn::new().when(vec![absent]).and_then(vec![put])).await?;
        let stored = self.get(key, None).await?;
        let value = stored.kvs().first().map(|kv| kv.value().to_vec());
        value.ok_or_else(|| EtcdError::Refused(format!("`{key}` vanished right after it was written")))
    }

    /// A new lease of `ttl` seconds.
    pub async fn lease_grant(&self, ttl: i64) -> Result<etcd_client::LeaseGrantResponse, EtcdError> {
        self.call(Retry::Any, |mut client| async move { client.lease_grant(ttl, None).await }).await
    }

    /// The client of the endpoint that answered last (for streams: watches, lease keep-alives).
    pub fn client(&self) -> Client {
        self.clients[self.current.load(Ordering::Relaxed) % self.clients.len()].1.clone()
    }

    /// Moves to the next endpoint after a stream on the current one failed.
    pub fn next_endpoint(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }
}

/// The first key after every key that starts with `prefix` (empty: no end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A failure in a few words (tonic's own text repeats the whole error chain).
fn summary(error: &etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) if never_sent(error) => format!("unreachable ({})", status.message()),
        etcd_client::Error::GRpcStatus(status) => status.message().to_string(),
        other => other.to_string().chars().take(160).collect(),
    }
}

/// The failure is the transport's or etcd's availability, not an answer about the request.
fn is_unavailable(error: &etcd_client::Error) -> bool {
    use etcd_client::Error;
    match error {
        Error::TransportError(_) | Error::IoError(_) | Error::WatchError(_) | Error::LeaseKeepAliveError(_) => true,
        Error::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        _ => false,
    }
}

/// The request never reached etcd (the connection could not be made), so sending it elsewhere
/// cannot apply it twice. tonic reports a failed connect only in its message.
fn never_sent(error: &etcd_client::Error) -> bool {
    let text = format!("{error:?}").to_ascii_lowercase();
    text.contains("connection refused") || text.contains("connecterror") || text.contains("tcp connect error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_the_next_key_after_all_it_starts() {
        assert_eq!(prefix_end(b"/ledge/fn/"), b"/ledge/fn0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
    }
}
