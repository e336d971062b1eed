//! Metrics over OTLP: every interval, the Prometheus registry's own text ([`Metrics::render`],
//! what `GET /metrics` serves) is read back into OTLP metrics and sent.
//!
//! Why from the text: the instruments live in `prometheus-client`, which exposes their values
//! only through its encoders; reading its exposition keeps one set of instruments, so
//! `/metrics` and the collector can never disagree. Counters become cumulative monotonic sums,
//! gauges gauges, histograms explicit-bucket histograms, named as the OpenMetrics family
//! (`ledge_requests`, whose Prometheus sample is `ledge_requests_total`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_sdk::Resource;
use prost::Message;
use tokio::sync::oneshot;

use super::queue::Flusher;
use super::{OtlpOptions, Protocol, TelemetryError};
use crate::metrics::Metrics;

/// How long one metrics export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the export task: `registry` every `options.metric_interval`, and once more on flush.
pub fn spawn_export(
    options: &OtlpOptions,
    registry: Arc<Metrics>,
    resource: &Resource,
) -> Result<Flusher, TelemetryError> {
    let sender = Sender::new(options)?;
    let resource = resource_of(resource);
    let started = unix_nanos(SystemTime::now());
    let (flusher, mut flushes) = Flusher::new();
    let interval = options.metric_interval;
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            let done: Option<oneshot::Sender<()>> = tokio::select! {
                _ = ticks.tick() => None,
                flush = flushes.recv() => match flush { Some(done) => Some(done), None => return },
            };
            // Rendering reads the engine's statistics under its commit lock: not on a worker.
            let rendered = tokio::task::spawn_blocking({
                let registry = registry.clone();
                move || registry.render()
            })
            .await;
            let Ok(text) = rendered else { return };
            let request = export_request(&text, &resource, started, unix_nanos(SystemTime::now()));
            if let Err(error) = sender.send(request).await {
                tracing::debug!(target: "otel", %error, "OpenTelemetry metrics export failed");
            }
            if let Some(done) = done {
                let _ = done.send(());
            }
        }
    });
    Ok(flusher)
}

/// An OTLP metrics client: HTTP with protobuf bodies, or gRPC.
enum Sender {
    Http { client: reqwest::Client, url: String, headers: reqwest::header::HeaderMap },
    Grpc { endpoint: String, headers: reqwest::header::HeaderMap },
}

impl Sender {
    fn new(options: &OtlpOptions) -> Result<Sender, TelemetryError> {
        let headers = headers_from_env();
        Ok(match options.protocol {
            Protocol::HttpProtobuf => Sender::Http {
                client: reqwest::Client::builder()
                    .timeout(EXPORT_TIMEOUT)
                    .build()
                    .map_err(|e| TelemetryError::Exporter(e.to_string()))?,
                url: format!("{}/v1/metrics", options.endpoint),
                headers,
            },
            Protocol::Grpc => Sender::Grpc { endpoint: options.endpoint.clone(), headers },
        })
    }

    async fn send(&self, request: ExportMetricsServiceRequest) -> Result<(), String> {
        match self {
            Sender::Http { client, url, headers } => {
                let response = client
                    .post(url)
                    .headers(headers.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(request.encode_to_vec())
                    .send()
                    .await
                    .map_err(|e| e.without_url().to_string())?;
                match response.status().is_success() {
                    true => Ok(()),
                    false => Err(format!("the collector answered {}", response.status())),
                }
            }
            Sender::Grpc { endpoint, headers } => {
                let send = async {
                    let mut client =
                        MetricsServiceClient::connect(endpoint.clone()).await.map_err(|e| e.to_string())?;
                    let mut request = tonic::Request::new(request);
                    for (name, value) in headers {
                        if let (Ok(name), Ok(value)) = (
                            tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes()),
                            tonic::metadata::MetadataValue::try_from(value.as_bytes()),
                        ) {
                            request.metadata_mut().insert(name, value);
                        }
                    }
                    client.export(request).await.map(drop).map_err(|e| e.message().to_string())
                };
                tokio::time::timeout(EXPORT_TIMEOUT, send).await.map_err(|_| "timed out".to_string())?
            }
        }
    }
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs separated by commas, values percent-encoded.
/// Pairs that are not valid headers are left out (and never printed: they may hold keys).
fn headers_from_env() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    let text = std::env::var("OTEL_EXPORTER_OTLP_HEADERS").unwrap_or_default();
    for pair in text.split(',') {
        let Some((name, value)) = pair.split_once('=') else { continue };
        let value = percent_decode(value.trim());
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()),
            reqwest::header::HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    }
    headers
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn string_value(value: String) -> Option<AnyValue> {
    Some(AnyValue { value: Some(any_value::Value::StringValue(value)) })
}

