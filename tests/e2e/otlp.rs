//! A real OTLP/HTTP receiver for the tests (http/protobuf, as the OTLP specification defines
//! it): a hyper server on an ephemeral loopback port, run inside the test's tokio runtime, that
//! decodes `POST /v1/traces`, `/v1/metrics` and `/v1/logs` with the OpenTelemetry project's own
//! message definitions (`opentelemetry-proto`), answers each with an empty export response, and
//! keeps what it decoded for the test to wait on. [`OtlpReceiver::stop`] (or dropping it)
//! closes its port and every connection it accepted, so an exporter meets a refused connection
//! from then on.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// How long the helpers wait by default: spans and logs leave ledge in batches at least every
/// ~200 ms, so this is only reached when something is wrong.
pub const WAIT: Duration = Duration::from_secs(10);

/// One span as received, with the resource it came under.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub span: Span,
    pub resource: Vec<KeyValue>,
}

impl ReceivedSpan {
    pub fn name(&self) -> &str {
        &self.span.name
    }

    pub fn trace_id(&self) -> String {
        hex::encode(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex::encode(&self.span.span_id)
    }

    /// The parent's span id in hex; empty for a root span.
    pub fn parent_span_id(&self) -> String {
        hex::encode(&self.span.parent_span_id)
    }

    pub fn attr(&self, key: &str) -> Option<&Value> {
        attr(&self.span.attributes, key)
    }

    pub fn str_attr(&self, key: &str) -> Option<&str> {
        str_attr(&self.span.attributes, key)
    }

    pub fn int_attr(&self, key: &str) -> Option<i64> {
        int_attr(&self.span.attributes, key)
    }
}

/// One log record as received, with the resource it came under.
#[derive(Clone, Debug)]
pub struct ReceivedLog {
    pub record: LogRecord,
    pub resource: Vec<KeyValue>,
}

impl ReceivedLog {
    /// The body when it is a string.
    pub fn body(&self) -> Option<&str> {
        match self.record.body.as_ref()?.value.as_ref()? {
            Value::StringValue(text) => Some(text),
            _ => None,
        }
    }

    pub fn trace_id(&self) -> String {
        hex::encode(&self.record.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex::encode(&self.record.span_id)
    }
}

/// One metric as received: the export it came in (numbered from 0, in arrival order) and when.
#[derive(Clone, Debug)]
pub struct ReceivedMetric {
    pub metric: Metric,
    pub export: usize,
    pub at: Instant,
}

/// A request the receiver refused (wrong path, method or content type, or a body that does not
/// decode): a correct exporter never causes one. Read through `Debug` in failure messages.
#[allow(dead_code)]
#[derive(Clone, Debug)]
pub struct Refused {
    pub method: String,
    pub path: String,
    pub content_type: String,
    pub why: String,
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    logs: Vec<ReceivedLog>,
    metrics: Vec<ReceivedMetric>,
    /// Requests accepted per signal: traces, metrics, logs.
    exports: [usize; 3],
    refused: Vec<Refused>,
}

/// The receiver. Killed (its listener and connections closed) on drop.
pub struct OtlpReceiver {
    /// The base URL to give ledge (`--otlp-endpoint`): `http://127.0.0.1:PORT`.
    pub url: String,
    pub port: u16,
    state: Arc<Mutex<Received>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Starts a receiver on 127.0.0.1 with an ephemeral port. Must be called inside a tokio
    /// runtime (the test's): it serves from a task of that runtime.
    pub async fn start() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP receiver");
        let port = listener.local_addr().expect("local address").port();
        let state = Arc::new(Mutex::new(Received::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the accept task drops the set, which
            // aborts them, so a stopped receiver keeps no kept-alive connection open.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    Some(_) = connections.join_next() => continue,
                };
                let Ok((stream, _)) = accepted else { continue };
                let state = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(request, &state).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        OtlpReceiver { url: format!("http://127.0.0.1:{port}"), port, state, task: Some(task) }
    }

    /// Stops the receiver and returns once its port is closed: from then on a connection to
    /// it is refused. (Dropping it stops it too, a moment later.)
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Resolves once the task (its listener with it) has been dropped.
            let _ = task.await;
        }
    }

