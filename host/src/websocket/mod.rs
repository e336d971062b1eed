//! WebSocket connections held by this node ([`Hub`]): which function each belongs to, its tags
//! (rooms), and the outbox its socket writer drains. The HTTP layer accepts the upgrade and
//! runs each event in a fresh instance; guests reach connections through `guest_kv`'s
//! `ledge:platform/websocket` host calls, which come here.
//!
//! Invariants:
//! - a connection is found only through the function that accepted it: every lookup is keyed
//!   by function first, so a guest naming another function's connection id gets
//!   `no-such-connection`, exactly as for an id that never was;
//! - ids are 128 random bits (hex): unguessable, never reused; in a cluster they name the node
//!   holding the connection, and calls on another node's connections go there (`peers.rs`);
//! - each `[[websocket]]` entry holds at most its `max_connections` open at once
//!   ([`Hub::open`]); a connection's tags are at most [`MAX_TAGS`], each at most
//!   [`MAX_TAG_BYTES`];
//! - bytes queued for one connection are at most its `max_buffer`: a send past it is refused
//!   and the connection is closed with 1008 (a slow reader never grows the node's memory);
//! - a connection leaves the hub (and every tag) when its [`Opened`] guard is dropped, however
//!   its task ends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;

mod connection;
mod peers;

pub use connection::{Connection, Counts};
pub use peers::{MAX_REMOTE_MESSAGE, Peers, SocketOp};

/// Tags one connection may have.
pub const MAX_TAGS: usize = 16;
/// The longest tag.
pub const MAX_TAG_BYTES: usize = 128;
/// The longest close reason a close frame carries (RFC 6455: 125 bytes with the code).
pub const MAX_REASON_BYTES: usize = 123;
/// What a queued message costs besides its bytes, so that even empty messages fill a buffer.
pub const MESSAGE_OVERHEAD: u64 = 64;

/// A message to or from a client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
}

impl Message {
    pub fn len(&self) -> usize {
        match self {
            Message::Text(text) => text.len(),
            Message::Binary(bytes) => bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the socket writer of a connection is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Message(Message),
    /// Send a close frame with this code and reason, then stop.
    Close(u16, String),
}

/// Why a host call on a connection failed (what the guest gets).
#[derive(Debug, Error, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SocketError {
    #[error("no open connection of this function has this id")]
    NoSuchConnection,
    #[error("{0}")]
    Limit(String),
    #[error("{0}")]
    Denied(String),
    /// The node holding the connection could not be reached (it may still be open).
    #[error("{0}")]
    Unavailable(String),
}

/// Why an upgrade was not admitted.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("`{function}` holds its {max} connections under {path}; retry later")]
    Full { function: String, path: String, max: u32 },
    #[error("this node is shutting down")]
    GoingAway,
}

/// Every connection this node holds, by function.
pub struct Hub {
    functions: Mutex<HashMap<String, Sockets>>,
    going_away: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    /// Set once the node joined a cluster.
    cluster: std::sync::OnceLock<peers::Membership>,
}

/// One function's connections.
struct Sockets {
    conns: HashMap<String, Arc<Connection>>,
    tags: HashMap<String, HashSet<String>>,
    /// Open connections per `[[websocket]]` path.
    per_entry: HashMap<String, u32>,
    counts: Arc<Counts>,
}

