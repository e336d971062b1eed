//! Outbound HTTP through the tape: recording, the live response's head (or error) and every
//! body chunk the guest receives; replaying, the recorded response, with no network at all
//! (the guest's request body is drained and dropped).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, WasiBody};

use super::tape::{Outbound, Tape};

/// A response and its connection's driver.
pub type Sent = (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>);
/// What the hooks hand wasi-http.
pub type ResponseFuture = Box<dyn Future<Output = Result<Sent, Error>> + Send>;

/// The most of an outbound request's body a verification compares between builds.
const MAX_COMPARED_BODY: usize = 8 << 20;

/// A response head as recorded, or the error's name.
type Recorded = Result<(u16, Vec<(String, Vec<u8>)>), String>;

/// Sends `request` through `tape`: `live` makes the real request when recording.
pub fn send(
    tape: Arc<Tape>,
    request: http::Request<WasiBody>,
    live: impl FnOnce(http::Request<WasiBody>) -> ResponseFuture,
) -> ResponseFuture {
    let args = format!("{} {}", request.method(), request.uri());
    match tape.outbound(args.clone()) {
        Err(stopped) => Box::new(async move { Err(Error::InternalError(Some(format!("{stopped:#}")))) }),
        Ok(Outbound::Replayed(event)) => {
            // A replay drops what the guest sent; a verification keeps it to compare builds.
            let sent = tape.clone();
            tokio::spawn(async move {
                let body = match http_body_util::Limited::new(request.into_body(), MAX_COMPARED_BODY).collect().await {
                    Ok(collected) => collected.to_bytes().to_vec(),
                    Err(error) => format!("(a body that failed: {error})").into_bytes(),
                };
                sent.outbound_sent(args, body);
            });
            Box::new(async move { replayed(&event.result, event.body) })
        }
        Ok(Outbound::Recording(index)) => {
            let response = live(request);
            Box::new(async move {
                let result = Box::into_pin(response).await;
                let recorded: Recorded = match &result {
                    Ok((response, _)) => Ok((response.status().as_u16(), super::headers(response.headers()))),
                    Err(error) => Err(error_name(error)),
                };
                tape.outbound_result(index, &recorded, summary(&recorded));
                let (response, driver) = result?;
                let response = response.map(|body| {
                    body.map_frame(move |frame| {
                        if let Some(chunk) = frame.data_ref() {
                            tape.outbound_chunk(index, chunk);
                        }
                        frame
                    })
                    .boxed_unsync()
                });
                Ok((response, driver))
            })
        }
    }
}

fn summary(recorded: &Recorded) -> String {
    match recorded {
        Ok((status, headers)) => format!("{status} ({} headers)", headers.len()),
        Err(name) => format!("error {name}"),
    }
}

/// The recorded response, its body the recorded chunks.
fn replayed(result: &[u8], body: Vec<Vec<u8>>) -> Result<Sent, Error> {
    let recorded: Recorded = postcard::from_bytes(result).map_err(|error| {
        Error::InternalError(Some(format!("the trace's outbound response does not decode: {error}")))
    })?;
    let (status, headers) = recorded.map_err(|name| error_named(&name))?;
    let mut builder = http::Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let frames = body.into_iter().map(|chunk| Ok(http_body::Frame::data(Bytes::from(chunk))));
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed_unsync();
    let response = builder.body(body).map_err(|error| Error::InternalError(Some(error.to_string())))?;
    Ok((response, Box::new(async { Ok(()) })))
}

/// An error's variant name, which is what a guest can tell apart.
fn error_name(error: &Error) -> String {
    let debug = format!("{error:?}");
    let end = debug.find(['(', ' ', '{']).unwrap_or(debug.len());
    debug[..end].to_string()
}

/// The error a guest saw for `name` (an error carrying details it never saw becomes the one
/// wasi-http reports for it).
fn error_named(name: &str) -> Error {
    match name {
        "Connect" | "ConnectionRefused" => Error::ConnectionRefused,
        "DnsTimeout" => Error::DnsTimeout,
        "DnsError" => Error::DnsError { rcode: None, info_code: None },
        "DestinationNotFound" => Error::DestinationNotFound,
        "DestinationUnavailable" => Error::DestinationUnavailable,
        "DestinationIpProhibited" => Error::DestinationIpProhibited,
        "DestinationIpUnroutable" => Error::DestinationIpUnroutable,
        "ConnectionTerminated" => Error::ConnectionTerminated,
        "ConnectionTimeout" => Error::ConnectionTimeout,
        "ConnectionReadTimeout" => Error::ConnectionReadTimeout,
        "ConnectionWriteTimeout" => Error::ConnectionWriteTimeout,
        "ConnectionLimitReached" => Error::ConnectionLimitReached,
        "Tls" | "TlsProtocolError" => Error::TlsProtocolError,
        "TlsCertificateError" => Error::TlsCertificateError,
        "HttpRequestDenied" => Error::HttpRequestDenied,
        "HttpRequestUriInvalid" => Error::HttpRequestUriInvalid,
        "HttpResponseTimeout" => Error::HttpResponseTimeout,
        "Hyper" | "HttpProtocolError" => Error::HttpProtocolError,
        "HttpRequestBodySize" => Error::HttpRequestBodySize(None),
        "HttpResponseBodySize" => Error::HttpResponseBodySize(None),
        other => Error::InternalError(Some(other.to_string())),
    }
}
