//! `ledge:platform/queues`: `send` (a message in a transaction of its own) and `send-in` (a
//! message in the guest's open transaction, sent if and only if it commits).
//!
//! Invariants: a function sends only to the queues its policy lists (`[queues] send`), else a
//! guest-visible `denied`; a full queue or an oversized message is a `limit` error, never a
//! trap; both calls are on the run's tape, so a replay gets the recorded message id and sends
//! nothing.

use wasmtime::component::Resource;

use super::backend::queue_error;
use super::bindings::ledge::platform::queues::{self as wit, SendOptions as WitOptions};
use super::bindings::ledge::platform::transactions::Error as WitError;
use super::taped::{described, taped};
use super::transactions::OpenTransaction;
use super::{KvAccess, KvCtx};
use std::sync::Arc;

use super::global_queues::GlobalQueues;
use crate::queue::{Bounds, Queues, SendOptions};
use crate::record::tape::show_bytes;

/// Where a queue a function sends to lives.
enum Target<'a> {
    Local(&'a Arc<Queues>),
    /// `[queues] global`: in etcd (cluster mode).
    Global(&'a Arc<GlobalQueues>, Bounds),
}

impl KvAccess {
    /// Where `queue` lives, if this function may send to it.
    fn target(&self, queue: &str) -> Result<Target<'_>, WitError> {
        if !self.queues_send.iter().any(|granted| granted == queue) {
            return Err(WitError::Denied(format!(
                "the function's policy does not let it send to queue `{queue}` (add it to `[queues] send`)"
            )));
        }
        if self.caller.read_only {
            return Err(WitError::Denied("the token's `kv = read` caveat allows no writes, and a send is one".into()));
        }
        let local = self.queues.as_ref().ok_or_else(|| WitError::Denied("queues are not available here".into()))?;
        if !self.queues_global.iter().any(|global| global == queue) {
            return Ok(Target::Local(local));
        }
        match &self.global_queues {
            Some(global) => Ok(Target::Global(global, local.bounds_of(queue))),
            None => Err(WitError::Denied(format!(
                "queue `{queue}` is global (`[queues] global`), which needs cluster mode: ledge serve --cluster"
            ))),
        }
    }
}

fn options(options: &WitOptions) -> SendOptions {
    SendOptions { delay: std::time::Duration::from_millis(options.delay_ms), key: options.key.clone() }
}

fn describe(queue: &str, body: &[u8], options: &WitOptions) -> String {
    format!("{queue:?}, {}, delay {} ms, key {:?}", show_bytes(body), options.delay_ms, options.key)
}

impl wit::Host for KvCtx<'_> {
    async fn send(
        &mut self,
        queue: String,
        body: Vec<u8>,
        send_options: WitOptions,
    ) -> wasmtime::Result<Result<String, WitError>> {
        let args = described(self.tape, || describe(&queue, &body, &send_options));
        let access = &*self.access;
        taped(self.tape, "ledge:platform/queues.send", args, async {
            let options = options(&send_options);
            let sent = match access.target(&queue) {
                Ok(Target::Local(queues)) => queues.send(&queue, &body, &options).await.map_err(queue_error),
                Ok(Target::Global(queues, bounds)) => {
                    queues.send(&queue, &body, &options, bounds).await.map_err(queue_error)
                }
                Err(refused) => Err(refused),
            };
            Ok(sent)
        })
        .await
    }

    async fn send_in(
        &mut self,
        tx: Resource<OpenTransaction>,
        queue: String,
        body: Vec<u8>,
        send_options: WitOptions,
    ) -> wasmtime::Result<Result<String, WitError>> {
        let args = described(self.tape, || describe(&queue, &body, &send_options));
        let access = &*self.access;
        let open = self.table.get_mut(&tx)?;
        taped(self.tape, "ledge:platform/queues.send-in", args, async {
            let options = options(&send_options);
            let sent = match access.target(&queue) {
                Ok(Target::Local(queues)) => open.send(queues, &queue, &body, &options),
                Ok(Target::Global(queues, bounds)) => match queues.check_depth(&queue, bounds).await {
                    // Boxed: the etcd futures are large, and every send-in's future would carry them.
                    Ok(()) => Box::pin(open.tx.stage_global_message(queues, &queue, &body, &options)).await,
                    Err(full) => Err(queue_error(full)),
                },
                Err(refused) => Err(refused),
            };
            Ok(sent)
        })
        .await
    }
}
