//! ledge's log lines, guest output included, as OTLP log records: a `tracing` layer that hands
//! each event to the OpenTelemetry project's bridge (`opentelemetry-appender-tracing`) once
//! export is installed. The record carries the trace and span of the context current on the
//! thread ([`super::TraceCx::enter`]).
//!
//! The logging is set up before the exporters exist (they need the engine's metrics), so the
//! layer looks the bridge up at each event: one atomic load when export is off.

use opentelemetry::trace::TraceContextExt;
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

pub type Bridge = OpenTelemetryTracingBridge<SdkLoggerProvider, SdkLogger>;

/// The target of the access log's line per request. Not exported: a function's run has its
/// `ledge.request` span, and anything else (a 404, an admin call) is no run of a tenant's, so
/// a flood of junk requests cannot crowd tenants' log records out of the export queue.
pub const ACCESS_LOG: &str = "ledge::access";

/// The target of the lines a guest's run causes: its output, its refused outbound requests,
/// its failures. Such a line is exported only within its run's trace context when the run is
/// exported (sampled and within the cap, [`super::sampler`]), so each function's share of the
/// log export is bounded as its traces are, and one tenant's guest cannot crowd out the others'.
pub const GUEST_RUN: &str = "ledge::guest";

/// The `tracing` layer that exports ledge's events, info and above (`ledge` and `ledge_kv`
/// targets only, so the exporter's own HTTP client never logs into the exporter).
pub struct LogBridge;

impl LogBridge {
    /// What the layer exports. A filter by target and level: `tracing` caches its verdict per
    /// call site, so the many `debug!` and `trace!` sites of hyper and wasmtime stay off for
    /// good (a filter function would be asked at every event).
    pub fn targets() -> Targets {
        Targets::new()
            .with_target("ledge", Level::INFO)
            .with_target("ledge_kv", Level::INFO)
            .with_target(ACCESS_LOG, LevelFilter::OFF)
    }
}

impl<S> Layer<S> for LogBridge
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, cx: Context<'_, S>) {
        let Some(telemetry) = super::get() else { return };
        if event.metadata().target() == GUEST_RUN
            && !opentelemetry::Context::map_current(|cx| cx.span().span_context().is_sampled())
        {
            return;
        }
        telemetry.log_bridge.on_event(event, cx);
    }
}
