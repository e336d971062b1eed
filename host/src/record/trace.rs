//! The trace: what one guest run observed at the host boundary and what it produced, and its
//! file format.
//!
//! File layout (all integers little-endian), written whole by [`encode`], checked whole by
//! [`decode`] before anything in it is trusted:
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `LEDGETRC` |
//! | 2 | format version ([`FORMAT`]) |
//! | 2 | flags: bit 0 = a component follows the trace |
//! | 4 | CRC-32C of everything after this header |
//! | 8 | length of the compressed trace |
//! | 8 | length of the component (0 without one) |
//! | … | the trace: a tag byte, then postcard bytes, deflated from 2 KiB on |
//! | … | the component that ran (with `--with-component`) |
//!
//! Invariants: a file that is not a trace, comes from a newer format, is cut short or was
//! altered is refused with a message that says which; decoding is bounded by
//! [`MAX_DECODED_BYTES`] so a crafted file cannot make the reader allocate without limit.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The format this ledge writes and reads: one of the data dir's formats (`traces` in
/// `format.json`), so it is set in `datadir`.
pub const FORMAT: u16 = crate::datadir::TRACES as u16;
const MAGIC: &[u8; 8] = b"LEDGETRC";
const HEADER_LEN: usize = 32;
const HAS_COMPONENT: u16 = 1;
/// The largest trace (uncompressed) a reader accepts; recording stops well below it.
pub const MAX_DECODED_BYTES: u64 = 64 << 20;

/// One recorded guest run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Trace {
    pub id: String,
    pub function: String,
    pub version: u64,
    /// SHA-256 of the component as deployed.
    pub component_sha256: String,
    /// SHA-256 of the component that ran: the pre-initialized snapshot when there is one.
    pub runs_sha256: String,
    pub ledge_version: String,
    /// The architecture it ran on: float NaN bit patterns and relaxed SIMD may differ on another.
    pub recorded_on: String,
    /// Milliseconds since the Unix epoch when the request arrived.
    pub recorded_at_ms: u64,
    pub duration_us: u64,
    pub reason: Reason,
    pub request: RecordedRequest,
    pub facts: GuestFacts,
    /// Every host call the guest made, in order; the index is the replay's position clock.
    pub events: Vec<Event>,
    pub output: Output,
}

/// Why a trace was kept.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum Reason {
    /// `[record] errors`: the run failed (5xx, trap, timeout).
    #[default]
    Error,
    /// `[record] sample`.
    Sampled,
    /// `ledge-record: 1` from a caller allowed to manage the function.
    Requested,
    /// `[record] keep_sample`: a successful run kept for the verification corpus. (Variants
    /// are encoded by position: new ones go last, so older traces still decode.)
    Corpus,
}

/// The request as the guest received it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    pub scheme: String,
    pub authority: String,
    pub path_and_query: String,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body's chunks as they were handed to the guest (their split is what its reads saw).
    pub body: Vec<Vec<u8>>,
    /// The body ended in an error (e.g. over the policy's limit) after these chunks.
    pub body_error: Option<String>,
}

impl RecordedRequest {
    /// A WebSocket event's trace (`runtime::events`): its scheme is `ws` or `wss` where a
    /// request's is `http` or `https`, which no caller can make a request say.
    pub fn is_websocket_event(&self) -> bool {
        matches!(self.scheme.as_str(), "ws" | "wss")
    }

    /// It came over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.scheme.as_str(), "https" | "wss")
    }
}

/// What the guest could learn besides host calls: caller, configuration, limits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GuestFacts {
    pub caller: Option<CallerFacts>,
    /// Configuration entries; a secret's value is never recorded (`None`).
    pub config: Vec<(String, Option<String>)>,
    pub memory_limit: u64,
    pub timeout_ms: u64,
    pub max_body: u64,
    pub kv_stores: Vec<String>,
    pub kv_max_bytes: u64,
}

/// The caller's verified token facts, as the guest and the key-value checks see them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CallerFacts {
    pub token_id: Option<String>,
    pub caveats: Vec<String>,
    pub key_prefixes: Vec<Vec<u8>>,
    pub read_only: bool,
}

