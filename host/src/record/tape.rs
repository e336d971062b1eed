//! The tape one guest run is recorded onto, or replayed from.
//!
//! Every host call whose result a guest can observe goes through [`Tape::call`] (or
//! [`Tape::observe`] for calls that create resources): recording, it runs the live call and
//! appends an [`Event`]; replaying, it checks that the guest makes the call the trace has next,
//! with the same arguments, and hands back the recorded result without touching the live world.
//!
//! Invariants:
//! - the position clock is the index of the host call (no fuel, no timers);
//! - recording is bounded: past [`MAX_RECORDED_BYTES`] the tape stops recording and the trace
//!   is not kept (a partial trace could not replay), so a guest cannot make the host hold more;
//! - replaying never reaches the live world for a recorded result: a call the trace does not
//!   have next is a divergence, which stops the guest with a trap at that call.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::trace::{Event, Failure, LogChunk, Output, RecordedResponse, Trace};

/// Bytes of events, request and response one recording may hold before it gives up.
pub const MAX_RECORDED_BYTES: usize = 8 << 20;

/// What a run is recorded onto or replayed from.
pub struct Tape {
    mode: Mode,
}

enum Mode {
    Record(Mutex<Recording>),
    Replay(Mutex<Box<Playback>>),
}

/// A recording in progress: the trace so far, and where it goes when the run is over.
struct Recording {
    trace: Box<Trace>,
    bytes: usize,
    /// Host calls made: the position clock (events stop being kept past the bound).
    calls: u32,
    /// Over [`MAX_RECORDED_BYTES`]: the trace is incomplete and is not kept.
    overflowed: bool,
    started: Instant,
    keep: Keep,
    sink: Option<Box<dyn FnOnce(Trace, usize) + Send>>,
}

/// When a finished recording is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Always (sampled, or asked for).
    Always,
    /// Only when the run failed or answered 5xx.
    OnFailure,
}

/// A replay in progress.
struct Playback {
    events: Vec<Event>,
    next: usize,
    stop_after: Option<u32>,
    /// The guest reached `stop_after` and was stopped.
    stopped: bool,
    divergence: Option<Divergence>,
    /// What the guest did, call by call (the timeline).
    steps: Vec<Step>,
    output: Output,
    memory_bytes: u64,
}

/// One host call as the replay saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub number: u32,
    pub call: String,
    pub args: String,
    pub summary: String,
}

/// Where a replay left the trace.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Divergence {
    /// The 1-based number of the host call at which the guest departed from the trace.
    pub at_call: u32,
    pub expected: String,
    pub actual: String,
}

/// The host call outbound HTTP is recorded as.
pub const OUTBOUND: &str = "wasi:http/outgoing-handler.handle";

/// An outbound request on the tape.
pub enum Outbound {
    /// Being recorded as the event at this index.
    Recording(usize),
    /// Replayed from this event.
    Replayed(Event),
}

/// The message of the trap that stops a replay at `--until N`.
const STOPPED: &str = "replay stopped (--until)";

/// What a finished replay observed.
pub struct Replayed {
    pub steps: Vec<Step>,
    pub divergence: Option<Divergence>,
    pub output: Output,
    /// Host calls in the trace the guest never made.
    pub unplayed: usize,
    pub memory_bytes: u64,
    pub stopped: bool,
}

impl Tape {
    /// A tape recording `trace` (its request and facts filled in); when the run is over and
    /// `keep` says so, the finished trace goes to `sink` with the bytes it recorded.
    pub fn record(trace: Trace, keep: Keep, sink: Box<dyn FnOnce(Trace, usize) + Send>) -> Arc<Tape> {
        let bytes = trace.request.body.iter().map(Vec::len).sum();
        Arc::new(Tape {
            mode: Mode::Record(Mutex::new(Recording {
                trace: Box::new(trace),
                bytes,
                calls: 0,
                overflowed: false,
                started: Instant::now(),
                keep,
                sink: Some(sink),
            })),
        })
    }

