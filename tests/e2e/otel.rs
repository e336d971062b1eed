//! OpenTelemetry export over OTLP/HTTP (http/protobuf) to a real receiver ([`crate::otlp`]):
//! one trace per request (ledge.request with ledge.instantiate and ledge.transaction under it),
//! a caller's `traceparent` as its parent, the context carried to the guest and on to its
//! outbound calls, one trace across a proxy hop between cluster nodes, a recording's id on its
//! span (and recordings found by their OpenTelemetry trace id), guest output as log records of
//! the request's span, metrics at the interval the standard variable sets, and a collector that
//! is down, or a cap on new traces, costing requests nothing while the loss is counted. And
//! what a caller or a guest controls stays bounded: a recorded run replays exactly with export
//! on, trace headers past the W3C limits are not read, a refused request costs no trace, the
//! access log and unsampled runs' output are not exported, one function gets a quarter of the
//! cap, and one run exports at most 128 spans (a denied transaction says so on its span). A
//! scheduled run starts a trace of its own.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, NumberDataPoint};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use crate::harness::{Etcd, Server, client, deploy_with_policy, guest, inspect, metric};
use crate::otlp::{OtlpReceiver, ReceivedMetric, ReceivedSpan, WAIT, attr, parse_traceparent, random_hex, str_attr};

const OPEN: &str = "public = true\n[rate]\nquota = 1000000\nwindow = \"1s\"\n[limits]\nmax_concurrency = 250\n";

