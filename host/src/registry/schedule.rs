//! Scheduled runs (policy `[[schedule]]`): a synthetic `GET path` sent to the function on a
//! cron schedule, in UTC.
//!
//! Invariants: each entry runs at most once per matching second and at most one run of an
//! entry is alive at a time (a run still going when the next one is due makes that one skip,
//! logged); a run takes one of the function's concurrency permits and obeys its policy's limits
//! like any request; runs missed while the node was down are not replayed. Outcomes go to the
//! function's live log (request id `schedule`) and `ledge_requests_total`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Timelike, Utc};
use http_body_util::{BodyExt, Empty};

use super::Registry;
use crate::access::tokens::Caller;
use crate::runtime::Invocation;
use crate::runtime::logs::RequestLine;
use crate::telemetry::{TraceCx, names};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

/// How often the clock is looked at: well under a second, the finest schedule.
const TICK: Duration = Duration::from_millis(200);

/// Seconds a late tick may catch up (a busy node), beyond which missed runs are dropped.
const CATCH_UP: i64 = 5;

impl Registry {
    /// Limits this node's scheduled runs to the functions `here` names (cluster mode: each
    /// function's schedules run on one node). Set once, before or after the scheduler starts.
    pub fn run_schedules_where(&self, here: impl Fn(&str) -> bool + Send + Sync + 'static) {
        let _ = self.schedules_here.set(Box::new(here));
    }

    /// Runs every deployed function's schedules until the registry is dropped.
    pub fn spawn_scheduler(self: &Arc<Self>) {
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut checked = Utc::now().timestamp();
            let mut running: HashMap<(String, usize, String), Arc<AtomicBool>> = HashMap::new();
            // Patterns were checked when their policy was parsed; parse each once, not every tick.
            let mut patterns: HashMap<String, Option<croner::Cron>> = HashMap::new();
            loop {
                tokio::time::sleep(TICK).await;
                let Some(registry) = registry.upgrade() else { return };
                let now = Utc::now().timestamp();
                for second in (checked + 1).max(now - CATCH_UP)..=now {
                    let Some(at) = DateTime::<Utc>::from_timestamp(second, 0) else { continue };
                    registry.fire(at, &mut running, &mut patterns);
                }
                checked = checked.max(now);
            }
        });
    }

    /// Starts every entry whose pattern matches `at`.
    fn fire(
        self: &Arc<Self>,
        at: DateTime<Utc>,
        running: &mut HashMap<(String, usize, String), Arc<AtomicBool>>,
        patterns: &mut HashMap<String, Option<croner::Cron>>,
    ) {
        let live: Vec<_> = self.live.read().expect("registry lock poisoned").values().cloned().collect();
        let here = |name: &str| self.schedules_here.get().is_none_or(|here| here(name));
        for deployment in live.into_iter().filter(|d| here(&d.meta.name)) {
            for (index, (pattern, path)) in deployment.policy.schedules.iter().enumerate() {
                let cron = patterns.entry(pattern.clone()).or_insert_with(|| pattern.parse().ok());
                let matches = cron.as_ref().is_some_and(|cron| cron.is_time_matching(&at).unwrap_or(false));
                if !matches {
                    continue;
                }
                let name = deployment.meta.name.clone();
                let busy = running.entry((name.clone(), index, pattern.clone())).or_default().clone();
                if busy.swap(true, Ordering::AcqRel) {
                    tracing::warn!(function = %name, cron = %pattern, at = %at.with_nanosecond(0).unwrap_or(at), "scheduled run skipped: the previous one is still running");
                    continue;
                }
                let (registry, path) = (self.clone(), path.clone());
                tokio::spawn(async move {
                    registry.run_scheduled(&name, &path).await;
                    busy.store(false, Ordering::Release);
                });
            }
        }
    }

    async fn run_scheduled(&self, name: &str, path: &str) {
        let Some(deployment) = self.lookup(name) else { return };
        let started = Instant::now();
        deployment.load_code().await;
        let Some(chosen) = deployment.choose("schedule") else { return };
        let status = match deployment.concurrency.try_acquire() {
            None => {
                tracing::warn!(function = name, path, "scheduled run skipped: every instance is busy");
                return;
            }
            Some(permit) => {
                // A scheduled run starts a trace of its own.
                let span = TraceCx::start(None, names::REQUEST, SpanKind::Internal, name, || {
                    vec![
                        KeyValue::new("ledge.trigger", "schedule"),
                        KeyValue::new("ledge.version", chosen.version as i64),
                        KeyValue::new("url.path", path.to_string()),
                    ]
                });
                let mut request = http::Request::get(path)
                    .header(http::header::HOST, "localhost")
                    .header("ledge-schedule", "1")
                    .body(Empty::<Bytes>::new())
                    .expect("a checked path makes a valid request");
                span.inject(request.headers_mut());
                if !span.is_off() {
                    request.extensions_mut().insert(span.clone());
                }
                let invocation = Invocation {
                    function: name,
                    pre: chosen.pre,
                    policy: &deployment.policy,
                    cold: chosen.cold,
                    caller: Caller::default(),
                    permit,
                    tls: false,
                    config: deployment.config.clone(),
                    tape: None,
                };
                let status = match self.runtime.invoke(invocation, request, path).await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        // Read the body so that the guest finishes; its time limit still holds.
                        let _ = tokio::time::timeout(deployment.policy.timeout, response.into_body().collect()).await;
                        status
                    }
                    Err(error) => {
                        tracing::warn!(function = name, path, %error, "scheduled run failed");
                        span.fail(&error);
                        error.status()
                    }
                };
                span.set("http.response.status_code", i64::from(status));
                span.end();
                status
            }
        };
        let elapsed = started.elapsed();
        self.runtime.metrics().observe_request(name, status, elapsed);
        let line = RequestLine {
            method: "GET",
            path,
            status,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            version: chosen.version,
            request_id: "schedule",
        };
        self.runtime.logs().request(name, line);
    }
}
