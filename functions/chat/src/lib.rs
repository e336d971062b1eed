//! A chat room over WebSockets: a client joins the room its `room` query parameter names
//! (`ws://HOST/fn/chat/?room=NAME`; `lobby` without one), and every text message it sends
//! reaches the room's other clients as sent.
//!
//! Nothing is kept in memory between events, since each one runs in a fresh instance: a
//! connection's room is a tag (so `ws::connections` finds the room's members on any run) and a
//! key in the function's keyspace (so a message knows which room it was sent to).

use ledge_sdk::http::{Request, Response};
use ledge_sdk::kv;
use ledge_sdk::ws::{self, CloseReason, Handler, Message, RequestInfo};

fn handle(_request: Request) -> Response {
    Response::text("chat: open a WebSocket to /fn/chat/?room=NAME; each text message reaches the room\n")
}

ledge_sdk::http_handler!(handle);

/// The tag of room `name`.
fn room_tag(name: &str) -> String {
    format!("room:{name}")
}

/// Where a connection's room is kept.
fn room_key(conn: &str) -> String {
    format!("conn/{conn}")
}

struct Chat;

impl Handler for Chat {
    fn on_open(conn: &str, request: &RequestInfo) -> Result<(), CloseReason> {
        let room = request.query("room").filter(|room| !room.is_empty()).unwrap_or("lobby").to_string();
        let refuse = |why: String| CloseReason::new(1011, why);
        kv::transaction(|tx| tx.put(room_key(conn), room.as_str())).map_err(|e| refuse(e.to_string()))?;
        ws::tag(conn, &room_tag(&room)).map_err(|e| refuse(e.to_string()))
    }

    fn on_message(conn: &str, message: Message) {
        let Message::Text(text) = message else { return };
        let Ok(Some(room)) = kv::transaction(|tx| tx.get_string(room_key(conn))) else { return };
        let members = ws::connections(&room_tag(&room)).unwrap_or_default();
        for member in members.iter().filter(|member| *member != conn) {
            // A member that left meanwhile, or reads too slowly, misses this one message.
            let _ = ws::send_text(member, &text);
        }
    }

    fn on_close(conn: &str, _code: u16, _reason: &str) {
        let _ = kv::transaction(|tx| tx.delete(room_key(conn)));
    }
}

ledge_sdk::websocket_handler!(Chat);
