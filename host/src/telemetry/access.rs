//! The access log: one line per request, target [`ACCESS_LOG`], in the format of the rest of
//! ledge's log (`--log-format human` or `json`).
//!
//! Once `ledge serve` installs a writer ([`install`]), the line is formatted here by hand and
//! handed to the same writer as every other line, rather than going through `tracing`'s fmt
//! layer: that layer's work per event (dispatch, a visitor per field, `write!` per value, the
//! timestamp) was the largest single cost ledge added to a hello request (about 3-4 µs of
//! ~70). Hand-written, as the product's own hot path: no crate formats a fixed line faster.
//!
//! Invariants:
//! - the bytes are exactly those the fmt layer writes for the same event (the tests below
//!   compare the two), so whoever reads the log sees no change;
//! - `LEDGE_LOG` still decides whether the line is written: `ledge serve` installs the writer
//!   only when its filter lets the access log through ([`install`]); without a writer (the
//!   access log filtered out, a terminal with colours, tests, other front ends) the line is a
//!   `tracing` event as before. The decision is taken once: `tracing::enabled!` per request
//!   would leave the per-layer filters' verdicts on the thread (no event follows to clear
//!   them), and the next event there, a guest's output line, would miss the OTLP export.

use std::cell::RefCell;
use std::io::Write;
use std::sync::OnceLock;
use std::time::SystemTime;

use tracing::Level;

use super::logs::ACCESS_LOG;

/// One request as the access log tells it.
#[derive(Debug, Clone, Copy)]
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub micros: u64,
}

/// The format of the log the line joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessFormat {
    /// `tracing`'s full text format, without colours.
    Human,
    /// `tracing`'s JSON format.
    Json,
}

type WriteLine = Box<dyn Fn(&[u8]) + Send + Sync>;

static WRITER: OnceLock<(AccessFormat, WriteLine)> = OnceLock::new();

thread_local! {
    /// The line being formatted, reused: no allocation per request once it has grown.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// From now on, access lines are formatted as `format` and handed whole to `write`. Once per
/// process; a second call is ignored. Only for a log whose filter lets the access log through
/// ([`filter_passes`]).
pub fn install(format: AccessFormat, write: WriteLine) {
    let _ = WRITER.set((format, write));
}

/// Whether `filter` lets the access log's line through, asked of a subscriber of its own (so
/// the process's subscriber keeps no trace of the question).
pub fn filter_passes(filter: tracing_subscriber::EnvFilter) -> bool {
    use tracing_subscriber::layer::SubscriberExt;
    let subscriber = tracing_subscriber::registry().with(filter);
    tracing::subscriber::with_default(subscriber, || tracing::enabled!(target: ACCESS_LOG, Level::INFO))
}

/// Logs `line`, if the log filter lets the access log through.
pub fn log(line: &AccessLine<'_>) {
    let Some((format, write)) = WRITER.get() else {
        tracing::info!(
            target: ACCESS_LOG,
            request_id = line.request_id,
            method = %line.method,
            path = %line.path,
            status = line.status,
            micros = line.micros,
            "request"
        );
        return;
    };
    LINE.with_borrow_mut(|buffer| {
        buffer.clear();
        format_line(*format, line, SystemTime::now(), buffer);
        write(buffer);
    });
}

fn format_line(format: AccessFormat, line: &AccessLine<'_>, at: SystemTime, out: &mut Vec<u8>) {
    let at = humantime::format_rfc3339_micros(at);
    let AccessLine { request_id, method, path, status, micros } = line;
    // Writes into a Vec cannot fail.
    let _ = match format {
        AccessFormat::Human => writeln!(
            out,
            "{at}  INFO {ACCESS_LOG}: request request_id={request_id:?} method={method} path={path} status={status} micros={micros}"
        ),
        AccessFormat::Json => {
            let _ = write!(
                out,
                "{{\"timestamp\":\"{at}\",\"level\":\"INFO\",\"fields\":{{\"message\":\"request\",\"request_id\":"
            );
            json_string(request_id, out);
            out.extend_from_slice(b",\"method\":");
            json_string(method, out);
            out.extend_from_slice(b",\"path\":");
            json_string(path, out);
            writeln!(out, ",\"status\":{status},\"micros\":{micros}}},\"target\":\"{ACCESS_LOG}\"}}")
        }
    };
}

fn json_string(value: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(out, value).expect("a string always serializes");
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// What the fmt layer writes for `line` (the event `log` sends without a writer).
    fn through_tracing(format: AccessFormat, line: &AccessLine<'_>) -> String {
        let captured = Captured::default();
        let layer = tracing_subscriber::fmt::layer().with_writer(captured.clone()).with_ansi(false);
        let layer: Box<dyn tracing_subscriber::Layer<_> + Send + Sync> = match format {
            AccessFormat::Human => Box::new(layer),
            AccessFormat::Json => Box::new(layer.json()),
        };
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || log(line));
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    fn by_hand(format: AccessFormat, line: &AccessLine<'_>) -> String {
        let mut out = Vec::new();
        format_line(format, line, SystemTime::now(), &mut out);
        String::from_utf8(out).unwrap()
    }

    /// The timestamp (the text up to the first `Z`) aside, the two are byte for byte the same.
    fn without_timestamp(text: &str) -> String {
        let (before, after) = text.split_once('Z').expect("a timestamp");
        let start = before.rfind(['"', '\n']).map_or(0, |at| at + 1);
        format!("{}<ts>{after}", &before[..start])
    }

    #[test]
    fn the_log_filter_decides_whether_the_access_log_is_written() {
        let passes = |directives: &str| filter_passes(tracing_subscriber::EnvFilter::new(directives));
        assert!(passes("info,wasmtime_wasi_http=warn"));
        assert!(passes("warn,ledge::access=info"));
        assert!(!passes("info,ledge::access=warn"));
        assert!(!passes("warn"));
    }

    #[test]
    fn the_hand_written_line_is_what_the_fmt_layer_writes() {
        let lines = [
            AccessLine { request_id: "0a1b2c3d-7f", method: "GET", path: "/fn/hello/", status: 200, micros: 57 },
            // A caller's request id with quotes and a backslash; a path with a raw quote.
            AccessLine { request_id: r#"a"b\c"#, method: "PUT", path: "/fn/x\"y", status: 413, micros: 1 },
            AccessLine { request_id: "", method: "PROPFIND", path: "/", status: 404, micros: 123_456_789 },
        ];
        for format in [AccessFormat::Human, AccessFormat::Json] {
            for line in &lines {
                let fmt = through_tracing(format, line);
                let hand = by_hand(format, line);
                assert_eq!(without_timestamp(&hand), without_timestamp(&fmt), "{format:?}");
                assert_eq!(hand.len(), fmt.len(), "the timestamps are as long: {hand} / {fmt}");
                if format == AccessFormat::Json {
                    let parsed: serde_json::Value = serde_json::from_str(&hand).unwrap();
                    assert_eq!(parsed["fields"]["path"], line.path);
                }
            }
        }
    }
}
