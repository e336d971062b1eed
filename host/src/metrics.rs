//! Prometheus metrics (`GET /metrics`, OpenMetrics text format).
//!
//! Invariant: label values are bounded: function names come from the registry (validated
//! names of deployed functions), status codes and reasons from fixed sets, so a caller cannot
//! mint new series.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub function: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub function: String,
    pub version: u64,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstantiationLabels {
    pub function: String,
    /// `cold` for a version's first instance since deploy or start, else `warm`.
    pub start: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ArtifactLabels {
    /// `precompiled` (code reused as it was) or `recompiled` (stale, tampered or missing).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebSocketLabels {
    pub function: String,
    /// `in` (from clients) or `out` (to clients).
    pub direction: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub version_requests: Family<VersionLabels, Counter>,
    pub request_seconds: Family<FunctionLabels, Histogram>,
    pub instantiation_seconds: Family<InstantiationLabels, Histogram>,
    pub live_instances: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub artifact_loads: Family<ArtifactLabels, Counter<u64, AtomicU64>>,
    /// Traces stored for replay.
    pub traces_stored: Counter,
    /// Finished traces not kept: the writer was behind, or one was too large to store.
    pub traces_dropped: Counter,
    /// Spans and log records not exported: the queue was full, a new trace was over
    /// `--otlp-max-traces-per-second`, or the collector refused or could not be reached.
    pub otel_dropped: Counter,
    /// WebSocket connections open now, by function.
    pub websocket_connections: Family<FunctionLabels, Gauge<i64, std::sync::atomic::AtomicI64>>,
    /// WebSocket messages, by function and direction.
    pub websocket_messages: Family<WebSocketLabels, Counter>,
    /// Per function, the series its every request touches (see [`FunctionSeries`]).
    series: parking_lot::RwLock<HashMap<Box<str>, FunctionSeries>>,
}

/// The series of a function that every run touches, each created on its first use (so
/// `/metrics` shows what happened, as the families alone would) and then reached through one
/// map probe by `&str`. A family's lookup hashes a label set holding an owned `String` under
/// the family's lock: four of them a request cost about 1 µs of a hello's ~70. Series are
/// never removed from the families, so a cached handle never outlives its series; there is
/// one entry per function a request reached (a deployed one), as in the families.
#[derive(Default)]
struct FunctionSeries {
    ok_requests: OnceLock<Counter>,
    /// The 200 counter of the version that answered last (a canary's two versions take turns
    /// here; any other version or status is found in its family).
    ok_version: parking_lot::Mutex<Option<(u64, Counter)>>,
    request_seconds: OnceLock<Histogram>,
    warm_instantiation_seconds: OnceLock<Histogram>,
    cold_instantiation_seconds: OnceLock<Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ledge");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Function invocations by function and status", requests.clone());
        let version_requests = Family::<VersionLabels, Counter>::default();
        registry.register(
            "version_requests",
            "Invocations that ran a guest, by function, version and status (compare a canary with the live version)",
            version_requests.clone(),
        );
        let request_seconds = Family::<FunctionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        registry.register(
            "request_duration_seconds",
            "Time to the response head, by function",
            request_seconds.clone(),
        );
        let instantiation_seconds = Family::<InstantiationLabels, Histogram>::new_with_constructor(|| {
            // Fine buckets in the microseconds: pooled, copy-on-write instantiation lives there.
            Histogram::new([
                5e-6, 10e-6, 20e-6, 30e-6, 40e-6, 50e-6, 75e-6, 100e-6, 150e-6, 200e-6, 300e-6, 500e-6, 1e-3, 2.5e-3,
                5e-3, 10e-3, 50e-3, 0.25, 1.0,
            ])
        });
        registry.register(
            "instantiation_duration_seconds",
            "Time to instantiate a function for one request; start=cold for a version's first instance",
            instantiation_seconds.clone(),
        );
        let live_instances = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register("live_instances", "Function instances alive now", live_instances.clone());
        let artifact_loads = Family::<ArtifactLabels, Counter>::default();
        registry.register(
            "artifact_loads",
            "Functions loaded at start: precompiled code reused, or recompiled",
            artifact_loads.clone(),
        );
        let traces_stored = Counter::default();
        registry.register("traces_stored", "Recorded runs stored for replay", traces_stored.clone());
        let traces_dropped = Counter::default();
        registry.register(
            "traces_dropped",
            "Recorded runs not kept: the trace writer was behind (its queue was full), or one was too large to store",
            traces_dropped.clone(),
        );
        let otel_dropped = Counter::default();
        registry.register(
            "otel_dropped",
            "Spans and log records not exported over OTLP: the queue was full, over the cap of new traces per second, or the collector was down or refused them",
            otel_dropped.clone(),
        );
        let websocket_connections = Family::<FunctionLabels, Gauge<i64, std::sync::atomic::AtomicI64>>::default();
        registry.register(
            "websocket_connections",
            "WebSocket connections open now, by function",
            websocket_connections.clone(),
        );
        let websocket_messages = Family::<WebSocketLabels, Counter>::default();
        registry.register(
            "websocket_messages",
            "WebSocket messages, by function and direction (in: from clients, out: to clients)",
            websocket_messages.clone(),
        );
        Metrics {
            registry,
            requests,
            version_requests,
            request_seconds,
            instantiation_seconds,
            live_instances,
            artifact_loads,
            traces_stored,
            traces_dropped,
            otel_dropped,
            websocket_connections,
            websocket_messages,
            series: Default::default(),
        }
    }

    /// `use_series` on `function`'s cached series.
    fn with_series<R>(&self, function: &str, use_series: impl FnOnce(&FunctionSeries) -> R) -> R {
        if let Some(series) = self.series.read().get(function) {
            return use_series(series);
        }
        let mut all = self.series.write();
        use_series(all.entry(function.into()).or_default())
    }

    pub fn observe_instantiation(&self, function: &str, cold: bool, elapsed: Duration) {
        self.with_series(function, |series| {
            let (cell, start) = match cold {
                true => (&series.cold_instantiation_seconds, "cold"),
                false => (&series.warm_instantiation_seconds, "warm"),
            };
            cell.get_or_init(|| {
                self.instantiation_seconds
                    .get_or_create_owned(&InstantiationLabels { function: function.to_string(), start })
            })
            .observe(elapsed.as_secs_f64());
        });
    }

    pub fn observe_version(&self, function: &str, version: u64, status: u16) {
        let labels = || VersionLabels { function: function.to_string(), version, status };
        if status != 200 {
            self.version_requests.get_or_create(&labels()).inc();
            return;
        }
        self.with_series(function, |series| {
            let mut cached = series.ok_version.lock();
            match cached.as_ref() {
                Some((cached_version, counter)) if *cached_version == version => counter.inc(),
                _ => cached.insert((version, self.version_requests.get_or_create_owned(&labels()))).1.inc(),
            };
        });
    }

    pub fn observe_request(&self, function: &str, status: u16, elapsed: Duration) {
        let labels = || RequestLabels { function: function.to_string(), status };
        self.with_series(function, |series| {
            match status {
                200 => series.ok_requests.get_or_init(|| self.requests.get_or_create_owned(&labels())).inc(),
                _ => self.requests.get_or_create(&labels()).inc(),
            };
            series
                .request_seconds
                .get_or_init(|| {
                    self.request_seconds.get_or_create_owned(&FunctionLabels { function: function.to_string() })
                })
                .observe(elapsed.as_secs_f64());
        });
    }

    /// Adds the engine's counters and gauges, read from [`ledge_kv::Db::stats`] at each scrape.
    pub fn with_kv(mut self, db: ledge_kv::Db) -> Self {
        self.registry.register_collector(Box::new(KvCollector(db)));
        self
    }

    /// The registry in OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Exports [`ledge_kv::Stats`]: a collector, because the engine keeps its own counters.