/// A server exporting to `receiver`, with extra `ledge serve` arguments.
fn exporting_to(receiver: &OtlpReceiver, extra: &[&str]) -> Server {
    let mut args = vec!["--otlp-endpoint", receiver.url.as_str()];
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

/// A predicate: a `ledge.request` span of `function`.
fn request_of(function: &'static str) -> impl Fn(&ReceivedSpan) -> bool {
    move |s| s.name() == "ledge.request" && s.str_attr("ledge.function") == Some(function)
}

/// A predicate: a span named `name` in trace `trace`.
fn named_in(name: &'static str, trace: &str) -> impl Fn(&ReceivedSpan) -> bool {
    let trace = trace.to_string();
    move |s| s.name() == name && s.trace_id() == trace
}

/// Asserts the receiver refused nothing: every export was a POST of application/x-protobuf to
/// `/v1/traces`, `/v1/metrics` or `/v1/logs` that decoded.
fn assert_nothing_refused(receiver: &OtlpReceiver) {
    let refused = receiver.refused();
    assert!(refused.is_empty(), "the receiver refused exports: {refused:?}");
}

/// Asserts `child` is a child of `parent` in the same trace that starts no earlier than it.
fn assert_child_of(child: &ReceivedSpan, parent: &ReceivedSpan) {
    assert_eq!(child.trace_id(), parent.trace_id(), "{} is in another trace than {}", child.name(), parent.name());
    assert_eq!(child.parent_span_id(), parent.span_id(), "{}'s parent is not {}", child.name(), parent.name());
    let (c, p) = (&child.span, &parent.span);
    assert!(c.start_time_unix_nano <= c.end_time_unix_nano, "{} ends before it starts", child.name());
    assert!(
        p.start_time_unix_nano <= c.start_time_unix_nano,
        "{} starts at {}, before its parent {} at {}",
        child.name(),
        c.start_time_unix_nano,
        parent.name(),
        p.start_time_unix_nano
    );
}

/// Asserts `child` (a span of work the guest waited on) also ends by the time `parent` ends.
fn assert_ends_within(child: &ReceivedSpan, parent: &ReceivedSpan) {
    let (c, p) = (&child.span, &parent.span);
    assert!(
        c.end_time_unix_nano <= p.end_time_unix_nano,
        "{} ends at {}, after {} at {}",
        child.name(),
        c.end_time_unix_nano,
        parent.name(),
        p.end_time_unix_nano
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_counter_request_is_one_trace_of_request_instantiate_and_transaction_spans() {
    let receiver = OtlpReceiver::start().await;
    let server = exporting_to(&receiver, &[]);
    server.deploy("counter", &guest("counter"));
    // No verification corpus either: this run is recorded in no way.
    server.set_policy("counter", "[record]\nkeep_sample = 0\n").await;
    let response = client().post(server.fn_url("counter", "/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "1\n");

    let request = receiver.wait_for_span("the counter's ledge.request", WAIT, request_of("counter")).await;
    let trace = request.trace_id();
    assert_eq!(request.span.trace_id.len(), 16, "{request:?}");
    assert!(request.span.trace_id.iter().any(|b| *b != 0), "an all-zero trace id");
    assert_eq!(request.span.span_id.len(), 8, "{request:?}");
    assert_eq!(request.span.kind, SpanKind::Server as i32, "ledge.request is a server span");
    assert_eq!(request.parent_span_id(), "", "a request without a traceparent starts a trace");
    assert_eq!(request.int_attr("ledge.version"), Some(1), "{request:?}");
    let node = request.str_attr("ledge.node").unwrap_or_else(|| panic!("no ledge.node string: {request:?}"));
    assert!(!node.is_empty(), "an empty ledge.node");
    assert_eq!(request.int_attr("http.response.status_code"), Some(200), "{request:?}");
    assert!(request.attr("ledge.token.id").is_none(), "an anonymous caller has no token id: {request:?}");
    assert!(request.attr("ledge.trace").is_none(), "an unrecorded run names no recording: {request:?}");

    let instantiate = receiver.wait_for_span("ledge.instantiate", WAIT, named_in("ledge.instantiate", &trace)).await;
    let transaction = receiver.wait_for_span("ledge.transaction", WAIT, named_in("ledge.transaction", &trace)).await;
    assert_child_of(&instantiate, &request);
    assert_child_of(&transaction, &request);
    assert_ends_within(&instantiate, &request);
    assert_ends_within(&transaction, &request);
    assert_eq!(transaction.str_attr("ledge.tx.outcome"), Some("committed"), "{transaction:?}");

    // One request, one trace: one span of each, and no other request span.
    let in_trace = receiver.spans_in_trace(&trace);
    for name in ["ledge.request", "ledge.instantiate", "ledge.transaction"] {
        let count = in_trace.iter().filter(|s| s.name() == name).count();
        assert_eq!(count, 1, "{count} {name} spans in the trace: {}", receiver.describe_spans());
    }
    let requests = receiver.spans_named("ledge.request");
    assert_eq!(requests.len(), 1, "one request, one ledge.request: {}", receiver.describe_spans());

    // With a token: its id (never the token) is on the request span, in a new trace.
    let token = server.mint(&["fn = counter"]);
    let id = inspect(&token).lines().find_map(|l| l.strip_prefix("token id: ")).expect("a token id").trim().to_string();
    let response = client().post(server.fn_url("counter", "/")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "2\n");
    let with_token = receiver
        .wait_for_span("the request span with a token", WAIT, |s| {
            request_of("counter")(s) && s.str_attr("ledge.token.id") == Some(id.as_str())
        })
        .await;
    assert_ne!(with_token.trace_id(), trace, "a second request joined the first one's trace");
    let everything = format!("{:?}", receiver.spans());
    assert!(!everything.contains(&token), "a span carries the bearer token");
    assert_nothing_refused(&receiver);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incoming_traceparent_is_the_parent_and_the_guest_sees_the_request_span() {
    let receiver = OtlpReceiver::start().await;
    let server = exporting_to(&receiver, &[]);
    server.deploy("echo", &guest("echo"));

    let (trace, parent) = (random_hex(16), random_hex(8));
    let response = client()
        .get(server.fn_url("echo", "/"))
        .header("traceparent", format!("00-{trace}-{parent}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = response.headers().get("x-echo-header-traceparent").expect("the guest saw a traceparent");
    let seen = seen.to_str().unwrap().to_string();

    let request =
        receiver.wait_for_span("ledge.request in the caller's trace", WAIT, named_in("ledge.request", &trace)).await;
    assert_eq!(request.parent_span_id(), parent, "ledge.request's parent is the caller's span");
    assert_eq!(request.span.kind, SpanKind::Server as i32);
    assert_eq!(request.str_attr("ledge.function"), Some("echo"));
    assert_ne!(request.span_id(), parent);
    // The guest sees the context rewritten to ledge.request: same trace, the request's span.
    let (version, seen_trace, seen_span, _) = parse_traceparent(&seen);
    assert_eq!((version.as_str(), seen_trace.as_str()), ("00", trace.as_str()), "the guest saw {seen}");
    assert_eq!(seen_span, request.span_id(), "the guest saw {seen}, not ledge.request's span");

    // A malformed traceparent is ignored: a trace of its own, and the guest sees that one.
    let response =
        client().get(server.fn_url("echo", "/")).header("traceparent", "00-not-a-trace-zz").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = response.headers().get("x-echo-header-traceparent").expect("the guest saw a traceparent");
    let (_, fresh_trace, fresh_span, _) = parse_traceparent(seen.to_str().unwrap());
    let fresh = receiver.wait_for_span("the span of the second request", WAIT, |s| s.span_id() == fresh_span).await;
    assert_eq!((fresh.name(), fresh.trace_id()), ("ledge.request", fresh_trace.clone()));
    assert_eq!(fresh.parent_span_id(), "", "a malformed traceparent became a parent");
    assert_ne!(fresh_trace, trace);
    assert_nothing_refused(&receiver);
}

/// A loopback HTTP server that answers 200 to anything and keeps each request's headers.
struct Catcher {
    authority: String,
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Catcher {
    async fn start() -> Catcher {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let seen = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        seen.lock().unwrap().push(request.headers().clone());
                        async { Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"caught\n")))) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        Catcher { authority, seen, task }
    }
}

impl Drop for Catcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outbound_call_carries_the_trace_to_the_host_it_calls() {
    let receiver = OtlpReceiver::start().await;
    let target = Catcher::start().await;
    let server = exporting_to(&receiver, &[]);
    server.deploy("misbehave", &guest("misbehave"));
    server.set_policy("misbehave", "[outbound]\nallow = [\"127.0.0.1\"]\n").await;

    let url = server.fn_url("misbehave", &format!("/outbound?authority={}&path=/called", target.authority));
    let response = client().get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "status 200\n");
    let caught = target.seen.lock().unwrap().clone();
    assert_eq!(caught.len(), 1, "the target was called once: {caught:?}");
    let sent = caught[0].get("traceparent").expect("the outbound request carries a traceparent");
    let (version, trace, span, flags) = parse_traceparent(sent.to_str().unwrap());
    assert_eq!(version, "00");
    assert_eq!(flags, "01", "an exported (sampled) trace is propagated as sampled");

    let outbound = receiver.wait_for_span("the span the traceparent names", WAIT, |s| s.span_id() == span).await;
    assert_eq!(outbound.name(), "ledge.outbound", "the traceparent names {}, not ledge.outbound", outbound.name());
    assert_eq!(outbound.trace_id(), trace);
    assert_eq!(outbound.span.kind, SpanKind::Client as i32, "ledge.outbound is a client span");
    let parent = outbound.parent_span_id();
    let request = receiver.wait_for_span("ledge.outbound's parent", WAIT, |s| s.span_id() == parent).await;
    assert_eq!(request.name(), "ledge.request");
    assert_eq!(request.str_attr("ledge.function"), Some("misbehave"));
    assert_child_of(&outbound, &request);
    assert_nothing_refused(&receiver);
}

/// Polls `check` every 20 ms until it holds; fails after `limit`.
async fn eventually<F: AsyncFnMut() -> bool>(limit: Duration, what: &str, mut check: F) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `ledge-node` that answered a GET of `function`'s `/` on `server`, when it answered 200.
async fn answered_by(server: &Server, function: &str) -> Option<String> {
    let response = client().get(server.fn_url(function, "/")).send().await.ok()?;
    if response.status() != 200 {
        return None;
    }
    Some(response.headers().get("ledge-node")?.to_str().ok()?.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_proxied_between_nodes_is_one_trace() {
    let receiver = OtlpReceiver::start().await;
    let etcd = Etcd::start();
    let node = |name: &str| exporting_to(&receiver, &["--cluster", &etcd.endpoints(), "--node-name", name]);
    let nodes = [node("a"), node("b")];
    deploy_with_policy(&nodes[0], "solo", &guest("echo"), &format!("{OPEN}[placement]\nreplicas = 1\n")).await;
    let mut host = String::new();
    eventually(Duration::from_secs(20), "solo placed", async || match answered_by(&nodes[0], "solo").await {
        Some(name) => {
            host = name;
            true
        }
        None => false,
    })
    .await;
    let hosting = ["a", "b"].iter().position(|n| *n == host).unwrap_or_else(|| panic!("placed on {host}"));
    let proxy = &nodes[1 - hosting];
    eventually(Duration::from_secs(20), "the other node proxies", async || {
        answered_by(proxy, "solo").await.as_deref() == Some(host.as_str())
    })
    .await;

    let response = client().get(proxy.fn_url("solo", "/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["ledge-node"], host.as_str(), "proxied to the host");
    let seen = response.headers().get("x-echo-header-traceparent").expect("the guest saw a traceparent");
    let (_, trace, span, _) = parse_traceparent(seen.to_str().unwrap());

    let request = receiver.wait_for_span("the host's ledge.request", WAIT, |s| s.span_id() == span).await;
    assert_eq!(request.name(), "ledge.request", "the guest's traceparent names {}", request.name());
    assert_eq!(request.trace_id(), trace);
    assert_eq!(request.str_attr("ledge.node"), Some(host.as_str()), "ledge.request is the hosting node's");
    assert_eq!(request.str_attr("ledge.function"), Some("solo"));
    let proxied = receiver.wait_for_span("ledge.proxy in the same trace", WAIT, named_in("ledge.proxy", &trace)).await;
    assert_eq!(proxied.span.kind, SpanKind::Client as i32, "ledge.proxy is a client span");
    assert_child_of(&request, &proxied);
    assert_nothing_refused(&receiver);
}

/// `request` with the admin token and `ledge-record: 1`: the `ledge-trace` it answers.
async fn recorded(server: &Server, request: reqwest::RequestBuilder) -> String {
    let response = request.bearer_auth(&server.admin_token).header("ledge-record", "1").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers().get("ledge-trace").expect("a recorded run is named");
    id.to_str().unwrap().to_string()
}

/// `GET /v1/traces?QUERY`'s list, once it holds `count` entries (recordings are stored after
/// the response; bounded wait).
async fn listed(server: &Server, query: &str, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let response = server.admin().get(format!("{}/v1/traces?{query}", server.url)).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET /v1/traces?{query}");
        let body: serde_json::Value = response.json().await.unwrap();
        let traces = body["traces"].as_array().unwrap_or_else(|| panic!("no list: {body}")).clone();
        if traces.len() >= count || Instant::now() > deadline {
            return traces;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_run_names_its_recording_and_is_found_by_its_otel_trace_id() {
    let receiver = OtlpReceiver::start().await;
    let server = exporting_to(&receiver, &[]);
    server.deploy("counter", &guest("counter"));
    let first = recorded(&server, client().post(server.fn_url("counter", "/"))).await;
    let second = recorded(&server, client().post(server.fn_url("counter", "/"))).await;
    assert_ne!(first, second);

    let span_of = async |id: &str| {
        let what = format!("the span of recording {id}");
        receiver.wait_for_span(&what, WAIT, |s| request_of("counter")(s) && s.str_attr("ledge.trace") == Some(id)).await
    };
    let (first_trace, second_trace) = (span_of(&first).await.trace_id(), span_of(&second).await.trace_id());
    assert_ne!(first_trace, second_trace);

    // The API lists each recording under its run's trace id, and filters by it.
    let all = listed(&server, "function=counter", 2).await;
    assert_eq!(all.len(), 2, "{all:?}");
    for (id, trace) in [(&first, &first_trace), (&second, &second_trace)] {
        let entry = all.iter().find(|e| e["id"] == id.as_str()).unwrap_or_else(|| panic!("{id} not in {all:?}"));
        assert_eq!(entry["otel_trace_id"], trace.as_str(), "{entry}");
        let filtered = listed(&server, &format!("otel_trace={trace}"), 1).await;
        let ids: Vec<&str> = filtered.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [id.as_str()], "otel_trace={trace}");
    }
    let unknown = listed(&server, &format!("otel_trace={}", random_hex(16)), 0).await;
    assert!(unknown.is_empty(), "{unknown:?}");

    // And so does the CLI.
    let printed = server.cli_ok(&["traces", "--otel-trace", &first_trace]);
    assert!(printed.contains(&first), "{printed}");
    assert!(!printed.contains(&second), "the other recording is listed: {printed}");
    assert_nothing_refused(&receiver);
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_output_arrives_as_log_records_of_the_request_span() {
    let receiver = OtlpReceiver::start().await;
    // Turned on by the standard variable alone, this time, and named by the standard variable.
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str()), ("OTEL_SERVICE_NAME", "edge-under-test")];
    let server = Server::start_with_env(&[], &env);
    server.deploy("misbehave", &guest("misbehave"));
    let response = client().get(server.fn_url("misbehave", "/print")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "printed\n");

    let request = receiver.wait_for_span("misbehave's ledge.request", WAIT, request_of("misbehave")).await;
    for line in ["hello from the guest's stdout", "and from its stderr"] {
        let record = receiver.wait_for_log(line, WAIT, |l| l.body() == Some(line)).await;
        assert_eq!(record.trace_id(), request.trace_id(), "{line:?} is not in the request's trace");
        assert_eq!(record.span_id(), request.span_id(), "{line:?} is not the request span's");
        assert_eq!(str_attr(&record.resource, "service.name"), Some("edge-under-test"), "{record:?}");
    }
    assert_eq!(str_attr(&request.resource, "service.name"), Some("edge-under-test"), "{request:?}");
    assert_nothing_refused(&receiver);
}

/// The data points of `ledge_requests` for `function` in `metric` (none if it is another one).
fn request_points<'a>(metric: &'a ReceivedMetric, function: &str) -> Vec<&'a NumberDataPoint> {
    if metric.metric.name != "ledge_requests" {
        return Vec::new();
    }
    let Some(Data::Sum(sum)) = &metric.metric.data else {
        panic!("ledge_requests is not a Sum: {:?}", metric.metric);
    };
    sum.data_points.iter().filter(|p| str_attr(&p.attributes, "function") == Some(function)).collect()
}

fn number(point: &NumberDataPoint) -> f64 {
    match point.value {
        Some(number_data_point::Value::AsInt(n)) => n as f64,
        Some(number_data_point::Value::AsDouble(x)) => x,
        None => panic!("a data point without a value: {point:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_arrive_at_the_interval_the_standard_variable_sets() {
    let receiver = OtlpReceiver::start().await;
    let interval = Duration::from_millis(500);
    let server = Server::start_with_env(&["--otlp-endpoint", &receiver.url], &[("OTEL_METRIC_EXPORT_INTERVAL", "500")]);
    server.deploy("hello", &guest("hello"));
    assert_eq!(client().get(server.fn_url("hello", "/")).send().await.unwrap().status(), 200);
    let served = Instant::now();

    // Within a few intervals (the default is 60 s).
    let soon = interval * 10;
    let requests =
        receiver.wait_for_metric("ledge_requests for hello", soon, |m| !request_points(m, "hello").is_empty()).await;
    println!("ledge_requests arrived {:?} after the request", requests.at.duration_since(served));
    let Some(Data::Sum(sum)) = &requests.metric.data else { unreachable!() };
    assert!(sum.is_monotonic, "ledge_requests is a monotonic sum");
    assert_eq!(
        sum.aggregation_temporality,
        AggregationTemporality::Cumulative as i32,
        "a Prometheus counter is cumulative"
    );
    let point = request_points(&requests, "hello")[0];
    let status = attr(&point.attributes, "status").map(|v| match v {
        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s) => s.clone(),
        opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(n) => n.to_string(),
        other => format!("{other:?}"),
    });
    assert_eq!(status.as_deref(), Some("200"), "{point:?}");
    assert_eq!(number(point), 1.0);

    let duration_of_hello = |m: &ReceivedMetric| match &m.metric.data {
        Some(Data::Histogram(h)) if m.metric.name == "ledge_request_duration_seconds" => {
            h.data_points.iter().find(|p| str_attr(&p.attributes, "function") == Some("hello")).map(|p| p.count)
        }
        _ => None,
    };
    let histogram = receiver
        .wait_for_metric("ledge_request_duration_seconds for hello (a Histogram)", soon, |m| {
            duration_of_hello(m).is_some()
        })
        .await;
    assert_eq!(duration_of_hello(&histogram), Some(1), "{:?}", histogram.metric);

    // Exported again at the next intervals: a second request shows up in a later export.
    let first_export = requests.export;
    assert_eq!(client().get(server.fn_url("hello", "/")).send().await.unwrap().status(), 200);
    let later = receiver
        .wait_for_metric("ledge_requests counting 2", soon, |m| {
            m.export > first_export && request_points(m, "hello").iter().map(|p| number(p)).sum::<f64>() == 2.0
        })
        .await;
    assert!(later.at > requests.at);
    let exports = receiver.exports().1;
    assert!(exports >= 2, "{exports} metric exports");
    assert_nothing_refused(&receiver);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_is_down_costs_requests_nothing_and_the_loss_is_counted() {
    let receiver = OtlpReceiver::start().await;
    let server = exporting_to(&receiver, &[]);
    server.deploy("hello", &guest("hello"));
    assert_eq!(client().get(server.fn_url("hello", "/")).send().await.unwrap().status(), 200);
    receiver.wait_for_span("a span while the collector is up", WAIT, request_of("hello")).await;
    // The collector goes away: its port refuses connections from now on.
    let address = format!("127.0.0.1:{}", receiver.port);
    receiver.stop().await;
    assert!(std::net::TcpStream::connect(&address).is_err(), "the stopped receiver still accepts");

    let before = metric(&server, "ledge_otel_dropped_total").await;
    let deadline = Instant::now() + WAIT;
    let mut sent = 0;
    loop {
        let started = Instant::now();
        let response = client().get(server.fn_url("hello", "/")).send().await.unwrap();
        assert_eq!(response.status(), 200, "a request failed with the collector down");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "a request took {took:?} with the collector down");
        sent += 1;
        if metric(&server, "ledge_otel_dropped_total").await > before {
            break;
        }
        assert!(Instant::now() < deadline, "nothing counted as dropped after {sent} requests");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("ledge_otel_dropped_total rose after {sent} requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn new_traces_over_the_cap_are_not_exported_and_are_counted() {
    let receiver = OtlpReceiver::start().await;
    let server = exporting_to(&receiver, &["--otlp-max-traces-per-second", "1"]);
    server.deploy("hello", &guest("hello"));
    let before = metric(&server, "ledge_otel_dropped_total").await;

    const SENT: usize = 20;
    let started = Instant::now();
    let statuses = futures::future::join_all(
        (0..SENT).map(|_| async { client().get(server.fn_url("hello", "/")).send().await.unwrap().status() }),
    )
    .await;
    let took = started.elapsed();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let exported = || receiver.spans().iter().filter(|s| request_of("hello")(s)).count();
    // Each trace not exported is counted (as a trace, or as each of its spans).
    let deadline = Instant::now() + WAIT;
    loop {
        let dropped = metric(&server, "ledge_otel_dropped_total").await - before;
        if dropped >= (SENT - exported()) as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "{dropped} dropped, {} of {SENT} exported", exported());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Anything still on its way arrives within a few batches.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let cap = took.as_secs_f64().ceil() as usize + 1;
    let under_cap = exported();
    assert!(under_cap <= cap, "{under_cap} of {SENT} traces exported in {took:?} under a cap of 1 a second");
    // The cap is per second: in a later second a new trace is exported again.
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(started.elapsed() - took)).await;
    assert_eq!(client().get(server.fn_url("hello", "/")).send().await.unwrap().status(), 200);
    receiver.wait_for_spans("a trace in a later second", WAIT, under_cap + 1, request_of("hello")).await;
    assert_nothing_refused(&receiver);
}

/// The value of request header `name` as the echo guest saw it (its `x-echo-header-NAME`).
fn echoed(response: &reqwest::Response, name: &str) -> Option<String> {
    let value = response.headers().get(format!("x-echo-header-{name}"))?;
    Some(value.to_str().expect("an ASCII header").to_string())
}

/// A GET of `function`'s `path` on `server` with `headers`, answered `status`.
async fn get_with(
    server: &Server,
    function: &str,
    path: &str,
    headers: &[(&str, &str)],
    status: u16,
) -> reqwest::Response {
    let mut request = client().get(server.fn_url(function, path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), status, "GET /fn/{function}{path} with {headers:?}");
    response
}

/// A fresh sampled caller context: (trace id, parent span id, `traceparent`).
fn caller_context() -> (String, String, String) {
    let (trace, parent) = (random_hex(16), random_hex(8));
    let traceparent = format!("00-{trace}-{parent}-01");
    (trace, parent, traceparent)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_recorded_with_export_on_replays_exactly() {
    let receiver = OtlpReceiver::start().await;
    let server = exporting_to(&receiver, &[]);
    server.deploy("echo", &guest("echo"));
    let (trace, parent, traceparent) = caller_context();
    let response = client()
        .get(server.fn_url("echo", "/replayed?q=1"))
        .header("traceparent", &traceparent)
        .header("tracestate", "caller=1")
        .bearer_auth(&server.admin_token)
        .header("ledge-record", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers().get("ledge-trace").expect("a recorded run is named").to_str().unwrap().to_string();
    let seen = echoed(&response, "traceparent").expect("the guest saw a traceparent");

    // Recorded after the rewrite: what the guest saw names ledge.request, not the caller.
    let request = receiver
        .wait_for_span("the recorded run's ledge.request", WAIT, |s| {
            request_of("echo")(s) && s.str_attr("ledge.trace") == Some(id.as_str())
        })
        .await;
    assert_eq!((request.trace_id(), request.parent_span_id()), (trace.clone(), parent));
    assert_eq!(seen, format!("00-{trace}-{}-01", request.span_id()), "the guest saw {seen}");
    assert_eq!(listed(&server, "function=echo", 1).await.len(), 1, "the recording is stored");

    // The replay gives the guest the headers it saw live: the same response, header for header.
    let output = server.cli(&["replay", &id, "--json"]);
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "replay {id}: {printed}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {printed}"));
    assert_eq!(report["verdict"], "same", "{report}");
    let replayed = report["replayed"]["headers"].as_array().unwrap_or_else(|| panic!("no headers: {report}"));
    let header = |name: &str| {
        let pair = replayed.iter().find(|pair| pair[0] == name).unwrap_or_else(|| panic!("no {name}: {report}"));
        pair[1].as_str().unwrap_or_else(|| panic!("{pair}")).to_string()
    };
    assert_eq!(header("x-echo-header-traceparent"), seen, "the replayed guest saw another traceparent");
    assert_eq!(header("x-echo-header-tracestate"), "caller=1");
    assert_nothing_refused(&receiver);
}

/// A `tracestate` of `members` members (`k00=vvv...`) of exactly `bytes` bytes, each valid.
fn tracestate(members: usize, bytes: usize) -> String {
    // Each member is `kNN=` and a value; the first value takes what the others leave.
    let fixed = members * 4 + (members - 1);
    let rest = bytes - fixed;
    let (each, first) = (rest / members, rest / members + rest % members);
    assert!(each >= 1 && first <= 256, "{members} members cannot make {bytes} bytes");
    let state = (0..members)
        .map(|i| format!("k{i:02}={}", "v".repeat(if i == 0 { first } else { each })))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!((state.len(), state.split(',').count()), (bytes, members));
    state
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_headers_past_the_w3c_limits_are_not_read() {
    let receiver = OtlpReceiver::start().await;
    let server = exporting_to(&receiver, &[]);
    server.deploy("echo", &guest("echo"));

    // Within the limits (a small one, and 32 members in exactly 512 bytes): the caller's
    // traceparent is the parent and its tracestate goes on, to the span and to the guest.
    for state in ["congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".to_string(), tracestate(32, 512)] {
        let (trace, parent, traceparent) = caller_context();
        let headers = [("traceparent", traceparent.as_str()), ("tracestate", state.as_str())];
        let response = get_with(&server, "echo", "/", &headers, 200).await;
        let request = receiver.wait_for_span("ledge.request", WAIT, named_in("ledge.request", &trace)).await;
        assert_eq!(request.parent_span_id(), parent, "tracestate {state}");
        assert_eq!(request.span.trace_state, state, "the span does not carry the caller's tracestate");
        assert_eq!(echoed(&response, "tracestate"), Some(state.clone()), "the guest lost the tracestate");
        assert_eq!(echoed(&response, "traceparent"), Some(format!("00-{trace}-{}-01", request.span_id())));
    }

    // Past them (33 members in 197 bytes, or 32 in 513 bytes; the SDK's parser takes both):
    // the tracestate is dropped. The traceparent alone is still the parent, as W3C Trace
    // Context asks of a receiver that cannot use a tracestate.
    for state in [tracestate(33, 197), tracestate(32, 513)] {
        let (trace, parent, traceparent) = caller_context();
        let headers = [("traceparent", traceparent.as_str()), ("tracestate", state.as_str())];
        let response = get_with(&server, "echo", "/", &headers, 200).await;
        let request = receiver.wait_for_span("ledge.request", WAIT, named_in("ledge.request", &trace)).await;
        assert_eq!(request.parent_span_id(), parent);
        assert_eq!(request.span.trace_state, "", "an oversized tracestate reached the span");
        assert_eq!(echoed(&response, "traceparent"), Some(format!("00-{trace}-{}-01", request.span_id())));
        assert_eq!(echoed(&response, "tracestate"), Some(String::new()), "the guest saw the caller's tracestate");
    }

    // A traceparent not in the 55-byte version-00 form (the SDK's parser takes both of these as
    // a later version's) is not read: a new trace, the guest sees ledge's own span, and the
    // tracestate that came with it is not read either.
    for form in ["01-{trace}-{span}-01", "01-{trace}-{span}-01-extra"] {
        let (trace, parent) = (random_hex(16), random_hex(8));
        let traceparent = form.replace("{trace}", &trace).replace("{span}", &parent);
        let headers = [("traceparent", traceparent.as_str()), ("tracestate", "caller=1")];
        let response = get_with(&server, "echo", "/", &headers, 200).await;
        let seen = echoed(&response, "traceparent").expect("the guest saw a traceparent");
        let (version, seen_trace, seen_span, flags) = parse_traceparent(&seen);
        assert_eq!((version.as_str(), flags.as_str()), ("00", "01"), "the guest saw {seen}");
        assert_ne!(seen_trace, trace, "{traceparent} was read");
        let request = receiver.wait_for_span("the span the guest saw", WAIT, |s| s.span_id() == seen_span).await;
        assert_eq!((request.name(), request.trace_id()), ("ledge.request", seen_trace));
        assert_eq!(request.parent_span_id(), "", "{traceparent} became a parent");
        assert_eq!(request.span.trace_state, "");
        assert_eq!(echoed(&response, "tracestate"), Some(String::new()), "the guest saw the caller's tracestate");
        assert!(receiver.spans_in_trace(&trace).is_empty(), "spans in the trace of {traceparent}");
    }
    assert_nothing_refused(&receiver);
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_requests_cost_no_trace() {
    let receiver = OtlpReceiver::start().await;
    let server = exporting_to(&receiver, &[]);
    for name in ["private", "limited", "hello"] {
        server.deploy(name, &guest("hello"));
    }
    server.set_policy("private", "public = false\n").await;
    server.set_policy("limited", "public = true\n[rate]\nquota = 1\nwindow = \"60s\"\n").await;
    let token = server.mint(&["fn = private"]);
    let send = async |function: &str, token: Option<&str>, status: u16| {
        let (trace, _, traceparent) = caller_context();
        let mut request = client().get(server.fn_url(function, "/")).header("traceparent", traceparent);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{function} with a token: {}", token.is_some());
        trace
    };
    let unauthorized = send("private", None, 401).await;
    let absent = send("absent", None, 401).await;
    let admitted = send("limited", None, 200).await;
    let limited = send("limited", None, 429).await;
    let authorized = send("private", Some(&token), 200).await;
    let control = send("hello", None, 200).await;

    // The runs admitted are traced, in their callers' traces; the last one ends after every
    // refusal, and the spans leave in the order they end.
    for (what, trace) in [("the limited function's first run", &admitted), ("the private function's run", &authorized)]
    {
        let request = receiver.wait_for_span(what, WAIT, named_in("ledge.request", trace)).await;
        assert_eq!(request.int_attr("http.response.status_code"), Some(200));
    }
    receiver.wait_for_span("the last run's span", WAIT, named_in("ledge.request", &control)).await;
    // Two batch delays more, for good measure.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for (what, trace) in [("401 (private)", &unauthorized), ("401 (absent)", &absent), ("429", &limited)] {
        let spans = receiver.spans_in_trace(trace);
        assert!(spans.is_empty(), "the request refused with {what} was traced: {spans:?}");
    }
    let requests = receiver.spans_named("ledge.request").len();
    assert_eq!(requests, 3, "three runs, three request spans: {}", receiver.describe_spans());
    assert_nothing_refused(&receiver);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_and_unsampled_guest_output_are_not_exported() {
    let receiver = OtlpReceiver::start().await;
    let server = exporting_to(&receiver, &[]);
    server.deploy("misbehave", &guest("misbehave"));
    let print = async |flags: &str| {
        let trace = random_hex(16);
        let traceparent = format!("00-{trace}-{}-{flags}", random_hex(8));
        let response = get_with(&server, "misbehave", "/print", &[("traceparent", &traceparent)], 200).await;
        assert_eq!(response.text().await.unwrap(), "printed\n");
        trace
    };
    let unsampled = print("00").await;
    let sampled = print("01").await;
    let last = print("01").await;

    // Log records leave in the order they are made: by the time the last run's output is in,
    // any earlier record (the unsampled run's output, any access line) would be too.
    let line = "hello from the guest's stdout";
    for trace in [&sampled, &last] {
        let request = receiver.wait_for_span("a sampled run", WAIT, named_in("ledge.request", trace)).await;
        let record = receiver.wait_for_log(line, WAIT, |l| l.body() == Some(line) && l.trace_id() == *trace).await;
        assert_eq!(record.span_id(), request.span_id());
    }
    let logs = receiver.logs();
    let printed: Vec<String> = logs.iter().filter(|l| l.body() == Some(line)).map(|l| l.trace_id()).collect();
    assert_eq!(
        printed,
        [sampled, last],
        "only the sampled runs' output is exported (the first run's trace is {unsampled})"
    );
    let access: Vec<_> = logs.iter().filter(|l| l.body() == Some("request")).collect();
    assert!(access.is_empty(), "access log lines were exported: {access:?}");
    assert!(receiver.spans_in_trace(&unsampled).is_empty(), "the unsampled run was exported");
    // The access lines are still in the server's own log.
    let log = server.log();
    let lines = log.lines().filter(|l| l.contains("ledge::access") && l.contains("/fn/misbehave/print")).count();
    assert_eq!(lines, 3, "{log}");
    assert_nothing_refused(&receiver);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_function_gets_at_most_a_quarter_of_the_cap_on_new_traces() {
    let receiver = OtlpReceiver::start().await;
    let server = exporting_to(&receiver, &["--otlp-max-traces-per-second", "8"]);
    server.deploy("flooded", &guest("hello"));
    server.deploy("quiet", &guest("hello"));
    let before = metric(&server, "ledge_otel_dropped_total").await;

    const SENT: usize = 20;
    let started = Instant::now();
    let statuses = futures::future::join_all(
        (0..SENT).map(|_| async { client().get(server.fn_url("flooded", "/")).send().await.unwrap().status() }),
    )
    .await;
    let took = started.elapsed();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    // Each run is exported or counted as dropped (the cap decides as the run starts).
    let exported = || receiver.spans().iter().filter(|s| request_of("flooded")(s)).count();
    let dropped = metric(&server, "ledge_otel_dropped_total").await - before;
    let deadline = Instant::now() + WAIT;
    while exported() + (dropped as usize) < SENT {
        assert!(Instant::now() < deadline, "{dropped} dropped, {} of {SENT} exported", exported());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let flooded = exported();
    assert_eq!(flooded + dropped as usize, SENT, "{dropped} dropped, {flooded} exported");
    // A quarter of 8 a second, with a burst of as many: at most 2 at once and 2 a second more.
    let share = took.as_secs_f64().ceil() as usize * 2 + 2;
    println!("{flooded} of {SENT} exported in {took:?}");
    assert!((2..=share).contains(&flooded), "{flooded} of {SENT} exported in {took:?}, over a share of 2 a second");

    // The node's cap is not spent: another function's run right after is exported.
    let (trace, _, traceparent) = caller_context();
    get_with(&server, "quiet", "/", &[("traceparent", &traceparent)], 200).await;
    let quiet = receiver.wait_for_span("the other function's run", WAIT, named_in("ledge.request", &trace)).await;
    assert_eq!(quiet.str_attr("ledge.function"), Some("quiet"));
    assert_eq!(
        metric(&server, "ledge_otel_dropped_total").await - before,
        dropped,
        "the other function's run was dropped"
    );
    assert_nothing_refused(&receiver);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_transaction_is_marked_denied() {
    let receiver = OtlpReceiver::start().await;
    let server = exporting_to(&receiver, &[]);
    server.deploy("misbehave", &guest("misbehave"));
    server.deploy("kv", &guest("kv-wasi"));
    let token = server.mint(&["kv-prefix = user/42/"]);
    let call = async |function: &str, path: &str, token: Option<&str>, status: u16, answer: &str| {
        let (trace, _, traceparent) = caller_context();
        let mut request = client().get(server.fn_url(function, path)).header("traceparent", traceparent);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{function}{path}");
        let text = response.text().await.unwrap();
        assert!(text.contains(answer), "{function}{path}: {text}");
        trace
    };
    // A store the policy does not grant (ledge:platform/transactions.begin-in); a write
    // outside the token's kv-prefix inside a transaction the guest then abandons; the same
    // through wasi:keyvalue.
    let cases = [
        ("begin-in", call("misbehave", "/other-store?store=elsewhere", None, 403, "does not grant store").await),
        ("put", call("misbehave", "/claim?cap=5&id=x", Some(&token), 500, "kv-prefix").await),
        ("wasi:keyvalue set", call("kv", "/set?key=user/43/cart&value=1", Some(&token), 500, "AccessDenied").await),
    ];
    for (what, trace) in &cases {
        let request = receiver.wait_for_span(what, WAIT, named_in("ledge.request", trace)).await;
        let transaction = receiver.wait_for_span(what, WAIT, named_in("ledge.transaction", trace)).await;
        assert_eq!(transaction.str_attr("ledge.tx.outcome"), Some("denied"), "{what}: {transaction:?}");
        assert_child_of(&transaction, &request);
        let count = receiver.spans_in_trace(trace).iter().filter(|s| s.name() == "ledge.transaction").count();
        assert_eq!(count, 1, "{what}: {}", receiver.describe_spans());
    }
    assert_nothing_refused(&receiver);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_exports_at_most_128_spans_and_counts_the_rest_as_dropped() {
    let receiver = OtlpReceiver::start().await;
    let server = exporting_to(&receiver, &[]);
    deploy_with_policy(&server, "filler", &guest("misbehave"), &format!("{OPEN}[kv]\nmax_bytes = \"160KiB\"\n")).await;
    let before = metric(&server, "ledge_otel_dropped_total").await;

    // One transaction per 1 KiB value until the quota refuses one.
    let (trace, _, traceparent) = caller_context();
    let response = get_with(&server, "filler", "/kv-fill?kib=1", &[("traceparent", &traceparent)], 200).await;
    let answer = response.text().await.unwrap();
    let committed: usize = answer
        .strip_prefix("committed ")
        .and_then(|rest| rest.split_once(", then: limit exceeded"))
        .and_then(|(count, _)| count.parse().ok())
        .unwrap_or_else(|| panic!("{answer}"));
    // A span each: the request, every committed transaction and the refused one.
    let made = committed + 2;
    assert!(made > 128, "only {made} spans made: {answer}");

    // ledge.request ends last, and spans leave in the order they end.
    receiver.wait_for_span("the run's ledge.request", WAIT, named_in("ledge.request", &trace)).await;
    let spans = receiver.spans_in_trace(&trace);
    let named = |name: &str| spans.iter().filter(|s| s.name() == name).count();
    let counts = [named("ledge.request"), named("ledge.instantiate"), named("ledge.transaction")];
    assert_eq!(spans.len(), 128, "{committed} committed; exported (request, instantiate, transaction): {counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), 128, "{counts:?}");
    let dropped = metric(&server, "ledge_otel_dropped_total").await - before;
    assert!(dropped >= (made - 128) as f64, "{dropped} counted as dropped of at least {} over the budget", made - 128);
    assert_nothing_refused(&receiver);
}

/// Export settings that cannot work stop `ledge serve` at once, with the reason, before it
/// writes anything: no data dir is made.
#[test]
fn export_settings_that_cannot_work_stop_the_start_before_anything_is_written() {
    /// The endpoint, the environment, what the error must name.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 3] = [
        ("ftp://collector:4318", &[], "not an http:// or https:// URL"),
        ("http://127.0.0.1:4318", &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")], "http/json"),
        ("http://127.0.0.1:4318", &[("OTEL_METRIC_EXPORT_INTERVAL", "soon")], "OTEL_METRIC_EXPORT_INTERVAL"),
    ];
    for (endpoint, env, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let mut command = crate::harness::ledge();
        command.args(["serve", "--listen", "127.0.0.1:0", "--otlp-endpoint", endpoint, "--data-dir"]);
        command.arg(&data_dir).envs(env.iter().copied());
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{endpoint} {env:?}: {stderr}");
        assert!(stderr.contains(reason), "{endpoint} {env:?}: {stderr}");
        assert!(!data_dir.exists(), "{endpoint} {env:?}: the data dir was made");
    }
}

/// A scheduled run starts a trace of its own: an internal `ledge.request` with no parent,
/// `ledge.trigger = schedule`, the scheduled path, and its transaction under it.
#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_run_starts_a_trace_of_its_own() {
    let receiver = OtlpReceiver::start().await;
    let server = exporting_to(&receiver, &[]);
    server.deploy("counter", &guest("counter"));
    server.set_policy("counter", "[[schedule]]\ncron = \"* * * * * *\"\npath = \"/tick\"\n").await;
    let scheduled = receiver
        .wait_for_span("a scheduled run's ledge.request", WAIT, |s| {
            s.name() == "ledge.request" && s.str_attr("ledge.trigger") == Some("schedule")
        })
        .await;
    assert_eq!(scheduled.span.kind, SpanKind::Internal as i32, "{scheduled:?}");
    assert_eq!(scheduled.parent_span_id(), "", "a scheduled run starts its own trace");
    assert_eq!(scheduled.str_attr("ledge.function"), Some("counter"));
    assert_eq!(scheduled.str_attr("url.path"), Some("/tick"));
    assert_eq!(scheduled.int_attr("http.response.status_code"), Some(200), "{scheduled:?}");
    let transaction = receiver
        .wait_for_span("the scheduled run's transaction", WAIT, named_in("ledge.transaction", &scheduled.trace_id()))
        .await;
    assert_child_of(&transaction, &scheduled);
    assert_eq!(transaction.str_attr("ledge.tx.outcome"), Some("committed"));
    assert_nothing_refused(&receiver);
}
