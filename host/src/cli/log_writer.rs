//! The process's log writer: formatted lines are appended to a memory buffer and a thread writes
//! the buffer to stderr every [`FLUSH_EVERY`] (sooner once it holds [`FLUSH_AT`] bytes).
//!
//! Invariants: a worker logging a line takes one uncontended lock and copies the line; it never
//! waits for the terminal or the journal and never wakes another thread, except when the buffer
//! passes [`FLUSH_AT`]. At most [`MAX_BUFFERED`] bytes wait in memory; lines beyond it are dropped
//! and counted, and the count is reported (logged, in the server) when the writer next takes the
//! buffer, so the report has room and sits where the gap is.
//! Dropping the guard writes everything buffered.
//!
//! Written by hand rather than with `tracing_appender::non_blocking`: its writer thread blocks on
//! a channel that spins with `sched_yield` before it parks, and every line wakes it. Under load
//! that was 0.3 `sched_yield` calls and a cross-thread wake-up per request, CPU taken from the
//! workers on a 2-core machine, to write lines one syscall at a time.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in memory before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Buffered bytes that wake the writer before its interval is up.
const FLUSH_AT: usize = 256 << 10;
/// Buffered bytes beyond which lines are dropped (the writer is behind: stderr is blocked).
const MAX_BUFFERED: usize = 8 << 20;

/// When the writer wakes early, and when lines are dropped.
#[derive(Clone, Copy)]
struct Bounds {
    flush_at: usize,
    max_buffered: usize,
}

const BOUNDS: Bounds = Bounds { flush_at: FLUSH_AT, max_buffered: MAX_BUFFERED };

struct Shared {
    bounds: Bounds,
    state: Mutex<State>,
    wake: Condvar,
    dropped: AtomicU64,
}

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    stopping: bool,
}

