//! Response bodies: the one body type every handler returns (a buffered reply, or a guest's
//! streamed body), and the buffered response every non-guest reply is built from.

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::combinators::UnsyncBoxBody;

/// The error type of every response body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body: a buffered problem or admin reply, or a guest's streamed body.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A buffered response with `content_type`.
pub fn full(
    status: http::StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> http::Response<ResponseBody> {
    use http_body_util::{BodyExt, Full};
    let mut response = http::Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An empty body (a protocol switch's answer).
pub fn empty() -> ResponseBody {
    use http_body_util::{BodyExt, Empty};
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}