fn resource_of(resource: &Resource) -> opentelemetry_proto::tonic::resource::v1::Resource {
    opentelemetry_proto::tonic::resource::v1::Resource {
        attributes: resource
            .iter()
            .map(|(key, value)| KeyValue { key: key.to_string(), value: string_value(value.to_string()) })
            .collect(),
        ..Default::default()
    }
}

/// A sample's labels, in order.
type Labels = Vec<(String, String)>;

/// One histogram series: buckets `(le, cumulative count)`, sum, count.
#[derive(Default)]
struct Series {
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

/// One sample line: its name, labels and value.
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

/// What one family of the exposition holds.
#[derive(Default)]
struct Family {
    kind: String,
    help: String,
    unit: String,
    /// Counter and gauge samples: labels and value.
    samples: Vec<(Labels, f64)>,
    /// Histogram series by their labels (without `le`).
    histograms: BTreeMap<Labels, Series>,
}

/// The OTLP request for an OpenMetrics text exposition.
pub fn export_request(
    text: &str,
    resource: &opentelemetry_proto::tonic::resource::v1::Resource,
    start: u64,
    now: u64,
) -> ExportMetricsServiceRequest {
    let metrics = parse(text).into_iter().filter_map(|(name, family)| to_metric(name, family, start, now)).collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "ledge".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The families of an exposition, in order of appearance.
fn parse(text: &str) -> Vec<(String, Family)> {
    let mut families: Vec<(String, Family)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (Some(what), Some(name)) = (words.next(), words.next()) else { continue };
            let value = words.next().unwrap_or("").to_string();
            if families.last().is_none_or(|(last, _)| last != name) {
                families.push((name.to_string(), Family::default()));
            }
            let family = &mut families.last_mut().expect("pushed above").1;
            match what {
                "TYPE" => family.kind = value,
                "HELP" => family.help = value,
                "UNIT" => family.unit = value,
                _ => {}
            }
            continue;
        }
        let (Some(Sample { name, labels, value }), Some((family_name, family))) = (sample(line), families.last_mut())
        else {
            continue;
        };
        let suffix = name.strip_prefix(family_name.as_str()).unwrap_or("");
        if family.kind == "histogram" {
            let (mut le, mut rest) = (None, Vec::new());
            for (key, label) in labels {
                match key.as_str() {
                    "le" => le = Some(if label == "+Inf" { f64::INFINITY } else { label.parse().unwrap_or(f64::NAN) }),
                    _ => rest.push((key, label)),
                }
            }
            let series = family.histograms.entry(rest).or_default();
            match (suffix, le) {
                ("_bucket", Some(le)) => series.buckets.push((le, value as u64)),
                ("_sum", _) => series.sum = value,
                ("_count", _) => series.count = value as u64,
                _ => {}
            }
        } else if matches!(suffix, "" | "_total") {
            family.samples.push((labels, value));
        }
    }
    families
}

/// One sample line: its name, labels and value (a timestamp after it is ignored).
fn sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find('{') {
        Some(brace) => (&line[..brace], &line[brace + 1..]),
        None => line.split_once(' ')?,
    };
    let mut labels = Vec::new();
    let mut rest = rest;
    if line.contains('{') {
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, other) => value.push(other),
                }
            };
            labels.push((key.to_string(), value));
            rest = &after[end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        number => number.parse().ok()?,
    };
    Some(Sample { name: name.to_string(), labels, value })
}

