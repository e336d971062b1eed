//! The bounded queues between the requests that finish spans and log records and the OTLP
//! exporters. The SDK's own batch processors export from a thread of their own and keep their
//! drop counts to themselves; these export from a Tokio task (the HTTP and gRPC clients are
//! async) and charge every loss to `ledge_otel_dropped_total`.
//!
//! Invariants: `on_end` and `emit` never wait (a full queue drops and counts); at most
//! [`QUEUE`] items wait, and one export is in flight at a time, bounded by the exporter's
//! timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s by default), so a collector that is down or slow
//! costs bounded memory and no request time.

use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry::logs::AnyValue;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{SpanData, SpanExporter, SpanProcessor};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

use super::{OtlpOptions, Protocol, TelemetryError};

/// Most spans (or log records) waiting for export; more are dropped.
const QUEUE: usize = 16_384;
/// Most items in one export request.
const MAX_BATCH: usize = 2048;
/// How long a batch waits to fill up before it goes: exports are few and large under load,
/// and a span reaches the collector within this after it ends.
const BATCH_DELAY: Duration = Duration::from_millis(200);

/// The span exporter `options` ask for, sending with `resource`.
pub fn span_exporter(
    options: &OtlpOptions,
    resource: &Resource,
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let mut exporter = match options.protocol {
        Protocol::HttpProtobuf => builder
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(format!("{}/v1/traces", options.endpoint))
            .build(),
        Protocol::Grpc => builder.with_tonic().with_endpoint(options.endpoint.clone()).build(),
    }
    .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    exporter.set_resource(resource);
    Ok(exporter)
}

/// The log exporter `options` ask for, sending with `resource`.
pub fn log_exporter(
    options: &OtlpOptions,
    resource: &Resource,
) -> Result<opentelemetry_otlp::LogExporter, TelemetryError> {
    let builder = opentelemetry_otlp::LogExporter::builder();
    let mut exporter = match options.protocol {
        Protocol::HttpProtobuf => builder
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(format!("{}/v1/logs", options.endpoint))
            .build(),
        Protocol::Grpc => builder.with_tonic().with_endpoint(options.endpoint.clone()).build(),
    }
    .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    exporter.set_resource(resource);
    Ok(exporter)
}

/// Asks an export task to send what it holds now, and waits until it has.
pub struct Flusher(mpsc::Sender<oneshot::Sender<()>>);

impl Flusher {
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.0.send(done).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// A flusher and the receiving end its task listens on.
    pub fn new() -> (Flusher, mpsc::Receiver<oneshot::Sender<()>>) {
        let (sender, receiver) = mpsc::channel(1);
        (Flusher(sender), receiver)
    }
}

/// Finished, sampled spans into the queue; the task exporting them.
#[derive(Debug)]
pub struct SpanQueue {
    sender: mpsc::Sender<SpanData>,
    dropped: Counter,
}

pub fn spans(exporter: opentelemetry_otlp::SpanExporter, dropped: Counter) -> (SpanQueue, Flusher) {
    let (sender, receiver) = mpsc::channel(QUEUE);
    let (flusher, flushes) = Flusher::new();
    let lost = dropped.clone();
    let exporter = Arc::new(exporter);
    tokio::spawn(export_loop(receiver, flushes, lost, move |batch| {
        let exporter = exporter.clone();
        async move { exporter.export(batch).await }
    }));
    (SpanQueue { sender, dropped }, flusher)
}

impl SpanProcessor for SpanQueue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() && self.sender.try_send(span).is_err() {
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Bytes of log records (bodies and string attributes, roughly) that may wait for export: a
/// count alone would let long lines hold gigabytes.
const LOG_QUEUE_BYTES: usize = 32 << 20;

/// Log records into the queue; the task exporting them.
#[derive(Debug)]
pub struct LogQueue {
    sender: mpsc::Sender<(SdkLogRecord, InstrumentationScope, usize)>,
    queued_bytes: Arc<AtomicUsize>,
    dropped: Counter,
}

pub fn logs(exporter: opentelemetry_otlp::LogExporter, dropped: Counter) -> (LogQueue, Flusher) {
    let (sender, receiver) = mpsc::channel(QUEUE);
    let (flusher, flushes) = Flusher::new();
    let lost = dropped.clone();
    let exporter = Arc::new(exporter);
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let released = queued_bytes.clone();
    tokio::spawn(export_loop(
        receiver,
        flushes,
        lost,
        move |batch: Vec<(SdkLogRecord, InstrumentationScope, usize)>| {
            let (exporter, released) = (exporter.clone(), released.clone());
            async move {
                let borrowed: Vec<(&SdkLogRecord, &InstrumentationScope)> =
                    batch.iter().map(|(record, scope, _)| (record, scope)).collect();
                let exported = exporter.export(LogBatch::new(&borrowed)).await;
                released.fetch_sub(batch.iter().map(|(_, _, bytes)| bytes).sum(), Ordering::AcqRel);
                exported
            }
        },
    ));
    (LogQueue { sender, queued_bytes, dropped }, flusher)
}

impl LogProcessor for LogQueue {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        let bytes = approximate_size(record);
        let fits = self.queued_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes <= LOG_QUEUE_BYTES;
        if !fits || self.sender.try_send((record.clone(), scope.clone(), bytes)).is_err() {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
}

/// What a record holds, roughly: its strings, plus a fixed part for the rest.
fn approximate_size(record: &SdkLogRecord) -> usize {
    let text = |value: &AnyValue| match value {
        AnyValue::String(text) => text.as_str().len(),
        AnyValue::Bytes(bytes) => bytes.len(),
        _ => 16,
    };
    let attributes: usize = record.attributes_iter().map(|(key, value)| key.as_str().len() + text(value)).sum();
    256 + record.body().map_or(0, text) + attributes
}

/// Takes items off `queue` in batches and exports each; a failed export's items are counted
/// as dropped. A batch waits [`BATCH_DELAY`] after its first item to fill up (sleeping, not
/// woken by each item: a wake-up per span cost more than the export), and goes at once when
/// [`MAX_BATCH`] are waiting. A flush request sends what is queued and answers when it is out.
async fn export_loop<T, F, Fut>(
    mut queue: mpsc::Receiver<T>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    dropped: Counter,
    export: F,
) where
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = OTelSdkResult>,
{
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut flushed = None;
    loop {
        if batch.is_empty() && flushed.is_none() {
            tokio::select! {
                received = queue.recv_many(&mut batch, MAX_BATCH) => {
                    if received == 0 {
                        return;
                    }
                }
                Some(done) = flushes.recv() => flushed = Some(done),
            }
        }
        if flushed.is_none() && batch.len() + queue.len() < MAX_BATCH {
            tokio::select! {
                () = tokio::time::sleep(BATCH_DELAY) => {}
                Some(done) = flushes.recv() => flushed = Some(done),
            }
        }
        while batch.len() < MAX_BATCH
            && let Ok(item) = queue.try_recv()
        {
            batch.push(item);
        }
        if !batch.is_empty() {
            let count = batch.len() as u64;
            if let Err(error) = export(std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH))).await {
                dropped.inc_by(count);
                tracing::debug!(target: "otel", %error, count, "OpenTelemetry export failed");
            }
        }
        // A flush is answered once nothing that was queued before it is left.
        if queue.is_empty()
            && let Some(done) = flushed.take()
        {
            let _ = done.send(());
        }
    }
}
