//! What a replay hands the guest besides the tape: the function's configuration as recorded
//! (secret values from `--secret NAME=VALUE`, since traces hold secrets by name only) and the
//! recorded request, its body the recorded chunks (ending in the recorded error, if any).
//!
//! Invariants: a `--secret` the trace does not name is refused; a named secret without a value
//! reaches the guest as an empty value, with a warning.

use crate::record::trace::Trace;
use crate::runtime::GuestConfig;

/// The function's configuration as recorded, secrets from `--secret NAME=VALUE`.
pub(super) fn config(trace: &Trace, secrets: &[String]) -> anyhow::Result<GuestConfig> {
    let mut given = std::collections::HashMap::new();
    for secret in secrets {
        let (name, value) =
            secret.split_once('=').ok_or_else(|| anyhow::anyhow!("--secret {secret}: give NAME=VALUE"))?;
        given.insert(name.to_string(), value.to_string());
    }
    let mut pairs = Vec::new();
    let mut names = Vec::new();
    for (key, value) in &trace.facts.config {
        let value = match value {
            Some(value) => value.clone(),
            None => {
                names.push(key.clone());
                given.remove(key).unwrap_or_else(|| {
                    eprintln!("warning: the trace names secret `{key}` but holds no value (pass --secret {key}=VALUE); the guest sees an empty value");
                    String::new()
                })
            }
        };
        pairs.push((key.clone(), value));
    }
    if let Some(unknown) = given.keys().next() {
        anyhow::bail!("--secret {unknown}: the trace names no such secret");
    }
    Ok(GuestConfig::new(pairs, names))
}

type ReplayBody = http_body_util::StreamBody<
    futures::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>>,
>;

/// The recorded request, its body the recorded chunks.
pub(super) fn request(trace: &Trace) -> anyhow::Result<http::Request<ReplayBody>> {
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