/// Where the log subscriber writes (see the module docs).
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, after it has written everything buffered.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogWriterGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogWriter {
    /// A writer whose lines a thread writes to `out`; `report_dropped` hears how many lines were
    /// dropped since it last heard, each time the thread takes the buffer to write it.
    pub fn spawn(
        out: impl Write + Send + 'static,
        report_dropped: impl Fn(u64) + Send + 'static,
    ) -> (LogWriter, LogWriterGuard) {
        Self::spawn_bounded(out, report_dropped, BOUNDS)
    }

    /// Hands over one whole line (dropped, and counted, when the buffer is full).
    pub fn append(&self, line: &[u8]) {
        self.shared.append(line);
    }

    fn spawn_bounded(
        out: impl Write + Send + 'static,
        report_dropped: impl Fn(u64) + Send + 'static,
        bounds: Bounds,
    ) -> (LogWriter, LogWriterGuard) {
        let shared = Arc::new(Shared {
            bounds,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let writer = LogWriter { shared: shared.clone() };
        let thread = std::thread::Builder::new()
            .name("ledge-log".into())
            .spawn({
                let shared = shared.clone();
                move || shared.write_out(out, report_dropped)
            })
            .expect("spawning the log writer thread");
        (writer, LogWriterGuard { shared, thread: Some(thread) })
    }
}

impl Shared {
    /// The writer thread's body: swap the buffer out, write it, until stopped and drained.
    fn write_out(&self, mut out: impl Write, report_dropped: impl Fn(u64)) {
        let mut spare = Vec::new();
        let mut reported = 0;
        loop {
            let stopping = {
                let mut state = self.state.lock();
                if !state.stopping && state.buffer.len() < self.bounds.flush_at {
                    self.wake.wait_for(&mut state, FLUSH_EVERY);
                }
                std::mem::swap(&mut state.buffer, &mut spare);
                state.stopping
            };
            // Report right after the swap, while the buffer has room for the report's own line:
            // after the write, a writer that was behind finds the buffer full again, and the
            // report would be dropped in its turn. It lands in the stream where the gap is.
            let dropped = self.dropped.load(Ordering::Relaxed);
            if dropped > reported && !stopping {
                report_dropped(dropped - reported);
                reported = dropped;
            }
            // A closed or broken stderr must not stop the process: the lines are lost either way.
            let _ = out.write_all(&spare).and_then(|()| out.flush());
            spare.clear();
            if stopping {
                return;
            }
        }
    }

    fn append(&self, line: &[u8]) {
        let mut state = self.state.lock();
        if state.buffer.len() + line.len() > self.bounds.max_buffered {
            drop(state);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let before = state.buffer.len();
        state.buffer.extend_from_slice(line);
        let flush_at = self.bounds.flush_at;
        let wake = before < flush_at && state.buffer.len() >= flush_at;
        drop(state);
        if wake {
            self.wake.notify_one();
        }
    }
}

impl std::io::Write for &LogWriter {
    /// The fmt layer hands over one whole formatted line per call.
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.shared.append(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl Drop for LogWriterGuard {
    fn drop(&mut self) {
        self.shared.state.lock().stopping = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read while the writer thread owns a handle to it.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_reach_the_output_in_order_within_the_interval_and_on_drop() {
        let sink = Sink::default();
        let (writer, guard) = LogWriter::spawn(sink.clone(), |dropped| panic!("{dropped} lines dropped"));
        (&writer).write_all(b"one\n").unwrap();
        (&writer).write_all(b"two\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().as_slice() != b"one\ntwo\n" {
            assert!(std::time::Instant::now() < deadline, "not written: {:?}", sink.0.lock());
            std::thread::sleep(Duration::from_millis(5));
        }
        (&writer).write_all(b"three\n").unwrap();
        drop(guard);
        assert_eq!(sink.0.lock().as_slice(), b"one\ntwo\nthree\n", "the guard writes what is buffered");
    }

    #[test]
    fn a_writer_that_cannot_keep_up_drops_lines_past_the_bound_and_counts_them() {
        // An output that blocks until released: the buffer fills behind it.
        let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        struct Blocked(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>, Sink);
        impl Write for Blocked {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                let (open, opened) = &*self.0;
                let _open = opened.wait_while(open.lock().unwrap(), |open| !*open).unwrap();
                self.1.write(bytes)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let reports = Arc::new(Mutex::new(Vec::new()));
        // The server's bounds scaled down 128 times: the same behaviour without holding tens of
        // MiB while other tests measure their memory.
        let bounds = Bounds { flush_at: FLUSH_AT / 128, max_buffered: MAX_BUFFERED / 128 };
        let (writer, guard) = LogWriter::spawn_bounded(
            Blocked(gate.clone(), sink.clone()),
            {
                let reports = reports.clone();
                move |dropped| reports.lock().push(dropped)
            },
            bounds,
        );
        let line = [b'x'; 1023].iter().copied().chain([b'\n']).collect::<Vec<u8>>();
        // The thread takes at most one full buffer before it blocks writing it, the buffer fills
        // again, and then every further line is dropped.
        let lines = 3 * bounds.max_buffered / line.len();
        for _ in 0..lines {
            (&writer).write_all(&line).unwrap();
        }
        let dropped = writer.shared.dropped.load(Ordering::Relaxed);
        assert!(dropped >= (bounds.max_buffered / line.len()) as u64, "only {dropped} of {lines} lines dropped");
        assert!(writer.shared.state.lock().buffer.len() <= bounds.max_buffered);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while reports.lock().iter().sum::<u64>() < dropped {
            assert!(std::time::Instant::now() < deadline, "drops never reported: {:?} of {dropped}", reports.lock());
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(guard);
        let written = sink.0.lock().len() / line.len();
        assert_eq!(written as u64 + dropped, lines as u64, "every line is written or counted as dropped");
        // Usually one report; two when the writer took the buffer while lines were being dropped.
        let reports = reports.lock();
        assert!(!reports.is_empty() && reports.len() <= 2, "{reports:?}");
        assert_eq!(reports.iter().sum::<u64>(), dropped, "every drop is reported, none twice: {reports:?}");
    }
}
