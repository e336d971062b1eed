//! One open connection ([`Connection`]): its outbox and the bytes queued in it, its tags, its
//! close, and its function's counts ([`Counts`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, watch};

use super::{MAX_REASON_BYTES, MESSAGE_OVERHEAD, Message, Outgoing, SocketError, truncate};
use crate::metrics::{FunctionLabels, Metrics, WebSocketLabels};

/// A function's WebSocket traffic on this node (also in the node's metrics).
#[derive(Debug)]
pub struct Counts {
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    metric_in: Counter,
    metric_out: Counter,
    pub(super) open: Gauge<i64, std::sync::atomic::AtomicI64>,
}

impl Counts {
    pub(super) fn new(metrics: &Metrics, function: &str) -> Counts {
        let labels = |direction| WebSocketLabels { function: function.to_string(), direction };
        // One statement each: a family's read guard lives to the end of its statement, and the
        // next `get_or_create` may need the write lock.
        let metric_in = metrics.websocket_messages.get_or_create(&labels("in")).clone();
        let metric_out = metrics.websocket_messages.get_or_create(&labels("out")).clone();
        let open = metrics.websocket_connections.get_or_create(&FunctionLabels { function: function.into() }).clone();
        Counts { messages_in: AtomicU64::new(0), messages_out: AtomicU64::new(0), metric_in, metric_out, open }
    }
}

/// One open connection.
pub struct Connection {
    pub id: String,
    pub(super) entry: String,
    pub(super) outbox: mpsc::UnboundedSender<Outgoing>,
    /// Bytes queued in the outbox and not written yet.
    pub(super) queued: AtomicU64,
    pub(super) max_buffer: u64,
    /// A close is queued: nothing more is accepted.
    pub(super) closing: AtomicBool,
    /// The close queued (code and reason), for the session to act on at once: a writer stuck
    /// behind a client that stopped reading never reaches the close frame it queued.
    pub(super) closed: watch::Sender<Option<(u16, String)>>,
    pub(super) tags: Mutex<HashSet<String>>,
    pub(super) counts: Arc<Counts>,
}

impl Connection {
    /// The socket writer wrote a queued message of `bytes`.
    pub fn written(&self, bytes: usize) {
        self.queued.fetch_sub(bytes as u64 + MESSAGE_OVERHEAD, Ordering::AcqRel);
    }

    /// Counts a message from the client.
    pub fn received(&self) {
        self.counts.messages_in.fetch_add(1, Ordering::Relaxed);
        self.counts.metric_in.inc();
    }

    /// Queues a close (once); later sends are refused.
    pub fn close(&self, code: u16, reason: &str) {
        if !self.closing.swap(true, Ordering::AcqRel) {
            let reason = truncate(reason, MAX_REASON_BYTES);
            self.closed.send_replace(Some((code, reason.clone())));
            let _ = self.outbox.send(Outgoing::Close(code, reason));
        }
    }

    /// The close queued on this connection, once there is one.
    pub fn closing(&self) -> watch::Receiver<Option<(u16, String)>> {
        self.closed.subscribe()
    }

    pub(super) fn send(&self, message: Message) -> Result<(), SocketError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(SocketError::NoSuchConnection);
        }
        let bytes = message.len() as u64 + MESSAGE_OVERHEAD;
        let queued = self.queued.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if queued > self.max_buffer {
            self.queued.fetch_sub(bytes, Ordering::AcqRel);
            self.close(1008, "send buffer full: the client reads too slowly");
            return Err(SocketError::Limit(format!(
                "the connection's send buffer ({} bytes) is full; it is being closed",
                self.max_buffer
            )));
        }
        self.counts.messages_out.fetch_add(1, Ordering::Relaxed);
        self.counts.metric_out.inc();
        self.outbox.send(Outgoing::Message(message)).map_err(|_| SocketError::NoSuchConnection)
    }
}
