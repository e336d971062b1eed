//! Guest stdout and stderr, captured line by line into the host's log with the function's name.
//!
//! Invariant: a guest cannot flood the log: lines are cut at [`MAX_LINE`] bytes and each stream
//! logs at most [`MAX_BYTES_PER_REQUEST`] bytes per request, then says it dropped the rest.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use super::logs::Logs;
use crate::record::Tape;
use crate::telemetry::TraceCx;
use crate::telemetry::logs::GUEST_RUN;

const MAX_LINE: usize = 4096;
const MAX_BYTES_PER_REQUEST: usize = 64 << 10;

/// Where a run's output goes besides the host's log: its function's live log (`ledge logs`),
/// and the run's span, whose trace and span ids its lines carry as OTLP log records.
#[derive(Clone)]
pub struct GuestLogs {
    pub logs: Arc<Logs>,
    pub trace: TraceCx,
}

/// One guest output stream (`stdout` or `stderr`) of one request.
#[derive(Clone)]
pub struct GuestLog {
    function: Arc<str>,
    logs: GuestLogs,
    stream: &'static str,
    state: Arc<Mutex<LineBuffer>>,
    /// The run's recording or replay: it gets the bytes as written.
    tape: Option<Arc<Tape>>,
}

#[derive(Default)]
struct LineBuffer {
    pending: Vec<u8>,
    logged: usize,
    truncated: bool,
}

impl GuestLog {
    pub fn new(function: &str, stream: &'static str, logs: GuestLogs, tape: Option<Arc<Tape>>) -> Self {
        GuestLog { function: function.into(), logs, stream, state: Arc::default(), tape }
    }

    fn accept(&self, bytes: &[u8]) {
        if let Some(tape) = &self.tape {
            tape.log(self.stream, bytes);
            if tape.is_replay() {
                // A replay's output goes to its timeline, not to the host's log.
                return;
            }
        }
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for &byte in bytes {
            if byte == b'\n' || state.pending.len() >= MAX_LINE {
                let line = std::mem::take(&mut state.pending);
                self.emit(&mut state, &line);
            }
            if byte != b'\n' {
                state.pending.push(byte);
            }
        }
    }

    fn emit(&self, state: &mut LineBuffer, line: &[u8]) {
        if state.logged >= MAX_BYTES_PER_REQUEST {
            if !state.truncated {
                state.truncated = true;
                let _current = self.logs.trace.enter();
                tracing::warn!(target: GUEST_RUN, function = %self.function, stream = self.stream, "guest output over {MAX_BYTES_PER_REQUEST} bytes; dropping the rest of this request's output");
            }
            return;
        }
        state.logged += line.len();
        let text = String::from_utf8_lossy(line);
        {
            let _current = self.logs.trace.enter();
            tracing::info!(target: GUEST_RUN, function = %self.function, stream = self.stream, "{text}");
        }
        self.logs.logs.guest_line(&self.function, self.stream, &text);
    }
}

impl GuestLog {
    fn flush_pending(&self) {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !state.pending.is_empty() {
            let line = std::mem::take(&mut state.pending);
            self.emit(&mut state, &line);
        }
    }
}

impl Drop for GuestLog {
    fn drop(&mut self) {
        // The last handle going away ends the stream: log a final line that had no newline.
        if Arc::strong_count(&self.state) == 1 {
            self.flush_pending();
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for GuestLog {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        self.accept(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flush_pending();
        Poll::Ready(Ok(()))
    }
}