    fn with<T>(&self, read: impl FnOnce(&Received) -> T) -> T {
        read(&self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.with(|r| r.spans.clone())
    }

    pub fn spans_named(&self, name: &str) -> Vec<ReceivedSpan> {
        self.with(|r| r.spans.iter().filter(|s| s.span.name == name).cloned().collect())
    }

    /// The spans of one trace (`trace_id` in lowercase hex).
    pub fn spans_in_trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.with(|r| r.spans.iter().filter(|s| s.trace_id() == trace_id).cloned().collect())
    }

    /// Every log record received so far.
    pub fn logs(&self) -> Vec<ReceivedLog> {
        self.with(|r| r.logs.clone())
    }

    /// Every metric received so far, in arrival order.
    pub fn metrics(&self) -> Vec<ReceivedMetric> {
        self.with(|r| r.metrics.clone())
    }

    /// How many export requests were accepted: (traces, metrics, logs).
    pub fn exports(&self) -> (usize, usize, usize) {
        self.with(|r| (r.exports[0], r.exports[1], r.exports[2]))
    }

    /// The requests refused so far (should stay empty).
    pub fn refused(&self) -> Vec<Refused> {
        self.with(|r| r.refused.clone())
    }

    /// Waits until a received span satisfies `predicate`; returns the first that does.
    pub async fn wait_for_span(
        &self,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&ReceivedSpan) -> bool,
    ) -> ReceivedSpan {
        let spans = self.wait_for_spans(what, timeout, 1, predicate).await;
        spans.into_iter().next().expect("one span")
    }

    /// Waits until at least `count` received spans satisfy `predicate`; returns all that do.
    pub async fn wait_for_spans(
        &self,
        what: &str,
        timeout: Duration,
        count: usize,
        predicate: impl Fn(&ReceivedSpan) -> bool,
    ) -> Vec<ReceivedSpan> {
        let matching = || self.with(|r| r.spans.iter().filter(|s| predicate(s)).cloned().collect::<Vec<_>>());
        self.wait(what, timeout, || Some(matching()).filter(|m| m.len() >= count), || self.describe_spans()).await
    }

    /// Waits until a received log record satisfies `predicate`; returns the first that does.
    pub async fn wait_for_log(
        &self,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&ReceivedLog) -> bool,
    ) -> ReceivedLog {
        let found = || self.with(|r| r.logs.iter().find(|l| predicate(l)).cloned());
        let describe = || {
            let bodies: Vec<String> =
                self.logs().iter().map(|l| format!("{:?} trace {}", l.body(), l.trace_id())).collect();
            format!("{} log records: {bodies:#?}", bodies.len())
        };
        self.wait(what, timeout, found, describe).await
    }

    /// Waits until a received metric satisfies `predicate`; returns the first that does.
    pub async fn wait_for_metric(
        &self,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&ReceivedMetric) -> bool,
    ) -> ReceivedMetric {
        let found = || self.with(|r| r.metrics.iter().find(|m| predicate(m)).cloned());
        let describe = || {
            let names: Vec<String> = self.metrics().iter().map(|m| m.metric.name.clone()).collect();
            format!("{} metrics: {names:?}", names.len())
        };
        self.wait(what, timeout, found, describe).await
    }

    /// Polls `found` every 20 ms until it gives something; fails after `timeout`, showing
    /// `describe()` and any refused request.
    async fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        found: impl Fn() -> Option<T>,
        describe: impl Fn() -> String,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = found() {
                return value;
            }
            if Instant::now() > deadline {
                panic!("{what}: not received within {timeout:?}; refused: {:?}; {}", self.refused(), describe());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A summary of every span received, for failure messages.
    pub fn describe_spans(&self) -> String {
        let spans: Vec<String> = self
            .spans()
            .iter()
            .map(|s| {
                format!(
                    "{} trace {} span {} parent {} kind {} {:?}",
                    s.name(),
                    s.trace_id(),
                    s.span_id(),
                    s.parent_span_id(),
                    s.span.kind,
                    s.span.attributes.iter().map(|kv| format!("{}={:?}", kv.key, value(kv))).collect::<Vec<_>>()
                )
            })
            .collect();
        format!("{} spans: {spans:#?}", spans.len())
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// One export request: decoded and kept, answered 200 with an empty export response; anything
/// else refused (404, 405, 415 or 400) and noted.
async fn handle(request: Request<Incoming>, state: &Mutex<Received>) -> Response<Full<Bytes>> {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let header =
        |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_ascii_lowercase();
    let (content_type, encoding) = (header("content-type"), header("content-encoding"));
    let refuse = |status: u16, why: String| {
        let refused = Refused { method: method.clone(), path: path.clone(), content_type: content_type.clone(), why };
        state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).refused.push(refused);
        Response::builder().status(status).body(Full::new(Bytes::new())).expect("a response")
    };
    if !["/v1/traces", "/v1/metrics", "/v1/logs"].contains(&path.as_str()) {
        return refuse(404, "not an OTLP path".into());
    }
    if method != "POST" {
        return refuse(405, "not a POST".into());
    }
    if content_type.split(';').next().map(str::trim) != Some("application/x-protobuf") {
        return refuse(415, "not application/x-protobuf".into());
    }
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return refuse(400, format!("reading the body: {error}")),
    };
    let body = match encoding.as_str() {
        "" | "identity" => body,
        "gzip" => {
            use std::io::Read;
            let mut decoded = Vec::new();
            if let Err(error) = flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut decoded) {
                return refuse(400, format!("gunzip: {error}"));
            }
            Bytes::from(decoded)
        }
        other => return refuse(415, format!("content-encoding {other}")),
    };
    let mut received = state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let answer = match path.as_str() {
        "/v1/traces" => match ExportTraceServiceRequest::decode(body) {
            Ok(export) => {
                for resource_spans in export.resource_spans {
                    let resource = resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
                    for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                        received.spans.push(ReceivedSpan { span, resource: resource.clone() });
                    }
                }
                received.exports[0] += 1;
                Ok(ExportTraceServiceResponse::default().encode_to_vec())
            }
            Err(error) => Err(error),
        },
        "/v1/metrics" => match ExportMetricsServiceRequest::decode(body) {
            Ok(export) => {
                let (number, at) = (received.exports[1], Instant::now());
                for resource_metrics in export.resource_metrics {
                    for metric in resource_metrics.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                        received.metrics.push(ReceivedMetric { metric, export: number, at });
                    }
                }
                received.exports[1] += 1;
                Ok(ExportMetricsServiceResponse::default().encode_to_vec())
            }
            Err(error) => Err(error),
        },
        _ => match ExportLogsServiceRequest::decode(body) {
            Ok(export) => {
                for resource_logs in export.resource_logs {
                    let resource = resource_logs.resource.map(|r| r.attributes).unwrap_or_default();
                    for record in resource_logs.scope_logs.into_iter().flat_map(|s| s.log_records) {
                        received.logs.push(ReceivedLog { record, resource: resource.clone() });
                    }
                }
                received.exports[2] += 1;
                Ok(ExportLogsServiceResponse::default().encode_to_vec())
            }
            Err(error) => Err(error),
        },
    };
    drop(received);
    match answer {
        Ok(bytes) => Response::builder()
            .status(200)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(bytes)))
            .expect("a response"),
        Err(error) => refuse(400, format!("protobuf: {error}")),
    }
}

