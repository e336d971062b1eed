//! Server-wide ceilings ([`Ceilings`], from `ledge serve` flags) and the fixed limits on what
//! one policy may name ([`MAX_SCHEDULES`], [`MAX_REPLICAS`]); the node's ceilings on uploaded
//! policies ([`UploadCeilings`], the `[ceilings]` table of the operator's `default.toml`); and
//! the checks against them.
//!
//! Invariants: a value someone wrote past a ceiling is refused, never quietly lowered; only the
//! built-in values are brought under the ceilings ([`Policy::within`]). Every numeric field a
//! policy has is bounded for uploads (rate only when the operator sets one); a new numeric
//! field gets a ceiling here.

use std::time::Duration;

use serde::Deserialize;

use super::{ByteSize, Count, Fraction, HumanDuration, MAX_ORIGINS, MAX_WEBSOCKETS, Policy, Positive, RateQuota};
use crate::access::caveats::parse_rate;

/// Schedules one function may have.
pub const MAX_SCHEDULES: usize = 16;

/// Consumers one function may have, and queues one `[queues]` list may name.
pub const MAX_CONSUMERS: usize = 16;
pub const MAX_QUEUES_LISTED: usize = 64;

/// Most nodes a `[placement] replicas` may name (more is a typo, not a cluster).
pub const MAX_REPLICAS: u32 = 1000;

/// Server-wide ceilings no policy may exceed, whoever writes it (`ledge serve --max-timeout`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ceilings {
    /// The longest wall-clock time any request may run.
    pub max_timeout: Duration,
}

impl Default for Ceilings {
    fn default() -> Self {
        Ceilings { max_timeout: Duration::from_secs(300) }
    }
}

impl Policy {
    /// This policy with its built-in values brought under `ceilings` (the built-in 10 s timeout
    /// on a server started with `--max-timeout 2s` becomes 2 s): only values someone wrote are
    /// refused for exceeding a ceiling.
    pub fn within(mut self, ceilings: &Ceilings) -> Policy {
        self.timeout = self.timeout.min(ceilings.max_timeout);
        self
    }

    /// Refuses a policy past the server's ceilings; the message names the field and the flag.
    pub fn check_ceilings(&self, ceilings: &Ceilings) -> Result<(), String> {
        if self.schedules.len() > MAX_SCHEDULES {
            return Err(format!("schedule: at most {MAX_SCHEDULES} entries per function"));
        }
        if self.consumers.len() > MAX_CONSUMERS {
            return Err(format!("consumer: at most {MAX_CONSUMERS} entries per function"));
        }
        if self.queues_send.len().max(self.queues_global.len()) > MAX_QUEUES_LISTED {
            return Err(format!("queues: at most {MAX_QUEUES_LISTED} queues in `send` and in `global`"));
        }
        if self.websockets.len() > MAX_WEBSOCKETS {
            return Err(format!("websocket: at most {MAX_WEBSOCKETS} entries per function"));
        }
        for (index, entry) in self.websockets.iter().enumerate() {
            if self.websockets[..index].iter().any(|earlier| earlier.path == entry.path) {
                return Err(format!("websocket: path `{}` has two entries; give it one", entry.path));
            }
            if entry.origins.len() > MAX_ORIGINS {
                return Err(format!("websocket.origins: at most {MAX_ORIGINS} per entry"));
            }
        }
        for (index, consumer) in self.consumers.iter().enumerate() {
            if self.consumers[..index].iter().any(|earlier| earlier.queue == consumer.queue) {
                return Err(format!("consumer: queue `{}` is consumed twice; give it one entry", consumer.queue));
            }
            let global = |queue: &str| self.queues_global.iter().any(|q| q == queue);
            if let Some(target) =
                consumer.dead_letter.as_deref().filter(|target| global(target) != global(&consumer.queue))
            {
                return Err(format!(
                    "consumer.dead_letter: `{target}` and `{}` must both be global ([queues] global) or both not: a message moves within one store",
                    consumer.queue
                ));
            }
            if consumer.dead_letter.as_deref() == Some(consumer.queue.as_str()) {
                return Err(format!(
                    "consumer.dead_letter: `{}` is the queue itself; name another queue, or leave it out to keep failed messages on the queue's dead side",
                    consumer.queue
                ));
            }
        }
        if self.replicas > MAX_REPLICAS {
            return Err(format!("placement.replicas: at most {MAX_REPLICAS} (0 = every node)"));
        }
        if self.timeout > ceilings.max_timeout {
            return Err(format!(
                "limits.timeout of {:?} is above this server's ceiling of {:?} (ledge serve --max-timeout)",
                self.timeout, ceilings.max_timeout
            ));
        }
        Ok(())
    }
}