    /// A tape replaying `events`, stopping the guest after host call `stop_after`.
    pub fn replay(events: Vec<Event>, stop_after: Option<u32>) -> Arc<Tape> {
        Arc::new(Tape {
            mode: Mode::Replay(Mutex::new(Box::new(Playback {
                events,
                next: 0,
                stop_after,
                stopped: false,
                divergence: None,
                steps: Vec::new(),
                output: Output::default(),
                memory_bytes: 0,
            }))),
        })
    }

    pub fn is_replay(&self) -> bool {
        matches!(self.mode, Mode::Replay(_))
    }

    /// A host call whose result the guest observes: recorded, or replayed from the trace.
    pub fn call<T: Serialize + DeserializeOwned>(
        &self,
        call: &str,
        args: impl FnOnce() -> String,
        summarize: impl Fn(&T) -> String,
        live: impl FnOnce() -> wasmtime::Result<T>,
    ) -> wasmtime::Result<T> {
        match &self.mode {
            Mode::Record(recording) => {
                let result = live()?;
                recording.lock().push(call, args(), &result, summarize(&result));
                Ok(result)
            }
            Mode::Replay(playback) => {
                let mut playback = playback.lock();
                let event = playback.take(call, &args())?;
                let result: T = postcard::from_bytes(&event.result).map_err(|error| {
                    wasmtime::format_err!("the trace's result for host call {call} does not decode: {error}")
                })?;
                playback.step(call, event.args, summarize(&result));
                Ok(result)
            }
        }
    }

    /// [`Tape::call`] for an async live call.
    pub async fn call_async<T: Serialize + DeserializeOwned>(
        &self,
        call: &str,
        args: impl FnOnce() -> String,
        summarize: impl Fn(&T) -> String,
        live: impl Future<Output = wasmtime::Result<T>>,
    ) -> wasmtime::Result<T> {
        match &self.mode {
            Mode::Record(_) => {
                let result = live.await?;
                self.call(call, args, summarize, || Ok(result))
            }
            Mode::Replay(_) => self.call(call, args, summarize, || unreachable!("a replay never runs the live call")),
        }
    }

    /// A host call that creates a resource, run live in both modes (on a replay, against
    /// nothing real); its outcome is recorded and, on replay, checked against the trace.
    pub fn observe(&self, call: &str, args: impl FnOnce() -> String, outcome: &str) -> wasmtime::Result<()> {
        match &self.mode {
            Mode::Record(recording) => {
                recording.lock().push(call, args(), &(), outcome.to_string());
                Ok(())
            }
            Mode::Replay(playback) => {
                let mut playback = playback.lock();
                let index = playback.next as u32;
                let event = playback.take(call, &args())?;
                if event.summary != outcome {
                    let expected = format!("{call} -> {}", event.summary);
                    return Err(playback.diverge(index, expected, format!("{call} -> {outcome}")));
                }
                playback.step(call, event.args, event.summary);
                Ok(())
            }
        }
    }

    /// An outbound request (`wasi:http/outgoing-handler.handle`): recording, its event is
    /// placed now and completed when the response arrives; replaying, the recorded event.
    pub fn outbound(&self, args: String) -> wasmtime::Result<Outbound> {
        match &self.mode {
            Mode::Record(recording) => {
                let mut recording = recording.lock();
                recording.push(OUTBOUND, args, &(), String::new());
                Ok(Outbound::Recording(recording.calls as usize - 1))
            }
            Mode::Replay(playback) => {
                let mut playback = playback.lock();
                let event = playback.take(OUTBOUND, &args)?;
                playback.step(OUTBOUND, event.args.clone(), event.summary.clone());
                Ok(Outbound::Replayed(event))
            }
        }
    }

