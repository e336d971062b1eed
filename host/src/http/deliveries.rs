//! Queue deliveries: each message of a consumed queue becomes a `POST` of its body to the
//! consumer's path, a run like any other (its concurrency permit, its policy's limits, recorded
//! on failure, traced, in the metrics and the live log), not charged to the function's `[rate]`.
//!
//! Invariants: a queue's deliveries running at once never exceed its consumer's `concurrency`;
//! only a 2xx acknowledges, anything else (a trap, a timeout, a 5xx, a 4xx) counts as a failed
//! attempt, retried after the consumer's backoff until `max_attempts`, then dead-lettered; a
//! message the consumer could not take (no free instance, function gone) waits without an
//! attempt counted. A queue consumed by two functions (only possible through the operator's own
//! files) is delivered to the first by name.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

use super::App;
use super::recording::MadeByLedge;
use crate::access::policy::Consumer;
use crate::access::tokens::Caller;
use crate::queue::settle::{Delivery, Outcome};
use crate::queue::{Bounds, now_ms};
use crate::runtime::Invocation;
use crate::runtime::logs::RequestLine;
use crate::telemetry::{TraceCx, names};

/// The longest the dispatcher sleeps without looking (consumers deployed or changed meanwhile).
const IDLE_LOOK: Duration = Duration::from_millis(500);

/// The least time between two looks at one global queue in etcd.
const GLOBAL_POLL_GAP: Duration = Duration::from_millis(100);

/// How long a message the consumer could not take (every instance busy) waits.
const BUSY_WAIT: Duration = Duration::from_millis(50);

impl App {
    /// Delivers every consumed queue's messages until the app is dropped.
    pub fn spawn_deliveries(self: &Arc<Self>) {
        let app = Arc::downgrade(self);
        let queues = self.queues.clone();
        tokio::spawn(async move {
            loop {
                let Some(app) = app.upgrade() else { return };
                let next_due = app.deliver_due();
                drop(app);
                let wait = next_due.map_or(IDLE_LOOK, |due| Duration::from_millis(due.saturating_sub(now_ms())));
                tokio::select! {
                    _ = queues.woken() => {}
                    _ = tokio::time::sleep(wait.min(IDLE_LOOK)) => {}
                }
            }
        });
    }

