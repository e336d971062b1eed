//! The recording side of a [`Tape`]: the trace so far, the bytes it holds, and, once the tape
//! is dropped, handing the finished trace to its sink when it is to be kept.
//!
//! Invariants: past [`MAX_RECORDED_BYTES`] nothing more is held (calls are only counted) and
//! the trace is not kept; a kept trace goes to the sink once, when the tape is dropped.

use std::time::Instant;

use serde::Serialize;

use super::{Keep, MAX_RECORDED_BYTES, Mode, Tape};
use crate::record::trace::{Event, Trace};

/// A recording in progress: the trace so far, and where it goes when the run is over.
pub(super) struct Recording {
    pub(super) trace: Box<Trace>,
    pub(super) bytes: usize,
    /// Host calls made: the position clock (events stop being kept past the bound).
    pub(super) calls: u32,
    /// Over [`MAX_RECORDED_BYTES`]: the trace is incomplete and is not kept.
    pub(super) overflowed: bool,
    pub(super) started: Instant,
    pub(super) keep: Keep,
    pub(super) sink: Option<Box<dyn FnOnce(Trace, usize) + Send>>,
}

impl Tape {
    /// Would the finished recording be kept as it stands now (for `ledge-trace`)?
    pub fn keeps(&self) -> bool {
        match &self.mode {
            Mode::Record(recording) => {
                let recording = recording.lock();
                !recording.overflowed && (recording.keep == Keep::Always || recording.trace.failed())
            }
            Mode::Replay(_) => false,
        }
    }
}

impl Recording {
    /// Accounts `bytes` more; false (and the recording abandoned) past the bound.
    pub(super) fn grow(&mut self, bytes: usize) -> bool {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > MAX_RECORDED_BYTES {
            self.overflowed = true;
        }
        !self.overflowed
    }

    /// Records one host call; past the bound only counts it (the trace will not be kept), so a
    /// guest calling in a loop holds no more memory than the bound.
    pub(super) fn push<T: Serialize>(&mut self, call: &str, args: String, result: &T, summary: String) {
        self.calls = self.calls.saturating_add(1);
        if self.overflowed {
            return;
        }
        let result = postcard::to_stdvec(result).expect("host call results always encode");
        let size = std::mem::size_of::<Event>() + result.len() + args.len() + summary.len() + call.len();
        if self.grow(size) {
            self.trace.events.push(Event { call: call.to_string(), args, result, summary, body: Vec::new() });
        }
    }

    /// The event of recorded host call `index`, unless the recording gave up before it.
    pub(super) fn event(&mut self, index: usize, bytes: usize) -> Option<&mut Event> {
        if self.grow(bytes) { self.trace.events.get_mut(index) } else { None }
    }
}

impl Drop for Tape {
    fn drop(&mut self) {
        let Mode::Record(recording) = &mut self.mode else { return };
        let recording = recording.get_mut();
        let keep = recording.keep == Keep::Always || recording.trace.failed();
        if !keep || recording.overflowed {
            if keep {
                tracing::warn!(function = %recording.trace.function, "trace over {MAX_RECORDED_BYTES} bytes; not kept");
            }
            return;
        }
        let mut trace = *std::mem::take(&mut recording.trace);
        trace.duration_us = recording.started.elapsed().as_micros() as u64;
        trace.output.calls = recording.calls;
        if let Some(sink) = recording.sink.take() {
            sink(trace, recording.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn a_recording_past_its_bound_holds_no_more_and_is_not_kept() {
        let kept = Arc::new(AtomicBool::new(false));
        let sink_kept = kept.clone();
        let tape =
            Tape::record(Trace::default(), Keep::Always, Box::new(move |_, _| sink_kept.store(true, Ordering::SeqCst)));
        // A guest reading the clock in a loop, far past the bound.
        let calls = 3 * MAX_RECORDED_BYTES / std::mem::size_of::<Event>();
        for _ in 0..calls {
            tape.call("wasi:clocks/monotonic-clock.now", String::new, |n: &u64| n.to_string(), || Ok(7u64)).unwrap();
        }
        assert_eq!(tape.position() as usize, calls, "the position clock counts every call");
        let Mode::Record(recording) = &tape.mode else { unreachable!() };
        let held = recording.lock().trace.events.len();
        assert!(held * std::mem::size_of::<Event>() <= MAX_RECORDED_BYTES && held < calls / 2, "{held} events held");
        assert!(!tape.keeps());
        drop(tape);
        assert!(!kept.load(Ordering::SeqCst), "an incomplete recording is not kept");
    }
}
