//! Echoes the request back: method, path, query and headers as headers of the response
//! (`x-echo-*`), and the body unchanged.
use ledge_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    let mut response = Response::new(200)
        .with_header("x-echo-method", req.method())
        .with_header("x-echo-path", req.path())
        .with_header("x-echo-query", req.query().unwrap_or(""));
    for (name, value) in req.headers() {
        response = response.with_header(&format!("x-echo-header-{name}"), value);
    }
    if let Some(content_type) = req.header("content-type") {
        response = response.with_header("content-type", content_type);
    }
    response.with_body(req.body().to_vec())
}

ledge_sdk::http_handler!(handle);
