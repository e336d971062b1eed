//! WebSockets: ledge holds each connection, and every event (a client connecting, a message,
//! the connection closing) runs the function in a fresh instance, one event of a connection at
//! a time, in order. Nothing stays in memory between events: keep state in transactions, and
//! reach other connections through tags (rooms).
//!
//! ```no_run
//! use ledge_sdk::ws::{self, CloseReason, Handler, Message, RequestInfo};
//!
//! struct Chat;
//!
//! impl Handler for Chat {
//!     fn on_open(conn: &str, request: &RequestInfo) -> Result<(), CloseReason> {
//!         let room = request.query("room").unwrap_or("lobby");
//!         ws::tag(conn, room).map_err(|e| CloseReason::new(1011, e.to_string()))
//!     }
//!
//!     fn on_message(conn: &str, message: Message) {
//!         // ... send it to the room's other connections with ws::connections and ws::send
//!     }
//! }
//!
//! ledge_sdk::websocket_handler!(Chat);
//! ```
//!
//! The function's policy opens a path to WebSockets: `[[websocket]] path = "/chat"`.

use crate::__private::platform::ledge::platform::websocket as wit;

/// A message to or from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
}

/// Why a connection is refused or closed: a close code (1000 normal, 3000-4999 the
/// application's own) and a short reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
}

impl CloseReason {
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        CloseReason { code, reason: reason.into() }
    }
}

/// The upgrade request that opened a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    /// The path and query the function sees (without `/fn/NAME`).
    pub path_with_query: String,
    /// Its headers (names lowercase), without the caller's token.
    pub headers: Vec<(String, String)>,
}

impl RequestInfo {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.path_with_query.split('?').next().unwrap_or_default()
    }

    /// The first value of query parameter `name`, as sent (as `Request::query_param`).
    pub fn query(&self, name: &str) -> Option<&str> {
        let (_, query) = self.path_with_query.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A WebSocket call that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// No open connection of this function has this id.
    NoSuchConnection,
    /// A bound: a full send buffer, too many tags.
    Limit(String),
    /// Not allowed here.
    Denied(String),
    /// The node holding the connection could not be reached (cluster mode); it may still be
    /// open.
    Unavailable(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NoSuchConnection => write!(f, "no such connection"),
            Error::Limit(why) | Error::Denied(why) | Error::Unavailable(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<wit::Error> for Error {
    fn from(error: wit::Error) -> Self {
        match error {
            wit::Error::NoSuchConnection => Error::NoSuchConnection,
            wit::Error::Limit(why) => Error::Limit(why),
            wit::Error::Denied(why) => Error::Denied(why),
            wit::Error::Unavailable(why) => Error::Unavailable(why),
        }
    }
}

/// Sends `message` on `conn`.
pub fn send(conn: &str, message: &Message) -> Result<(), Error> {
    let message = match message {
        Message::Text(text) => wit::Message::Text(text.clone()),
        Message::Binary(bytes) => wit::Message::Binary(bytes.clone()),
    };
    Ok(wit::send(conn, &message)?)
}

/// Sends `text` on `conn`.
pub fn send_text(conn: &str, text: &str) -> Result<(), Error> {
    Ok(wit::send(conn, &wit::Message::Text(text.to_string()))?)
}

/// Closes `conn` with `code` (1000, or 3000-4999) and `reason`, after what was sent before.
pub fn close(conn: &str, code: u16, reason: &str) -> Result<(), Error> {
    Ok(wit::close(conn, code, reason)?)
}

/// Adds `tag` (a room, a user) to `conn`.
pub fn tag(conn: &str, tag: &str) -> Result<(), Error> {
    Ok(wit::tag(conn, tag)?)
}

/// Removes `tag` from `conn`.
pub fn untag(conn: &str, tag: &str) -> Result<(), Error> {
    Ok(wit::untag(conn, tag)?)
}

/// The function's open connections with `tag`.
pub fn connections(tag: &str) -> Result<Vec<String>, Error> {
    Ok(wit::connections(tag)?)
}

/// A function's WebSocket events; export it with [`crate::websocket_handler!`].
pub trait Handler {
    /// A client connected; an `Err` closes the connection with that code and reason.
    fn on_open(_conn: &str, _request: &RequestInfo) -> Result<(), CloseReason> {
        Ok(())
    }

    /// A message from the client.
    fn on_message(conn: &str, message: Message);

    /// The connection closed.
    fn on_close(_conn: &str, _code: u16, _reason: &str) {}
}

#[doc(hidden)]
pub mod __export {
    use super::{Handler, Message, RequestInfo};
    use crate::__private::ws_bindings::exports::ledge::platform::websocket_handler as exported;
    use crate::__private::ws_bindings::ledge::platform::websocket as types;

    pub fn on_open<H: Handler>(conn: String, request: types::RequestInfo) -> Result<(), types::CloseReason> {
        let request = RequestInfo { path_with_query: request.path_with_query, headers: request.headers };
        H::on_open(&conn, &request).map_err(|refused| types::CloseReason { code: refused.code, reason: refused.reason })
    }

    pub fn on_message<H: Handler>(conn: String, message: types::Message) {
        let message = match message {
            types::Message::Text(text) => Message::Text(text),
            types::Message::Binary(bytes) => Message::Binary(bytes),
        };
        H::on_message(&conn, message)
    }

    pub fn on_close<H: Handler>(conn: String, code: u16, reason: String) {
        H::on_close(&conn, code, &reason)
    }

    pub use exported::Guest;
}