/// One host call: its interface and function, its arguments (as a fingerprint a person can
/// read), its result (encoded, to hand back on replay) and a summary of that result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub call: String,
    pub args: String,
    pub result: Vec<u8>,
    pub summary: String,
    /// An outbound response's body chunks, as they reached the guest.
    pub body: Vec<Vec<u8>>,
}

/// A response head and body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RecordedResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// What the run produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Output {
    /// The response head the guest set, if it set one.
    pub response: Option<RecordedResponse>,
    /// The response body the guest wrote, whole.
    pub body: Vec<u8>,
    /// How the run failed, if it did.
    pub failure: Option<Failure>,
    /// Guest stdout and stderr, each chunk with the host-call position it was written at.
    pub logs: Vec<LogChunk>,
    /// Host calls made when the run ended.
    pub calls: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failure {
    /// `trap`, `timeout`, `memory`, `no-response`, `body-too-large` or `host`.
    pub kind: String,
    pub message: String,
    /// Host calls the guest had made when it failed.
    pub at_call: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogChunk {
    pub stream: String,
    pub at_call: u32,
    pub bytes: Vec<u8>,
}

impl Trace {
    /// The run ended in a failure or a 5xx.
    pub fn failed(&self) -> bool {
        self.output.failure.is_some() || self.output.response.as_ref().is_some_and(|r| r.status >= 500)
    }

    /// Whether `needle` appears anywhere in what the trace holds (request, host calls, output):
    /// how a secret's value is kept out of kept traces.
    pub fn holds(&self, needle: &[u8]) -> bool {
        let finder = memchr::memmem::Finder::new(needle);
        let found = |bytes: &[u8]| !needle.is_empty() && finder.find(bytes).is_some();
        let request = &self.request;
        let events = self.events.iter().flat_map(|e| {
            [e.args.as_bytes(), &e.result, e.summary.as_bytes()].into_iter().chain(e.body.iter().map(Vec::as_slice))
        });
        let response = self.output.response.iter().flat_map(|r| r.headers.iter().map(|(_, v)| v.as_slice()));
        [request.path_and_query.as_bytes(), request.authority.as_bytes(), &self.output.body]
            .into_iter()
            .chain(request.headers.iter().map(|(_, value)| value.as_slice()))
            .chain(request.body.iter().map(Vec::as_slice))
            .chain(events)
            .chain(response)
            .chain(self.output.logs.iter().map(|chunk| chunk.bytes.as_slice()))
            .chain(self.output.failure.iter().map(|failure| failure.message.as_bytes()))
            .any(found)
    }

    /// The status the caller got: the guest's, or the one its failure answers with.
    pub fn status(&self) -> u16 {
        match (&self.output.failure, &self.output.response) {
            (Some(failure), _) => match failure.kind.as_str() {
                "timeout" => 504,
                "body-too-large" => 413,
                _ => 500,
            },
            (None, Some(response)) => response.status,
            (None, None) => 500,
        }
    }
}

/// Why a trace file cannot be read.
#[derive(Debug, Error, PartialEq)]
pub enum TraceFileError {
    #[error("not a ledge trace (it does not start with `LEDGETRC`)")]
    NotATrace,
    #[error("the file is cut short: {0}")]
    Truncated(String),
    #[error("written in trace format {0}; this ledge reads format {FORMAT} (upgrade ledge to replay it)")]
    NewerFormat(u16),
    #[error("the file is corrupted: its checksum does not match its contents")]
    Checksum,
    #[error("the file is corrupted: {0}")]
    Undecodable(String),
}

/// A decoded trace file.
pub struct TraceFile {
    pub trace: Trace,
    /// The component that ran, when the file carries it.
    pub component: Option<Vec<u8>>,
}

/// The trace alone as the server stores it: a tag byte, then postcard bytes, deflated
/// ([`DEFLATE`]) unless the trace is small ([`STORED`]: compressing a few hundred bytes costs
/// more CPU than it saves space).
pub fn compress(trace: &Trace) -> Vec<u8> {
    thread_local! {
        // A deflate encoder's tables are large: each thread reuses its own.
        static ENCODER: std::cell::RefCell<flate2::write::DeflateEncoder<Vec<u8>>> =
            std::cell::RefCell::new(flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast()));
    }
    // Encoded after its tag, into a buffer sized for a typical small trace: a stored trace is
    // then this one buffer, neither regrown nor copied.
    let mut tagged = Vec::with_capacity(1024);
    tagged.push(STORED);
    let tagged = postcard::to_extend(trace, tagged).expect("a trace always encodes");
    if tagged.len() - 1 < COMPRESS_FROM {
        return tagged;
    }
    ENCODER.with_borrow_mut(|encoder| {
        encoder.get_mut().push(DEFLATE);
        encoder.write_all(&tagged[1..]).expect("writing to memory");
        encoder.reset(Vec::new()).expect("writing to memory")
    })
}

