//! Policy files: limits and permissions per function (`policies/NAME.toml`, or uploaded with
//! `PUT /v1/functions/{name}/policy`), each field falling back to `policies/default.toml` and
//! then to the built-in defaults.
//!
//! Invariants: parsing is strict (unknown fields and bad values are errors that name the field
//! and line), and a [`Policy`] is always complete, so the hot path never looks at fallbacks.
//!
//! This file holds the resolved [`Policy`] and the types it is made of; the rest, all
//! re-exported here:
//! - `file.rs`: [`PolicyFile`], the policy as written, its sections, and resolving it over a base;
//! - `values.rs`: the checked values its fields are written with (sizes, durations, names,
//!   route hosts and paths, cron patterns);
//! - `defaults.rs`: the built-in defaults every field falls back to last;
//! - `ceilings.rs`: [`Ceilings`], the server-wide limits no policy may exceed, and
//!   [`UploadCeilings`], what a policy uploaded over the API may set at most;
//! - `tighten.rs`: [`Policy::widened_by`], the check that a proposed policy only tightens;
//! - `websocket.rs`: `[[websocket]]`, where a function accepts WebSocket upgrades, and its bounds.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

mod ceilings;
mod defaults;
mod file;
mod tighten;
mod values;
mod websocket;

pub use ceilings::{
    Ceilings, CeilingsSection, MAX_CONSUMERS, MAX_QUEUES_LISTED, MAX_REPLICAS, MAX_SCHEDULES, UploadCeilings,
};
pub use file::{
    ConsumerEntry, KvSection, LimitsSection, OutboundSection, PlacementSection, PolicyFile, QueuesSection, RateSection,
    RecordSection, RouteEntry, ScheduleEntry, VersionsSection,
};
pub use values::{
    ByteSize, Count, CronPattern, Fraction, HostPattern, HumanDuration, Positive, QueueName, RESERVED_PREFIXES,
    RoutePrefix, SchedulePath, StoreName, is_valid_name, parse_size, path_under,
};
pub use websocket::{MAX_ORIGINS, MAX_WEBSOCKETS, WebSocketEntry};

/// A resolved route: host pattern (`None`: any) and path prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    pub host: Option<String>,
    pub path: String,
}

/// Where a function's own keyspace lives (cluster mode): on each node, or in etcd.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvScope {
    #[default]
    Local,
    Global,
}

/// A complete, resolved policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub public: bool,
    pub rate: RateQuota,
    pub timeout: Duration,
    pub memory: u64,
    pub max_body: u64,
    pub max_concurrency: u32,
    pub outbound_allow: Vec<String>,
    pub kv_stores: Vec<String>,
    /// Storage quota of the function's keyspace, and of each shared store it writes to.
    pub kv_max_bytes: u64,
    /// Cluster mode: the function's own keyspace lives in etcd, shared by every node.
    pub kv_scope: KvScope,
    /// Cluster mode: shared stores granted that live in etcd.
    pub kv_global_stores: Vec<String>,
    /// Cluster mode: nodes hosting the function (0 = every node).
    pub replicas: u32,
    /// Deployed versions kept for rollback.
    pub versions_keep: u32,
    /// The most component bytes the kept versions may hold together (the oldest past it are
    /// pruned, never the live version or a canary).
    pub versions_max_bytes: u64,
    /// `(cron, path)`: synthetic requests on a schedule.
    pub schedules: Vec<(String, String)>,
    /// Hosts and paths served without the `/fn/NAME/` prefix.
    pub routes: Vec<Route>,
    /// Which runs are recorded for replay.
    pub record: RecordPolicy,
    /// Queues the function may send to (`[queues] send`).
    pub queues_send: Vec<String>,
    /// Cluster mode: queues that live in etcd (`[queues] global`).
    pub queues_global: Vec<String>,
    /// Queues whose messages the function takes (`[[consumer]]`).
    pub consumers: Vec<Consumer>,
    /// Paths that accept WebSocket upgrades (`[[websocket]]`).
    pub websockets: Vec<WebSocket>,
}

/// `[[consumer]]`, resolved: how the messages of `queue` are delivered to the function, and the
/// queue's bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Consumer {
    pub queue: String,
    /// Each message is a `POST` of its body to this path.
    pub path: String,
    /// Attempts before a message is dead-lettered.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each one after, at most [`MAX_BACKOFF`].
    pub backoff: Duration,
    /// Where dead-lettered messages go; `None` keeps them on the queue's dead side.
    pub dead_letter: Option<String>,
    /// Deliveries of this queue running at once.
    pub concurrency: u32,
    /// Messages the queue keeps at most (its dead side included).
    pub max_depth: u32,
    /// Message bytes the queue keeps at most (its dead side included).
    pub max_bytes: u64,
}

/// The longest wait between two attempts, however many have failed.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

impl Consumer {
    /// A consumer of `queue` at `path` with every other field at its default.
    pub fn defaults(queue: &str, path: &str) -> Consumer {
        Consumer {
            queue: queue.to_string(),
            path: path.to_string(),
            max_attempts: 5,
            backoff: Duration::from_secs(1),
            dead_letter: None,
            concurrency: 4,
            max_depth: 10_000,
            max_bytes: 64 << 20,
        }
    }

    /// The wait after the `failed`-th failed attempt (1 for the first): `backoff` doubled for
    /// each failure after the first, at most [`MAX_BACKOFF`].
    pub fn backoff_after(&self, failed: u32) -> Duration {
        let doublings = failed.saturating_sub(1).min(20);
        self.backoff.saturating_mul(1 << doublings).min(MAX_BACKOFF)
    }
}

/// `[[websocket]]`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct WebSocket {
    /// The path prefix (under the function) that accepts upgrades.
    pub path: String,
    /// Connections open at once through this entry, on this node.
    pub max_connections: u32,
    /// The largest message a client may send; past it the connection closes with 1009.
    pub max_message: u64,
    /// Bytes waiting to be written to one slow reader; past it the connection closes with 1008.
    pub max_buffer: u64,
    /// A connection with no message either way for this long closes with 1001.
    pub idle_timeout: Duration,
    /// Messages one connection may send (GCRA, as requests); past it, close 1008.
    pub rate: RateQuota,
    /// `Origin`s allowed to open a connection (exact, `scheme://host[:port]`); empty: any.
    pub origins: Vec<String>,
}

/// `[record]`, resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordPolicy {
    /// Keep every run that fails (5xx, trap, timeout).
    pub errors: bool,
    /// Keep this share of all runs.
    pub sample: f64,
    pub max_traces: u32,
    pub max_trace_bytes: u64,
    /// Recent successful runs kept per function as the verification corpus (0: none); not
    /// counted in `max_traces`, within `max_trace_bytes`.
    pub keep_sample: u32,
}

/// GCRA quota: `quota` requests per `window`, bursting up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateQuota {
    pub quota: u32,
    pub window: Duration,
    pub burst: u32,
}

impl fmt::Display for RateQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} per {:?} (burst {})", self.quota, self.window, self.burst)
    }
}
