//! HTTP requests and responses for handlers, and the glue to `wasi:http/incoming-handler`.
//!
//! Bodies are read whole into memory before the handler runs: the host caps request bodies
//! (policy `limits.max_body`), so this is bounded, and it keeps handlers plain functions.

use std::fmt::Display;

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// An incoming HTTP request, as the function sees it: the path is the part after
/// `/fn/{name}`, always starting with `/`.
#[derive(Debug, Clone, Default)]
pub struct Request {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Request {
    /// The method, upper case (`GET`, `POST`, ...).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path without the query, e.g. `/users/42`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw query string without the leading `?`, if there is one.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The first value of query parameter `name` (no percent-decoding beyond `+` as space is
    /// attempted: values are returned as sent).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query()?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }

    /// All headers in the order received; names are lower case.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The first value of header `name` (case-insensitive) if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The body bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }

    fn from_wasi(request: &IncomingRequest) -> Result<Self, String> {
        let method = match request.method() {
            Method::Get => "GET".to_string(),
            Method::Head => "HEAD".to_string(),
            Method::Post => "POST".to_string(),
            Method::Put => "PUT".to_string(),
            Method::Delete => "DELETE".to_string(),
            Method::Connect => "CONNECT".to_string(),
            Method::Options => "OPTIONS".to_string(),
            Method::Trace => "TRACE".to_string(),
            Method::Patch => "PATCH".to_string(),
            Method::Other(other) => other,
        };
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let (path, query) = match path_with_query.split_once('?') {
            Some((path, query)) => (path.to_string(), Some(query.to_string())),
            None => (path_with_query, None),
        };
        let headers = request.headers().entries();
        let body = read_body(request)?;
        Ok(Request { method, path, query, headers, body })
    }
}

fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, String> {
    let body: IncomingBody = request.consume().map_err(|()| "request body already taken")?;
    let mut bytes = Vec::new();
    {
        let stream = body.stream().map_err(|()| "request body stream already taken")?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(wasip2::io::streams::StreamError::Closed) => break,
                Err(wasip2::io::streams::StreamError::LastOperationFailed(error)) => {
                    return Err(format!("reading request body: {}", error.to_debug_string()));
                }
            }
        }
    }
    IncomingBody::finish(body);
    Ok(bytes)
}

/// An HTTP response built by a handler.
#[derive(Debug, Clone)]
pub struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Response {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Self {
        Response { status, headers: Vec::new(), body: Vec::new() }
    }

    /// `200` with a `text/plain; charset=utf-8` body.
    pub fn text(body: impl Into<String>) -> Self {
        Response::new(200).with_header("content-type", "text/plain; charset=utf-8").with_body(body.into().into_bytes())
    }

    /// `200` with `value` serialized as an `application/json` body.
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Response::new(200).with_header("content-type", "application/json").with_body(body),
            Err(error) => Response::text(format!("cannot serialize the response: {error}\n")).with_status(500),
        }
    }

    /// A redirect (`302 Found` unless changed with [`Response::with_status`]) to `location`.
    pub fn redirect(location: &str) -> Self {
        Response::new(302).with_header("location", location)
    }

    /// Replaces the status code.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Adds a header; a name may appear more than once.
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The body bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    fn send(self, out: ResponseOutparam) {
        let fields = Fields::new();
        for (name, value) in &self.headers {
            // A header the host refuses (a forbidden or malformed name) is dropped rather than
            // failing the whole response.
            let _ = fields.append(name, value);
        }
        let response = OutgoingResponse::new(fields);
        let _ = response.set_status_code(self.status);
        let Ok(body) = response.body() else {
            return;
        };
        ResponseOutparam::set(out, Ok(response));
        write_body(body, &self.body);
    }
}

fn write_body(body: OutgoingBody, bytes: &[u8]) {
    {
        let Ok(stream) = body.write() else {
            return;
        };
        // `blocking-write-and-flush` accepts at most 4096 bytes per call.
        for chunk in bytes.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                return;
            }
        }
    }
    let _ = OutgoingBody::finish(body, None);
}

/// What a handler may return.
pub trait IntoResponse {
    /// Converts into the response sent to the client.
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        Response::text(self)
    }
}

impl IntoResponse for &str {
    fn into_response(self) -> Response {
        Response::text(self)
    }
}

impl<T: IntoResponse, E: Display> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(value) => value.into_response(),
            Err(error) => Response::text(format!("{error}\n")).with_status(500),
        }
    }
}

/// Runs `handler` for one `wasi:http/incoming-handler.handle` call. Used by [`http_handler!`].
#[doc(hidden)]
pub fn serve<R: IntoResponse>(request: IncomingRequest, out: ResponseOutparam, handler: impl FnOnce(Request) -> R) {
    let response = match Request::from_wasi(&request) {
        Ok(request) => handler(request).into_response(),
        Err(error) => Response::text(format!("{error}\n")).with_status(400),
    };
    response.send(out);
}

/// Exports `handler` (a `fn(Request) -> impl IntoResponse`) as the component's
/// `wasi:http/incoming-handler`.
///
/// ```no_run
/// fn handle(req: ledge_sdk::http::Request) -> String {
///     format!("you asked for {}\n", req.path())
/// }
/// ledge_sdk::http_handler!(handle);
/// ```
#[macro_export]
macro_rules! http_handler {
    ($handler:path) => {
        struct __LedgeHttpHandler;

        impl $crate::__private::wasip2::exports::http::incoming_handler::Guest for __LedgeHttpHandler {
            fn handle(
                request: $crate::__private::wasip2::http::types::IncomingRequest,
                out: $crate::__private::wasip2::http::types::ResponseOutparam,
            ) {
                $crate::http::serve(request, out, $handler);
            }
        }

        $crate::__private::wasip2::http::proxy::export!(
            __LedgeHttpHandler with_types_in $crate::__private::wasip2
        );
    };
}
