//! The verification side of a [`Tape`]: a recorded run's world handed to a build that may not
//! be the one recorded (`ledge deploy --verify`, `ledge verify`). Unlike a replay, the build may
//! make other calls, in another order; the tape answers each from the recording by what it asks:
//!
//! - key-value calls (`ledge:platform/transactions`, `wasi:keyvalue`) run live, on a scratch
//!   engine the verifier seeded with the values the recording read (a key it never read is
//!   absent), so a build that reads its own writes sees them;
//! - clocks and randomness: the recorded results for the same call and arguments, in order;
//!   past them a clock repeats its last reading and randomness comes from a generator seeded
//!   by the trace, so both builds under comparison see the same values;
//! - outbound requests, queue sends and WebSocket calls: a recorded one with the same
//!   arguments (each is handed out once); one the recording does not have is a divergence,
//!   which stops the guest;
//! - anything else (the caller's token): the recorded result, else its last one, else live.
//!
//! What the run did besides answering (the outbound requests with their bodies, the queue
//! sends) is collected as [`Effects`], for the verifier to compare between builds. What a run
//! keeps to compare (response body, outbound bodies) is bounded by [`MAX_KEPT_BYTES`]: past it
//! the run is marked `overflowed` (not comparable) and nothing more is kept; its logs are not
//! kept at all (they are not compared).

use std::collections::{BTreeSet, HashMap, VecDeque};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::{Mode, OUTBOUND, Tape};
use crate::record::trace::{Event, Output, Trace};

/// The most random bytes one call gets from the seeded generator (a larger ask runs live:
/// wasmtime-wasi bounds it).
const MAX_SEEDED_BYTES: u64 = 1 << 20;

/// WebSocket calls (`ledge:platform/websocket.*`): answered from the recording, like queue
/// sends, since a verification has no connections; what they send is compared as an effect.
const WEBSOCKET: &str = "ledge:platform/websocket.";

/// The most bytes a verification run keeps to compare.
pub const MAX_KEPT_BYTES: usize = 16 << 20;

/// A verification in progress.
pub(super) struct Verification {
    kept: usize,
    pub(super) overflowed: bool,
    /// Recorded events not handed out yet, by call and arguments, in recorded order.
    unused: HashMap<(String, String), VecDeque<Event>>,
    /// The last event handed out for each call and arguments.
    last: HashMap<(String, String), Event>,
    rng: StdRng,
    recorded_at_ms: u64,
    pub(super) calls: u32,
    pub(super) divergence: Option<String>,
    pub(super) output: Output,
    pub(super) effects: Effects,
}

/// What a run did to the world besides its response.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Effects {
    /// Outbound requests, in the order made: `METHOD URI` and the body the guest sent.
    pub outbound: Vec<(String, Vec<u8>)>,
    /// Queue sends, in the order made: the call and its arguments.
    pub sends: Vec<String>,
    /// Engine keys its committed transactions deleted. A delete of a key the recording never
    /// read leaves nothing to see in the scratch engine (the key was absent there already),
    /// yet on the node it deletes data.
    pub deleted: BTreeSet<Vec<u8>>,
}

/// What a verification run observed, once it is over.
pub struct Verified {
    pub output: Output,
    pub effects: Effects,
    /// The build asked for something the recording cannot answer.
    pub divergence: Option<String>,
    pub calls: u32,
    /// It produced more than [`MAX_KEPT_BYTES`] to compare.
    pub overflowed: bool,
}

/// How the tape answers a call.
enum Answer {
    /// Run it live (against the scratch engine).
    Live,
    /// A recorded one with the same arguments, else a divergence.
    Recorded,
    /// The recorded sequence, then what [`Verification::invented`] or the last reading gives.
    Sequence,
}

fn answer_for(call: &str) -> Answer {
    if call.starts_with("ledge:platform/transactions.") || call.starts_with("wasi:keyvalue/") {
        Answer::Live
    } else if call.starts_with("ledge:platform/queues.") || call.starts_with(WEBSOCKET) || call == OUTBOUND {
        Answer::Recorded
    } else {
        Answer::Sequence
    }
}

