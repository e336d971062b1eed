//! The trace API (which runs are recorded: `recording.rs`).
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/traces[?function=NAME][&limit=N]` | newest traces first (JSON) |
//! | `GET /v1/traces/{id}[?component=true]` | one trace file (with the component that ran) |
//! | `GET /v1/traces/{id}/component` | the component that ran |
//!
//! Invariants: traces hold request data and key-value contents, so every route needs a token
//! allowed `op manage` on the trace's function (listing all functions' traces: a manage token
//! without `fn` caveat); a trace id alone grants nothing. `ledge-trace` is only ever sent to a
//! caller who may read that trace.

use std::net::SocketAddr;
use std::time::SystemTime;

use http::{Method, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use super::{App, Problem, ResponseBody, json, method_not_allowed};
use crate::access::caveats::{self, Op};
use crate::access::tokens::Caller;
use crate::record::store::MAX_LISTED;
use crate::record::{TraceMeta, trace};

#[derive(Serialize)]
struct ListReply {
    traces: Vec<TraceMeta>,
}

impl App {
    /// Whether `authorization` carries a token allowed `op manage` on `name`.
    pub(super) fn may_read_traces(&self, authorization: Option<&str>, name: &str) -> bool {
        let facts = caveats::Request {
            op: Op::Manage,
            function: Some(name),
            queue: None,
            method: "GET",
            path: "/v1/traces",
            now: SystemTime::now(),
        };
        authorization.is_some() && self.authority.verify(authorization, &facts).is_ok()
    }

    /// `/v1/traces` and below; `rest` is what follows `/v1/traces`.
    pub(super) async fn traces(
        &self,
        request: http::Request<Incoming>,
        method: &Method,
        rest: &str,
        peer: SocketAddr,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        if method != Method::GET {
            return Err(method_not_allowed("GET"));
        }
        let query = Query::parse(request.uri().query());
        let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            [""] => {
                if let Some(name) = &query.function {
                    crate::registry::validate_name(name)?;
                }
                if let Some(id) = query.otel_trace.as_ref().filter(|id| !is_otel_trace_id(id)) {
                    return Err(Problem::new(
                        StatusCode::BAD_REQUEST,
                        format!("otel_trace `{id}` is not an OpenTelemetry trace id (32 hex digits, not all zero)"),
                    ));
                }
                let caller = self.authorize(&request, Op::Manage, query.function.as_deref(), peer)?;
                self.charge_admin(&caller)?;
                let (traces, function, otel_trace) = (self.traces.clone(), query.function.clone(), query.otel_trace);
                let limit = query.limit.unwrap_or(100).min(MAX_LISTED);
                let listed =
                    tokio::task::spawn_blocking(move || traces.list(function.as_deref(), otel_trace.as_deref(), limit))
                        .await
                        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, format!("listing traces: {e}")))?;
                Ok(json(StatusCode::OK, &ListReply { traces: listed }))
            }
            [id] => {
                let (function, compressed, version, caller) = self.trace_of(&request, id, peer).await?;
                let component = if query.component { Some(self.component_of(&function, version, id)?) } else { None };
                let file = trace::encode(&compressed, component.as_deref());
                // A trace holds request data and key-value contents: say who took it.
                super::audit::audit("trace-export", &function, &caller, Ok::<_, std::convert::Infallible>(id));
                Ok(super::body::full(StatusCode::OK, "application/vnd.ledge.trace", file))
            }
            [id, "component"] => {
                let (function, _, version, _) = self.trace_of(&request, id, peer).await?;
                let component = self.component_of(&function, version, id)?;
                Ok(super::body::full(StatusCode::OK, "application/wasm", component))
            }
            _ => Err(Problem::new(StatusCode::NOT_FOUND, "no such trace route")),
        }
    }

    /// Trace `id` (its function, stored bytes and version), for a caller who may read it.
    async fn trace_of<B>(
        &self,
        request: &http::Request<B>,
        id: &str,
        peer: SocketAddr,
    ) -> Result<(String, Vec<u8>, u64, Caller), Problem> {
        // Prove a valid token before saying whether the trace exists.
        let facts = caveats::Request {
            op: Op::Manage,
            function: None,
            queue: None,
            method: "GET",
            path: request.uri().path(),
            now: SystemTime::now(),
        };
        // Any answer but "valid, yet not for every function" (403) comes before the lookup, so it
        // cannot depend on whether the trace exists (a 401, or a 429 once the address has used up
        // its failed authentications).
        let checked = self.authenticate(super::authorization(request), &facts, peer);
        if let Err(problem) = &checked
            && problem.status != 403
        {
            return Err(checked.expect_err("checked above"));
        }
        let not_found = || Problem::new(StatusCode::NOT_FOUND, format!("no trace `{id}`"));
        let traces = self.traces.clone();
        let owned = id.to_string();
        let function = tokio::task::spawn_blocking(move || traces.function_of(&owned))
            .await
            .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, format!("reading traces: {e}")))?
            .ok_or_else(not_found)?;
        // A caller who may not read the trace learns nothing from the answer: not whether it
        // exists, nor whose it is.
        let caller = self.authorize(request, Op::Manage, Some(&function), peer).map_err(|_| not_found())?;
        self.charge_admin(&caller)?;
        let (traces, owned, name) = (self.traces.clone(), id.to_string(), function.clone());
        let (meta, compressed) = tokio::task::spawn_blocking(move || traces.get(&name, &owned))
            .await
            .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, format!("reading traces: {e}")))?
            .ok_or_else(not_found)?;
        Ok((function, compressed, meta.version, caller))
    }

    fn component_of(&self, function: &str, version: u64, id: &str) -> Result<Vec<u8>, Problem> {
        self.registry.runnable_component(function, version).map_err(|_| {
            Problem::new(
                StatusCode::NOT_FOUND,
                format!(
                    "version {version} of `{function}`, which trace `{id}` ran, is no longer kept; replay it with --against FILE.wasm"
                ),
            )
        })
    }
}

/// `?function=NAME&limit=N&component=true`.
/// A W3C trace id: 32 lowercase hex digits, not all zero.
fn is_otel_trace_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0')
}

#[derive(Default)]
struct Query {
    function: Option<String>,
    /// Only the recordings of this OpenTelemetry trace (32 hex digits).
    otel_trace: Option<String>,
    limit: Option<usize>,
    component: bool,
}

impl Query {
    fn parse(query: Option<&str>) -> Query {
        let mut parsed = Query::default();
        for pair in query.unwrap_or_default().split('&') {
            match pair.split_once('=') {
                Some(("function", name)) => parsed.function = Some(name.to_string()),
                Some(("limit", n)) => parsed.limit = n.parse().ok(),
                Some(("otel_trace", id)) => parsed.otel_trace = Some(id.to_ascii_lowercase()),
                Some(("component", value)) => parsed.component = value == "true" || value == "1",
                _ => {}
            }
        }
        parsed
    }
}