fn attributes(labels: Labels) -> Vec<KeyValue> {
    labels.into_iter().map(|(key, value)| KeyValue { key, value: string_value(value) }).collect()
}

fn to_metric(name: String, family: Family, start: u64, now: u64) -> Option<Metric> {
    let points = |samples: Vec<(Labels, f64)>| -> Vec<NumberDataPoint> {
        samples
            .into_iter()
            .map(|(labels, value)| NumberDataPoint {
                attributes: attributes(labels),
                start_time_unix_nano: start,
                time_unix_nano: now,
                value: Some(match value.fract() == 0.0 && value.abs() < 9e15 {
                    true => number_data_point::Value::AsInt(value as i64),
                    false => number_data_point::Value::AsDouble(value),
                }),
                ..Default::default()
            })
            .collect()
    };
    let data = match family.kind.as_str() {
        "counter" => metric::Data::Sum(Sum {
            data_points: points(family.samples),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        "gauge" => metric::Data::Gauge(Gauge { data_points: points(family.samples) }),
        "histogram" => metric::Data::Histogram(Histogram {
            data_points: family
                .histograms
                .into_iter()
                .map(|(labels, Series { mut buckets, sum, count })| {
                    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                    // OTLP counts each bucket on its own; the exposition counts cumulatively.
                    let mut below = 0;
                    let bucket_counts = buckets
                        .iter()
                        .map(|&(_, cumulative)| {
                            let own = cumulative.saturating_sub(below);
                            below = cumulative;
                            own
                        })
                        .collect();
                    HistogramDataPoint {
                        attributes: attributes(labels),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        count,
                        sum: Some(sum),
                        bucket_counts,
                        explicit_bounds: buckets.iter().map(|b| b.0).filter(|le| le.is_finite()).collect(),
                        ..Default::default()
                    }
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        }),
        _ => return None,
    };
    Some(Metric { name, description: family.help, unit: family.unit, data: Some(data), ..Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP ledge_requests Function invocations.\n# TYPE ledge_requests counter\n\
ledge_requests_total{function=\"counter\",status=\"200\"} 3\n\
# HELP ledge_live_instances Live.\n# TYPE ledge_live_instances gauge\nledge_live_instances 2\n\
# HELP ledge_request_duration_seconds Time.\n# TYPE ledge_request_duration_seconds histogram\n\
ledge_request_duration_seconds_sum{function=\"a\\\"b\"} 0.75\n\
ledge_request_duration_seconds_count{function=\"a\\\"b\"} 3\n\
ledge_request_duration_seconds_bucket{le=\"0.1\",function=\"a\\\"b\"} 1\n\
ledge_request_duration_seconds_bucket{le=\"1.0\",function=\"a\\\"b\"} 3\n\
ledge_request_duration_seconds_bucket{le=\"+Inf\",function=\"a\\\"b\"} 3\n# EOF\n";

    #[test]
    fn the_exposition_becomes_sums_gauges_and_histograms() {
        let request = export_request(TEXT, &Default::default(), 1, 2);
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["ledge_requests", "ledge_live_instances", "ledge_request_duration_seconds"]);
        let Some(metric::Data::Sum(sum)) = &metrics[0].data else { panic!("not a sum: {:?}", metrics[0]) };
        assert!(sum.is_monotonic);
        assert_eq!(sum.data_points[0].value, Some(number_data_point::Value::AsInt(3)));
        let keys: Vec<&str> = sum.data_points[0].attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["function", "status"]);
        let Some(metric::Data::Histogram(histogram)) = &metrics[2].data else { panic!("not a histogram") };
        let point = &histogram.data_points[0];
        assert_eq!((point.count, point.sum), (3, Some(0.75)));
        assert_eq!(point.explicit_bounds, [0.1, 1.0]);
        assert_eq!(point.bucket_counts, [1, 2, 0]);
        assert_eq!(point.attributes[0].value, string_value("a\"b".into()));
    }
}
