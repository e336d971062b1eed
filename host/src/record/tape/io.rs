//! What a taped run takes in and gives out besides host calls: the request body as handed to
//! the guest, the response, stdout and stderr, a failure, and (replaying) linear memory.
//!
//! Invariants: recording, body and log bytes count toward the tape's bound (past it they are
//! dropped and the trace is not kept); replaying, the output is what the guest produces now,
//! collected afresh, never read from the trace; verifying, the body counts toward the
//! verification's bound and logs are not kept.

use super::{Mode, Tape};
use crate::record::trace::{Failure, LogChunk, Output, RecordedResponse};

impl Tape {
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
        match &self.mode {
            Mode::Record(recording) if !recording.lock().grow(chunk.len()) => return,
            Mode::Verify(verification) if !verification.lock().keep(chunk.len()) => return,
            _ => {}
        }
        self.with_output(|output| output.body.extend_from_slice(chunk));
    }

    /// The guest wrote to stdout or stderr.
    pub fn log(&self, stream: &str, bytes: &[u8]) {
        match &self.mode {
            Mode::Record(recording) if !recording.lock().grow(bytes.len()) => return,
            // A verification does not compare logs: it keeps none.
            Mode::Verify(_) => return,
            _ => {}
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
            Mode::Verify(verification) => change(&mut verification.lock().output),
        }
    }
}