/// `[ceilings]` as the operator writes it in `policies/default.toml`: what a policy uploaded
/// over the API may set at most (the operator's own files are not bound by it). Every key is
/// optional and falls back to [`UploadCeilings::default`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeilingsSection {
    /// `"N/s"`, `"N/m"` or `"N/h"`: the fastest sustained `[rate]` (none unless set).
    pub rate: Option<String>,
    pub rate_burst: Option<Positive>,
    pub memory: Option<ByteSize>,
    pub max_body: Option<ByteSize>,
    pub max_concurrency: Option<Positive>,
    pub kv_max_bytes: Option<ByteSize>,
    pub record_sample: Option<Fraction>,
    pub record_max_traces: Option<Positive>,
    pub record_max_trace_bytes: Option<ByteSize>,
    pub record_keep_sample: Option<Count>,
    pub versions_keep: Option<Positive>,
    pub versions_max_bytes: Option<ByteSize>,
    pub placement_replicas: Option<u32>,
    pub schedules: Option<u32>,
    pub routes: Option<u32>,
    pub queue_max_depth: Option<Positive>,
    pub queue_max_bytes: Option<ByteSize>,
    pub consumer_concurrency: Option<Positive>,
    pub consumer_max_attempts: Option<Positive>,
    pub websocket_max_connections: Option<Positive>,
    pub websocket_max_message: Option<ByteSize>,
    pub websocket_max_buffer: Option<ByteSize>,
    pub websocket_idle_timeout: Option<HumanDuration>,
    /// `"N/s"`, `"N/m"` or `"N/h"`: the fastest `[[websocket]] rate` (none unless set).
    pub websocket_rate: Option<String>,
}

/// What a policy uploaded over the API (`PUT .../policy`, a multipart deploy) may set at most,
/// resolved. The defaults never refuse what the built-in policy or the examples use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UploadCeilings {
    pub rate: Option<RateQuota>,
    pub rate_burst: Option<u32>,
    pub memory: u64,
    pub max_body: u64,
    pub max_concurrency: u32,
    pub kv_max_bytes: u64,
    pub record_sample: f64,
    pub record_max_traces: u32,
    pub record_max_trace_bytes: u64,
    pub record_keep_sample: u32,
    pub versions_keep: u32,
    pub versions_max_bytes: u64,
    pub placement_replicas: u32,
    pub schedules: u32,
    pub routes: u32,
    pub queue_max_depth: u32,
    pub queue_max_bytes: u64,
    pub consumer_concurrency: u32,
    pub consumer_max_attempts: u32,
    pub websocket_max_connections: u32,
    pub websocket_max_message: u64,
    pub websocket_max_buffer: u64,
    pub websocket_idle_timeout: Duration,
    pub websocket_rate: Option<RateQuota>,
}

impl Default for UploadCeilings {
    fn default() -> Self {
        UploadCeilings {
            rate: None,
            rate_burst: None,
            memory: 4 << 30,
            max_body: 256 << 20,
            max_concurrency: 1024,
            kv_max_bytes: 4 << 30,
            record_sample: 1.0,
            record_max_traces: 10_000,
            record_max_trace_bytes: 1 << 30,
            record_keep_sample: 200,
            versions_keep: 100,
            versions_max_bytes: 1 << 30,
            placement_replicas: MAX_REPLICAS,
            schedules: MAX_SCHEDULES as u32,
            routes: 32,
            queue_max_depth: 100_000,
            queue_max_bytes: 1 << 30,
            consumer_concurrency: 64,
            consumer_max_attempts: 100,
            websocket_max_connections: 10_000,
            websocket_max_message: 16 << 20,
            websocket_max_buffer: 16 << 20,
            websocket_idle_timeout: Duration::from_secs(3600),
            websocket_rate: None,
        }
    }
}

