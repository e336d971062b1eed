//! The recording side of a [`Tape`]: the trace so far, the bytes it holds, and, once the tape
//! is dropped, handing the finished trace to its sink when it is to be kept.
//!
//! Invariants: past [`MAX_RECORDED_BYTES`] nothing more is held (calls are only counted) and
//! the trace is not kept; a kept trace goes to the sink once, when the tape is dropped.

use std::time::Instant;

use serde::Serialize;

use super::{Keep, MAX_RECORDED_BYTES, Mode, Tape};
use crate::record::store::new_id;
use crate::record::trace::{Event, Reason, Trace};

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
    /// Kept only on failure, the run finished cleanly: nothing more can make it kept, so its
    /// output is no longer taken down ([`Tape::settle`]).
    pub(super) settled: bool,
    pub(super) sink: Option<Box<dyn FnOnce(Trace, usize) + Send>>,
}

impl Tape {
    /// The id the trace has (made on first use: most recordings are never kept, and never
    /// need one), or `None` when the tape records nothing.
    pub fn trace_id(&self) -> Option<String> {
        let Mode::Record(recording) = &self.mode else { return None };
        Some(recording.lock().trace_id().to_string())
    }

    /// The guest finished cleanly with `status`, its response whole: a recording kept only on
    /// failure (the default `[record] errors`) is then settled as not kept, and takes no more
    /// of the run's output. Whether it settled.
    pub fn settle(&self, status: u16) -> bool {
        let Mode::Record(recording) = &self.mode else { return false };
        let mut recording = recording.lock();
        if recording.keep == Keep::OnFailure && status < 500 && !recording.trace.failed() {
            recording.settled = true;
        }
        recording.settled
    }

    /// Would the finished recording be kept as it stands now (for `ledge-trace`)?
    pub fn keeps(&self) -> bool {
        match &self.mode {
            Mode::Record(recording) => {
                let recording = recording.lock();
                !recording.overflowed && recording.kept()
            }
            Mode::Replay(_) | Mode::Verify(_) => false,
        }
    }
}

impl Recording {
    fn trace_id(&mut self) -> &str {
        if self.trace.id.is_empty() {
            self.trace.id = new_id(self.trace.recorded_at_ms);
        }
        &self.trace.id
    }

    /// Whether the run, as it stands, is to be kept (the bound aside).
    fn kept(&self) -> bool {
        if self.settled {
            return false;
        }
        match self.keep {
            Keep::Always => true,
            Keep::OnFailure => self.trace.failed(),
            // The corpus holds answered runs only: a 4xx (a path nobody serves, say) would let
            // any caller fill it with junk. Drawn by `sample` too, it is kept as sampled.
            Keep::Corpus { failed } if self.trace.failed() => failed.is_some(),
            Keep::Corpus { failed } => self.trace.status() < 400 || failed == Some(Reason::Sampled),
        }
    }

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
        let keep = recording.kept();
        if !keep || recording.overflowed {
            if keep {
                tracing::warn!(function = %recording.trace.function, "trace over {MAX_RECORDED_BYTES} bytes; not kept");
            }
            return;
        }
        recording.trace_id();
        let mut trace = *std::mem::take(&mut recording.trace);
        if let Keep::Corpus { failed: Some(reason) } = recording.keep
            && (trace.failed() || trace.status() >= 400)
        {
            // Drawn for the corpus, which holds only successful runs: kept for another reason.
            trace.reason = reason;
        }
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

    #[test]
    fn a_request_body_past_the_bound_is_not_kept_even_without_host_calls() {
        let kept = Arc::new(AtomicBool::new(false));
        let sink_kept = kept.clone();
        let mut trace = Trace::default();
        trace.request.body = vec![vec![0; MAX_RECORDED_BYTES + 1]];
        let tape = Tape::record(trace, Keep::Always, Box::new(move |_, _| sink_kept.store(true, Ordering::SeqCst)));
        assert!(!tape.keeps());
        drop(tape);
        assert!(!kept.load(Ordering::SeqCst), "a message handed over whole past the bound is not kept");
    }

    /// A recording drawn for the corpus, finished with `status` (`None`: a trap): the reason it
    /// was kept with, if it was.
    fn corpus_run(failed: Option<Reason>, status: Option<u16>) -> Option<Reason> {
        let kept = Arc::new(parking_lot::Mutex::new(None));
        let into = kept.clone();
        let trace = Trace { reason: Reason::Corpus, ..Trace::default() };
        let tape =
            Tape::record(trace, Keep::Corpus { failed }, Box::new(move |trace, _| *into.lock() = Some(trace.reason)));
        {
            let Mode::Record(recording) = &tape.mode else { unreachable!() };
            let output = &mut recording.lock().trace.output;
            match status {
                Some(status) => {
                    output.response = Some(crate::record::trace::RecordedResponse { status, ..Default::default() })
                }
                None => {
                    output.failure =
                        Some(crate::record::trace::Failure { kind: "trap".into(), message: String::new(), at_call: 0 })
                }
            }
        }
        let said = tape.keeps();
        drop(tape);
        let reason = *kept.lock();
        assert_eq!(said, reason.is_some(), "keeps() says what the drop does");
        reason
    }

    #[test]
    fn a_corpus_recording_is_kept_when_it_succeeded_and_as_an_error_when_errors_are_kept() {
        let errors = Some(Reason::Error);
        assert_eq!(corpus_run(None, Some(200)), Some(Reason::Corpus));
        assert_eq!(corpus_run(errors, Some(404)), None, "a 4xx is neither in the corpus nor a failure");
        assert_eq!(corpus_run(Some(Reason::Sampled), Some(404)), Some(Reason::Sampled));
        assert_eq!(corpus_run(errors, Some(503)), errors);
        assert_eq!(corpus_run(errors, None), errors);
        assert_eq!(corpus_run(Some(Reason::Sampled), None), Some(Reason::Sampled));
        assert_eq!(corpus_run(None, Some(500)), None);
        assert_eq!(corpus_run(None, None), None);
    }
}
