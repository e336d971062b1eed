//! A component that serves WebSockets and nothing else (no `wasi:http/incoming-handler`): every
//! text message comes back as `only: TEXT`.

use ledge_sdk::ws::{self, CloseReason, Handler, Message, RequestInfo};

struct Only;

impl Handler for Only {
    fn on_open(_conn: &str, _request: &RequestInfo) -> Result<(), CloseReason> {
        Ok(())
    }

    fn on_message(conn: &str, message: Message) {
        if let Message::Text(text) = message {
            let _ = ws::send_text(conn, &format!("only: {text}"));
        }
    }
}

ledge_sdk::websocket_handler!(Only);