/// The value of attribute `key` in `attributes`.
pub fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes.iter().find(|kv| kv.key == key).and_then(value)
}

fn value(kv: &KeyValue) -> Option<&Value> {
    kv.value.as_ref().and_then(|v: &AnyValue| v.value.as_ref())
}

/// The string value of attribute `key`; `None` if absent or not a string.
pub fn str_attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attributes, key)? {
        Value::StringValue(text) => Some(text),
        _ => None,
    }
}

/// The integer value of attribute `key`; `None` if absent or not an integer.
pub fn int_attr(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attributes, key)? {
        Value::IntValue(n) => Some(*n),
        _ => None,
    }
}

/// A fresh random id of `bytes` bytes in lowercase hex (never all zeros, which W3C forbids).
pub fn random_hex(bytes: usize) -> String {
    loop {
        let id: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
        if id.iter().any(|b| *b != 0) {
            return hex::encode(id);
        }
    }
}

/// The parts of a W3C `traceparent` value: (version, trace id, parent id, flags), lowercase.
pub fn parse_traceparent(value: &str) -> (String, String, String, String) {
    let parts: Vec<&str> = value.trim().split('-').collect();
    assert_eq!(parts.len(), 4, "a traceparent has four parts: {value:?}");
    let valid = |part: &str, len: usize| part.len() == len && part.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(
        valid(parts[0], 2) && valid(parts[1], 32) && valid(parts[2], 16) && valid(parts[3], 2),
        "a malformed traceparent: {value:?}"
    );
    let [version, trace, parent, flags] = [parts[0], parts[1], parts[2], parts[3]].map(str::to_ascii_lowercase);
    (version, trace, parent, flags)
}
