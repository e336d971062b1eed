//! [`TraceCx`]: a run's place in a trace, carried from the HTTP edge through the runtime, the
//! key-value host calls and outbound HTTP, and the span names `../shared/spec.md` fixes.
//!
//! Invariants (what a caller or a guest controls is bounded):
//! - a caller's `traceparent` is read only in its version-00 form (55 bytes), else the run
//!   starts a new trace; its `tracestate` only within the W3C limits (512 bytes, 32 members),
//!   else the trace goes on without it;
//! - one run makes at most [`MAX_SPANS_PER_RUN`] spans (the rest are counted as dropped), so a
//!   guest looping over host calls cannot fill the node's export queue with its spans;
//! - a string attribute or status keeps at most [`MAX_VALUE_BYTES`] bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_http::HeaderInjector;
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// Spans one run may make, its own included.
pub const MAX_SPANS_PER_RUN: u32 = 128;
/// Bytes a string attribute or a status description keeps.
pub const MAX_VALUE_BYTES: usize = 256;
/// The W3C limits on `tracestate`.
const MAX_TRACESTATE_BYTES: usize = 512;
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// `ledge.request`, `ledge.instantiate`, ...: the span names `../shared/spec.md` fixes.
pub mod names {
    pub const REQUEST: &str = "ledge.request";
    pub const INSTANTIATE: &str = "ledge.instantiate";
    pub const TRANSACTION: &str = "ledge.transaction";
    pub const OUTBOUND: &str = "ledge.outbound";
    pub const PROXY: &str = "ledge.proxy";
    /// One WebSocket event run (`on-open`, `on-message`, `on-close`): a span the spec does not
    /// name, so it follows the others.
    pub const WEBSOCKET_EVENT: &str = "ledge.websocket";
}

/// A run's place in a trace: the span that host calls made for it are children of. Empty when
/// export is off (and then every method does nothing).
#[derive(Clone, Default)]
pub struct TraceCx(Option<Traced>);

#[derive(Clone)]
struct Traced {
    cx: Context,
    /// Spans the run may still make.
    budget: Arc<AtomicU32>,
}

impl TraceCx {
    /// A span that starts a run here: its parent is the W3C `traceparent` (and `tracestate`)
    /// in `headers` if there is a well-formed one, else it starts a new trace. `kind` is
    /// `Server` for a request, `Client` for the proxy hop, `Internal` for a scheduled run.
    /// `attributes` are the span's besides its function and node; like every value given here,
    /// they are made only when export is on, so a node without it allocates nothing for spans.
    pub fn start(
        headers: Option<&http::HeaderMap>,
        name: &'static str,
        kind: SpanKind,
        function: &str,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> TraceCx {
        let Some(telemetry) = super::get() else { return TraceCx(None) };
        let parent = match headers {
            Some(headers) => TraceContextPropagator::new().extract_with_context(&Context::new(), &Bounded(headers)),
            None => Context::new(),
        };
        let mut all = vec![
            KeyValue::new("ledge.function", function.to_string()),
            KeyValue::new("ledge.node", telemetry.node.clone()),
        ];
        all.extend(attributes().into_iter().map(bounded));
        let span = telemetry
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(all)
            .start_with_context(&telemetry.tracer, &parent);
        let budget = Arc::new(AtomicU32::new(MAX_SPANS_PER_RUN - 1));
        TraceCx(Some(Traced { cx: parent.with_span(span), budget }))
    }

    /// A child span of this one, with `attributes`: nothing when this one is empty, or when the
    /// run has made its [`MAX_SPANS_PER_RUN`] (then counted as dropped, if the run is exported).
    pub fn child(&self, name: &'static str, kind: SpanKind, attributes: impl FnOnce() -> Vec<KeyValue>) -> TraceCx {
        let (Some(telemetry), Some(parent)) = (super::get(), &self.0) else { return TraceCx(None) };
        if parent.budget.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| left.checked_sub(1)).is_err() {
            if parent.cx.span().span_context().is_sampled() {
                telemetry.dropped.inc();
            }
            return TraceCx(None);
        }
        let attributes = attributes().into_iter().map(bounded).collect::<Vec<_>>();
        let span = telemetry
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&telemetry.tracer, &parent.cx);
        TraceCx(Some(Traced { cx: parent.cx.with_span(span), budget: parent.budget.clone() }))
    }

    fn recording(&self) -> Option<&Context> {
        self.0.as_ref().map(|traced| &traced.cx).filter(|cx| cx.span().is_recording())
    }

    /// Whether export is off (then every span site is skipped, and nothing needs carrying).
    pub fn is_off(&self) -> bool {
        self.0.is_none()
    }

    /// Whether this span records what is set on it: make a value only for such a span.
    pub fn is_recording(&self) -> bool {
        self.recording().is_some()
    }

    /// Whether this run is traced and its spans are exported.
    pub fn is_sampled(&self) -> bool {
        self.0.as_ref().is_some_and(|traced| traced.cx.span().span_context().is_sampled())
    }

    /// Sets an attribute (no allocation of its own: pass a number or a `&'static str`, or
    /// check [`TraceCx::is_recording`] first); a string keeps its first [`MAX_VALUE_BYTES`].
    pub fn set(&self, key: &'static str, value: impl Into<Value>) {
        if let Some(cx) = self.recording() {
            cx.span().set_attribute(bounded(KeyValue::new(key, value)));
        }
    }

    /// Marks the span failed, with a description for the trace view (written only when the
    /// span records).
    pub fn fail(&self, description: impl std::fmt::Display) {
        if let Some(cx) = self.recording() {
            cx.span().set_status(Status::error(truncated(&description.to_string()).to_string()));
        }
    }

    /// Ends the span now (it would end anyway when its last copy goes).
    pub fn end(&self) {
        if let Some(traced) = &self.0 {
            traced.cx.span().end();
        }
    }

    /// Writes `traceparent` (and `tracestate`) naming this span into `headers`, replacing any.
    pub fn inject(&self, headers: &mut http::HeaderMap) {
        if let Some(traced) = &self.0 {
            TraceContextPropagator::new().inject_context(&traced.cx, &mut HeaderInjector(headers));
        }
    }

    /// The trace id in hex (32 digits), when this run is exported.
    pub fn trace_id(&self) -> Option<String> {
        let traced = self.0.as_ref().filter(|_| self.is_sampled())?;
        Some(traced.cx.span().span_context().trace_id().to_string())
    }

    /// Makes this the current context of the thread until the guard goes, so that log lines
    /// emitted meanwhile carry its trace and span ids. Never hold it across an `.await`.
    pub fn enter(&self) -> Option<opentelemetry::ContextGuard> {
        self.0.as_ref().filter(|_| self.is_sampled()).map(|traced| traced.cx.clone().attach())
    }
}