impl Tape {
    /// A tape handing `trace`'s world to another build.
    pub fn verify(trace: &Trace) -> std::sync::Arc<Tape> {
        let mut unused: HashMap<(String, String), VecDeque<Event>> = HashMap::new();
        for event in &trace.events {
            unused.entry((event.call.clone(), event.args.clone())).or_default().push_back(event.clone());
        }
        // The same seed for every build verified against this trace.
        let seed = crc32c::crc32c(trace.id.as_bytes()) as u64;
        std::sync::Arc::new(Tape {
            mode: Mode::Verify(parking_lot::Mutex::new(Box::new(Verification {
                kept: 0,
                overflowed: false,
                unused,
                last: HashMap::new(),
                rng: StdRng::seed_from_u64(seed),
                recorded_at_ms: trace.recorded_at_ms,
                calls: 0,
                divergence: None,
                output: Output::default(),
                effects: Effects::default(),
            }))),
        })
    }

    /// What a verification observed (once the run is over).
    pub fn verified(&self) -> Option<Verified> {
        let Mode::Verify(verification) = &self.mode else { return None };
        let mut verification = verification.lock();
        Some(Verified {
            output: std::mem::take(&mut verification.output),
            effects: std::mem::take(&mut verification.effects),
            divergence: verification.divergence.clone(),
            calls: verification.calls,
            overflowed: verification.overflowed,
        })
    }

    /// The body the guest sent with outbound request `args` (verifying: collected as an effect).
    pub fn outbound_sent(&self, args: String, body: Vec<u8>) {
        if let Mode::Verify(verification) = &self.mode {
            let mut verification = verification.lock();
            if verification.keep(body.len()) {
                verification.effects.outbound.push((args, body));
            }
        }
    }

    /// It hands a recorded run to another build ([`Tape::verify`]).
    pub fn is_verify(&self) -> bool {
        matches!(self.mode, Mode::Verify(_))
    }

    /// `keys`, deleted by a transaction of this run that committed (verifying: collected as an
    /// effect).
    pub fn committed_deletes<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) {
        if let Mode::Verify(verification) = &self.mode {
            let mut verification = verification.lock();
            for key in keys {
                if verification.keep(key.len()) {
                    verification.effects.deleted.insert(key.to_vec());
                }
            }
        }
    }

    /// Whether a verification runs this call live (the key-value calls).
    pub(super) fn verifies_live(call: &str) -> bool {
        matches!(answer_for(call), Answer::Live)
    }
}

impl Verification {
    /// Accounts `bytes` more kept to compare; false (and the run not comparable) past the bound.
    pub(super) fn keep(&mut self, bytes: usize) -> bool {
        self.kept = self.kept.saturating_add(bytes);
        if self.kept > MAX_KEPT_BYTES {
            self.overflowed = true;
        }
        !self.overflowed
    }

    /// The encoded result for `call(args)`, or `None` to run it live.
    pub(super) fn answer(&mut self, call: &str, args: &str) -> wasmtime::Result<Option<Vec<u8>>> {
        if let Some(divergence) = &self.divergence {
            return Err(wasmtime::format_err!("verification stopped: {divergence}"));
        }
        self.calls = self.calls.saturating_add(1);
        let key = (call.to_string(), args.to_string());
        let recorded = self.unused.get_mut(&key).and_then(VecDeque::pop_front);
        match answer_for(call) {
            Answer::Live => Ok(None),
            Answer::Recorded => {
                if call.starts_with("ledge:platform/queues.") || call.starts_with(WEBSOCKET) {
                    self.effects.sends.push(format!("{call}({args})"));
                }
                match recorded {
                    Some(event) => Ok(Some(event.result)),
                    None => Err(self.diverge(format!("{call}({args}), which the recorded run did not make"))),
                }
            }
            Answer::Sequence => {
                if let Some(event) = recorded {
                    let result = event.result.clone();
                    self.last.insert(key, event);
                    return Ok(Some(result));
                }
                if call.starts_with("wasi:random/") {
                    return Ok(self.invented(call, args));
                }
                if let Some(event) = self.last.get(&key) {
                    return Ok(Some(event.result.clone()));
                }
                Ok(self.invented(call, args))
            }
        }
    }

    /// The recorded outbound event for `args`, else a divergence.
    pub(super) fn outbound(&mut self, args: &str) -> wasmtime::Result<Event> {
        if let Some(divergence) = &self.divergence {
            return Err(wasmtime::format_err!("verification stopped: {divergence}"));
        }
        self.calls = self.calls.saturating_add(1);
        let key = (OUTBOUND.to_string(), args.to_string());
        match self.unused.get_mut(&key).and_then(VecDeque::pop_front) {
            Some(event) => Ok(event),
            None => Err(self.diverge(format!("outbound request {args}, which the recorded run did not make"))),
        }
    }