    /// The outcome of recorded outbound call `index`.
    pub fn outbound_result<T: Serialize>(&self, index: usize, result: &T, summary: String) {
        if let Mode::Record(recording) = &self.mode {
            let mut recording = recording.lock();
            let result = postcard::to_stdvec(result).expect("host call results always encode");
            if let Some(event) = recording.event(index, result.len() + summary.len()) {
                (event.result, event.summary) = (result, summary);
            }
        }
    }

    /// A body chunk of recorded outbound call `index` reached the guest.
    pub fn outbound_chunk(&self, index: usize, chunk: &[u8]) {
        if let Mode::Record(recording) = &self.mode
            && let Some(event) = recording.lock().event(index, chunk.len())
        {
            event.body.push(chunk.to_vec());
        }
    }

    /// The index the next host call gets.
    pub fn position(&self) -> u32 {
        match &self.mode {
            Mode::Record(recording) => recording.lock().calls,
            Mode::Replay(playback) => playback.lock().next as u32,
        }
    }

    /// A request body chunk handed to the guest.
    pub fn request_chunk(&self, chunk: &[u8]) {
        if let Mode::Record(recording) = &self.mode {
            let mut recording = recording.lock();
            if recording.grow(chunk.len()) {
                recording.trace.request.body.push(chunk.to_vec());
            }
        }
    }

    /// The request body failed after the chunks so far.
    pub fn request_error(&self, error: &str) {
        if let Mode::Record(recording) = &self.mode {
            recording.lock().trace.request.body_error = Some(error.to_string());
        }
    }

    /// The guest set its response head.
    pub fn response(&self, response: RecordedResponse) {
        self.with_output(|output| output.response = Some(response));
    }

    /// The guest wrote a chunk of its response body.
    pub fn response_chunk(&self, chunk: &[u8]) {
        if let Mode::Record(recording) = &self.mode
            && !recording.lock().grow(chunk.len())
        {
            return;
        }
        self.with_output(|output| output.body.extend_from_slice(chunk));
    }

    /// The guest wrote to stdout or stderr.
    pub fn log(&self, stream: &str, bytes: &[u8]) {
        if let Mode::Record(recording) = &self.mode
            && !recording.lock().grow(bytes.len())
        {
            return;
        }
        let at_call = self.position();
        self.with_output(|output| match output.logs.last_mut() {
            Some(last) if last.stream == stream && last.at_call == at_call => last.bytes.extend_from_slice(bytes),
            _ => output.logs.push(LogChunk { stream: stream.to_string(), at_call, bytes: bytes.to_vec() }),
        });
    }

    /// The run failed.
    pub fn fail(&self, kind: &str, message: &str) {
        let at_call = self.position();
        self.with_output(|output| {
            output.failure = Some(Failure { kind: kind.to_string(), message: message.to_string(), at_call })
        });
    }

    /// The instance's linear memory grew to `bytes`.
    pub fn memory(&self, bytes: u64) {
        if let Mode::Replay(playback) = &self.mode {
            playback.lock().memory_bytes = bytes;
        }
    }

    fn with_output(&self, change: impl FnOnce(&mut Output)) {
        match &self.mode {
            Mode::Record(recording) => change(&mut recording.lock().trace.output),
            Mode::Replay(playback) => change(&mut playback.lock().output),
        }
    }

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

    /// What a replay observed (once the run is over).
    pub fn replayed(&self) -> Option<Replayed> {
        let Mode::Replay(playback) = &self.mode else { return None };
        let mut playback = playback.lock();
        let stopped = playback.stopped;
        let mut output = std::mem::take(&mut playback.output);
        output.calls = playback.next as u32;
        Some(Replayed {
            steps: std::mem::take(&mut playback.steps),
            divergence: playback.divergence.clone(),
            unplayed: playback.events.len() - playback.next,
            output,
            memory_bytes: playback.memory_bytes,
            stopped,
        })
    }
}

impl Recording {
    /// Accounts `bytes` more; false (and the recording abandoned) past the bound.
    fn grow(&mut self, bytes: usize) -> bool {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > MAX_RECORDED_BYTES {
            self.overflowed = true;
        }
        !self.overflowed
    }

