//! A function whose `init` fails: ledge must refuse to deploy it.
use ledge_sdk::http::{Request, Response};

fn init() {
    panic!("configuration missing");
}

fn handle(_req: Request) -> Response {
    Response::text("unreachable\n")
}

ledge_sdk::init!(init);
ledge_sdk::http_handler!(handle);