/// Tag of a stored trace: postcard bytes as they are.
const STORED: u8 = 0;
/// Tag of a stored trace: postcard bytes, deflated.
const DEFLATE: u8 = 1;
/// Traces from this many bytes on are deflated.
const COMPRESS_FROM: usize = 2048;

/// A trace file: header, the compressed trace, and the component if given.
pub fn encode(compressed: &[u8], component: Option<&[u8]>) -> Vec<u8> {
    let component = component.unwrap_or_default();
    let mut body = Vec::with_capacity(16 + compressed.len() + component.len());
    body.extend_from_slice(&(compressed.len() as u64).to_le_bytes());
    body.extend_from_slice(&(component.len() as u64).to_le_bytes());
    body.extend_from_slice(compressed);
    body.extend_from_slice(component);
    let flags = if component.is_empty() { 0 } else { HAS_COMPONENT };
    let mut file = Vec::with_capacity(16 + body.len());
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&FORMAT.to_le_bytes());
    file.extend_from_slice(&flags.to_le_bytes());
    file.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    file.extend_from_slice(&body);
    file
}

/// Checks and decodes a trace file.
pub fn decode(file: &[u8]) -> Result<TraceFile, TraceFileError> {
    if file.len() < MAGIC.len() || &file[..MAGIC.len()] != MAGIC {
        return Err(TraceFileError::NotATrace);
    }
    if file.len() < HEADER_LEN {
        return Err(TraceFileError::Truncated(format!("{} bytes, less than the {HEADER_LEN}-byte header", file.len())));
    }
    let u16_at = |at: usize| u16::from_le_bytes([file[at], file[at + 1]]);
    let u64_at = |at: usize| u64::from_le_bytes(file[at..at + 8].try_into().expect("8 bytes"));
    let format = u16_at(8);
    if format > FORMAT || format == 0 {
        return Err(TraceFileError::NewerFormat(format));
    }
    let has_component = u16_at(10) & HAS_COMPONENT != 0;
    let checksum = u32::from_le_bytes(file[12..16].try_into().expect("4 bytes"));
    let (trace_len, component_len) = (u64_at(16), u64_at(24));
    let expected = (HEADER_LEN as u64).saturating_add(trace_len).saturating_add(component_len);
    if (file.len() as u64) < expected {
        return Err(TraceFileError::Truncated(format!(
            "the header promises {expected} bytes, the file has {}",
            file.len()
        )));
    }
    if (file.len() as u64) > expected {
        return Err(TraceFileError::Undecodable(format!(
            "{} bytes follow the {expected} the header accounts for",
            file.len() as u64 - expected
        )));
    }
    if crc32c::crc32c(&file[16..]) != checksum {
        return Err(TraceFileError::Checksum);
    }
    let trace_end = HEADER_LEN + trace_len as usize;
    let trace = decompress(&file[HEADER_LEN..trace_end])?;
    let component = (has_component && component_len > 0).then(|| file[trace_end..].to_vec());
    Ok(TraceFile { trace, component })
}

