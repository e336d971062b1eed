//! The replay side of a [`Tape`]: the recorded events and the guest's position in them, the
//! divergence check every call goes through, the timeline of [`Step`]s, and what a finished
//! replay observed ([`Replayed`]).
//!
//! Invariants: a call is handed its recorded result only if it is the call the trace has next,
//! with the same arguments; after a divergence, or past `--until`, every call fails.

use serde::Serialize;

use super::{Mode, Tape};
use crate::record::trace::{Event, Output};

/// A replay in progress.
pub(super) struct Playback {
    pub(super) events: Vec<Event>,
    pub(super) next: usize,
    pub(super) stop_after: Option<u32>,
    /// The guest reached `stop_after` and was stopped.
    pub(super) stopped: bool,
    pub(super) divergence: Option<Divergence>,
    /// What the guest did, call by call (the timeline).
    pub(super) steps: Vec<Step>,
    pub(super) output: Output,
    pub(super) memory_bytes: u64,
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

impl Playback {
    /// The next event, if the guest's call is the one the trace has next.
    pub(super) fn take(&mut self, call: &str, args: &str) -> wasmtime::Result<Event> {
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

    pub(super) fn diverge(&mut self, index: u32, expected: String, actual: String) -> wasmtime::Error {
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
    pub(super) fn step(&mut self, call: &str, args: String, summary: String) {
        self.steps.push(Step { number: self.next as u32, call: call.to_string(), args, summary });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::Keep;
    use super::*;
    use crate::record::trace::Trace;

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
