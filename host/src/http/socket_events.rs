//! What a WebSocket connection's events run with ([`Session`]), and how one runs: the caller's
//! token checked again (a revoked or expired token ends the connection), a turn among the
//! function's instances, the live version, a fresh instance, recorded as `[record]` says (every
//! event, when a manager of the function opened the connection with `ledge-record: 1`).
//!
//! Invariants: an event waits for an instance without queueing ahead of the function's HTTP
//! requests (it polls, backing off, for at most the policy's timeout); it runs only while the
//! function it was opened for is still deployed (looked up again once it holds its permit, so
//! nothing it writes outlives a removal that waits for the function's instances).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::recording::{self, RunToRecord};
use crate::access::caveats::{self, Op};
use crate::access::policy::WebSocket;
use crate::access::tokens::{Authority, Caller};
use crate::record::Traces;
use crate::registry::Registry;
use crate::runtime::concurrency::Permit;
use crate::runtime::events::SocketEvent;
use crate::runtime::{Invocation, Runtime};

/// What a connection's events run with.
pub struct Session {
    pub registry: Arc<Registry>,
    pub runtime: Arc<Runtime>,
    pub authority: Arc<Authority>,
    pub function: String,
    pub entry: WebSocket,
    pub caller: Caller,
    /// The ledge token the connection was opened with (`Bearer …`), checked before each event.
    pub token: Option<String>,
    /// The upgrade's method and the path the function saw: what the token's caveats are
    /// checked against.
    pub method: String,
    pub path: String,
    pub caller_key: String,
    pub tls: bool,
    pub peer: std::net::SocketAddr,
    pub traces: Arc<Traces>,
    /// A manager of the function opened the connection with `ledge-record: 1`: every event is
    /// recorded and kept.
    pub record_requested: bool,
}

/// Why an event did not run to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventError {
    /// The function trapped, timed out or ran out of memory.
    Failed,
    /// No instance of the function was free within its timeout.
    Busy,
    /// The function is no longer deployed here.
    Gone,
    /// The caller's token is no longer valid (revoked, expired).
    Revoked,
    /// The function's live version no longer accepts WebSockets here (a redeploy dropped the
    /// `[[websocket]]` entry, or the handlers).
    Withdrawn,
}

impl EventError {
    /// The close code and reason for a connection whose event failed so.
    pub fn close(self) -> (u16, String) {
        match self {
            EventError::Failed => (1011, "the function failed".into()),
            EventError::Busy => (1013, "the function is busy; try again later".into()),
            EventError::Gone => (1001, "the function is gone".into()),
            EventError::Revoked => (1008, "the token is no longer valid".into()),
            EventError::Withdrawn => (1001, "the function no longer accepts WebSockets here".into()),
        }
    }
}

/// The longest pause between two looks for a free instance.
const MAX_PERMIT_BACKOFF: Duration = Duration::from_millis(50);

impl Session {
    /// Runs `event` on a fresh instance of the function's live version: `Ok(Some(reason))` when
    /// `on-open` refused the connection.
    pub async fn event(&self, conn: &str, event: SocketEvent) -> Result<Option<(u16, String)>, EventError> {
        if let Some(token) = &self.token {
            let facts = caveats::Request {
                op: Op::Invoke,
                function: Some(&self.function),
                queue: None,
                method: &self.method,
                path: &self.path,
                now: SystemTime::now(),
            };
            if self.authority.verify(Some(token), &facts).is_err() {
                return Err(EventError::Revoked);
            }
        }
        let deployment = self.registry.lookup(&self.function).ok_or(EventError::Gone)?;
        // Before the permit: a removal waits for the function's permits, under the change lock
        // a load may need.
        deployment.load_code().await;
        let permit = self.permit(&deployment.concurrency, deployment.policy.timeout).await?;
        // Removed (or removed and deployed anew) while this event waited: not this function.
        let still = self.registry.lookup(&self.function).ok_or(EventError::Gone)?;
        if !Arc::ptr_eq(&still.concurrency, &deployment.concurrency) {
            return Err(EventError::Gone);
        }
        let chosen = deployment.choose(&self.caller_key).ok_or(EventError::Gone)?;
        let entry_kept = deployment.policy.websockets.iter().any(|entry| entry.path == self.entry.path);
        if !entry_kept || chosen.pre.websocket_handler().is_none() {
            return Err(EventError::Withdrawn);
        }
        let span = event.span(&self.function);
        let tape = recording::keep_of(deployment.policy.record, self.record_requested, || false).map(|keep| {
            let run = RunToRecord {
                deployment: &deployment,
                chosen: &chosen,
                caller: &self.caller,
                request: event.recorded(conn, &self.path, self.tls),
                keep,
                otel_trace_id: span.trace_id(),
            };
            recording::start(&self.traces, self.runtime.max_memory(), run)
        });
        let invocation = Invocation {
            function: &self.function,
            pre: chosen.pre,
            policy: &deployment.policy,
            cold: chosen.cold,
            caller: self.caller.clone(),
            permit,
            tls: self.tls,
            config: deployment.config.clone(),
            tape,
        };
        self.runtime.websocket_event(invocation, conn, event, span).await.map_err(|error| {
            tracing::info!(function = %self.function, peer = %self.peer, %error, "WebSocket event failed");
            EventError::Failed
        })
    }

    /// A permit of `limit` within `timeout`, polled with backoff: an event never queues ahead of
    /// the function's requests, which take a free permit or answer 503 at once.
    async fn permit(
        &self,
        limit: &Arc<crate::runtime::concurrency::ConcurrencyLimit>,
        timeout: Duration,
    ) -> Result<Permit, EventError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(permit) = limit.try_acquire() {
                return Ok(permit);
            }
            if Instant::now() + pause > deadline {
                return Err(EventError::Busy);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PERMIT_BACKOFF);
        }
    }
}

/// The connection's GCRA on the frames it sends (`rate`).
pub fn limiter(entry: &WebSocket) -> DefaultDirectRateLimiter {
    let period = entry.rate.window / entry.rate.quota.max(1);
    let burst = NonZeroU32::new(entry.rate.burst).unwrap_or(NonZeroU32::MIN);
    let quota =
        Quota::with_period(period.max(Duration::from_nanos(1))).expect("a period above zero").allow_burst(burst);
    RateLimiter::direct(quota)
}