    /// Starts the deliveries that are due and may run now; when the next waiting one falls due.
    fn deliver_due(self: &Arc<Self>) -> Option<u64> {
        let mut next_due: Option<u64> = None;
        let mut served = HashSet::new();
        for (function, consumer) in self.registry.consumers() {
            if !served.insert(consumer.queue.clone()) {
                continue;
            }
            let queue = &consumer.queue;
            if self.is_global(&function, queue) {
                self.poll_global(function, consumer);
                continue;
            }
            let most = (consumer.concurrency as usize).saturating_sub(self.queues.in_flight(queue));
            if most == 0 {
                continue;
            }
            let (deliveries, due) = self.queues.claim(queue, most);
            next_due = match (next_due, due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            for delivery in deliveries {
                let (app, function, consumer) = (self.clone(), function.clone(), consumer.clone());
                tokio::spawn(async move { app.deliver(&function, &consumer, delivery, false).await });
            }
        }
        next_due
    }

    /// Whether `function` consumes `queue` from etcd (`[queues] global`, in cluster mode).
    fn is_global(&self, function: &str, queue: &str) -> bool {
        self.global_queues.is_some()
            && self.registry.lookup(function).is_some_and(|d| d.policy.queues_global.iter().any(|q| q == queue))
    }

    /// Claims due messages of a global queue from etcd and delivers them, unless a look at that
    /// queue is still going or not yet due: after a look that found nothing to deliver, the next
    /// waits until the earliest waiting message falls due, and at most [`IDLE_LOOK`] (messages
    /// other nodes send); after one that did, [`GLOBAL_POLL_GAP`].
    fn poll_global(self: &Arc<Self>, function: String, consumer: Consumer) {
        let Some(global) = self.global_queues.clone() else { return };
        {
            let mut looks = self.global_polls.lock().expect("poll lock poisoned");
            let next = looks.entry(consumer.queue.clone()).or_insert(0);
            if *next > now_ms() {
                return;
            }
            // Going now: no other look until this one ends.
            *next = u64::MAX;
        }
        let app = self.clone();
        tokio::spawn(async move {
            let queue = consumer.queue.clone();
            let most = (consumer.concurrency as usize).saturating_sub(app.global_running(&queue));
            let mut next = now_ms() + IDLE_LOOK.as_millis() as u64;
            if most > 0 {
                match global.claim(&queue, most).await {
                    Ok((deliveries, due)) => {
                        if !deliveries.is_empty() {
                            next = now_ms() + GLOBAL_POLL_GAP.as_millis() as u64;
                        } else if let Some(due) = due {
                            next = next.min(due);
                        }
                        for delivery in deliveries {
                            let (app, function, consumer) = (app.clone(), function.clone(), consumer.clone());
                            app.global_started(&queue, 1);
                            tokio::spawn(async move {
                                app.deliver(&function, &consumer, delivery, true).await;
                                app.global_started(&consumer.queue, -1);
                            });
                        }
                    }
                    Err(error) => tracing::warn!(queue, %error, "looking for global queue messages failed"),
                }
            }
            let next = next.max(now_ms() + GLOBAL_POLL_GAP.as_millis() as u64);
            app.global_polls.lock().expect("poll lock poisoned").insert(queue, next);
        });
    }

    fn global_running(&self, queue: &str) -> usize {
        self.global_in_flight.lock().expect("poll lock poisoned").get(queue).copied().unwrap_or(0)
    }

    fn global_started(&self, queue: &str, change: isize) {
        let mut running = self.global_in_flight.lock().expect("poll lock poisoned");
        let count = running.entry(queue.to_string()).or_default();
        *count = count.saturating_add_signed(change);
        drop(running);
        if change < 0 {
            // A delivery slot is free: the queue may be looked at again at once.
            self.global_polls.lock().expect("poll lock poisoned").entry(queue.to_string()).and_modify(|next| {
                if *next != u64::MAX {
                    *next = 0;
                }
            });
            self.queues.wake();
        }
    }

    /// Runs one delivery and settles the message by its outcome.
    async fn deliver(&self, function: &str, consumer: &Consumer, delivery: Delivery, global: bool) {
        let outcome = match self.run_delivery(function, consumer, &delivery).await {
            None => Outcome::NotDelivered { retry_at_ms: now_ms() + BUSY_WAIT.as_millis() as u64 },
            Some(status) if (200..300).contains(&status) => Outcome::Acknowledged,
            Some(_) if delivery.entry.failed + 1 >= consumer.max_attempts => {
                Outcome::DeadLetter { to: consumer.dead_letter.clone() }
            }
            Some(_) => {
                let wait = consumer.backoff_after(delivery.entry.failed + 1);
                Outcome::Retry { not_before_ms: now_ms() + wait.as_millis() as u64 }
            }
        };
        let settled = match (&self.global_queues, global) {
            (Some(queues), true) => {
                let target = consumer.dead_letter.as_deref().map_or_else(Bounds::default, |q| self.queues.bounds_of(q));
                queues.settle(&delivery, outcome, target).await
            }
            _ => self.queues.settle(&delivery, outcome).await,
        };
        if let Err(error) = settled {
            tracing::warn!(queue = %delivery.queue, function, %error, "settling a delivery failed; the message is delivered again");
        }
    }

    /// The consumer's status for the message; `None` when it could not take it.
    async fn run_delivery(&self, function: &str, consumer: &Consumer, delivery: &Delivery) -> Option<u16> {
        let deployment = self.registry.lookup(function)?;
        // Before the permit: a removal waits for the function's permits, under the change lock
        // a load may need.
        deployment.load_code().await;
        let permit = deployment.concurrency.try_acquire()?;
        let started = Instant::now();
        let attempt = delivery.entry.failed + 1;
        let chosen = deployment.choose(&delivery.entry.id)?;
        let path = consumer.path.as_str();
        // A delivery starts a trace of its own.
        let span = TraceCx::start(None, names::REQUEST, SpanKind::Consumer, function, || {
            vec![
                KeyValue::new("ledge.trigger", "queue"),
                KeyValue::new("ledge.queue", delivery.queue.clone()),
                KeyValue::new("messaging.message.id", delivery.entry.id.clone()),
                KeyValue::new("ledge.attempt", i64::from(attempt)),
                KeyValue::new("ledge.version", chosen.version as i64),
                KeyValue::new("url.path", path.to_string()),
            ]
        });
        let sent_at = chrono::DateTime::from_timestamp_millis(delivery.entry.sent_at_ms as i64).unwrap_or_default();
        let mut request = http::Request::post(path)
            .header(http::header::HOST, "localhost")
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .header("ledge-queue", delivery.queue.as_str())
            .header("ledge-message-id", delivery.entry.id.as_str())
            .header("ledge-attempt", attempt.to_string())
            .header("ledge-sent-at", sent_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .body(Full::new(Bytes::from(delivery.body.clone())))
            .expect("a checked path and plain header values make a valid request");
        span.inject(request.headers_mut());
        request.extensions_mut().insert(MadeByLedge);
        if !span.is_off() {
            request.extensions_mut().insert(span.clone());
        }
        let caller = Caller::default();
        let recording = self.recording(&request, &deployment, &chosen, &caller, None, path);
        let invocation = Invocation {
            function,
            pre: chosen.pre,
            policy: &deployment.policy,
            cold: chosen.cold,
            caller,
            permit,
            tls: false,
            config: deployment.config.clone(),
            tape: recording.as_ref().map(|recording| recording.tape.clone()),
        };
        let status = match self.runtime.invoke(invocation, request, path).await {
            Ok(response) => {
                let status = response.status().as_u16();
                // The body is read so that the guest finishes (and the recording has it); a
                // body that does not end within the timeout fails the attempt.
                let body = tokio::time::timeout(deployment.policy.timeout, response.into_body().collect()).await;
                if matches!(body, Ok(Ok(_))) { status } else { 504 }
            }
            // A node out of instance slots (another function's load) is no fault of the
            // consumer's: the message waits, no attempt counted.
            Err(crate::runtime::InvokeError::PoolExhausted) => {
                span.end();
                return None;
            }
            Err(error) => {
                span.fail(&error);
                error.status()
            }
        };
        let kept = recording.as_ref().filter(|r| span.is_recording() && r.tape.keeps());
        if let Some(id) = kept.and_then(|recording| recording.tape.trace_id()) {
            span.set("ledge.trace", id);
        }
        span.set("http.response.status_code", i64::from(status));
        span.end();
        let elapsed = started.elapsed();
        self.metrics.observe_request(function, status, elapsed);
        self.metrics.observe_version(function, chosen.version, status);
        let line = RequestLine {
            method: "POST",
            path,
            status,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            version: chosen.version,
            request_id: "queue",
        };
        self.runtime.logs().request(function, line);
        Some(status)
    }
}
