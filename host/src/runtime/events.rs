//! One WebSocket event (`on-open`, `on-message`, `on-close`) on a fresh instance of the
//! function's snapshot, under the same limits as a request: the policy's timeout and memory,
//! the function's concurrency permit, its keyspace and its tape.
//!
//! A recorded event is a trace like a request's ([`SocketEvent::recorded`]): scheme `ws` or
//! `wss` (which tells it from a request's: no caller can make a request say so), method
//! [`EVENT_METHOD`], the event, connection, message type and close code in `ledge-websocket-*`
//! headers, the message (or close reason) as the body; what the event came to is its response:
//! 101 for an accepted `on-open`, 200 for a handled message or close, 403 with
//! `ledge-websocket-close-code` and the reason as body for a refused `on-open`. `ledge replay`
//! runs such a trace through [`Runtime::websocket_event`] again.
//!
//! Invariant: a component that does not export `ledge:platform/websocket-handler` is found out
//! before any connection is accepted (`FunctionPre::websocket_handler`), never by a trap
//! mid-connection.

use std::time::Instant;

use wasmtime::PoolConcurrencyLimitError;

use super::invoke::{Invocation, describe_failure};
use super::{InvokeError, Runtime};
use crate::guest_kv::bindings::ledge::platform::websocket::{
    CloseReason, Message as WitMessage, RequestInfo as WitRequestInfo,
};
use crate::record::trace::{RecordedRequest, RecordedResponse};
use crate::telemetry::{TraceCx, names};
use crate::websocket::Message;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

/// What happened on a connection, for the function to handle.
#[derive(Debug, Clone, PartialEq)]
pub enum SocketEvent {
    /// A client connected with this upgrade request.
    Open {
        path_with_query: String,
        headers: Vec<(String, String)>,
    },
    Message(Message),
    Close {
        code: u16,
        reason: String,
    },
}

/// The method of a WebSocket event's trace (no HTTP method is named so).
const EVENT_METHOD: &str = "WEBSOCKET";
/// `open`, `message` or `close`.
const EVENT_HEADER: &str = "ledge-websocket-event";
const CONNECTION_HEADER: &str = "ledge-websocket-connection";
/// `text` or `binary`.
const MESSAGE_HEADER: &str = "ledge-websocket-message";
const CLOSE_CODE_HEADER: &str = "ledge-websocket-close-code";

impl SocketEvent {
    fn name(&self) -> &'static str {
        match self {
            SocketEvent::Open { .. } => "on-open",
            SocketEvent::Message(_) => "on-message",
            SocketEvent::Close { .. } => "on-close",
        }
    }

    /// The span of one run of this event.
    pub fn span(&self, function: &str) -> TraceCx {
        TraceCx::start(None, names::WEBSOCKET_EVENT, SpanKind::Server, function, || {
            vec![KeyValue::new("ledge.websocket.event", self.name())]
        })
    }

    /// This event of connection `conn` as a trace keeps it; `path` is the connection's path (what
    /// `on-open` got has its own).
    pub fn recorded(&self, conn: &str, path: &str, tls: bool) -> RecordedRequest {
        let header = |name: &str, value: &str| (name.to_string(), value.as_bytes().to_vec());
        let mut headers = vec![header(CONNECTION_HEADER, conn)];
        let (path_and_query, body) = match self {
            SocketEvent::Open { path_with_query, headers: sent } => {
                headers.push(header(EVENT_HEADER, "open"));
                headers.extend(sent.iter().map(|(name, value)| header(name, value)));
                (path_with_query.as_str(), Vec::new())
            }
            SocketEvent::Message(message) => {
                headers.push(header(EVENT_HEADER, "message"));
                let (kind, bytes) = match message {
                    Message::Text(text) => ("text", text.as_bytes()),
                    Message::Binary(bytes) => ("binary", bytes.as_slice()),
                };
                headers.push(header(MESSAGE_HEADER, kind));
                (path, vec![bytes.to_vec()])
            }
            SocketEvent::Close { code, reason } => {
                headers.push(header(EVENT_HEADER, "close"));
                headers.push(header(CLOSE_CODE_HEADER, &code.to_string()));
                (path, vec![reason.as_bytes().to_vec()])
            }
        };
        RecordedRequest {
            method: EVENT_METHOD.to_string(),
            scheme: if tls { "wss" } else { "ws" }.to_string(),
            authority: String::new(),
            path_and_query: path_and_query.to_string(),
            headers,
            body,
            body_error: None,
        }
    }

    /// The connection and event a trace made by [`SocketEvent::recorded`] holds.
    pub fn from_recorded(request: &RecordedRequest) -> Result<(String, SocketEvent), String> {
        let find = |name: &str| {
            let value = request.headers.iter().find(|(n, _)| n == name).map(|(_, value)| value.as_slice());
            let value = value.ok_or_else(|| format!("the trace's event has no `{name}`"))?;
            String::from_utf8(value.to_vec()).map_err(|_| format!("the trace's `{name}` is not UTF-8"))
        };
        let conn = find(CONNECTION_HEADER)?;
        let body = request.body.concat();
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|_| "the trace's text is not UTF-8".to_string());
        let event = match find(EVENT_HEADER)?.as_str() {
            "open" => SocketEvent::Open {
                path_with_query: request.path_and_query.clone(),
                headers: request
                    .headers
                    .iter()
                    .filter(|(name, _)| !name.starts_with("ledge-websocket-"))
                    .map(|(name, value)| (name.clone(), String::from_utf8_lossy(value).into_owned()))
                    .collect(),
            },
            "message" => SocketEvent::Message(match find(MESSAGE_HEADER)?.as_str() {
                "text" => Message::Text(text(body)?),
                "binary" => Message::Binary(body),
                other => return Err(format!("the trace holds an unknown WebSocket message type `{other}`")),
            }),
            "close" => SocketEvent::Close {
                code: find(CLOSE_CODE_HEADER)?.parse().map_err(|_| "the trace's close code is not a number")?,
                reason: text(body)?,
            },
            other => return Err(format!("the trace holds an unknown WebSocket event `{other}`")),
        };
        Ok((conn, event))
    }
}