struct KvCollector(ledge_kv::Db);

impl std::fmt::Debug for KvCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvCollector")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyspaceLabels {
    keyspace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

impl Collector for KvCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        let counters: [(&str, &str, u64); 3] = [
            ("kv_transactions_committed", "Transactions committed", stats.committed),
            ("kv_wal_fsyncs", "WAL fsyncs (one per commit group)", stats.wal_fsyncs),
            ("kv_checkpoints", "Checkpoints written", stats.checkpoints),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
        }
        let fsync_seconds = ConstCounter::new(stats.wal_fsync_nanos as f64 / 1e9);
        fsync_seconds.encode(encoder.encode_descriptor(
            "kv_wal_fsync_seconds",
            "Time spent in WAL fsyncs; divide by kv_wal_fsyncs for the mean latency",
            None,
            fsync_seconds.metric_type(),
        )?)?;
        let aborts = [
            ("write_conflict", stats.aborted_write_conflict),
            ("ssn", stats.aborted_ssn),
            ("phantom", stats.aborted_phantom),
            ("caller", stats.aborted_by_caller),
        ];
        let mut family = encoder.encode_descriptor(
            "kv_transactions_aborted",
            "Transactions aborted, by reason (caller: a transaction with writes rolled back or dropped without commit)",
            None,
            MetricType::Counter,
        )?;
        for (reason, value) in aborts {
            ConstCounter::new(value).encode(family.encode_family(&ReasonLabels { reason })?)?;
        }
        let mut keyspaces = encoder.encode_descriptor(
            "kv_keyspace_bytes",
            "Live key-value data (keys plus values) per keyspace: f/NAME/ is a function's own, s/STORE/ a shared store",
            None,
            MetricType::Gauge,
        )?;
        for (keyspace, bytes) in self.0.keyspace_bytes() {
            let labels = KeyspaceLabels { keyspace: String::from_utf8_lossy(&keyspace).into_owned() };
            ConstGauge::new(bytes as i64).encode(keyspaces.encode_family(&labels)?)?;
        }
        let gauges: [(&str, &str, u64); 4] = [
            ("kv_live_bytes", "Live key-value data in all keyspaces, held to --kv-max-bytes", self.0.live_bytes()),
            ("kv_active_transactions", "Transactions (and checkpoints) holding a snapshot now", stats.active_snapshots),
            ("kv_live_versions", "Versions in memory", stats.live_versions),
            ("kv_keys", "Keys in the index", stats.keys),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    /// The series line `name{labels}` of `text`, as a number (0 when absent).
    fn value(text: &str, series: &str) -> f64 {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
    }

    #[test]
    fn each_versions_requests_are_counted_in_its_own_series_whichever_answered_last() {
        let metrics = Metrics::new();
        // A canary's two versions taking turns, other statuses, and a second function.
        for (function, version, status) in
            [("app", 1, 200), ("app", 1, 200), ("app", 2, 200), ("app", 1, 200), ("app", 2, 500), ("app", 2, 200)]
                .into_iter()
                .chain([("other", 1, 200), ("app", 1, 404)])
        {
            metrics.observe_version(function, version, status);
        }
        let text = metrics.render();
        let series = |function: &str, version: u64, status: u16| {
            value(
                &text,
                &format!(
                    "ledge_version_requests_total{{function=\"{function}\",version=\"{version}\",status=\"{status}\"}}"
                ),
            )
        };
        assert_eq!(series("app", 1, 200), 3.0, "{text}");
        assert_eq!(series("app", 2, 200), 2.0, "{text}");
        assert_eq!(series("app", 2, 500), 1.0, "{text}");
        assert_eq!(series("app", 1, 404), 1.0, "{text}");
        assert_eq!(series("other", 1, 200), 1.0, "{text}");
    }
}
