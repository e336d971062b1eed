//! Record and replay (spec: "Record and replay"): everything a guest observes crosses the host
//! boundary, so a run recorded there replays exactly, offline.
//!
//! - [`tape`]: the per-run recorder / player every taped host call goes through (a folder: the
//!   tape and its host calls, the recording side, the replay side, the run's input and output);
//! - [`wasi`]: `wasi:clocks` and `wasi:random` through the tape;
//! - [`trace`]: the trace and its versioned, compressed, checksummed file format;
//! - [`store`]: kept traces in the engine's system keyspace, with retention per function
//!   (`retention.rs`: what one function keeps, and what goes past its bounds; `listing.rs`:
//!   reading them back);
//! - [`corpus`]: the verification corpus (`[record] keep_sample`): its draw, route keys and
//!   eviction rule.
//!
//! What is taped: the request (head, body chunks as handed over), clock readings, random
//! bytes and seeds, every `ledge:platform` and `wasi:keyvalue` call and result, outbound HTTP
//! responses (head and body chunks), the caller's token facts and the configuration (secrets by
//! name only); and what the guest produced: stdout/stderr, the response, a trap or timeout.
//! Not taped: the readiness order of pollables (a guest that races two timers against each
//! other may see them finish in another order on replay).
//!
//! Layer: beside the runtime, below it (the runtime and `guest_kv` call the tape) and above
//! the engine (the store); imports nothing from `runtime`, `registry`, `http` or `cli`.

pub mod corpus;
mod listing;
pub mod outbound;
mod retention;
pub mod store;
pub mod tape;
pub mod trace;
pub mod wasi;

pub use listing::LoadError;
pub use retention::Retention;
pub use store::{TraceMeta, Traces};
pub use tape::{Keep, Tape};
pub use trace::Trace;

/// Header names and values as a trace keeps them.
pub(crate) fn headers(map: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers_where(map, |_| true)
}

/// [`headers`], of those whose name `keep` takes.
pub(crate) fn headers_where(map: &http::HeaderMap, keep: impl Fn(&str) -> bool) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .filter(|(name, _)| keep(name.as_str()))
        .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
        .collect()
}
