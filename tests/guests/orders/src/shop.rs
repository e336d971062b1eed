// The shop's handler, shared by its builds (`orders`, `orders-changed`, `orders-refactored`,
// `orders-purging`), each of which defines `describe` and `PURGES_DRAFTS` before including
// this file:
// - `GET /`: how many orders there are;
// - `POST /orders` (body = what was ordered): a new order, numbered in one transaction (which
//   also deletes the key `drafts`, unread, where `PURGES_DRAFTS`);
// - `GET /orders/{id}`: the order, as `describe` words it;
// - `GET /price`: asks the upstream named by config `UPSTREAM` (host:port) for `/price`.
use ledge_sdk::http::{Request, Response};
use ledge_sdk::kv;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, OutgoingRequest, Scheme};

fn handle(req: Request) -> Result<Response, kv::Error> {
    match (req.method(), req.path()) {
        ("GET", "/") => {
            let count = kv::transaction(|tx| tx.get_u64("count"))?.unwrap_or(0);
            Ok(Response::text(format!("orders: {count}\n")))
        }
        ("POST", "/orders") => {
            let item = req.text().unwrap_or("").trim().to_string();
            let id = kv::transaction(|tx| {
                let id = tx.get_u64("count")?.unwrap_or(0) + 1;
                tx.put("count", id)?;
                tx.put(format!("order/{id}"), item.as_str())?;
                if PURGES_DRAFTS {
                    tx.delete("drafts")?;
                }
                Ok(id)
            })?;
            Ok(Response::text(format!("created {id}\n")).with_status(201))
        }
        ("GET", path) if path.starts_with("/orders/") => {
            let id = &path["/orders/".len()..];
            match kv::transaction(|tx| tx.get_string(format!("order/{id}")))? {
                Some(item) => Ok(Response::text(describe(id, &item))),
                None => Ok(Response::text("no such order\n").with_status(404)),
            }
        }
        ("GET", "/price") => Ok(price()),
        _ => Ok(Response::text("not found\n").with_status(404)),
    }
}

fn price() -> Response {
    let Some(upstream) = ledge_sdk::config::get("UPSTREAM") else {
        return Response::text("no UPSTREAM configured\n").with_status(500);
    };
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(&upstream));
    let _ = request.set_path_with_query(Some("/price"));
    let response = match outgoing_handler::handle(request, None) {
        Err(code) => return Response::text(format!("upstream refused: {code:?}\n")).with_status(502),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => response,
                other => return Response::text(format!("upstream failed: {other:?}\n")).with_status(502),
            }
        }
    };
    let mut text = Vec::new();
    if let Ok(body) = response.consume()
        && let Ok(stream) = body.stream()
    {
        while let Ok(chunk) = stream.blocking_read(64 << 10) {
            text.extend_from_slice(&chunk);
        }
    }
    Response::text(format!("price: {}\n", String::from_utf8_lossy(&text).trim()))
}

ledge_sdk::http_handler!(handle);
