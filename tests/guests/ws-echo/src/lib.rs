//! A WebSocket guest for the end-to-end tests: echoes every message back on its connection, and
//! misbehaves on request.
//! - `on-open` refuses with 4003 "not today" when the path has `?refuse`, and traps when it has
//!   `?trap`;
//! - a text message `trap` traps `on-message`; `close` closes the connection with 4000 "asked";
//!   `count` answers with how many events this connection has had (kept in the keyspace);
//! - anything else is echoed back as it came (text or binary).

use ledge_sdk::http::{Request, Response};
use ledge_sdk::kv;
use ledge_sdk::ws::{self, CloseReason, Handler, Message, RequestInfo};

fn handle(_request: Request) -> Response {
    Response::text("ws-echo\n")
}

ledge_sdk::http_handler!(handle);

/// Counts an event of `conn`; the count so far.
fn count(conn: &str) -> u64 {
    kv::transaction(|tx| {
        let seen = tx.get_u64(format!("events/{conn}"))?.unwrap_or(0) + 1;
        tx.put(format!("events/{conn}"), seen)?;
        Ok(seen)
    })
    .unwrap_or(0)
}

struct Echo;

impl Handler for Echo {
    fn on_open(conn: &str, request: &RequestInfo) -> Result<(), CloseReason> {
        if request.query("refuse").is_some() {
            return Err(CloseReason::new(4003, "not today"));
        }
        if request.query("trap").is_some() {
            panic!("on-open asked to trap");
        }
        count(conn);
        Ok(())
    }

    fn on_message(conn: &str, message: Message) {
        let seen = count(conn);
        match &message {
            Message::Text(text) if text == "trap" => panic!("on-message asked to trap"),
            Message::Text(text) if text == "close" => {
                let _ = ws::close(conn, 4000, "asked");
            }
            Message::Text(text) if text == "count" => {
                let _ = ws::send_text(conn, &seen.to_string());
            }
            _ => {
                let _ = ws::send(conn, &message);
            }
        }
    }
}

ledge_sdk::websocket_handler!(Echo);
