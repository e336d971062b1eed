//! The HTTP server: accepts connections (HTTP/1.1 and HTTP/2 on one port), stamps every
//! response with a request id, and shuts down gracefully.
//!
//! Invariants: the listener is bound before anything is printed as ready; on SIGTERM/SIGINT
//! no new connection is accepted, in-flight requests finish (up to the drain deadline), and
//! only then is the function state dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderValue;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use super::body::{BoxError, ResponseBody};
use super::connections::{Activity, Admission, Admitted, Slot, Tracked};
use super::problem::Problem;
use crate::http::App;
use crate::http::tls::Tls;
use crate::runtime::logs::RequestLine;
use crate::telemetry::access::{self, AccessLine};

/// The request id's header, on every response (and taken from a caller that sends one).
const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// How long in-flight requests may run after a shutdown signal.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// Limits on what a client may send before its request reaches a handler.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A client must send its whole request head within this time (slow-client protection).
    pub header_read_timeout: Duration,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Most bytes of request head (HTTP/1.1 read buffer; HTTP/2 header list).
    pub max_header_bytes: usize,
    /// A TLS handshake must finish within this time.
    pub handshake_timeout: Duration,
    /// A connection with nothing in flight and no bytes moving this long is closed.
    pub idle_timeout: Duration,
    /// Open connections in all (`--max-connections`).
    pub max_connections: usize,
    /// Open connections from one client address (`--max-connections-per-ip`); a request a
    /// cluster peer proxies counts as a connection of the client it vouches for.
    pub max_connections_per_address: usize,
    /// Open connections from cluster peers (see `http::connections`): their own cap, apart from
    /// the two above.
    pub max_peer_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            max_headers: 100,
            max_header_bytes: 64 << 10,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_address: 256,
            max_peer_connections: 4096,
        }
    }
}

