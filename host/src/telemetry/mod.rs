//! OpenTelemetry export over OTLP: traces (a server span per request with children for
//! instantiation, transactions, outbound calls and the proxy hop), metrics (the Prometheus
//! registry, [`crate::metrics`], re-read at each export: one source of truth) and logs (guest
//! output and ledge's own lines, with the trace and span of the request they belong to).
//!
//! [`install`] turns it on for the process (`ledge serve --otlp-endpoint`, or the standard
//! `OTEL_*` variables); until then, and whenever it is off, every [`TraceCx`] is empty and each
//! call here returns at once, so a node without a collector pays one branch per span site.
//!
//! Layer: above [`crate::metrics`] (whose registry it exports and whose drop counter it
//! charges), below everything that makes spans. Files: [`queue`] (the bounded queues between
//! requests and the exporters), [`sampler`] (the per-second cap on new traces), [`metrics`]
//! (the registry as OTLP metrics), [`logs`] (the `tracing` layer feeding OTLP logs), [`access`]
//! (the access log's line, formatted by hand).
//!
//! Invariants:
//! - a request never waits on the collector: finished spans and log records go into bounded
//!   queues with `try_send`; what does not fit, what is over the cap of new traces per second
//!   (or past a run's span budget), and what a failed export loses is counted in
//!   `ledge_otel_dropped_total` (a failed metrics export is only logged: the next one carries
//!   the same cumulative values);
//! - a caller's `traceparent` can choose the trace a request joins, never how many traces are
//!   exported: every trace that starts here or comes from outside is charged to the cap;
//! - spans carry a caller's token id, never a token, and no header or body.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use thiserror::Error;

pub mod access;
pub mod context;
pub mod logs;
pub mod metrics;
pub mod queue;
pub mod sampler;

pub use context::{TraceCx, names};
pub use logs::LogBridge;

/// Where and how to export, from `ledge serve`'s flags and the standard variables.
#[derive(Debug, Clone)]
pub struct OtlpOptions {
    /// The collector's base URL (`/v1/traces`, ... are appended for HTTP).
    pub endpoint: String,
    pub protocol: Protocol,
    /// Most new traces exported per second; more are dropped and counted.
    pub max_traces_per_second: std::num::NonZeroU32,
    /// How often metrics are exported (`OTEL_METRIC_EXPORT_INTERVAL`, 60 s by default).
    pub metric_interval: Duration,
    /// `ledge.node` on every span: the cluster node name, else `node`.
    pub node: String,
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    HttpProtobuf,
    Grpc,
}

/// Why export could not be set up: every variant is the operator's to fix, at start.
#[derive(Debug, Error)]
pub enum TelemetryError {
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL={0:?} is not supported: use http/protobuf (the default) or grpc")]
    Protocol(String),
    #[error("OTEL_METRIC_EXPORT_INTERVAL={0:?} is not a number of milliseconds above zero")]
    MetricInterval(String),
    #[error("the OTLP endpoint is not an http:// or https:// URL")]
    Endpoint,
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

impl OtlpOptions {
    /// The options for `endpoint` (the flag, or `OTEL_EXPORTER_OTLP_ENDPOINT`) with the
    /// protocol and metric interval the environment asks for.
    pub fn from_env(
        endpoint: &str,
        max_traces_per_second: std::num::NonZeroU32,
        node: &str,
    ) -> Result<Self, TelemetryError> {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(TelemetryError::Endpoint);
        }
        let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
            Err(_) | Ok("http/protobuf") => Protocol::HttpProtobuf,
            Ok("grpc") => Protocol::Grpc,
            Ok(other) => return Err(TelemetryError::Protocol(other.to_string())),
        };
        let metric_interval = match std::env::var("OTEL_METRIC_EXPORT_INTERVAL") {
            Err(_) => Duration::from_secs(60),
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => return Err(TelemetryError::MetricInterval(text)),
            },
        };
        Ok(OtlpOptions {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            protocol,
            max_traces_per_second,
            metric_interval,
            node: node.to_string(),
        })
    }
}

/// The process's exporters, once [`install`]ed.
pub struct Telemetry {
    tracer: SdkTracer,
    tracer_provider: SdkTracerProvider,
    logger_provider: SdkLoggerProvider,
    log_bridge: logs::Bridge,
    /// `ledge_otel_dropped_total`.
    dropped: prometheus_client::metrics::counter::Counter,
    /// `ledge.node`, made once: each span takes a reference-counted copy.
    node: opentelemetry::Value,
    flushers: Vec<queue::Flusher>,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// The installed exporters, or `None` when export is off.
pub(crate) fn get() -> Option<&'static Telemetry> {
    TELEMETRY.get()
}

/// Turns export on for this process: spans and logs through bounded queues, and `registry`'s
/// metrics every `metric_interval`. Must run inside the Tokio runtime; a second call is refused.
pub fn install(options: &OtlpOptions, registry: Arc<crate::metrics::Metrics>) -> Result<(), TelemetryError> {
    let resource = resource(&options.node);
    let dropped = registry.otel_dropped.clone();
    let (span_queue, span_flusher) = queue::spans(queue::span_exporter(options, &resource)?, dropped.clone());
    let sampler = sampler::Capped::new(options.max_traces_per_second, dropped.clone());
    let tracer_provider = SdkTracerProvider::builder()
        .with_span_processor(span_queue)
        .with_sampler(sampler)
        .with_resource(resource.clone())
        .build();
    let tracer = tracer_provider.tracer("ledge");
    let (log_queue, log_flusher) = queue::logs(queue::log_exporter(options, &resource)?, dropped.clone());
    let logger_provider =
        SdkLoggerProvider::builder().with_log_processor(log_queue).with_resource(resource.clone()).build();
    let metrics_flusher = metrics::spawn_export(options, registry, &resource)?;
    let telemetry = Telemetry {
        tracer,
        tracer_provider,
        log_bridge: logs::Bridge::new(&logger_provider),
        dropped,
        logger_provider,
        node: opentelemetry::Value::String(Arc::<str>::from(options.node.as_str()).into()),
        flushers: vec![span_flusher, log_flusher, metrics_flusher],
    };
    TELEMETRY.set(telemetry).map_err(|_| TelemetryError::Exporter("telemetry is already installed".into()))
}

/// Exports what is queued (spans, logs, a last round of metrics), waiting at most `limit`:
/// for the end of `ledge serve`, after the last request.
pub async fn flush(limit: Duration) {
    let Some(telemetry) = get() else { return };
    let all = futures::future::join_all(telemetry.flushers.iter().map(queue::Flusher::flush));
    if tokio::time::timeout(limit, all).await.is_err() {
        tracing::warn!("OpenTelemetry export did not finish within {limit:?} at shutdown");
    }
    let _ = telemetry.tracer_provider.shutdown();
    let _ = telemetry.logger_provider.shutdown();
}

/// The resource every signal carries: `service.name` (`OTEL_SERVICE_NAME`, else `ledge`), the
/// version, and the node as `service.instance.id`.
fn resource(node: &str) -> Resource {
    let builder = Resource::builder();
    let builder = match std::env::var("OTEL_SERVICE_NAME") {
        Ok(name) if !name.is_empty() => builder,
        _ => builder.with_service_name("ledge"),
    };
    builder
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attribute(KeyValue::new("service.instance.id", node.to_string()))
        .build()
}