impl std::fmt::Debug for TraceCx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(traced) => write!(f, "TraceCx({:?})", traced.cx.span().span_context()),
            None => f.write_str("TraceCx(off)"),
        }
    }
}

/// `attribute` with a string value cut to [`MAX_VALUE_BYTES`].
fn bounded(attribute: KeyValue) -> KeyValue {
    match &attribute.value {
        Value::String(text) if text.as_str().len() > MAX_VALUE_BYTES => {
            KeyValue::new(attribute.key, truncated(text.as_str()).to_string())
        }
        _ => attribute,
    }
}

/// `text` cut to at most [`MAX_VALUE_BYTES`], at a character boundary.
fn truncated(text: &str) -> &str {
    let mut end = text.len().min(MAX_VALUE_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A caller's headers as the propagator reads them: `traceparent` in its version-00 form only,
/// `tracestate` within the W3C limits only (the SDK's parser checks neither).
struct Bounded<'a>(&'a http::HeaderMap);

impl Extractor for Bounded<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self.0.get(key)?.to_str().ok()?;
        let fits = match key {
            "traceparent" => value.len() == 55 && value.starts_with("00-"),
            "tracestate" => value.len() <= MAX_TRACESTATE_BYTES && value.split(',').count() <= MAX_TRACESTATE_MEMBERS,
            _ => false,
        };
        fits.then_some(value)
    }

    fn keys(&self) -> Vec<&str> {
        ["traceparent", "tracestate"].into_iter().filter(|key| self.0.contains_key(*key)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_trace_headers_are_read() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().unwrap());
        headers.insert("tracestate", "a=1,b=2".parse().unwrap());
        assert!(Bounded(&headers).get("traceparent").is_some());
        assert_eq!(Bounded(&headers).get("tracestate"), Some("a=1,b=2"));
        headers.insert("tracestate", vec!["a=b"; 33].join(",").parse().unwrap());
        assert_eq!(Bounded(&headers).get("tracestate"), None);
        headers.insert("tracestate", format!("a={}", "x".repeat(600)).parse().unwrap());
        assert_eq!(Bounded(&headers).get("tracestate"), None);
        headers.insert("traceparent", "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra".parse().unwrap());
        assert_eq!(Bounded(&headers).get("traceparent"), None);
    }

    #[test]
    fn values_are_cut_at_a_character_boundary() {
        let text = "é".repeat(200);
        let cut = truncated(&text);
        assert!(cut.len() <= MAX_VALUE_BYTES && cut.len() >= MAX_VALUE_BYTES - 1);
        assert!(text.starts_with(cut));
        assert_eq!(truncated("short"), "short");
    }
}
