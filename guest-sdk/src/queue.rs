//! Queues: hand work off to another function (or a later run of this one), delivered at least
//! once, retried with backoff, dead-lettered after the consumer's `max_attempts`.
//!
//! Inside a transaction, [`crate::kv::Tx::send`] sends a message if and only if the transaction
//! commits, so the work and the state change that asked for it never part:
//!
//! ```no_run
//! use ledge_sdk::{kv, queue};
//!
//! fn place(order: &str) -> Result<(), kv::Error> {
//!     kv::transaction(|tx| {
//!         tx.put(format!("order/{order}"), "placed")?;
//!         tx.send("emails", order, queue::SendOptions::default())?;
//!         Ok(())
//!     })
//! }
//! ```
//!
//! The function's policy lists the queues it may send to (`[queues] send = ["emails"]`); the
//! consumer is a function with `[[consumer]] queue = "emails"`, `path = "/jobs/email"`, which
//! gets each message as a `POST` with headers `ledge-queue`, `ledge-message-id` (stable across
//! attempts: deduplicate on it), `ledge-attempt` and `ledge-sent-at`, and acknowledges with any
//! 2xx.

use std::time::Duration;

use crate::__private::platform::ledge::platform::queues as wit;
use crate::kv::Error;

/// How a message is sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// Not delivered before this much time has passed (at most 7 days).
    pub delay: Duration,
    /// Messages with the same key are delivered one at a time, in send order.
    pub key: Option<String>,
}

impl SendOptions {
    /// Delivered no sooner than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Ordered after earlier messages with the same `key`.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub(crate) fn to_wit(&self) -> wit::SendOptions {
        wit::SendOptions { delay_ms: u64::try_from(self.delay.as_millis()).unwrap_or(u64::MAX), key: self.key.clone() }
    }
}

/// Sends `body` to `queue` now, in a transaction of its own; returns the message's id once it
/// is durable.
pub fn send(queue: &str, body: impl AsRef<[u8]>, options: SendOptions) -> Result<String, Error> {
    Ok(wit::send(queue, body.as_ref(), &options.to_wit())?)
}

pub(crate) fn send_in(
    tx: &crate::__private::platform::ledge::platform::transactions::Transaction,
    queue: &str,
    body: &[u8],
    options: &SendOptions,
) -> Result<String, Error> {
    Ok(wit::send_in(tx, queue, body, &options.to_wit())?)
}
