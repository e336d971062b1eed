//! One WebSocket connection, from the protocol switch to its end: a writer task draining the
//! connection's outbox onto the socket, and a reader that runs each event (open, message,
//! close) of the connection on a fresh instance, one at a time, in order
//! ([`Session::event`], `socket_events.rs`).
//!
//! Invariants:
//! - the connection's bounds close it with the spec's codes: a message past `max_message`
//!   1009, past the entry's `rate` (every frame counts) or from a refused origin 1008, no
//!   traffic either way for `idle_timeout` 1001, the node stopping 1001 (after the event in
//!   flight), `on-open` trapping 1011; a slow reader past `max_buffer` is closed by the hub
//!   (1008), and a write the client does not take within [`WRITE_TIMEOUT`] ends the connection;
//! - every close, whoever asked for it, ends the session within [`CLOSE_WAIT`] twice over:
//!   the close frame is written if the client still reads, and the socket dropped regardless;
//! - a trapping `on-message` fails that event alone: the connection, and every other one,
//!   stays open; `on-close` runs once, with the code the connection closed with;
//! - the connection holds its server connection slot (`--max-connections`, per address) until
//!   its socket is closed, and the server's drain until its last event (`on-close`) is over;
//!   its hub entry goes with the [`Opened`] guard.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use super::connections::UpgradeHold;
use super::socket_events::{EventError, Session, limiter};
use crate::runtime::events::SocketEvent;
use crate::websocket::{Connection, Message, Opened, Outgoing};

/// How long a closing connection waits for its close frame to go out, and then for the
/// client's answer.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long one write may wait for a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Milliseconds since the session began at which the socket last carried a message.
struct LastActivity {
    start: Instant,
    at_ms: AtomicU64,
}

impl LastActivity {
    fn touch(&self) {
        self.at_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_until(&self, idle: Duration) -> Instant {
        self.start + Duration::from_millis(self.at_ms.load(Ordering::Relaxed)) + idle
    }
}

/// The request that opened the connection, as `on-open` gets it.
pub struct OpenRequest {
    pub path_with_query: String,
    pub headers: Vec<(String, String)>,
    /// Its `Origin` is one the entry allows.
    pub origin_allowed: bool,
}

impl Session {
    /// Runs the connection once the protocol has switched.
    pub async fn run(
        self,
        upgrade: OnUpgrade,
        (opened, outbox): (Opened, UnboundedReceiver<Outgoing>),
        hold: UpgradeHold,
        open: OpenRequest,
    ) {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => return tracing::debug!(function = %self.function, %error, "WebSocket upgrade failed"),
        };
        let max_message = usize::try_from(self.entry.max_message).unwrap_or(usize::MAX);
        // What tungstenite buffers to write (pongs, close answers) is bounded as the outbox is
        // (above its 128 KiB write target, which it requires). Its read buffer is allocated up
        // front: small, since most connections are quiet.
        let max_write =
            usize::try_from(self.entry.max_buffer).unwrap_or(usize::MAX).saturating_add(1 << 16).max(256 << 10);
        let config = WebSocketConfig::default()
            .read_buffer_size(4 << 10)
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message))
            .max_write_buffer_size(max_write);
        let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        let (sink, mut stream) = socket.split();
        let connection = opened.connection.clone();
        let mut going_away = opened.going_away.clone();
        let mut closing = connection.closing();
        let activity = Arc::new(LastActivity { start: Instant::now(), at_ms: AtomicU64::new(0) });
        let (written_tx, mut written) = watch::channel(false);
        let writer = tokio::spawn(write(sink, outbox, connection.clone(), activity.clone(), written_tx));
        let conn = connection.id.clone();

        let opening = if !open.origin_allowed {
            Some((1008, "origin not allowed".to_string()))
        } else {
            let event = SocketEvent::Open { path_with_query: open.path_with_query, headers: open.headers };
            match self.event(&conn, event).await {
                // A function closes with 1000 or 3000-4999; any other code is a policy close.
                Ok(Some((code, reason))) if code == 1000 || (3000..=4999).contains(&code) => Some((code, reason)),
                Ok(Some((_, reason))) => Some((1008, reason)),
                Ok(None) => None,
                Err(error) => Some(error.close()),
            }
        };
        if let Some((code, reason)) = opening {
            connection.close(code, &reason);
            linger(&mut stream, &mut written).await;
            drop(opened);
            finish(writer).await;
            return;
        }

        let rate = limiter(&self.entry);
        // Which side ended it, with what code: the client, or this side (the function, the hub,
        // a bound), which queued its close on the connection.
        let mut ended: Option<(u16, String)> = None;
        loop {
            if *going_away.borrow_and_update() {
                connection.close(1001, "the node is going away");
                break;
            }
            let idle_until = activity.idle_until(self.entry.idle_timeout);
            let next = tokio::select! {
                // This side's close first: the writer says it is done only after writing it.
                biased;
                _ = closing.changed() => break,
                _ = written.changed() => {
                    ended = Some((1006, "the client stopped taking what was sent".into()));
                    break;
                }
                next = stream.next() => next,
                () = tokio::time::sleep_until(idle_until.into()) => {
                    if activity.idle_until(self.entry.idle_timeout) <= Instant::now() {
                        connection.close(1001, "idle timeout");
                        break;
                    }
                    continue;
                }
                _ = going_away.changed() => continue,
            };
            activity.touch();
            let frame = match next {
                Some(Ok(frame)) => frame,
                Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                    let reason = format!("a message is at most {} bytes", self.entry.max_message);
                    connection.close(1009, &reason);
                    break;
                }
                Some(Err(_)) | None => {
                    ended = Some((1006, String::new()));
                    break;
                }
            };
            if let WsMessage::Close(frame) = &frame {
                let (code, reason) =
                    frame.as_ref().map_or((1005, String::new()), |f| (f.code.into(), f.reason.to_string()));
                // Answered with the same code, as RFC 6455 asks.
                connection.close(if code == 1005 { 1000 } else { code }, &reason);
                ended = Some((code, reason));
                break;
            }
            // Every frame counts against the rate, pings included (each asks for a pong).
            if rate.check().is_err() {
                connection.close(1008, "message rate exceeded");
                break;
            }
            let message = match frame {
                WsMessage::Text(text) => Message::Text(text.to_string()),
                WsMessage::Binary(bytes) => Message::Binary(bytes.to_vec()),
                _ => continue,
            };
            connection.received();
            // A failed event is the function's to see in its logs and traces; the connection stays.
            match self.event(&conn, SocketEvent::Message(message)).await {
                Ok(_) | Err(EventError::Failed) => {}
                Err(error) => {
                    let (code, reason) = error.close();
                    connection.close(code, &reason);
                    break;
                }
            }
        }
        let closed_here = ended.is_none();
        let (code, reason) = ended.or_else(|| closing.borrow().clone()).unwrap_or((1006, String::new()));
        if closed_here {
            linger(&mut stream, &mut written).await;
        }
        drop(opened);
        finish(writer).await;
        drop(stream);
        // The socket is gone: its connection slots are free before `on-close` waits for an
        // instance (the server's drain still waits for it).
        let _draining = hold.release_slots();
        let _ = self.event(&conn, SocketEvent::Close { code, reason }).await;
    }
}

