//! Node-to-node routes under `/v1/peer/` (not in the spec's HTTP table: no client calls them):
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/peer/corpus/{function}?limit=N` | this node's verification corpus of the function (at most N ≤ 200 traces, newest first, distinct routes first), as stored (compressed), in the frames of `cluster::corpus` (at most 64 MiB) |
//! | `POST /v1/peer/websocket/{function}/{id}` | a host call (`send`, `close`, `tag`, `untag`) on a WebSocket connection this node holds, as postcard bytes; its result, the same (`peer_sockets.rs`) |
//! | `GET /v1/peer/websocket/{function}?tag=T` | the ids of the function's connections with tag `T` on this node (postcard) |
//!
//! The node verifying a deploy asks the other hosts of the function for it
//! (`Cluster::peer_corpus`), since traces are kept on the node that ran them; a run reaches a
//! WebSocket connection another node holds through that node (`cluster::sockets`).
//!
//! Invariants: only a peer is answered: the request must carry `ledge-peer-request`, signed
//! with the cluster's peer key over the method, the path with query, both nodes' names and the
//! time, at most 30 s old, made for this node (`Cluster::verify_request`, constant time); any
//! other request, and any request to a node outside a cluster, gets the very 404 a missing
//! route gets, so the route reveals nothing; no body is read before the signature checks, and
//! then at most `cluster::sockets::MAX_CALL_BYTES`.

use http::{Method, StatusCode};
use hyper::body::Incoming;

use super::body::full;
use super::{App, Problem, ResponseBody};
use crate::cluster::corpus::{self, MAX_TRACES};
use crate::cluster::peers::PEER_REQUEST_HEADER;
use crate::cluster::sockets;
use crate::registry::validate_name;

impl App {
    /// `/v1/peer/...` (`path` is the request's path).
    pub(super) async fn peer(
        &self,
        request: http::Request<Incoming>,
        method: &Method,
        path: &str,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        let missing = || Problem::new(StatusCode::NOT_FOUND, format!("no route for `{path}`"));
        let Some(cluster) = &self.cluster else { return Err(missing()) };
        let target = request.uri().path_and_query().map_or(path, |p| p.as_str());
        let header = request.headers().get(PEER_REQUEST_HEADER).and_then(|value| value.to_str().ok());
        let Some(signed) = header.and_then(|header| cluster.verify_request(method.as_str(), target, header)) else {
            return Err(missing());
        };
        if let Some(rest) = path.strip_prefix(sockets::PATH) {
            return self.peer_sockets(request, method, rest, &signed).await.ok_or_else(missing)?;
        }
        match (method, path.strip_prefix(corpus::PATH)) {
            (&Method::GET, Some(function)) => self.peer_corpus(function, request.uri().query(), &signed.from).await,
            _ => Err(missing()),
        }
    }

    /// `GET /v1/peer/corpus/{function}?limit=N`.
    async fn peer_corpus(
        &self,
        function: &str,
        query: Option<&str>,
        from: &str,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        validate_name(function).map_err(|error| Problem::new(StatusCode::BAD_REQUEST, error.to_string()))?;
        let limit = limit(query)?;
        let (traces, function) = (self.traces.clone(), function.to_string());
        let read = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ledge_kv::TxError> {
            let mut stored = Vec::new();
            for meta in traces.corpus(&function, limit)? {
                // One pruned since the listing is left out.
                stored.extend(traces.get(&function, &meta.id)?);
            }
            Ok(corpus::encode(stored))
        });
        let body = read
            .await
            .map_err(|error| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, format!("reading traces: {error}")))?
            .map_err(|error| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, format!("reading traces: {error}")))?;
        tracing::debug!(peer = from, bytes = body.len(), "corpus sent to a peer");
        Ok(full(StatusCode::OK, "application/octet-stream", body))
    }
}

/// `limit=N`, from 1 to [`MAX_TRACES`]: the route's one parameter, required.
fn limit(query: Option<&str>) -> Result<usize, Problem> {
    let pairs: Vec<_> = form_urlencoded::parse(query.unwrap_or_default().as_bytes()).collect();
    let limit = match pairs.as_slice() {
        [(name, value)] if name == "limit" => value.parse::<usize>().ok().filter(|n| (1..=MAX_TRACES).contains(n)),
        _ => None,
    };
    limit.ok_or_else(|| {
        Problem::new(StatusCode::BAD_REQUEST, format!("give limit=N (1 to {MAX_TRACES}) and nothing else"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_read_strictly() {
        assert_eq!(limit(Some("limit=50")).unwrap(), 50);
        assert_eq!(limit(Some("limit=200")).unwrap(), 200);
        for bad in [None, Some(""), Some("limit=0"), Some("limit=201"), Some("limit=5&limit=6"), Some("limit=5&x=1")] {
            assert_eq!(limit(bad).unwrap_err().status, 400, "{bad:?}");
        }
    }
}
