//! A wasi:http component written against the plain `wasi` crate (wasi 0.2.4), with no ledge
//! SDK: ledge must run it unmodified. Answers with the path it saw, the scheme in `x-scheme` and
//! the authority in `x-authority`;
//! `/stream` answers in two parts, half a second apart (a body written while the guest runs).
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Component;

impl wasi::exports::http::incoming_handler::Guest for Component {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let scheme = match request.scheme() {
            Some(wasi::http::types::Scheme::Https) => "https".to_string(),
            Some(wasi::http::types::Scheme::Http) => "http".to_string(),
            Some(wasi::http::types::Scheme::Other(other)) => other,
            None => "none".to_string(),
        };
        let headers = Fields::from_list(&[
            ("content-type".to_string(), b"text/plain".to_vec()),
            ("x-scheme".to_string(), scheme.into_bytes()),
            ("x-authority".to_string(), request.authority().unwrap_or_default().into_bytes()),
        ])
        .unwrap();
        let response = OutgoingResponse::new(headers);
        response.set_status_code(203).unwrap();
        let body = response.body().unwrap();
        ResponseOutparam::set(out, Ok(response));
        let path = request.path_with_query().unwrap_or_default();
        let stream = body.write().unwrap();
        stream.blocking_write_and_flush(format!("plain wasi saw {path}\n").as_bytes()).unwrap();
        if path == "/stream" {
            wasi::clocks::monotonic_clock::subscribe_duration(500_000_000).block();
            stream.blocking_write_and_flush(b"and then more\n").unwrap();
        }
        drop(stream);
        OutgoingBody::finish(body, None).unwrap();
    }
}

wasi::http::proxy::export!(Component);
