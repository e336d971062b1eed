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
//!
//! This file holds the [`Tape`] and the host calls that go through it; the rest:
//! - `recording.rs`: the recording side, its bound, and handing the finished trace to its sink;
//! - `playback.rs`: the replay side: the divergence check, the timeline of [`Step`]s, and what
//!   a finished replay observed ([`Replayed`]);
//! - `verification.rs`: a recorded run's world handed to another build, which may make other
//!   calls than the trace has (deploy verification), and what it did ([`Verified`]);
//! - `io.rs`: what the run takes in and gives out besides host calls (the request body, the
//!   response, logs, a failure, memory), taped in either mode.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::trace::{Event, Output, Trace};
use playback::Playback;
use recording::Recording;

mod io;
mod playback;
mod recording;
mod verification;

pub use playback::{Divergence, Replayed, Step};
pub use verification::{Effects, Verified};

/// Bytes of events, request and response one recording may hold before it gives up.
pub const MAX_RECORDED_BYTES: usize = 8 << 20;

/// What a run is recorded onto or replayed from.
pub struct Tape {
    mode: Mode,
}

enum Mode {
    Record(Mutex<Recording>),
    Replay(Mutex<Box<Playback>>),
    Verify(Mutex<Box<verification::Verification>>),
}

/// When a finished recording is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Always (sampled, or asked for).
    Always,
    /// Only when the run failed or answered 5xx.
    OnFailure,
    /// For the verification corpus (`[record] keep_sample`): when the run succeeded (status
    /// under 500, no trap or timeout); when it failed, kept with the reason `failed` names
    /// (`Error` under `[record] errors`, `Sampled` when `sample` drew it too), or not at all.
    Corpus { failed: Option<super::trace::Reason> },
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

impl Tape {
    /// A tape recording `trace` (its request and facts filled in); when the run is over and
    /// `keep` says so, the finished trace goes to `sink` with the bytes it recorded.
    pub fn record(trace: Trace, keep: Keep, sink: Box<dyn FnOnce(Trace, usize) + Send>) -> Arc<Tape> {
        let bytes: usize = trace.request.body.iter().map(Vec::len).sum();
        Arc::new(Tape {
            mode: Mode::Record(Mutex::new(Recording {
                trace: Box::new(trace),
                bytes,
                calls: 0,
                // A body handed over whole (a WebSocket message) may be past the bound already.
                overflowed: bytes > MAX_RECORDED_BYTES,
                started: Instant::now(),
                keep,
                settled: false,
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

    /// The run is replayed or verified, not recorded: nothing it does reaches the live world.
    pub fn is_replay(&self) -> bool {
        !matches!(self.mode, Mode::Record(_))
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
            Mode::Verify(verification) => {
                let answered = verification.lock().answer(call, &args())?;
                match answered {
                    None => live(),
                    Some(result) => postcard::from_bytes(&result).map_err(|error| {
                        wasmtime::format_err!("the trace's result for host call {call} does not decode: {error}")
                    }),
                }
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
        let runs_live = match &self.mode {
            Mode::Record(_) => true,
            Mode::Replay(_) => false,
            Mode::Verify(_) => Tape::verifies_live(call),
        };
        if runs_live {
            let result = live.await?;
            self.call(call, args, summarize, || Ok(result))
        } else {
            self.call(call, args, summarize, || {
                Err(wasmtime::format_err!("host call {call} has no recorded answer and cannot run live here"))
            })
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
            // The resource was made live, on the scratch engine.
            Mode::Verify(_) => Ok(()),
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
            Mode::Verify(verification) => Ok(Outbound::Replayed(verification.lock().outbound(&args)?)),
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
            Mode::Verify(verification) => verification.lock().calls,
        }
    }
}

/// A byte string as an argument or result summary: readable text when short, else its start,
/// length and checksum (so two different long values never read the same).
pub fn show_bytes(bytes: &[u8]) -> String {
    show_all(&[bytes])
}

/// [`show_bytes`] of each of `values`, joined by `, `, in one string: a taped key-value call
/// writes its arguments this way on every recorded run (one allocation, no formatting
/// machinery for the common short value).
pub fn show_all(values: &[&[u8]]) -> String {
    const SHOWN: usize = 48;
    let mut shown = String::with_capacity(values.iter().map(|value| value.len().min(SHOWN) + 4).sum());
    for (index, bytes) in values.iter().enumerate() {
        if index > 0 {
            shown.push_str(", ");
        }
        let long = bytes.len() > SHOWN;
        shown.push('"');
        // `escape_ascii` yields ASCII only: each byte is a char.
        shown.extend(bytes[..if long { 32 } else { bytes.len() }].escape_ascii().map(char::from));
        shown.push('"');
        if long {
            let _ = write!(shown, "…({} bytes, crc32c {:08x})", bytes.len(), crc32c::crc32c(bytes));
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_shown_as_traces_have_always_written_them() {
        assert_eq!(show_bytes(b""), "\"\"");
        assert_eq!(show_bytes(b"hits"), "\"hits\"");
        assert_eq!(show_bytes(b"tab\t\"q\" \\ \x01\xff"), "\"tab\\t\\\"q\\\" \\\\ \\x01\\xff\"");
        let exactly_shown = [b'a'; 48];
        assert_eq!(show_bytes(&exactly_shown), format!("\"{}\"", "a".repeat(48)));
        let long: Vec<u8> = (0..=48u8).collect();
        let start: String = long[..32].escape_ascii().to_string();
        let checksum = crc32c::crc32c(&long);
        assert_eq!(show_bytes(&long), format!("\"{start}\"…(49 bytes, crc32c {checksum:08x})"));
        assert_eq!(show_all(&[b"k", &long, b""]), format!("\"k\", {}, \"\"", show_bytes(&long)));
    }
}