/// What an event came to, as its trace keeps it: `refused` is `on-open`'s refusal.
fn event_outcome(opening: bool, refused: &Option<(u16, String)>) -> (RecordedResponse, Vec<u8>) {
    match refused {
        Some((code, reason)) => {
            let headers = vec![(CLOSE_CODE_HEADER.to_string(), code.to_string().into_bytes())];
            (RecordedResponse { status: 403, headers }, reason.as_bytes().to_vec())
        }
        None => (RecordedResponse { status: if opening { 101 } else { 200 }, headers: Vec::new() }, Vec::new()),
    }
}

impl Runtime {
    /// Runs `event` of connection `conn` on a fresh instance, traced as `span` ([`SocketEvent::span`]).
    /// `Ok(Some(reason))`: `on-open` refused the connection.
    pub async fn websocket_event(
        &self,
        invocation: Invocation<'_>,
        conn: &str,
        event: SocketEvent,
        span: TraceCx,
    ) -> Result<Option<(u16, String)>, InvokeError> {
        let tape = invocation.tape.clone();
        let mut store = self.instance_store(&invocation, &span);
        let pre = invocation.pre.instance_pre().clone();
        let indices = invocation.pre.websocket_handler().cloned();
        let (function, cold, timeout) = (invocation.function.to_string(), invocation.cold, invocation.policy.timeout);
        let metrics = self.metrics.clone();
        let _permit = invocation.permit;
        let conn = conn.to_string();
        let opening = matches!(event, SocketEvent::Open { .. });
        let run = async {
            let started = Instant::now();
            let instance = pre.instantiate_async(&mut store).await?;
            metrics.observe_instantiation(&function, cold, started.elapsed());
            let indices = indices
                .ok_or_else(|| wasmtime::format_err!("the build does not export ledge:platform/websocket-handler"))?;
            let handler = indices.load(&mut store, &instance)?;
            match event {
                SocketEvent::Open { path_with_query, headers } => {
                    let request = WitRequestInfo { path_with_query, headers };
                    let opened = handler.call_on_open(&mut store, &conn, &request).await?;
                    Ok::<_, wasmtime::Error>(opened.err().map(|CloseReason { code, reason }| (code, reason)))
                }
                SocketEvent::Message(message) => {
                    let message = match message {
                        Message::Text(text) => WitMessage::Text(text),
                        Message::Binary(bytes) => WitMessage::Binary(bytes),
                    };
                    handler.call_on_message(&mut store, &conn, &message).await?;
                    Ok(None)
                }
                SocketEvent::Close { code, reason } => {
                    handler.call_on_close(&mut store, &conn, code, &reason).await?;
                    Ok(None)
                }
            }
        };
        let outcome = tokio::time::timeout(timeout, run).await;
        let failure = match outcome {
            Ok(Ok(refused)) => {
                if let Some(tape) = &tape {
                    let (response, body) = event_outcome(opening, &refused);
                    tape.response(response);
                    tape.response_chunk(&body);
                }
                span.end();
                return Ok(refused);
            }
            Err(_elapsed) => InvokeError::Timeout(timeout),
            Ok(Err(_)) if store.data().memory.hit => {
                InvokeError::MemoryLimit { limit: self.memory_cap(invocation.policy) }
            }
            Ok(Err(error)) if error.downcast_ref::<PoolConcurrencyLimitError>().is_some() => InvokeError::PoolExhausted,
            Ok(Err(error)) => InvokeError::Trap(describe_failure(&error)),
        };
        if let Some(tape) = &tape {
            tape.fail(failure.kind(), &failure.to_string());
        }
        span.fail(&failure);
        span.end();
        Err(failure)
    }
}