    /// Records one host call; past the bound only counts it (the trace will not be kept), so a
    /// guest calling in a loop holds no more memory than the bound.
    fn push<T: Serialize>(&mut self, call: &str, args: String, result: &T, summary: String) {
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
    fn event(&mut self, index: usize, bytes: usize) -> Option<&mut Event> {
        if self.grow(bytes) { self.trace.events.get_mut(index) } else { None }
    }
}

impl Playback {
    /// The next event, if the guest's call is the one the trace has next.
    fn take(&mut self, call: &str, args: &str) -> wasmtime::Result<Event> {
        let number = self.next as u32 + 1;
        if let Some(divergence) = &self.divergence {
            return Err(wasmtime::format_err!("replay diverged at host call {}", divergence.at_call));
        }
        if self.stop_after.is_some_and(|stop| number > stop) {
            self.stopped = true;
            return Err(wasmtime::format_err!("{STOPPED} before host call {number}"));
        }
        let Some(event) = self.events.get(self.next) else {
            let actual = format!("{call}({args})");
            return Err(self.diverge(
                self.next as u32,
                "no more host calls (the recorded run ended here)".into(),
                actual,
            ));
        };
        if event.call != call || event.args != args {
            let expected = format!("{}({})", event.call, event.args);
            return Err(self.diverge(self.next as u32, expected, format!("{call}({args})")));
        }
        let event = event.clone();
        self.next += 1;
        Ok(event)
    }

    fn diverge(&mut self, index: u32, expected: String, actual: String) -> wasmtime::Error {
        let divergence = Divergence { at_call: index + 1, expected, actual };
        let error = wasmtime::format_err!(
            "replay diverged at host call {}: the trace has {}, the guest made {}",
            divergence.at_call,
            divergence.expected,
            divergence.actual
        );
        self.divergence = Some(divergence);
        error
    }

    /// Notes the call just taken (`next` already counts it, so it is the call's 1-based number).
    fn step(&mut self, call: &str, args: String, summary: String) {
        self.steps.push(Step { number: self.next as u32, call: call.to_string(), args, summary });
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

/// A byte string as an argument or result summary: readable text when short, else its start,
/// length and checksum (so two different long values never read the same).
pub fn show_bytes(bytes: &[u8]) -> String {
    const SHOWN: usize = 48;
    let text = |b: &[u8]| b.escape_ascii().to_string();
    if bytes.len() <= SHOWN {
        format!("\"{}\"", text(bytes))
    } else {
        format!("\"{}\"…({} bytes, crc32c {:08x})", text(&bytes[..32]), bytes.len(), crc32c::crc32c(bytes))
    }
}

#[cfg(test)]
mod tests {
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
    fn a_replay_hands_back_the_recorded_result_and_stops_at_a_divergence() {
        let recorded = Arc::new(parking_lot::Mutex::new(None));
        let into = recorded.clone();
        let tape = Tape::record(Trace::default(), Keep::Always, Box::new(move |trace, _| *into.lock() = Some(trace)));
        tape.call("wasi:clocks/monotonic-clock.now", String::new, |n: &u64| n.to_string(), || Ok(41u64)).unwrap();
        drop(tape);
        let events = recorded.lock().take().expect("kept").events;
        let replay = Tape::replay(events.clone(), None);
        let live = || -> wasmtime::Result<u64> { panic!("a replay never runs the live call") };
        assert_eq!(
            replay.call("wasi:clocks/monotonic-clock.now", String::new, |n: &u64| n.to_string(), live).unwrap(),
            41
        );
        let other = Tape::replay(events, None);
        assert!(other.call("wasi:clocks/wall-clock.now", String::new, |n: &u64| n.to_string(), live).is_err());
        let divergence = other.replayed().unwrap().divergence.expect("a divergence");
        assert_eq!(divergence.at_call, 1);
        assert!(divergence.expected.starts_with("wasi:clocks/monotonic-clock.now"), "{divergence:?}");
    }
}