/// After this side's close: waits for the close frame to go out, then for the client's
/// answer, each at most [`CLOSE_WAIT`].
async fn linger<S>(stream: &mut S, written: &mut watch::Receiver<bool>)
where
    S: futures::Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    if tokio::time::timeout(CLOSE_WAIT, written.wait_for(|done| *done)).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(message)) = stream.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
}

/// Waits for the writer to finish, at most [`CLOSE_WAIT`] (a client that stopped reading must
/// not hold the session).
async fn finish(writer: tokio::task::JoinHandle<()>) {
    let abort = writer.abort_handle();
    if tokio::time::timeout(CLOSE_WAIT, writer).await.is_err() {
        abort.abort();
    }
}

/// Writes what the outbox holds until a close is written, a write fails or takes longer than
/// [`WRITE_TIMEOUT`]; then says so on `written`.
async fn write<S>(
    mut sink: S,
    mut outbox: UnboundedReceiver<Outgoing>,
    connection: Arc<Connection>,
    activity: Arc<LastActivity>,
    written: watch::Sender<bool>,
) where
    S: futures::Sink<WsMessage, Error = WsError> + Unpin,
{
    while let Some(outgoing) = outbox.recv().await {
        let (frame, bytes) = match outgoing {
            Outgoing::Message(Message::Text(text)) => {
                let bytes = text.len();
                (WsMessage::text(text), bytes)
            }
            Outgoing::Message(Message::Binary(data)) => {
                let bytes = data.len();
                (WsMessage::binary(data), bytes)
            }
            Outgoing::Close(code, reason) => {
                let frame = CloseFrame { code: code.into(), reason: reason.into() };
                let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(WsMessage::Close(Some(frame)))).await;
                break;
            }
        };
        let sent = tokio::time::timeout(WRITE_TIMEOUT, sink.send(frame)).await;
        connection.written(bytes);
        activity.touch();
        if !matches!(sent, Ok(Ok(()))) {
            break;
        }
    }
    written.send_replace(true);
}
