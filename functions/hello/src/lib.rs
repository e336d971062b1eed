//! Greets the caller with the path it asked for.
use ledge_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    Response::text(format!("Hello from ledge! You asked for {}\n", req.path()))
}

ledge_sdk::http_handler!(handle);
