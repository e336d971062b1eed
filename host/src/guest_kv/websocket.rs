//! `ledge:platform/websocket`: a run of a function sends to, closes, tags and lists its
//! WebSocket connections (`crate::websocket::Hub`): those this node holds, and in a cluster
//! those of other nodes, through the node holding each (`connections` lists every node's when
//! the function's kv scope is global).
//!
//! Invariants: a run reaches only its own function's connections (the hub is asked by
//! function first, and an id of another function's connection is `no-such-connection`, as
//! for one that never was); every call is on the run's tape, so a replay gets the recorded
//! result and sends nothing; a bound (a full send buffer, too many tags) is a guest-visible
//! `limit`, never a trap.

use super::bindings::ledge::platform::websocket::{self as wit, Error as WitError, Message as WitMessage};
use super::taped::{RecordedError, described, taped};
use super::{KvAccess, KvCtx};
use crate::record::tape::show_bytes;
use crate::websocket::{Message, SocketError, SocketOp};

/// How `no-such-connection` is kept in a trace (traces keep the errors of every API as one
/// type; this one has no variant of its own there).
const NO_SUCH_CONNECTION: &str = "no-such-connection";

impl From<WitError> for RecordedError {
    fn from(error: WitError) -> Self {
        match error {
            WitError::NoSuchConnection => RecordedError::Other(NO_SUCH_CONNECTION.into()),
            WitError::Limit(message) => RecordedError::Limit(message),
            WitError::Denied(message) => RecordedError::Denied(message),
            WitError::Unavailable(message) => RecordedError::Internal(message),
        }
    }
}

impl From<RecordedError> for WitError {
    fn from(error: RecordedError) -> Self {
        match error {
            RecordedError::Other(message) if message == NO_SUCH_CONNECTION => WitError::NoSuchConnection,
            RecordedError::Limit(message) => WitError::Limit(message),
            RecordedError::Denied(message) => WitError::Denied(message),
            RecordedError::Internal(message) => WitError::Unavailable(message),
            other => WitError::Denied(format!("{other:?}")),
        }
    }
}

fn wit_error(error: SocketError) -> WitError {
    match error {
        SocketError::NoSuchConnection => WitError::NoSuchConnection,
        SocketError::Limit(message) => WitError::Limit(message),
        SocketError::Denied(message) => WitError::Denied(message),
        SocketError::Unavailable(message) => WitError::Unavailable(message),
    }
}

fn message(message: WitMessage) -> Message {
    match message {
        WitMessage::Text(text) => Message::Text(text),
        WitMessage::Binary(bytes) => Message::Binary(bytes),
    }
}

fn shown(message: &WitMessage) -> String {
    match message {
        WitMessage::Text(text) => format!("text {}", show_bytes(text.as_bytes())),
        WitMessage::Binary(bytes) => format!("binary {}", show_bytes(bytes)),
    }
}

impl KvAccess {
    /// The hub and the function, or `denied` where a run has no WebSockets (pre-initialization).
    fn sockets(&self) -> Result<(&crate::websocket::Hub, &str), WitError> {
        let hub = self.websockets.as_deref().ok_or_else(|| {
            WitError::Denied("WebSocket connections are not available here (pre-initialization, verification)".into())
        })?;
        Ok((hub, &self.function))
    }

    /// Does `op` on the function's connection `conn`, wherever it is held.
    async fn apply(&self, conn: &str, op: SocketOp) -> Result<(), WitError> {
        let (hub, function) = self.sockets()?;
        hub.apply(function, conn, op).await.map_err(wit_error)
    }
}

impl wit::Host for KvCtx<'_> {
    async fn send(&mut self, conn: String, sent: WitMessage) -> wasmtime::Result<Result<(), WitError>> {
        let args = described(self.tape, || format!("{conn}, {}", shown(&sent)));
        let live = async { Ok(self.access.apply(&conn, SocketOp::Send(message(sent))).await) };
        taped(self.tape, "ledge:platform/websocket.send", args, live).await
    }

    async fn close(&mut self, conn: String, code: u16, reason: String) -> wasmtime::Result<Result<(), WitError>> {
        let args = described(self.tape, || format!("{conn}, {code}, {reason:?}"));
        let live = async { Ok(self.access.apply(&conn, SocketOp::Close(code, reason)).await) };
        taped(self.tape, "ledge:platform/websocket.close", args, live).await
    }

    async fn tag(&mut self, conn: String, tag: String) -> wasmtime::Result<Result<(), WitError>> {
        let args = described(self.tape, || format!("{conn}, {tag:?}"));
        let live = async { Ok(self.access.apply(&conn, SocketOp::Tag(tag)).await) };
        taped(self.tape, "ledge:platform/websocket.tag", args, live).await
    }

    async fn untag(&mut self, conn: String, tag: String) -> wasmtime::Result<Result<(), WitError>> {
        let args = described(self.tape, || format!("{conn}, {tag:?}"));
        let live = async { Ok(self.access.apply(&conn, SocketOp::Untag(tag)).await) };
        taped(self.tape, "ledge:platform/websocket.untag", args, live).await
    }

    async fn connections(&mut self, tag: String) -> wasmtime::Result<Result<Vec<String>, WitError>> {
        let args = described(self.tape, || format!("{tag:?}"));
        let access = &*self.access;
        let live = async {
            let (hub, function) = match access.sockets() {
                Ok(found) => found,
                Err(error) => return Ok(Err(error)),
            };
            Ok(Ok(hub.connections(function, &tag, access.global_scope).await))
        };
        taped(self.tape, "ledge:platform/websocket.connections", args, live).await
    }
}