/// Decodes a trace as the server stores it ([`compress`]).
pub fn decompress(stored: &[u8]) -> Result<Trace, TraceFileError> {
    let plain = match stored.split_first() {
        Some((&STORED, plain)) => plain.to_vec(),
        Some((&DEFLATE, compressed)) => {
            let mut plain = Vec::new();
            flate2::read::DeflateDecoder::new(compressed)
                .take(MAX_DECODED_BYTES + 1)
                .read_to_end(&mut plain)
                .map_err(|error| TraceFileError::Undecodable(format!("the trace does not decompress: {error}")))?;
            if plain.len() as u64 > MAX_DECODED_BYTES {
                return Err(TraceFileError::Undecodable(format!(
                    "the trace decompresses to over {MAX_DECODED_BYTES} bytes"
                )));
            }
            plain
        }
        Some((tag, _)) => return Err(TraceFileError::Undecodable(format!("unknown trace encoding {tag}"))),
        None => return Err(TraceFileError::Undecodable("the trace is empty".into())),
    };
    postcard::from_bytes(&plain)
        .map_err(|error| TraceFileError::Undecodable(format!("the trace does not decode: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Trace {
        Trace {
            id: "0190a1b2c3d4e5f6".into(),
            function: "counter".into(),
            version: 3,
            component_sha256: "ab".repeat(32),
            runs_sha256: "cd".repeat(32),
            ledge_version: "0.1.0".into(),
            recorded_on: "x86_64".into(),
            recorded_at_ms: 1_700_000_000_000,
            duration_us: 250,
            reason: Reason::Requested,
            request: RecordedRequest { method: "GET".into(), body: vec![b"hi".to_vec()], ..Default::default() },
            facts: GuestFacts::default(),
            events: vec![Event {
                call: "wasi:clocks/wall-clock.now".into(),
                args: String::new(),
                result: vec![1, 2, 3],
                summary: "1970-01-01".into(),
                body: vec![],
            }],
            output: Output { body: b"7\n".to_vec(), calls: 1, ..Default::default() },
        }
    }

    #[test]
    fn a_trace_round_trips_with_and_without_its_component() {
        let compressed = compress(&sample());
        let file = decode(&encode(&compressed, None)).unwrap();
        assert_eq!(file.trace, sample());
        assert!(file.component.is_none());
        let file = decode(&encode(&compressed, Some(b"\0asm-component"))).unwrap();
        assert_eq!(file.component.as_deref(), Some(&b"\0asm-component"[..]));
    }

    #[test]
    fn a_large_trace_is_deflated_and_round_trips() {
        let mut large = sample();
        large.request.body = vec![vec![b'a'; 64 << 10]];
        let stored = compress(&large);
        assert_eq!(stored[0], DEFLATE);
        assert!(stored.len() < 4096, "{} bytes", stored.len());
        assert_eq!(decompress(&stored).unwrap(), large);
        assert_eq!(compress(&sample())[0], STORED);
    }

    #[test]
    fn a_trace_that_inflates_past_the_bound_is_refused() {
        let mut encoder = flate2::write::DeflateEncoder::new(vec![DEFLATE], flate2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..=(MAX_DECODED_BYTES >> 20) {
            encoder.write_all(&zeros).unwrap();
        }
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
        let refused = decompress(&bomb).unwrap_err();
        assert!(refused.to_string().contains("decompresses to over"), "{refused}");
    }

    #[test]
    fn every_kind_of_damage_is_named() {
        let file = encode(&compress(&sample()), None);
        assert_eq!(decode(b"{\"json\": true}").err(), Some(TraceFileError::NotATrace));
        assert!(matches!(decode(&file[..20]), Err(TraceFileError::Truncated(_))));
        assert!(matches!(decode(&file[..file.len() - 1]), Err(TraceFileError::Truncated(_))));
        let mut flipped = file.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&flipped).err(), Some(TraceFileError::Checksum));
        let mut newer = file.clone();
        newer[8] = 9;
        assert_eq!(decode(&newer).err(), Some(TraceFileError::NewerFormat(9)));
    }
}
