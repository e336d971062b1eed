//! Connections other nodes hold (cluster mode): an id names the node holding it
//! (`HEX@NODE`), a host call on it goes to that node in one hop, and `connections(tag)` of a
//! function whose kv scope is global lists its connections on every node hosting it. The hub
//! reaches peers only through [`Peers`], which the cluster implements (this layer is below it).
//!
//! Invariants: a node acts on a peer's request only for its own connections (an id naming
//! another node is `no-such-connection` there, never forwarded again); the function is the
//! asking run's own, so a peer's request reaches only that function's connections, as a local
//! call does; a node that cannot be reached is `unavailable`, not `no-such-connection` (its
//! connection may still be open).

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{Hub, Message, SocketError, check_close_code, check_tag};

/// The largest message sent to another node's connection: the largest send buffer (`max_buffer`)
/// a policy may set, which no connection can queue past.
pub const MAX_REMOTE_MESSAGE: usize = 16 << 20;

/// A host call on a connection, as it travels to the node holding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketOp {
    Send(Message),
    Close(u16, String),
    Tag(String),
    Untag(String),
}

/// How a node reaches the connections its peers hold.
pub trait Peers: Send + Sync {
    /// Does `op` on `function`'s connection `id`, held by node `node`.
    fn apply<'a>(
        &'a self,
        node: &'a str,
        function: &'a str,
        id: &'a str,
        op: SocketOp,
    ) -> BoxFuture<'a, Result<(), SocketError>>;

    /// `function`'s connections with `tag` on the other nodes hosting it (a node that does not
    /// answer is left out).
    fn tagged<'a>(&'a self, function: &'a str, tag: &'a str) -> BoxFuture<'a, Vec<String>>;
}

/// This node in a cluster: its name (in the ids it gives) and how it reaches its peers.
pub(super) struct Membership {
    pub node: String,
    pub peers: std::sync::Arc<dyn Peers>,
}

impl Hub {
    /// The node joined a cluster as `node`: ids name it from now on, and ids naming other
    /// nodes go to them through `peers`. Called once, before any connection is accepted.
    pub fn join_cluster(&self, node: String, peers: std::sync::Arc<dyn Peers>) {
        let _ = self.cluster.set(Membership { node, peers });
    }

    /// Does `op` on `function`'s connection `id`, here or on the node holding it.
    pub async fn apply(&self, function: &str, id: &str, op: SocketOp) -> Result<(), SocketError> {
        match self.cluster.get() {
            Some(cluster) if id.contains('@') => match node_of(id) {
                Some(node) if node == cluster.node => self.apply_here(function, id, op),
                Some(node) => {
                    // What the node holding it would refuse is refused here, before the trip.
                    check(&op)?;
                    cluster.peers.apply(node, function, id, op).await
                }
                // Not an id any node gives: it goes nowhere.
                None => Err(SocketError::NoSuchConnection),
            },
            _ => self.apply_here(function, id, op),
        }
    }

    /// Does `op` on `function`'s connection `id` if this node holds it.
    pub fn apply_here(&self, function: &str, id: &str, op: SocketOp) -> Result<(), SocketError> {
        match op {
            SocketOp::Send(message) => self.send(function, id, message),
            SocketOp::Close(code, reason) => self.close(function, id, code, &reason),
            SocketOp::Tag(tag) => self.tag(function, id, &tag),
            SocketOp::Untag(tag) => self.untag(function, id, &tag),
        }
    }

    /// `function`'s open connections with `tag`, in id order: on every node hosting it when
    /// `cluster_wide` (its kv scope is global), else on this node.
    pub async fn connections(&self, function: &str, tag: &str, cluster_wide: bool) -> Vec<String> {
        let mut ids = self.tagged(function, tag);
        // A tag no connection can have (empty, too long) is asked of no one.
        if let Some(cluster) = self.cluster.get().filter(|_| cluster_wide && check_tag(tag).is_ok()) {
            ids.extend(cluster.peers.tagged(function, tag).await);
            ids.sort_unstable();
            ids.dedup();
        }
        ids
    }