impl CeilingsSection {
    /// The ceilings this table sets over the defaults; a malformed `rate` is an error.
    pub fn resolve(&self) -> Result<UploadCeilings, String> {
        let base = UploadCeilings::default();
        let rate = match &self.rate {
            Some(text) => Some(parse_rate(text).map_err(|error| format!("ceilings.rate: {error}"))?),
            None => None,
        };
        let websocket_rate = match &self.websocket_rate {
            Some(text) => Some(parse_rate(text).map_err(|error| format!("ceilings.websocket_rate: {error}"))?),
            None => None,
        };
        Ok(UploadCeilings {
            rate,
            rate_burst: self.rate_burst.map(|b| b.0),
            memory: self.memory.map_or(base.memory, |b| b.0),
            max_body: self.max_body.map_or(base.max_body, |b| b.0),
            max_concurrency: self.max_concurrency.map_or(base.max_concurrency, |n| n.0),
            kv_max_bytes: self.kv_max_bytes.map_or(base.kv_max_bytes, |b| b.0),
            record_sample: self.record_sample.map_or(base.record_sample, |f| f.0),
            record_max_traces: self.record_max_traces.map_or(base.record_max_traces, |n| n.0),
            record_max_trace_bytes: self.record_max_trace_bytes.map_or(base.record_max_trace_bytes, |b| b.0),
            record_keep_sample: self.record_keep_sample.map_or(base.record_keep_sample, |n| n.0),
            versions_keep: self.versions_keep.map_or(base.versions_keep, |n| n.0),
            versions_max_bytes: self.versions_max_bytes.map_or(base.versions_max_bytes, |b| b.0),
            placement_replicas: self.placement_replicas.unwrap_or(base.placement_replicas),
            schedules: self.schedules.unwrap_or(base.schedules),
            routes: self.routes.unwrap_or(base.routes),
            queue_max_depth: self.queue_max_depth.map_or(base.queue_max_depth, |n| n.0),
            queue_max_bytes: self.queue_max_bytes.map_or(base.queue_max_bytes, |b| b.0),
            consumer_concurrency: self.consumer_concurrency.map_or(base.consumer_concurrency, |n| n.0),
            consumer_max_attempts: self.consumer_max_attempts.map_or(base.consumer_max_attempts, |n| n.0),
            websocket_max_connections: self.websocket_max_connections.map_or(base.websocket_max_connections, |n| n.0),
            websocket_max_message: self.websocket_max_message.map_or(base.websocket_max_message, |b| b.0),
            websocket_max_buffer: self.websocket_max_buffer.map_or(base.websocket_max_buffer, |b| b.0),
            websocket_idle_timeout: self.websocket_idle_timeout.map_or(base.websocket_idle_timeout, |d| d.0),
            websocket_rate,
        })
    }
}

