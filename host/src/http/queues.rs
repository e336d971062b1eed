//! `/v1/queues`: sending a message over HTTP, and the operator's view of the node's queues.
//!
//! | route | who |
//! |---|---|
//! | `POST /v1/queues/{name}/messages[?delay_ms=N&key=K]` | a manage token without `fn`, or a token allowed `op = send` (its `queue` caveat, if any, naming the queue); 202 `{"id"}` once durable |
//! | `GET /v1/queues` | a manage token without `fn` |
//! | `GET /v1/queues/{name}/messages[?dead=true&limit=N]` | peek (same) |
//! | `POST /v1/queues/{name}/redrive` | dead messages back to waiting (same) |
//! | `DELETE /v1/queues/{name}/messages[?dead=true]` | purge (same) |
//!
//! Invariants: every route is authorized before a body is read or a queue is touched; a body
//! is read only up to the node's message limit; a name outside the function-name rule is a 400.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use http::{Method, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use super::admin::read_upload;
use super::{App, Problem, ResponseBody, json, method_not_allowed};
use crate::access::caveats::Op;
use crate::access::policy::is_valid_name;
use crate::access::tokens::Caller;
use crate::guest_kv::global_queues::GlobalQueues;
use crate::queue::settle::Peeked;
use crate::queue::{QueueError, SendOptions};

/// Messages one peek shows by default, and at most.
const PEEK_DEFAULT: usize = 100;
const PEEK_MAX: usize = 1000;

/// A message as a peek shows it.
#[derive(Debug, Serialize)]
struct PeekedMessage {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    sent_at: String,
    /// Attempts that failed so far.
    attempts: u32,
    size: u64,
    /// `utf-8` (the body as text) or `base64`.
    encoding: &'static str,
    body: String,
}

impl From<Peeked> for PeekedMessage {
    fn from(Peeked { entry, body }: Peeked) -> Self {
        let sent_at = chrono::DateTime::from_timestamp_millis(entry.sent_at_ms as i64).unwrap_or_default();
        let (encoding, body) = match String::from_utf8(body) {
            Ok(text) => ("utf-8", text),
            Err(bytes) => ("base64", base64::engine::general_purpose::STANDARD.encode(bytes.into_bytes())),
        };
        PeekedMessage {
            id: entry.id,
            key: entry.key,
            sent_at: sent_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            attempts: entry.failed,
            size: entry.size,
            encoding,
            body,
        }
    }
}

impl App {
    /// `/v1/queues` and below; `rest` is what follows `/v1/queues`.
    pub(super) async fn queues(
        &self,
        request: http::Request<Incoming>,
        method: &Method,
        rest: &str,
        peer: SocketAddr,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let raw_query = request.uri().query().map(str::to_string);
        // The parameters a route takes (after its authorization: a caller without a token
        // learns nothing from a 400); any other is a 400 naming it.
        let query = |allowed: &[&str]| Query::parse(raw_query.as_deref(), allowed);
        match (method, segments.as_slice()) {
            (&Method::GET, [""]) => {
                self.authorize_queue(&request, Op::Manage, None, peer)?;
                query(&[])?;
                let mut queues = self.queues.list();
                if let Some(global) = &self.global_queues {
                    let names = self.global_queue_names();
                    queues.retain(|queue| !names.contains(&queue.name));
                    queues.extend(global.list(&names).await?);
                    queues.sort_by(|a, b| a.name.cmp(&b.name));
                }
                Ok(json(StatusCode::OK, &serde_json::json!({ "queues": queues })))
            }
            (_, [""]) => Err(method_not_allowed("GET")),
            (&Method::POST, [name, "messages"]) => {
                let name = checked(name)?;
                self.authorize_queue(&request, Op::Send, Some(name), peer)?;
                let options = query(&["delay_ms", "key"])?.send_options()?;
                let body = read_upload(request.into_body(), self.queues.max_body()).await?;
                let id = match self.global_queue(name) {
                    Some(global) => global.send(name, &body, &options, self.queues.bounds_of(name)).await?,
                    None => self.queues.send(name, &body, &options).await?,
                };
                Ok(json(StatusCode::ACCEPTED, &serde_json::json!({ "id": id })))
            }
            (&Method::GET, [name, "messages"]) => {
                let name = checked(name)?;
                self.authorize_queue(&request, Op::Manage, Some(name), peer)?;
                let query = query(&["dead", "limit"])?;
                let limit = query.limit()?;
                let peeked = match self.global_queue(name) {
                    Some(global) => global.peek(name, query.dead, limit).await?,
                    None => self.queues.peek(name, query.dead, limit)?,
                };
                let messages: Vec<PeekedMessage> = peeked.into_iter().map(PeekedMessage::from).collect();
                let body = serde_json::json!({ "queue": name, "dead": query.dead, "messages": messages });
                Ok(json(StatusCode::OK, &body))
            }
            (&Method::DELETE, [name, "messages"]) => {
                let name = checked(name)?;
                let caller = self.authorize_queue(&request, Op::Manage, Some(name), peer)?;
                let query = query(&["dead"])?;
                // Run to the end even if the caller goes away: a purge cut off halfway would leave
                // the index and the engine apart.
                let (queues, global, queue, dead) =
                    (self.queues.clone(), self.global_queue(name).cloned(), name.to_string(), query.dead);
                let purged = finish(async move {
                    match global {
                        Some(global) => global.purge(&queue, dead).await,
                        None => queues.purge(&queue, dead).await,
                    }
                })
                .await;
                audit_queue("queue purge", name, &caller, &purged);
                Ok(json(StatusCode::OK, &serde_json::json!({ "purged": purged? })))
            }
            (_, [_, "messages"]) => Err(method_not_allowed("GET, POST, DELETE")),
            (&Method::POST, [name, "redrive"]) => {
                let name = checked(name)?;
                let caller = self.authorize_queue(&request, Op::Manage, Some(name), peer)?;
                query(&[])?;
                let (queues, global, queue) = (self.queues.clone(), self.global_queue(name).cloned(), name.to_string());
                let redriven = finish(async move {
                    match global {
                        Some(global) => global.redrive(&queue).await,
                        None => queues.redrive(&queue).await,
                    }
                })
                .await;
                audit_queue("queue redrive", name, &caller, &redriven);
                Ok(json(StatusCode::OK, &serde_json::json!({ "redriven": redriven? })))
            }
            (_, [_, "redrive"]) => Err(method_not_allowed("POST")),
            _ => Err(Problem::new(StatusCode::NOT_FOUND, format!("no route for `/v1/queues{rest}`"))),
        }
    }

