//! One WebSocket event (`on-open`, `on-message`, `on-close`) on a fresh instance of the
//! function's snapshot, under the same limits as a request: the policy's timeout and memory,
//! the function's concurrency permit, its keyspace and its tape.
//!
//! Invariant: a component that does not export `ledge:platform/websocket-handler` is found out
//! before any connection is accepted ([`handles_websockets`]), never by a trap mid-connection.

use std::time::Instant;

use wasmtime::PoolConcurrencyLimitError;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use super::invoke::{Invocation, describe_failure};
use super::{GuestState, InvokeError, Runtime};
use crate::guest_kv::bindings::exports::ledge::platform::websocket_handler::GuestIndices;
use crate::guest_kv::bindings::ledge::platform::websocket::{
    CloseReason, Message as WitMessage, RequestInfo as WitRequestInfo,
};
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

impl SocketEvent {
    fn name(&self) -> &'static str {
        match self {
            SocketEvent::Open { .. } => "on-open",
            SocketEvent::Message(_) => "on-message",
            SocketEvent::Close { .. } => "on-close",
        }
    }
}

/// Whether the build exports the WebSocket handlers.
pub fn handles_websockets(pre: &ProxyPre<GuestState>) -> bool {
    GuestIndices::new(pre.instance_pre()).is_ok()
}

impl Runtime {
    /// Runs `event` of connection `conn` on a fresh instance. `Ok(Some(reason))`: `on-open`
    /// refused the connection.
    pub async fn websocket_event(
        &self,
        invocation: Invocation<'_>,
        conn: &str,
        event: SocketEvent,
    ) -> Result<Option<(u16, String)>, InvokeError> {
        let span = TraceCx::start(None, names::WEBSOCKET_EVENT, SpanKind::Server, invocation.function, || {
            vec![KeyValue::new("ledge.websocket.event", event.name())]
        });
        let mut store = self.instance_store(&invocation, &span);
        let pre = invocation.pre.instance_pre().clone();
        let indices = GuestIndices::new(&pre).map_err(|error| InvokeError::Host(format!("{error:#}")))?;
        let (function, cold, timeout) = (invocation.function.to_string(), invocation.cold, invocation.policy.timeout);
        let metrics = self.metrics.clone();
        let _permit = invocation.permit;
        let conn = conn.to_string();
        let run = async {
            let started = Instant::now();
            let instance = pre.instantiate_async(&mut store).await?;
            metrics.observe_instantiation(&function, cold, started.elapsed());
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
        if let Some(tape) = &invocation.tape {
            tape.fail(failure.kind(), &failure.to_string());
        }
        span.fail(&failure);
        span.end();
        Err(failure)
    }
}
