//! The guest's view of a request: the authority it sees, the path ledge rewrote, a body capped
//! at the policy's limit (and taped when the run is recorded), and no header ledge sets for
//! guests unless ledge set it.
//!
//! Invariant: whatever a caller sends as `ledge-*` (in the head or in trailers) and its
//! `Authorization` in trailers never reach the guest.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::{BodyExt, Limited};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use super::InvokeError;
use crate::record::Tape;

/// The authority the guest sees: the URI's (HTTP/2), else `Host`, else `localhost`.
pub fn guest_authority(uri: &http::Uri, headers: &http::HeaderMap) -> String {
    uri.authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .unwrap_or_else(|| "localhost".to_string())
}

/// Rewrites the request to what the guest sees: `/{rest}?query` on the original authority,
/// with the body capped at the policy's limit.
pub(super) fn guest_request<B>(
    request: http::Request<B>,
    scheme: &Scheme,
    path_and_query: &str,
    max_body: u64,
    overflowed: Arc<AtomicBool>,
    recording: Option<Arc<Tape>>,
) -> Result<
    http::Request<impl http_body::Body<Data = bytes::Bytes, Error = wasmtime_wasi_http::Error> + use<B>>,
    InvokeError,
>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_body) {
        return Err(InvokeError::BodyTooLarge { limit: max_body });
    }
    let (mut parts, body) = request.into_parts();
    let authority = guest_authority(&parts.uri, &parts.headers);
    parts.uri = http::Uri::builder()
        .scheme(match scheme {
            Scheme::Https => "https",
            _ => "http",
        })
        .authority(authority.as_str())
        .path_and_query(path_and_query)
        .build()
        .map_err(|error| InvokeError::BadRequest(error.to_string()))?;
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    let failed = recording.clone();
    let body = Limited::new(body, limit)
        .map_err(move |error| {
            if let Some(tape) = &failed {
                tape.request_error(&error.to_string());
            }
            if error.is::<http_body_util::LengthLimitError>() {
                overflowed.store(true, Ordering::Relaxed);
                wasmtime_wasi_http::Error::HttpRequestBodySize(Some(max_body))
            } else {
                wasmtime_wasi_http::Error::InternalError(Some(error.to_string()))
            }
        })
        .map_frame(move |mut frame| {
            if let (Some(tape), Some(chunk)) = (&recording, frame.data_ref()) {
                tape.request_chunk(chunk);
            }
            if let Some(trailers) = frame.trailers_mut() {
                strip_trailers(trailers);
            }
            frame
        });
    Ok(http::Request::from_parts(parts, body))
}

/// Request trailers are the caller's headers too: neither ledge's own nor credentials reach the
/// guest through them.
fn strip_trailers(trailers: &mut http::HeaderMap) {
    remove_ledge_headers(trailers);
    trailers.remove(http::header::AUTHORIZATION);
}

/// Removes every `ledge-*` header (all their values) from what a caller sent: those names are
/// ledge's alone (spec: Tokens).
pub fn remove_ledge_headers(headers: &mut http::HeaderMap) {
    let ours: Vec<http::HeaderName> =
        headers.keys().filter(|name| name.as_str().starts_with("ledge-")).cloned().collect();
    for name in ours {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::{remove_ledge_headers, strip_trailers};

    #[test]
    fn every_value_of_every_ledge_header_goes_and_nothing_else() {
        let mut headers = http::HeaderMap::new();
        for (name, value) in
            [("ledge-schedule", "1"), ("Ledge-Queue", "a"), ("ledge-queue", "b"), ("x-checksum", "abc")]
        {
            headers.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        remove_ledge_headers(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-checksum"], "abc");
    }

    #[test]
    fn request_trailers_lose_ledge_headers_and_credentials() {
        let mut trailers = http::HeaderMap::new();
        for (name, value) in [("ledge-schedule", "1"), ("Authorization", "Bearer x"), ("x-checksum", "abc")] {
            trailers.insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        strip_trailers(&mut trailers);
        assert_eq!(trailers.len(), 1);
        assert_eq!(trailers["x-checksum"], "abc");
    }
}
