//! `ledge:platform/transactions`: interactive transactions for guests (begin, get, put,
//! delete, scan, commit, rollback), and `ledge:platform/caller`, the caller's token facts.
//!
//! Invariants: a denied key is a guest-visible `denied` error, an engine limit a `limit` error,
//! a conflict a retryable `conflict`; only a broken host invariant (a stale resource handle)
//! traps. A transaction lives in the request's resource table, so one left open is aborted
//! when the instance goes away.

use std::sync::Arc;

use ledge_kv::Isolation;
use wasmtime::component::Resource;

use super::backend::Backend;
use super::bindings::ledge::platform::transactions::{self as wit, Error as WitError};
use super::spans::TxSpan;
use super::taped::{described, observed, taped};
use super::{Denied, Keyspace, KvCtx, bindings};
use crate::queue::{Queues, SendOptions, Staged};
use crate::record::tape::{show_all, show_bytes};

/// Most entries one scan may return.
const MAX_SCAN_LIMIT: u32 = 10_000;

/// An open `ledge:platform/transactions.transaction`: on this node's engine, or on the
/// cluster's global data.
pub struct OpenTransaction {
    pub(super) tx: Backend,
    keyspace: Keyspace,
    span: TxSpan,
    /// Messages sent in it (`send-in`), published once it commits.
    sent: Vec<Staged>,
}

impl OpenTransaction {
    /// Sends a message to a node-local queue as part of this transaction; its id.
    pub fn send(
        &mut self,
        queues: &Arc<Queues>,
        queue: &str,
        body: &[u8],
        options: &SendOptions,
    ) -> Result<String, WitError> {
        let staged = self.tx.stage_message(queues, queue, body, options)?;
        let id = staged.id().to_string();
        self.sent.push(staged);
        Ok(id)
    }
}

impl From<Denied> for WitError {
    fn from(denied: Denied) -> Self {
        WitError::Denied(denied.0)
    }
}

