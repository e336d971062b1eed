//! The traces one verification replays: this node's corpus of the function and, in a cluster,
//! the corpus of the other nodes that host it (`Cluster::peer_corpus`), merged: each trace once
//! (by id, this node's copy first), newest first, distinct routes first
//! (`record::corpus::round_robin`), at most the number asked for.
//!
//! Invariants: a trace from a peer is run only if it decodes to a trace of the function under
//! the id its metadata gave (anything else is reported unverified, never same).

use std::collections::HashSet;
use std::sync::Arc;

use crate::cluster::corpus::PeerTrace;
use crate::record::corpus::round_robin;
use crate::record::trace::{self, Trace};
use crate::record::{TraceMeta, Traces};

/// One trace to verify.
pub struct Entry {
    pub id: String,
    pub function: String,
    route: String,
    /// Stored on another node: its bytes as it sent them.
    from_peer: Option<Vec<u8>>,
}

/// Up to `limit` of `local` and `peers` (traces of `function`), each once, distinct routes first.
pub fn merge(function: &str, local: Vec<TraceMeta>, peers: Vec<PeerTrace>, limit: usize) -> Vec<Entry> {
    let mut seen = HashSet::new();
    let local = local.into_iter().map(|meta| (meta, None));
    let peers = peers.into_iter().map(|PeerTrace { meta, bytes }| (meta, Some(bytes)));
    let mut entries: Vec<Entry> = local
        .chain(peers)
        .filter(|(meta, _)| meta.function == function && seen.insert(meta.id.clone()))
        .map(|(meta, from_peer)| Entry { id: meta.id, function: meta.function, route: meta.route, from_peer })
        .collect();
    // Ids begin with the time they were recorded: newest first, whichever node kept them.
    entries.sort_by(|a, b| b.id.cmp(&a.id));
    round_robin(entries, |entry| entry.route.as_str(), limit)
}

impl Entry {
    /// The trace, decoded; `None` when this node pruned it since it was listed.
    pub async fn load(self, traces: &Arc<Traces>) -> anyhow::Result<Option<Trace>> {
        let Entry { id, function, from_peer, .. } = self;
        let traces = traces.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Option<Trace>> {
            let Some(bytes) = from_peer else { return Ok(traces.load(&function, &id)?) };
            let decoded = trace::decompress(&bytes).map_err(|error| anyhow::anyhow!("a peer's trace: {error}"))?;
            if decoded.id != id || decoded.function != function {
                anyhow::bail!("a peer sent another trace than it listed");
            }
            Ok(Some(decoded))
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, function: &str, route: &str) -> TraceMeta {
        let json = serde_json::json!({
            "id": id, "function": function, "version": 1, "recorded_at": "2026-01-01T00:00:00Z",
            "status": 200, "duration_us": 5, "size": 3, "reason": "corpus", "route": route, "chunks": 1,
        });
        serde_json::from_value(json).unwrap()
    }

    fn peer(id: &str, function: &str, route: &str) -> PeerTrace {
        PeerTrace { meta: meta(id, function, route), bytes: vec![1] }
    }

    #[test]
    fn each_trace_once_newest_first_distinct_routes_first() {
        let local = vec![meta("09", "orders", "GET /"), meta("05", "orders", "GET /")];
        let peers = vec![
            peer("09", "orders", "GET /"), // this node has it too
            peer("08", "orders", "GET /"),
            peer("07", "other", "GET /x"), // another function
            peer("03", "orders", "POST /orders"),
            peer("01", "orders", "GET /orders/:id"),
        ];
        let merged = merge("orders", local, peers, 4);
        let ids: Vec<(&str, bool)> = merged.iter().map(|e| (e.id.as_str(), e.from_peer.is_some())).collect();
        assert_eq!(ids, [("09", false), ("03", true), ("01", true), ("08", true)]);
        assert!(merge("orders", Vec::new(), Vec::new(), 50).is_empty());
    }
}