/// Serves `app` on `listener` (over TLS when `tls` is set) until `shutdown` resolves, then
/// drains.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<Arc<Tls>>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        // WebSockets over HTTP/2 (RFC 8441).
        .enable_connect_protocol();
    let builder = Arc::new(builder);
    let admission =
        Admission::new(limits.max_connections, limits.max_connections_per_address, limits.max_peer_connections);
    // Every connection task holds a sender; draining waits until all are gone.
    let (draining, mut drained) = tokio::sync::mpsc::channel::<()>(1);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let request_ids = Arc::new(RequestIds::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Running out of file descriptors must not end the server.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let member = app.cluster.as_ref().is_some_and(|cluster| cluster.is_member_address(peer.ip()));
        let Some(slot) = admission.admit_connection(peer.ip(), member) else {
            tracing::debug!(%peer, "connection refused: connection cap reached");
            continue;
        };
        let slot = Arc::new(slot);
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let stream = Tracked::new(stream, activity.clone());
        let app = app.clone();
        let request_ids = request_ids.clone();
        let in_service = activity.clone();
        let (admission, in_slot) = (admission.clone(), slot.clone());
        let (upgrade_slot, upgrade_draining) = (slot.clone(), draining.clone());
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            // A WebSocket outlives the connection task once the protocol switches: it holds what
            // the connection held itself (see `UpgradeHold`).
            if super::websocket::is_upgrade(&request) {
                let http2 = request.method() == http::Method::CONNECT;
                if let Some(hold) = admission.hold_for_upgrade(&upgrade_slot, &upgrade_draining, peer.ip(), http2) {
                    request.extensions_mut().insert(hold);
                }
            }
            let app = app.clone();
            let id = request_ids.next_for(&request);
            let in_flight = in_service.request();
            let (admission, slot) = (admission.clone(), in_slot.clone());
            async move {
                let response = handle(app, request, peer, id, (&admission, &slot)).await;
                drop(in_flight);
                Ok::<_, Infallible>(response)
            }
        });
        let (builder, tls, draining, stopping) = (builder.clone(), tls.clone(), draining.clone(), stopping.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _draining = draining;
            let outcome = match tls {
                None => {
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    supervise(connection, &activity, limits.idle_timeout, stopping).await
                }
                Some(tls) => {
                    match tokio::time::timeout(limits.handshake_timeout, tls.acceptor().accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                            supervise(connection, &activity, limits.idle_timeout, stopping).await
                        }
                        Ok(Err(error)) => return tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            };
            if let Err(error) = outcome {
                tracing::debug!(%peer, error = %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    let _ = stop.send(true);
    // WebSockets close (1001) once the event each is running is done.
    app.websockets.going_away();
    drop(draining);
    if tokio::time::timeout(DRAIN_DEADLINE, drained.recv()).await.is_err() {
        tracing::warn!("drain deadline passed; closing remaining connections");
    }
    Ok(())
}

/// Serves `GET /metrics` (and nothing else) without a token on `listener`: for scrapers on a
/// private address (`--metrics-listen`).
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<crate::metrics::Metrics>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (metrics, builder) = (metrics.clone(), builder.clone());
        let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let response = match (request.method(), request.uri().path()) {
                (&http::Method::GET, "/metrics") => super::metrics_response(&metrics),
                _ => super::problem::Problem::new(http::StatusCode::NOT_FOUND, "this address serves only GET /metrics")
                    .into_response(),
            };
            async move { Ok::<_, Infallible>(response) }
        });
        tokio::spawn(async move {
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Drives one connection to its end, shutting it down gracefully when the server stops or the
/// connection has been idle for `idle_timeout`.
async fn supervise<I, S>(
    connection: hyper_util::server::conn::auto::UpgradeableConnection<'_, I, S, TokioExecutor>,
    activity: &Activity,
    idle_timeout: Duration,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<(), BoxError>
where
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    tokio::pin!(connection);
    // The stop signal and the idle timer live as long as the connection: made afresh at each
    // wakeup (every request), each registered and deregistered itself again, a timer-wheel and
    // a waiter-list lock pair per request that the connection never needed.
    let stop = stopping.changed();
    tokio::pin!(stop);
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let mut closing = false;
    loop {
        tokio::select! {
            outcome = connection.as_mut() => return outcome,
            _ = &mut stop, if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = &mut idle, if !closing => match activity.idle_at(idle_timeout) {
                Some(at) if at > Instant::now() => idle.as_mut().reset(at.into()),
                // Busy (a request in flight): look again a whole timeout later.
                None => idle.as_mut().reset((Instant::now() + idle_timeout).into()),
                Some(_) => {
                    tracing::debug!("closing an idle connection");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            },
        }
    }
}

async fn handle(
    app: Arc<App>,
    mut request: http::Request<Incoming>,
    peer: SocketAddr,
    id: HeaderValue,
    (admission, slot): (&Arc<Admission>, &Slot),
) -> http::Response<ResponseBody> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let started = std::time::Instant::now();
    // A proxied request becomes what the first node received, and is counted for its client.
    let vouched = app.accept_peer(&mut request);
    let mut response = match admission.admit_request(slot, peer.ip(), vouched) {
        Ok(held) => {
            let response = app.route(request, peer).await;
            match held {
                Some(held) => response.map(|body| hold_until_done(body, held)),
                None => response,
            }
        }
        Err(address) => refused(&request, address, vouched.is_none()),
    };
    let elapsed = started.elapsed();
    let request_id = id.to_str().unwrap_or_default();
    // The access line has a target of its own: `LEDGE_LOG=ledge::access=warn` silences it, and
    // it is not exported over OTLP (a function's run has its `ledge.request` span instead).
    access::log(&AccessLine {
        request_id,
        method: method.as_str(),
        path: &path,
        status: response.status().as_u16(),
        micros: elapsed.as_micros() as u64,
    });
    // A request that reached a function (it answered with its version) joins its live log.
    let version = response.headers().get(super::LEDGE_VERSION).and_then(|v| v.to_str().ok()?.parse().ok());
    let function = path.strip_prefix("/fn/").map(|rest| rest.split('/').next().unwrap_or(rest));
    if let (Some(version), Some(function)) = (version, function) {
        let line = RequestLine {
            method: method.as_str(),
            path: &path,
            status: response.status().as_u16(),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            version,
            request_id,
        };
        app.runtime.logs().request(function, line);
    }
    response.headers_mut().insert(X_REQUEST_ID, id);
    response
}

/// `body`, keeping `held` until the body is done (or dropped).
fn hold_until_done(body: ResponseBody, held: Admitted) -> ResponseBody {
    Holding { body, _held: held }.boxed_unsync()
}

/// A response body that holds a connection slot while it lasts (its size hint, and so
/// `content-length`, unchanged).
struct Holding {
    body: ResponseBody,
    _held: Admitted,
}

impl http_body::Body for Holding {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A request that `address`'s connection cap refuses (a proxied one for its client, or the first
/// unvouched one on a peer's connection): 503, and in the second case the connection closes
/// (HTTP/1.1), since it never got a slot of its own.
fn refused<B>(request: &http::Request<B>, address: std::net::IpAddr, close: bool) -> http::Response<ResponseBody> {
    tracing::debug!(%address, "request refused: connection cap reached");
    let detail = format!("too many connections from {address}; retry when some have closed");
    let mut problem = Problem::new(http::StatusCode::SERVICE_UNAVAILABLE, detail).with_header("retry-after", "1");
    if close && request.version() < http::Version::HTTP_2 {
        problem = problem.with_header("connection", "close");
    }
    problem.into_response()
}

/// Request ids: the caller's `x-request-id` when it is short and printable, else
/// `<process nonce>-<counter>`.
struct RequestIds {
    nonce: u32,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        RequestIds { nonce: rand_nonce(), counter: AtomicU64::new(0) }
    }

    fn next_for<B>(&self, request: &http::Request<B>) -> HeaderValue {
        if let Some(given) = request.headers().get(X_REQUEST_ID)
            && given.len() <= 128
            && given.as_bytes().iter().all(|b| b.is_ascii_graphic())
        {
            return given.clone();
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{:08x}-{n:x}", self.nonce)).expect("hex is a valid header value")
    }
}

fn rand_nonce() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    nanos ^ std::process::id().rotate_left(16)
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; shut down with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
