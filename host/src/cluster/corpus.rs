//! A function's verification corpus from the other nodes: traces are kept on the node that ran
//! them, so the node that verifies a deploy asks each other live node that hosts the function
//! for its corpus (`GET /v1/peer/corpus/{function}?limit=N`, served by `http::peer_corpus`,
//! signed with [`PEER_REQUEST_HEADER`]). The answer is a list of frames, each the trace's
//! metadata (JSON) and its stored bytes (compressed), each behind its length (4 bytes, big
//! endian): [`encode`], [`decode`].
//!
//! Invariants: an answer holds at most [`MAX_TRACES`] traces and [`MAX_BYTES`] bytes, and a
//! node reads no more than that from a peer; each peer gets [`PEER_TIMEOUT`]; a peer that is
//! down, slow or answers nonsense is logged and left out (a verification with fewer traces),
//! never an error of the verification, nor a wait beyond that bound.

use std::time::Duration;

use super::Cluster;
use super::members::NodeInfo;
use super::peers::PEER_REQUEST_HEADER;
use crate::record::TraceMeta;

/// Where a node serves its corpus to its peers (then the function's name).
pub const PATH: &str = "/v1/peer/corpus/";
/// The most traces one answer holds.
pub const MAX_TRACES: usize = 200;
/// The most bytes one answer holds.
pub const MAX_BYTES: usize = 64 << 20;
/// How long a node waits for one peer's corpus.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// A corpus trace of another node: its metadata and its bytes as stored (compressed; decoded
/// with `record::trace::decompress` when it is run).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerTrace {
    pub meta: TraceMeta,
    pub bytes: Vec<u8>,
}

/// The answer for `traces` (newest first): as many whole frames as fit in [`MAX_BYTES`], at
/// most [`MAX_TRACES`].
pub fn encode(traces: impl IntoIterator<Item = (TraceMeta, Vec<u8>)>) -> Vec<u8> {
    let mut body = Vec::new();
    for (meta, bytes) in traces.into_iter().take(MAX_TRACES) {
        let Ok(meta) = serde_json::to_vec(&meta) else { continue };
        if body.len() + 8 + meta.len() + bytes.len() > MAX_BYTES {
            break;
        }
        for part in [&meta, &bytes] {
            body.extend_from_slice(&(part.len() as u32).to_be_bytes());
            body.extend_from_slice(part);
        }
    }
    body
}

/// The traces of an answer.
pub fn decode(mut body: &[u8]) -> Result<Vec<PeerTrace>, String> {
    let part = |body: &mut &[u8]| -> Result<Vec<u8>, String> {
        let (length, rest) = body.split_first_chunk::<4>().ok_or("a frame is cut short")?;
        let length = u32::from_be_bytes(*length) as usize;
        let bytes = rest.get(..length).ok_or("a frame is cut short")?.to_vec();
        *body = &rest[length..];
        Ok(bytes)
    };
    let mut traces = Vec::new();
    while !body.is_empty() {
        if traces.len() == MAX_TRACES {
            return Err(format!("more than {MAX_TRACES} traces"));
        }
        let meta = part(&mut body)?;
        let meta = serde_json::from_slice(&meta).map_err(|error| format!("a trace's metadata: {error}"))?;
        traces.push(PeerTrace { meta, bytes: part(&mut body)? });
    }
    Ok(traces)
}

impl Cluster {
    /// Up to `limit` corpus traces of `function` from each other live node that hosts it,
    /// asked at once; what a peer could not give within [`PEER_TIMEOUT`] is left out.
    pub async fn peer_corpus(&self, function: &str, limit: usize) -> Vec<PeerTrace> {
        let Some(replicas) = self.replicas_of(function) else { return Vec::new() };
        let peers: Vec<NodeInfo> =
            self.hosts_of(function, replicas).into_iter().filter(|node| node.name != self.node).collect();
        let asked = peers.iter().map(|peer| async move {
            let answer = tokio::time::timeout(PEER_TIMEOUT, self.corpus_of(peer, function, limit.min(MAX_TRACES)));
            match answer.await {
                Ok(Ok(traces)) => traces,
                Ok(Err(error)) => {
                    tracing::warn!(function, peer = %peer.name, error = %format!("{error:#}"), "no corpus from a peer; verifying without it");
                    Vec::new()
                }
                Err(_) => {
                    tracing::warn!(function, peer = %peer.name, "no corpus from a peer within {PEER_TIMEOUT:?}; verifying without it");
                    Vec::new()
                }
            }
        });
        futures::future::join_all(asked).await.into_iter().flatten().collect()
    }

    /// `peer`'s corpus of `function`, at most `limit` traces.
    async fn corpus_of(&self, peer: &NodeInfo, function: &str, limit: usize) -> anyhow::Result<Vec<PeerTrace>> {
        let url = reqwest::Url::parse(&format!("{}{PATH}{function}?limit={limit}", peer.address))?;
        // What the peer sees as the path and query, and checks the signature against.
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        let signed = self
            .sign_request("GET", &target, &peer.name, None)
            .ok_or_else(|| anyhow::anyhow!("this node has no peer key yet"))?;
        let mut response =
            self.peer_client.get(url).header(PEER_REQUEST_HEADER, signed).send().await.map_err(|e| e.without_url())?;
        if !response.status().is_success() {
            anyhow::bail!("it answered {}", response.status());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.without_url())? {
            if body.len() + chunk.len() > MAX_BYTES {
                anyhow::bail!("its answer is over {MAX_BYTES} bytes");
            }
            body.extend_from_slice(&chunk);
        }
        let traces = decode(&body).map_err(|error| anyhow::anyhow!("its answer is malformed: {error}"))?;
        Ok(traces.into_iter().filter(|trace| trace.meta.function == function).take(limit).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str) -> TraceMeta {
        let json = serde_json::json!({
            "id": id, "function": "orders", "version": 1, "recorded_at": "2026-01-01T00:00:00Z",
            "status": 200, "duration_us": 5, "size": 3, "reason": "corpus", "route": "GET /", "chunks": 1,
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn an_answer_decodes_to_what_was_encoded_and_nothing_else() {
        let traces = vec![(meta("a"), vec![1, 2, 3]), (meta("b"), Vec::new())];
        let body = encode(traces.clone());
        let decoded = decode(&body).unwrap();
        let expected: Vec<PeerTrace> = traces.into_iter().map(|(meta, bytes)| PeerTrace { meta, bytes }).collect();
        assert_eq!(decoded, expected);
        assert_eq!(decode(&[]).unwrap(), Vec::new());
        // Cut anywhere inside, it is refused rather than misread.
        for cut in 1..body.len() {
            let decoded = decode(&body[..cut]);
            assert!(decoded.is_err() || decoded.unwrap().len() == 1, "cut at {cut}");
        }
        assert!(decode(&[0, 0, 0, 9, b'{']).is_err());
        assert!(decode(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn an_answer_is_bounded() {
        let many = (0..MAX_TRACES + 5).map(|i| (meta(&i.to_string()), vec![0u8; 4]));
        assert_eq!(decode(&encode(many)).unwrap().len(), MAX_TRACES);
        let big = (0..5).map(|i| (meta(&i.to_string()), vec![0u8; MAX_BYTES / 3]));
        let body = encode(big);
        assert!(body.len() <= MAX_BYTES);
        assert_eq!(decode(&body).unwrap().len(), 2);
        let too_many: Vec<u8> = (0..=MAX_TRACES).flat_map(|i| encode([(meta(&i.to_string()), Vec::new())])).collect();
        assert!(decode(&too_many).is_err());
    }
}