    /// A new connection id: 128 random bits as 32 hex digits, `@NODE` in a cluster.
    pub(super) fn new_id(&self) -> String {
        let random = hex::encode(rand::random::<[u8; 16]>());
        match self.cluster.get() {
            Some(cluster) => format!("{random}@{}", cluster.node),
            None => random,
        }
    }
}

/// Refuses a call that no connection would take, as the hub would.
fn check(op: &SocketOp) -> Result<(), SocketError> {
    match op {
        SocketOp::Send(message) if message.len() > MAX_REMOTE_MESSAGE => {
            Err(SocketError::Limit(format!("a message is at most {MAX_REMOTE_MESSAGE} bytes")))
        }
        SocketOp::Close(code, _) => check_close_code(*code),
        SocketOp::Tag(tag) | SocketOp::Untag(tag) => check_tag(tag),
        SocketOp::Send(_) => Ok(()),
    }
}

/// The node an id names, if it has the shape of the ids nodes give (`HEX@NODE`): what goes into
/// a peer request's path is checked first.
fn node_of(id: &str) -> Option<&str> {
    let (random, node) = id.split_once('@')?;
    let random_ok = random.len() == 32 && random.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let node_ok = (1..=63).contains(&node.len())
        && node.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    (random_ok && node_ok).then_some(node)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Peers that record what they are asked and hold one connection with every tag.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<(String, String, String, SocketOp)>>);

    impl Peers for Recorded {
        fn apply<'a>(
            &'a self,
            node: &'a str,
            function: &'a str,
            id: &'a str,
            op: SocketOp,
        ) -> BoxFuture<'a, Result<(), SocketError>> {
            self.0.lock().unwrap().push((node.into(), function.into(), id.into(), op));
            Box::pin(async { Ok(()) })
        }

        fn tagged<'a>(&'a self, _function: &'a str, tag: &'a str) -> BoxFuture<'a, Vec<String>> {
            Box::pin(async move { vec![format!("{}@b", "f".repeat(32)), format!("{tag}@never-mind")] })
        }
    }

    #[tokio::test]
    async fn ids_name_their_node_and_calls_on_another_nodes_connection_go_there() {
        let hub = Hub::new(Arc::default());
        let peers = Arc::new(Recorded::default());
        hub.join_cluster("a".into(), peers.clone());
        let (opened, mut outbox) = hub.open("chat", "/ws", 10, 1 << 20).unwrap();
        let id = opened.connection.id.clone();
        assert!(id.ends_with("@a") && node_of(&id) == Some("a"), "{id}");
        hub.apply("chat", &id, SocketOp::Send(Message::Text("here".into()))).await.unwrap();
        assert_eq!(outbox.try_recv().unwrap(), super::super::Outgoing::Message(Message::Text("here".into())));
        assert!(peers.0.lock().unwrap().is_empty(), "a local connection is not sent anywhere");

        let remote = format!("{}@b", "0".repeat(32));
        hub.apply("chat", &remote, SocketOp::Tag("room".into())).await.unwrap();
        let asked = peers.0.lock().unwrap().clone();
        assert_eq!(asked, vec![("b".into(), "chat".into(), remote.clone(), SocketOp::Tag("room".into()))]);

        for malformed in ["x@b", "../../corpus@b", &format!("{}@b/c", "0".repeat(32)), &format!("{}@", "0".repeat(32))]
        {
            let refused = hub.apply("chat", malformed, SocketOp::Untag("room".into())).await;
            assert_eq!(refused, Err(SocketError::NoSuchConnection), "{malformed}");
        }
        assert_eq!(peers.0.lock().unwrap().len(), 1, "a malformed id reaches no peer");

        hub.tag("chat", &id, "room").unwrap();
        assert_eq!(hub.connections("chat", "room", false).await, vec![id.clone()], "local scope: this node only");
        let everywhere = hub.connections("chat", "room", true).await;
        assert_eq!(everywhere.len(), 3, "{everywhere:?}");
        assert!(everywhere.contains(&id) && everywhere.contains(&format!("{}@b", "f".repeat(32))));
    }
}