    fn diverge(&mut self, what: String) -> wasmtime::Error {
        let error = wasmtime::format_err!("verification stopped: the build made {what}");
        self.divergence = Some(format!("the build made {what}"));
        error
    }

    /// A deterministic result for a clock or random call the recording has no answer for.
    fn invented(&mut self, call: &str, args: &str) -> Option<Vec<u8>> {
        let encoded = match call {
            "wasi:clocks/wall-clock.now" => {
                let at = self.recorded_at_ms;
                postcard::to_stdvec(&(at / 1000, ((at % 1000) * 1_000_000) as u32))
            }
            "wasi:clocks/monotonic-clock.now" => postcard::to_stdvec(&0u64),
            "wasi:random/random.get-random-bytes" | "wasi:random/insecure.get-insecure-random-bytes" => {
                let len = args.strip_prefix("len=")?.parse::<u64>().ok().filter(|len| *len <= MAX_SEEDED_BYTES)?;
                let mut bytes = vec![0u8; len as usize];
                self.rng.fill_bytes(&mut bytes);
                postcard::to_stdvec(&bytes)
            }
            "wasi:random/random.get-random-u64" | "wasi:random/insecure.get-insecure-random-u64" => {
                postcard::to_stdvec(&self.rng.next_u64())
            }
            "wasi:random/insecure-seed.insecure-seed" => {
                postcard::to_stdvec(&(self.rng.next_u64(), self.rng.next_u64()))
            }
            _ => return None,
        };
        Some(encoded.expect("plain values always encode"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Keep;

    fn recorded(calls: &[(&str, &str, u64)]) -> Trace {
        let trace = std::sync::Arc::new(parking_lot::Mutex::new(None));
        let into = trace.clone();
        let tape = Tape::record(
            Trace { id: "0123456789abcdef01234".into(), ..Trace::default() },
            Keep::Always,
            Box::new(move |trace, _| *into.lock() = Some(trace)),
        );
        for (call, args, result) in calls {
            let args = args.to_string();
            tape.call(call, || args, |n: &u64| n.to_string(), || Ok(*result)).unwrap();
        }
        drop(tape);
        trace.lock().take().expect("kept")
    }

    fn ask(tape: &Tape, call: &str, args: &str) -> wasmtime::Result<u64> {
        let args = args.to_string();
        tape.call(call, || args, |n: &u64| n.to_string(), || Ok(999))
    }

    #[test]
    fn clocks_repeat_their_last_reading_and_randomness_is_seeded_by_the_trace() {
        let trace = recorded(&[("wasi:clocks/monotonic-clock.now", "", 5), ("wasi:clocks/monotonic-clock.now", "", 7)]);
        let tape = Tape::verify(&trace);
        let clock = |tape: &Tape| ask(tape, "wasi:clocks/monotonic-clock.now", "").unwrap();
        assert_eq!([clock(&tape), clock(&tape), clock(&tape)], [5, 7, 7]);
        let random = |tape: &Tape| ask(tape, "wasi:random/random.get-random-u64", "").unwrap();
        let (first, second) = (random(&tape), random(&tape));
        assert_ne!(first, second);
        let again = Tape::verify(&trace);
        assert_eq!([random(&again), random(&again)], [first, second], "the same seed for every build");
    }

    #[test]
    fn a_queue_send_the_recording_lacks_stops_the_guest_and_key_value_calls_run_live() {
        let trace = recorded(&[("ledge:platform/queues.send", "\"jobs\", \"a\"", 1)]);
        let tape = Tape::verify(&trace);
        assert_eq!(ask(&tape, "ledge:platform/transactions.get", "\"k\"").unwrap(), 999, "live");
        assert_eq!(ask(&tape, "ledge:platform/queues.send", "\"jobs\", \"a\"").unwrap(), 1);
        assert!(ask(&tape, "ledge:platform/queues.send", "\"jobs\", \"a\"").is_err(), "each send is handed out once");
        let verified = tape.verified().unwrap();
        assert!(verified.divergence.unwrap().contains("queues.send"));
        assert_eq!(verified.effects.sends.len(), 2);
        assert!(ask(&tape, "wasi:clocks/monotonic-clock.now", "").is_err(), "nothing runs after a divergence");
    }
}
