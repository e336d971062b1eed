//! What a run of a recorded trace gets besides its tape, rebuilt from the trace: the request
//! (its body the recorded chunks, ending in the recorded error, if any), the limits the run had,
//! and the caller's token facts. `ledge replay` and deploy verification both start runs so.

use std::time::Duration;

use crate::access::policy::Policy;
use crate::access::tokens::Caller;
use crate::record::trace::Trace;

/// The recorded request's body, chunk by chunk.
pub type RecordedBody = http_body_util::StreamBody<
    futures::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>>,
>;

/// The recorded request, its body the recorded chunks.
pub fn request(trace: &Trace) -> anyhow::Result<http::Request<RecordedBody>> {
    let recorded = &trace.request;
    let uri = format!("{}://{}{}", recorded.scheme, recorded.authority, recorded.path_and_query);
    let mut builder = http::Request::builder().method(recorded.method.as_str()).uri(uri);
    for (name, value) in &recorded.headers {
        builder = builder.header(name, value.as_slice());
    }
    let mut frames: Vec<Result<http_body::Frame<bytes::Bytes>, std::io::Error>> =
        recorded.body.iter().map(|chunk| Ok(http_body::Frame::data(bytes::Bytes::from(chunk.clone())))).collect();
    if let Some(error) = &recorded.body_error {
        frames.push(Err(std::io::Error::other(error.clone())));
    }
    Ok(builder.body(http_body_util::StreamBody::new(futures::stream::iter(frames)))?)
}

/// The limits the recorded run had (what a guest could observe of its policy).
pub fn policy(trace: &Trace) -> Policy {
    Policy {
        memory: trace.facts.memory_limit,
        timeout: Duration::from_millis(trace.facts.timeout_ms),
        max_body: trace.facts.max_body,
        kv_stores: trace.facts.kv_stores.clone(),
        kv_max_bytes: trace.facts.kv_max_bytes,
        ..Policy::default()
    }
}

/// The recorded caller: its token's id and caveats as the guest and the key-value checks saw
/// them (anonymous when the run had no token).
pub fn caller(trace: &Trace) -> Caller {
    trace.facts.caller.clone().map_or_else(Caller::default, |facts| Caller {
        token_id: facts.token_id,
        caveats: facts.caveats,
        key_prefixes: facts.key_prefixes,
        read_only: facts.read_only,
        ..Caller::default()
    })
}