impl Policy {
    /// Refuses an uploaded policy that sets a field past this node's [`UploadCeilings`]; the
    /// message names the field, the value, the ceiling and where the operator sets it.
    pub fn check_upload_ceilings(&self, ceilings: &UploadCeilings) -> Result<(), String> {
        let sustained = |q: &RateQuota| q.quota as f64 / q.window.as_secs_f64().max(f64::MIN_POSITIVE);
        let above_rate = ceilings.rate.filter(|ceiling| sustained(&self.rate) > sustained(ceiling));
        // Each WebSocket entry's bounds, the largest of each kind.
        let widest = |field: fn(&super::WebSocket) -> u64| self.websockets.iter().map(field).max().unwrap_or(0);
        let fastest = self.websockets.iter().map(|w| w.rate).max_by(|a, b| sustained(a).total_cmp(&sustained(b)));
        // A rate passes only within the ceiling's sustained rate and its burst ("3600/h" is
        // 1/s sustained, but bursts 3600).
        let burstiest = self.websockets.iter().map(|w| w.rate).max_by_key(|rate| rate.burst);
        let above_message_rate = ceilings
            .websocket_rate
            .zip(fastest.zip(burstiest))
            .filter(|(ceiling, (fast, bursty))| sustained(fast) > sustained(ceiling) || bursty.burst > ceiling.burst)
            .map(|(c, (fast, bursty))| {
                let worst = if sustained(&fast) > sustained(&c) { fast } else { bursty };
                (worst.to_string(), c.to_string())
            });
        // Connections are bounded per entry and node; the ceiling is on all of a function's
        // entries together.
        let connections: u64 = self.websockets.iter().map(|w| u64::from(w.max_connections)).sum();
        // Each consumer's bounds, the largest of each kind (the message names that one).
        let most = |field: fn(&super::Consumer) -> u64| self.consumers.iter().map(field).max().unwrap_or(0);
        let checks: [(&str, &str, Exceeded); 24] = [
            (
                "rate.quota",
                "rate",
                above_rate.map(|c| (self.rate.to_string(), format!("{} per {:?}", c.quota, c.window))),
            ),
            ("rate.burst", "rate_burst", above(self.rate.burst, ceilings.rate_burst)),
            ("limits.memory", "memory", above(self.memory, Some(ceilings.memory))),
            ("limits.max_body", "max_body", above(self.max_body, Some(ceilings.max_body))),
            ("limits.max_concurrency", "max_concurrency", above(self.max_concurrency, Some(ceilings.max_concurrency))),
            ("kv.max_bytes", "kv_max_bytes", above(self.kv_max_bytes, Some(ceilings.kv_max_bytes))),
            ("record.sample", "record_sample", above(self.record.sample, Some(ceilings.record_sample))),
            ("record.max_traces", "record_max_traces", above(self.record.max_traces, Some(ceilings.record_max_traces))),
            (
                "record.max_trace_bytes",
                "record_max_trace_bytes",
                above(self.record.max_trace_bytes, Some(ceilings.record_max_trace_bytes)),
            ),
            (
                "record.keep_sample",
                "record_keep_sample",
                above(self.record.keep_sample, Some(ceilings.record_keep_sample)),
            ),
            ("versions.keep", "versions_keep", above(self.versions_keep, Some(ceilings.versions_keep))),
            (
                "versions.max_bytes",
                "versions_max_bytes",
                above(self.versions_max_bytes, Some(ceilings.versions_max_bytes)),
            ),
            // 0 (every node) is what the default policy says unless the operator's default.toml
            // places functions: not refused, since a policy that leaves placement out inherits it
            // (a confined token still cannot raise replicas to it: the tighten check).
            ("placement.replicas", "placement_replicas", above(self.replicas, Some(ceilings.placement_replicas))),
            ("schedule", "schedules", above(self.schedules.len() as u32, Some(ceilings.schedules))),
            ("route", "routes", above(self.routes.len() as u32, Some(ceilings.routes))),
            (
                "consumer.max_depth",
                "queue_max_depth",
                above(most(|c| c.max_depth.into()), Some(ceilings.queue_max_depth.into())),
            ),
            ("consumer.max_bytes", "queue_max_bytes", above(most(|c| c.max_bytes), Some(ceilings.queue_max_bytes))),
            (
                "consumer.concurrency",
                "consumer_concurrency",
                above(most(|c| c.concurrency.into()), Some(ceilings.consumer_concurrency.into())),
            ),
            (
                "consumer.max_attempts",
                "consumer_max_attempts",
                above(most(|c| c.max_attempts.into()), Some(ceilings.consumer_max_attempts.into())),
            ),
            (
                "websocket.max_connections",
                "websocket_max_connections",
                above(connections, Some(ceilings.websocket_max_connections.into())),
            ),
            (
                "websocket.max_message",
                "websocket_max_message",
                above(widest(|w| w.max_message), Some(ceilings.websocket_max_message)),
            ),
            (
                "websocket.max_buffer",
                "websocket_max_buffer",
                above(widest(|w| w.max_buffer), Some(ceilings.websocket_max_buffer)),
            ),
            (
                "websocket.idle_timeout",
                "websocket_idle_timeout",
                above(widest(|w| w.idle_timeout.as_secs()), Some(ceilings.websocket_idle_timeout.as_secs()))
                    .map(|(value, ceiling)| (format!("{value}s"), format!("{ceiling}s"))),
            ),
            ("websocket.rate", "websocket_rate", above_message_rate),
        ];
        for (field, key, exceeded) in checks {
            if let Some((value, ceiling)) = exceeded {
                return Err(format!(
                    "{field} = {value} is above this node's ceiling of {ceiling} ([ceilings] {key} in the operator's policies/default.toml)"
                ));
            }
        }
        Ok(())
    }
}

/// `(value, ceiling)` as text, for a field above its ceiling.
type Exceeded = Option<(String, String)>;

/// `(value, ceiling)` as text when `value` is above `ceiling`.
fn above<T: PartialOrd + std::fmt::Display>(value: T, ceiling: Option<T>) -> Exceeded {
    ceiling.filter(|ceiling| value > *ceiling).map(|ceiling| (value.to_string(), ceiling.to_string()))
}