/// An admitted connection: its handle, and the guard that takes it out of the hub when
/// dropped.
pub struct Opened {
    pub connection: Arc<Connection>,
    pub going_away: watch::Receiver<bool>,
    hub: Arc<Hub>,
    function: String,
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.hub.remove(&self.function, &self.connection);
    }
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Hub> {
        Arc::new(Hub {
            functions: Mutex::new(HashMap::new()),
            going_away: watch::Sender::new(false),
            metrics,
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// Admits a connection of `function` under the entry at `path`, within `max_connections`:
    /// its guard, and the receiving end of its outbox (for the socket writer).
    pub fn open(
        self: &Arc<Self>,
        function: &str,
        path: &str,
        max_connections: u32,
        max_buffer: u64,
    ) -> Result<(Opened, mpsc::UnboundedReceiver<Outgoing>), OpenError> {
        if *self.going_away.borrow() {
            return Err(OpenError::GoingAway);
        }
        let mut functions = self.functions.lock();
        let sockets = functions.entry(function.to_string()).or_insert_with(|| Sockets {
            conns: HashMap::new(),
            tags: HashMap::new(),
            per_entry: HashMap::new(),
            counts: Arc::new(Counts::new(&self.metrics, function)),
        });
        let open = sockets.per_entry.entry(path.to_string()).or_default();
        if *open >= max_connections {
            return Err(OpenError::Full { function: function.into(), path: path.into(), max: max_connections });
        }
        *open += 1;
        sockets.counts.open.inc();
        let (outbox, receiver) = mpsc::unbounded_channel();
        let connection = Arc::new(Connection {
            id: self.new_id(),
            entry: path.to_string(),
            outbox,
            queued: AtomicU64::new(0),
            max_buffer,
            closing: AtomicBool::new(false),
            closed: watch::Sender::new(None),
            tags: Mutex::new(HashSet::new()),
            counts: sockets.counts.clone(),
        });
        sockets.conns.insert(connection.id.clone(), connection.clone());
        let opened = Opened {
            connection,
            going_away: self.going_away.subscribe(),
            hub: self.clone(),
            function: function.to_string(),
        };
        Ok((opened, receiver))
    }

    fn remove(&self, function: &str, connection: &Connection) {
        let mut functions = self.functions.lock();
        let Some(sockets) = functions.get_mut(function) else { return };
        // Gone already when the function was removed (and maybe deployed again since).
        if sockets.conns.remove(&connection.id).is_none() {
            return;
        }
        sockets.counts.open.dec();
        for tag in connection.tags.lock().drain() {
            if let Some(members) = sockets.tags.get_mut(&tag) {
                members.remove(&connection.id);
                if members.is_empty() {
                    sockets.tags.remove(&tag);
                }
            }
        }
        if let Some(open) = sockets.per_entry.get_mut(&connection.entry) {
            *open -= 1;
            if *open == 0 {
                sockets.per_entry.remove(&connection.entry);
            }
        }
        // What the function's counters say outlives its connections (metrics, GET /v1/functions).
    }

    fn connection(&self, function: &str, id: &str) -> Result<Arc<Connection>, SocketError> {
        let functions = self.functions.lock();
        functions.get(function).and_then(|sockets| sockets.conns.get(id)).cloned().ok_or(SocketError::NoSuchConnection)
    }

    /// Queues `message` for `function`'s connection `id`.
    pub fn send(&self, function: &str, id: &str, message: Message) -> Result<(), SocketError> {
        self.connection(function, id)?.send(message)
    }

    /// Closes `function`'s connection `id` with `code` (1000 or 3000–4999) and `reason`.
    pub fn close(&self, function: &str, id: &str, code: u16, reason: &str) -> Result<(), SocketError> {
        check_close_code(code)?;
        self.connection(function, id)?.close(code, reason);
        Ok(())
    }

    /// Adds `tag` to `function`'s connection `id`.
    pub fn tag(&self, function: &str, id: &str, tag: &str) -> Result<(), SocketError> {
        check_tag(tag)?;
        let mut functions = self.functions.lock();
        let sockets = functions.get_mut(function).ok_or(SocketError::NoSuchConnection)?;
        let connection = sockets.conns.get(id).ok_or(SocketError::NoSuchConnection)?;
        let mut tags = connection.tags.lock();
        if !tags.contains(tag) && tags.len() >= MAX_TAGS {
            return Err(SocketError::Limit(format!("a connection has at most {MAX_TAGS} tags")));
        }
        tags.insert(tag.to_string());
        sockets.tags.entry(tag.to_string()).or_default().insert(id.to_string());
        Ok(())
    }

    /// Removes `tag` from `function`'s connection `id`.
    pub fn untag(&self, function: &str, id: &str, tag: &str) -> Result<(), SocketError> {
        let mut functions = self.functions.lock();
        let sockets = functions.get_mut(function).ok_or(SocketError::NoSuchConnection)?;
        let connection = sockets.conns.get(id).ok_or(SocketError::NoSuchConnection)?;
        connection.tags.lock().remove(tag);
        if let Some(members) = sockets.tags.get_mut(tag) {
            members.remove(id);
            if members.is_empty() {
                sockets.tags.remove(tag);
            }
        }
        Ok(())
    }

    /// `function`'s open connections with `tag`, in id order.
    pub fn tagged(&self, function: &str, tag: &str) -> Vec<String> {
        let functions = self.functions.lock();
        let mut ids: Vec<String> = functions
            .get(function)
            .and_then(|sockets| sockets.tags.get(tag))
            .map(|members| members.iter().cloned().collect())
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    /// `function`'s open connections and messages in and out on this node.
    pub fn stats(&self, function: &str) -> (usize, u64, u64) {
        let functions = self.functions.lock();
        functions.get(function).map_or((0, 0, 0), |sockets| {
            let counts = &sockets.counts;
            (
                sockets.conns.len(),
                counts.messages_in.load(Ordering::Relaxed),
                counts.messages_out.load(Ordering::Relaxed),
            )
        })
    }

    /// Every function with connections or counts, and its [`Hub::stats`].
    pub fn all_stats(&self) -> Vec<(String, usize, u64, u64)> {
        let names: Vec<String> = self.functions.lock().keys().cloned().collect();
        names
            .into_iter()
            .map(|name| {
                let (open, messages_in, messages_out) = self.stats(&name);
                (name, open, messages_in, messages_out)
            })
            .collect()
    }

    /// The node is stopping: no new connection is admitted, and every open one closes with 1001
    /// once its current event is done.
    pub fn going_away(&self) {
        self.going_away.send_replace(true);
    }

    /// `function` was removed: its connections close (1001) and its counts go.
    pub fn forget(&self, function: &str) {
        let removed = self.functions.lock().remove(function);
        if let Some(sockets) = &removed {
            sockets.counts.open.set(0);
            for connection in sockets.conns.values() {
                connection.close(1001, "the function was removed");
            }
        }
    }
}

fn check_close_code(code: u16) -> Result<(), SocketError> {
    if code != 1000 && !(3000..=4999).contains(&code) {
        return Err(SocketError::Denied(format!("close code {code}: a function closes with 1000 or 3000-4999")));
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), SocketError> {
    if tag.is_empty() || tag.len() > MAX_TAG_BYTES {
        return Err(SocketError::Denied(format!("a tag is 1 to {MAX_TAG_BYTES} bytes")));
    }
    Ok(())
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_reaches_only_its_own_connections_and_entries_are_bounded() {
        let hub = Hub::new(Arc::default());
        let (mine, mut outbox) = hub.open("chat", "/ws", 2, 1 << 20).unwrap();
        let _second = hub.open("chat", "/ws", 2, 1 << 20).unwrap();
        let full = hub.open("chat", "/ws", 2, 1 << 20).err().unwrap();
        assert!(matches!(full, OpenError::Full { max: 2, .. }), "{full:?}");
        let (other, _) = hub.open("other", "/ws", 2, 1 << 20).unwrap();
        let id = mine.connection.id.clone();
        assert_eq!(id.len(), 32);
        hub.send("chat", &id, Message::Text("hi".into())).unwrap();
        assert_eq!(outbox.try_recv().unwrap(), Outgoing::Message(Message::Text("hi".into())));
        assert_eq!(hub.send("other", &id, Message::Text("x".into())), Err(SocketError::NoSuchConnection));
        assert_eq!(hub.tag("other", &id, "room"), Err(SocketError::NoSuchConnection));
        hub.tag("chat", &id, "room").unwrap();
        hub.tag("other", &other.connection.id, "room").unwrap();
        assert_eq!(hub.tagged("chat", "room"), std::slice::from_ref(&id));
        drop(mine);
        assert!(hub.tagged("chat", "room").is_empty(), "a closed connection leaves its rooms");
        assert_eq!(hub.send("chat", &id, Message::Text("x".into())), Err(SocketError::NoSuchConnection));
        let _again = hub.open("chat", "/ws", 2, 1 << 20).expect("a closed connection frees its place");
    }

    #[test]
    fn a_slow_reader_past_its_buffer_is_closed_and_tags_are_bounded() {
        let hub = Hub::new(Arc::default());
        let (opened, mut outbox) = hub.open("chat", "/ws", 10, 8 + MESSAGE_OVERHEAD).unwrap();
        let id = opened.connection.id.clone();
        hub.send("chat", &id, Message::Binary(vec![0; 8])).unwrap();
        let error = hub.send("chat", &id, Message::Binary(Vec::new())).unwrap_err();
        assert!(matches!(error, SocketError::Limit(_)), "{error:?}");
        outbox.try_recv().unwrap();
        assert!(matches!(outbox.try_recv().unwrap(), Outgoing::Close(1008, _)));
        for n in 0..MAX_TAGS {
            hub.tag("chat", &id, &format!("t{n}")).unwrap();
        }
        assert!(matches!(hub.tag("chat", &id, "one-more"), Err(SocketError::Limit(_))));
        assert!(matches!(hub.close("chat", &id, 1001, ""), Err(SocketError::Denied(_))));
    }
}