impl KvCtx<'_> {
    fn begin_in(&mut self, store: Option<&str>, isolation: wit::Isolation) -> Result<OpenTransaction, WitError> {
        let isolation = match isolation {
            wit::Isolation::Serializable => Isolation::Serializable,
            wit::Isolation::Snapshot => Isolation::Snapshot,
        };
        let keyspace = self.access.keyspace(store);
        let mut span = self.access.tx_span(isolation, keyspace.as_ref().is_ok_and(|keyspace| keyspace.global));
        let opened = keyspace.map_err(WitError::from).and_then(|keyspace| {
            let tx = self.access.source(&keyspace)?.begin(isolation);
            self.access.open_handle().map_err(WitError::Limit)?;
            Ok((tx, keyspace))
        });
        // A refusal ends the span (dropped here) with the refusal as its outcome.
        span.note(&opened);
        let (tx, keyspace) = opened?;
        Ok(OpenTransaction { tx, keyspace, span, sent: Vec::new() })
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
        let begun = self.begin_in(None, isolation);
        observed(self.tape, "ledge:platform/transactions.begin", || format!("{isolation:?}"), &begun)?;
        match begun {
            Ok(open) => Ok(Ok(self.push(open)?)),
            Err(error) => Ok(Err(error)),
        }
    }

    async fn begin_in(
        &mut self,
        store: String,
        isolation: wit::Isolation,
    ) -> wasmtime::Result<Result<Resource<OpenTransaction>, WitError>> {
        let begun = KvCtx::begin_in(self, Some(&store), isolation);
        observed(self.tape, "ledge:platform/transactions.begin-in", || format!("{store:?}, {isolation:?}"), &begun)?;
        match begun {
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
        let args = described(self.tape, || show_bytes(&key));
        let open = self.table.get_mut(&this)?;
        taped(self.tape, "ledge:platform/transactions.get", args, async {
            let key = match open.keyspace.read_key(&key) {
                Ok(key) => key,
                Err(denied) => {
                    let refused = Err(denied.into());
                    open.span.note(&refused);
                    return Ok(refused);
                }
            };
            let got = open.tx.get(&key).await;
            open.span.note(&got);
            Ok(got)
        })
        .await
    }

    async fn put(
        &mut self,
        this: Resource<OpenTransaction>,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let args = described(self.tape, || show_all(&[&key, &value]));
        let open = self.table.get_mut(&this)?;
        taped(self.tape, "ledge:platform/transactions.put", args, async {
            let put = open.keyspace.write_key(&key).map_err(WitError::from).and_then(|key| open.tx.put(&key, &value));
            open.span.note(&put);
            Ok(put)
        })
        .await
    }

    async fn delete(
        &mut self,
        this: Resource<OpenTransaction>,
        key: Vec<u8>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let args = described(self.tape, || show_bytes(&key));
        let open = self.table.get_mut(&this)?;
        taped(self.tape, "ledge:platform/transactions.delete", args, async {
            let deleted = open.keyspace.write_key(&key).map_err(WitError::from).and_then(|key| open.tx.delete(&key));
            open.span.note(&deleted);
            Ok(deleted)
        })
        .await
    }

    async fn scan(
        &mut self,
        this: Resource<OpenTransaction>,
        start: Vec<u8>,
        end: Vec<u8>,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<(Vec<u8>, Vec<u8>)>, WitError>> {
        let args = described(self.tape, || format!("{}, {limit}", show_all(&[&start, &end])));
        let open = self.table.get_mut(&this)?;
        taped(self.tape, "ledge:platform/transactions.scan", args, async {
            if limit > MAX_SCAN_LIMIT {
                return Ok(Err(WitError::Limit(format!(
                    "a scan returns at most {MAX_SCAN_LIMIT} entries; page with a start key"
                ))));
            }
            let (start, end) = open.keyspace.range(&start, &end);
            if !end.is_empty() && start >= end {
                return Ok(Ok(Vec::new()));
            }
            let scanned = open.tx.scan(&start, &end, limit as usize).await;
            open.span.note(&scanned);
            Ok(scanned.map(|entries| {
                entries.into_iter().map(|(key, value)| (open.keyspace.guest_key(&key).to_vec(), value)).collect()
            }))
        })
        .await
    }

    async fn commit(&mut self, this: Resource<OpenTransaction>) -> wasmtime::Result<Result<u64, WitError>> {
        let OpenTransaction { tx, span, sent, .. } = self.table.delete(this)?;
        self.access.close_handle();
        let queues = self.access.queues.clone().filter(|_| !sent.is_empty());
        taped(self.tape, "ledge:platform/transactions.commit", String::new(), async {
            let committed = match queues {
                // Messages sent in it enter their queues once it is durable, even if this run
                // is cancelled while it waits.
                Some(queues) => tx.commit_publishing(&queues, sent).await,
                None => tx.commit().await,
            };
            span.finish(&committed);
            Ok(committed)
        })
        .await
    }

    async fn rollback(&mut self, this: Resource<OpenTransaction>) -> wasmtime::Result<()> {
        self.drop(this).await
    }

    async fn drop(&mut self, this: Resource<OpenTransaction>) -> wasmtime::Result<()> {
        // Dropping the engine transaction aborts it.
        drop(self.table.delete(this)?);
        self.access.close_handle();
        Ok(())
    }
}

impl bindings::ledge::platform::caller::Host for KvCtx<'_> {
    async fn get_token(&mut self) -> wasmtime::Result<Option<bindings::ledge::platform::caller::Token>> {
        let caller = &self.access.caller;
        let live = || Ok(caller.token_id.as_ref().map(|id| (id.clone(), caller.caveats.clone())));
        let token = match self.tape {
            Some(tape) => {
                tape.call("ledge:platform/caller.get-token", String::new, super::taped::Shown::shown, live)?
            }
            None => live()?,
        };
        Ok(token.map(|(id, caveats)| bindings::ledge::platform::caller::Token { id, caveats }))
    }
}