    /// The global queues, when `name` is one (cluster mode, listed in `[queues] global`).
    fn global_queue(&self, name: &str) -> Option<&std::sync::Arc<GlobalQueues>> {
        self.global_queues.as_ref().filter(|_| self.global_queue_names().iter().any(|q| q == name))
    }

    /// The queues kept in etcd: those the policies of the functions here list, and those of
    /// every function in the cluster's records (a function placed on other nodes too).
    fn global_queue_names(&self) -> Vec<String> {
        let mut names = self.registry.global_queues();
        if let Some(cluster) = &self.cluster {
            names.extend(cluster.global_queues());
            names.sort();
            names.dedup();
        }
        names
    }

    /// Checks the request's token for `op` on `queue` (never a function: a token confined to
    /// functions is refused), charged to the admin quota.
    fn authorize_queue<B>(
        &self,
        request: &http::Request<B>,
        op: Op,
        queue: Option<&str>,
        peer: SocketAddr,
    ) -> Result<Caller, Problem> {
        let caller = self.authorize_about(request, op, None, queue, peer)?;
        // A token that may not manage sends only where a `queue` caveat says (spec: `op = send`
        // with `queue = NAME`), never to any queue it names.
        if op == Op::Send && !caller.manages && !caller.queue_scoped {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "a token without `op manage` sends only to the queues a `queue` caveat names",
            ));
        }
        self.charge_quota(if op == Op::Send { "send" } else { "admin" }, &caller)?;
        Ok(caller)
    }
}

/// Runs `work` in a task of its own, so that it finishes whether or not its caller waits.
async fn finish(work: impl Future<Output = Result<u64, QueueError>> + Send + 'static) -> Result<u64, QueueError> {
    tokio::spawn(work).await.unwrap_or_else(|join| Err(QueueError::Unavailable(join.to_string())))
}

fn checked(name: &str) -> Result<&str, Problem> {
    if is_valid_name(name) { Ok(name) } else { Err(QueueError::InvalidName(name.to_string()).into()) }
}

fn audit_queue(action: &str, queue: &str, caller: &Caller, outcome: &Result<u64, QueueError>) {
    let outcome = outcome.as_ref().map(|count| format!("{count} messages")).map_err(|error| error.to_string());
    super::audit::audit(action, queue, caller, outcome);
}

fn bad_parameter(detail: String) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, detail)
}

/// The query parameters the queue routes take.
#[derive(Debug, Default)]
struct Query {
    dead: bool,
    delay_ms: Option<String>,
    key: Option<String>,
    limit: Option<String>,
}

impl Query {
    /// The parameters, of those in `allowed`; any other, or a `dead` that is not `true` or
    /// `false`, is a 400 that names it (a purge must never take the wrong side).
    fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Query, Problem> {
        let mut parsed = Query::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if !allowed.contains(&name.as_ref()) {
                let takes = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
                return Err(bad_parameter(format!("unknown parameter `{name}` (this route takes {takes})")));
            }
            match name.as_ref() {
                "dead" => {
                    parsed.dead = match value.as_ref() {
                        "true" => true,
                        "false" => false,
                        other => return Err(bad_parameter(format!("dead=`{other}`: give true or false"))),
                    }
                }
                "delay_ms" => parsed.delay_ms = Some(value.into_owned()),
                "key" => parsed.key = Some(value.into_owned()),
                _ => parsed.limit = Some(value.into_owned()),
            }
        }
        Ok(parsed)
    }

    fn send_options(&self) -> Result<SendOptions, Problem> {
        let delay = match &self.delay_ms {
            None => Duration::ZERO,
            Some(text) => Duration::from_millis(text.parse().map_err(|_| {
                Problem::new(StatusCode::BAD_REQUEST, format!("delay_ms `{text}` is not a number of milliseconds"))
            })?),
        };
        Ok(SendOptions { delay, key: self.key.clone() })
    }

    fn limit(&self) -> Result<usize, Problem> {
        match &self.limit {
            None => Ok(PEEK_DEFAULT),
            Some(text) => text.parse().ok().filter(|n| (1..=PEEK_MAX).contains(n)).ok_or_else(|| {
                Problem::new(StatusCode::BAD_REQUEST, format!("limit `{text}`: give a number from 1 to {PEEK_MAX}"))
            }),
        }
    }
}
