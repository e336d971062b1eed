//! WebSockets: the host holds each connection and runs every event on a fresh instance. A real
//! WebSocket client (tokio-tungstenite) against the chat example and the `ws-echo` test guest.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::harness::{Server, deploy_with_policy, guest, repo_root};

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The `ws://` URL of `rest` under function `name`.
pub(crate) fn ws_url(server: &Server, name: &str, rest: &str) -> String {
    server.fn_url(name, rest).replacen("http://", "ws://", 1)
}

pub(crate) async fn connect(url: &str) -> Socket {
    let (socket, response) = connect_async(url).await.unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    assert_eq!(response.status(), 101);
    socket
}

/// A WebSocket to `url` on `server` whose own socket buffers are fixed small (64 KiB each way,
/// so the kernel does not grow them): what a client that stops reading can leave queued is then
/// mostly the server's side.
async fn connect_with_small_buffers(server: &Server, url: &str) -> Socket {
    let address: SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    socket.set_send_buffer_size(64 << 10).unwrap();
    let stream = socket.connect(address).await.unwrap();
    let (socket, response) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    assert_eq!(response.status(), 101);
    socket
}

/// The HTTP status an upgrade to `url` was refused with.
pub(crate) async fn refused_status(url: &str) -> u16 {
    match connect_async(url).await {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("{url}: expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("{url}: the upgrade was accepted"),
    }
}

/// The next text message, within 10 s.
pub(crate) async fn next_text(socket: &mut Socket) -> String {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("a message in 10 s");
        match next.expect("the connection is open").expect("a message") {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// The close code and reason the server sends, within `within`, past any other message.
pub(crate) async fn close_of(socket: &mut Socket, within: Duration) -> (u16, String) {
    let closed = tokio::time::timeout(within, async {
        while let Some(message) = socket.next().await {
            if let Ok(Message::Close(frame)) = message {
                return frame.map(|frame| (u16::from(frame.code), frame.reason.to_string()));
            }
        }
        None
    });
    closed.await.expect("closed in time").expect("a close frame with a code")
}

/// Nothing arrives on `socket` for `wait`.
pub(crate) async fn silent(socket: &mut Socket, wait: Duration) {
    if let Ok(Some(message)) = tokio::time::timeout(wait, socket.next()).await {
        panic!("expected nothing, got {message:?}");
    }
}

pub(crate) async fn send(socket: &mut Socket, text: &str) {
    socket.send(Message::text(text)).await.expect("sent");
}

/// Each chat client joins its room in `on-open`, which runs after the handshake: `from` sends
/// warm-ups until `to` gets one (bounded), then `to`'s extras are drained. The warm-ups sent
/// and those `to` got.
pub(crate) async fn until_relayed(from: &mut Socket, to: &mut Socket) -> (u64, u64) {
    let (mut warm_ups, mut relayed) = (0u64, 0u64);
    while relayed == 0 {
        assert!(warm_ups < 50, "the receiver never joined the room");
        send(from, "warm-up").await;
        warm_ups += 1;
        if let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(300), to.next()).await {
            relayed += 1;
        }
    }
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(300), to.next()).await {
        relayed += 1;
    }
    (warm_ups, relayed)
}

pub(crate) fn chat_policy() -> String {
    std::fs::read_to_string(repo_root().join("policies/chat.toml")).expect("policies/chat.toml")
}

#[tokio::test]
async fn two_clients_of_the_chat_example_each_see_the_others_message_and_other_rooms_see_nothing() {
    let server = Server::start();
    deploy_with_policy(&server, "chat", &guest("chat"), &chat_policy()).await;
    let mut alice = connect(&ws_url(&server, "chat", "/?room=tea")).await;
    let mut bob = connect(&ws_url(&server, "chat", "/lounge?room=tea")).await;
    let mut carol = connect(&ws_url(&server, "chat", "/?room=coffee")).await;
    // Plain requests still reach the HTTP handler.
    let page = reqwest::get(server.fn_url("chat", "/")).await.unwrap();
    assert_eq!(page.status(), 200);

    let (warm_ups, relayed) = until_relayed(&mut alice, &mut bob).await;

    let text = "héllo, bob — {\"intact\": true}";
    send(&mut alice, text).await;
    assert_eq!(next_text(&mut bob).await, text, "the relayed frame holds the sent text");
    send(&mut bob, "hi alice").await;
    assert_eq!(next_text(&mut alice).await, "hi alice");
    silent(&mut carol, Duration::from_millis(500)).await;
    silent(&mut alice, Duration::from_millis(100)).await;

    let meta: serde_json::Value =
        server.admin().get(format!("{}/v1/functions/chat", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["websockets"]["connections"], 3, "{meta}");
    assert_eq!(meta["websockets"]["messages_in"], warm_ups + 2, "{meta}");
    assert_eq!(meta["websockets"]["messages_out"], relayed + 2, "{meta}");
}

#[tokio::test]
async fn a_browser_authenticates_to_a_private_function_with_the_token_subprotocol() {
    let server = Server::start();
    let policy = "public = false\n[[websocket]]\npath = \"/\"\n";
    deploy_with_policy(&server, "private-echo", &guest("ws-echo"), policy).await;
    let url = ws_url(&server, "private-echo", "/");
    assert_eq!(refused_status(&url).await, 401, "no token, no connection");

    let token = server.mint(&["fn = private-echo", "op = invoke"]);
    let mut request = url.as_str().into_client_request().unwrap();
    let protocols = format!("echo, ledge-token.{token}");
    request.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_str(&protocols).unwrap());
    let (mut socket, response) = connect_async(request).await.expect("the token in a subprotocol opens it");
    let chosen = response.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(chosen.as_deref(), Some("echo"), "the token is never echoed back");
    send(&mut socket, "ping?").await;
    assert_eq!(next_text(&mut socket).await, "ping?");
    // The token is checked again before each event: revoked, it ends the connection.
    let revoke = server.cli(&["token", "revoke", &token]);
    assert!(revoke.status.success(), "{}", String::from_utf8_lossy(&revoke.stderr));
    send(&mut socket, "after the revocation").await;
    assert_eq!(close_of(&mut socket, Duration::from_secs(10)).await.0, 1008);

    let other = server.mint(&["fn = someone-else", "op = invoke"]);
    let mut request = url.as_str().into_client_request().unwrap();
    let protocols = format!("echo, ledge-token.{other}");
    request.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_str(&protocols).unwrap());
    match connect_async(request).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("a token for another function opened it: {other:?}"),
    }
}

#[tokio::test]
async fn refusals_and_traps_close_cleanly_and_a_trap_closes_no_other_connection() {
    let server = Server::start();
    deploy_with_policy(&server, "echo-ws", &guest("ws-echo"), "public = true\n[[websocket]]\npath = \"/\"\n").await;
    let mut refused = connect(&ws_url(&server, "echo-ws", "/?refuse")).await;
    assert_eq!(close_of(&mut refused, Duration::from_secs(10)).await, (4003, "not today".into()));
    let mut trapped = connect(&ws_url(&server, "echo-ws", "/?trap")).await;
    assert_eq!(close_of(&mut trapped, Duration::from_secs(10)).await.0, 1011);

    let mut first = connect(&ws_url(&server, "echo-ws", "/")).await;
    let mut second = connect(&ws_url(&server, "echo-ws", "/")).await;
    send(&mut first, "trap").await;
    send(&mut second, "still here?").await;
    assert_eq!(next_text(&mut second).await, "still here?");
    send(&mut first, "and me?").await;
    assert_eq!(next_text(&mut first).await, "and me?", "a trapping event leaves its connection open");
    // Each event ran in order on the connection: open, the trap, the echo, this one.
    send(&mut first, "count").await;
    assert_eq!(next_text(&mut first).await, "4");
    send(&mut first, "close").await;
    assert_eq!(close_of(&mut first, Duration::from_secs(10)).await, (4000, "asked".into()));

    // Removing the function closes its connections.
    let removed = server.admin().delete(format!("{}/v1/functions/echo-ws", server.url)).send().await.unwrap();
    assert!(removed.status().is_success(), "{}", removed.status());
    assert_eq!(close_of(&mut second, Duration::from_secs(10)).await.0, 1001);
}

#[tokio::test]
async fn bounds_close_with_their_codes_and_a_full_entry_refuses_with_429() {
    let server = Server::start();
    let policy = "public = true\n\
        [[websocket]]\npath = \"/small\"\nmax_message = \"16B\"\nrate = \"3/s\"\nidle_timeout = \"1s\"\n\
        [[websocket]]\npath = \"/few\"\nmax_connections = 2\n\
        [[websocket]]\npath = \"/guarded\"\norigins = [\"https://app.example\"]\n";
    deploy_with_policy(&server, "bounded", &guest("ws-echo"), policy).await;
    let small = ws_url(&server, "bounded", "/small");

    let mut big = connect(&small).await;
    send(&mut big, &"x".repeat(100)).await;
    assert_eq!(close_of(&mut big, Duration::from_secs(10)).await.0, 1009, "a message past max_message");

    let mut chatty = connect(&small).await;
    for n in 0..10 {
        // The server may close before every message is out.
        let _ = chatty.send(Message::text(format!("m{n}"))).await;
    }
    assert_eq!(close_of(&mut chatty, Duration::from_secs(10)).await.0, 1008, "past the message rate");

    let mut quiet = connect(&small).await;
    let started = std::time::Instant::now();
    assert_eq!(close_of(&mut quiet, Duration::from_secs(10)).await.0, 1001, "idle past idle_timeout");
    assert!(started.elapsed() >= Duration::from_millis(900), "closed after {:?}", started.elapsed());

    let few = ws_url(&server, "bounded", "/few");
    let _one = connect(&few).await;
    let _two = connect(&few).await;
    assert_eq!(refused_status(&few).await, 429, "max_connections");
    let _elsewhere = connect(&ws_url(&server, "bounded", "/small")).await;

    // An origin the entry does not list is closed with 1008; a listed one is served.
    let guarded = ws_url(&server, "bounded", "/guarded");
    let mut foreign = connect(&guarded).await;
    assert_eq!(close_of(&mut foreign, Duration::from_secs(10)).await, (1008, "origin not allowed".into()));
    let mut request = guarded.as_str().into_client_request().unwrap();
    request.headers_mut().insert("origin", HeaderValue::from_static("https://app.example"));
    let (mut allowed, _) = connect_async(request).await.expect("a listed origin connects");
    send(&mut allowed, "from the app").await;
    assert_eq!(next_text(&mut allowed).await, "from the app");
}

#[tokio::test]
async fn a_stopping_node_closes_every_connection_with_1001() {
    let mut server = Server::start();
    deploy_with_policy(&server, "echo-ws", &guest("ws-echo"), "public = true\n[[websocket]]\npath = \"/\"\n").await;
    let mut socket = connect(&ws_url(&server, "echo-ws", "/")).await;
    send(&mut socket, "before").await;
    assert_eq!(next_text(&mut socket).await, "before");
    // SAFETY: kill(2) on the server this test started.
    unsafe { libc::kill(server.pid() as i32, libc::SIGTERM) };
    assert_eq!(close_of(&mut socket, Duration::from_secs(20)).await.0, 1001);
    assert!(server.wait_exit().success());
}

/// An HTTP/2 connection over TLS to `server` (trusting its self-signed certificate), ALPN `h2`.
async fn h2_connect(server: &Server) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let pem = std::fs::read(server.data_dir.join("tls/self-signed.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(&pem).unwrap()).unwrap();
    let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let address = server.url.trim_start_matches("https://").to_string();
    let tcp = TcpStream::connect(&address).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let io = hyper_util::rt::TokioIo::new(tls);
    let (send, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(connection);
    send
}

#[tokio::test]
async fn http2_extended_connect_over_tls_opens_a_websocket() {
    let server = Server::start_with(&["--tls-self-signed"]);
    server.deploy_insecure("echo-ws", &guest("ws-echo"));
    // The policy over the API, trusting the self-signed certificate as deploy_insecure does.
    let uploaded = std::process::Command::new("curl")
        .args(["-sSf", "-k", "-X", "PUT", "--data-binary", "public = true\n[[websocket]]\npath = \"/\"\n"])
        .args(["-H", &format!("authorization: Bearer {}", server.admin_token)])
        .arg(format!("{}/v1/functions/echo-ws/policy", server.url))
        .output()
        .expect("curl");
    assert!(uploaded.status.success(), "{}", String::from_utf8_lossy(&uploaded.stderr));
    let mut send = h2_connect(&server).await;
    let mut request = hyper::Request::builder()
        .method("CONNECT")
        .uri(format!("{}/fn/echo-ws/", server.url))
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::new())
        .unwrap();
    request.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let response = send.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200, "RFC 8441: a 2xx accepts the extended CONNECT");
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let mut socket = WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    socket.send(Message::text("over h2")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echoed, Message::text("over h2"));
}

/// The function's WebSocket counts on this node (`websockets` of `GET /v1/functions/NAME`).
async fn socket_counts(server: &Server, name: &str) -> serde_json::Value {
    let url = format!("{}/v1/functions/{name}", server.url);
    let meta: serde_json::Value = server.admin().get(url).send().await.unwrap().json().await.unwrap();
    meta["websockets"].clone()
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_1008_past_max_buffer_and_other_connections_keep_echoing() {
    let server = Server::start();
    // A rate far above what the flood reaches: only the buffer bound may close the slow reader.
    let policy = "public = true\n[[websocket]]\npath = \"/\"\nmax_buffer = \"64KiB\"\nrate = \"100000/s\"\n";
    deploy_with_policy(&server, "echo-ws", &guest("ws-echo"), policy).await;
    let url = ws_url(&server, "echo-ws", "/");
    let mut slow = connect_with_small_buffers(&server, &url).await;
    let mut beside = connect(&url).await;
    send(&mut beside, "before").await;
    assert_eq!(next_text(&mut beside).await, "before");

    // 8 KiB messages, each echoed back and never read. Eight echoes queued at once pass
    // max_buffer, which a client reading along never comes near: only once the socket buffers
    // between the two are full do the echoes queue up. The server then closes the connection
    // and stops reading it, so a send blocks: this client stops there, once the server's count
    // of messages in stands still (a blocked send during a slow event is not a stop). Bounded:
    // 8,000 messages (64 MB) or 30 s, past what the socket buffers hold even where the kernel
    // lets a receive buffer grow to 32 MiB (the server's side; the client's are fixed small),
    // and time enough for a server slowed by a busy machine.
    let chunk = vec![0x5a_u8; 8 << 10];
    let started = Instant::now();
    let mut sent = 0u32;
    loop {
        if sent >= 8000 || started.elapsed() > Duration::from_secs(30) {
            let counts = socket_counts(&server, "echo-ws").await;
            panic!("the server kept reading a client that never reads: {sent} sent, {counts}");
        }
        match tokio::time::timeout(Duration::from_millis(500), slow.send(Message::binary(chunk.clone()))).await {
            Ok(sending) => {
                sending.expect("a send while the server reads");
                sent += 1;
            }
            Err(_) => {
                let before = socket_counts(&server, "echo-ws").await["messages_in"].clone();
                tokio::time::sleep(Duration::from_millis(300)).await;
                if socket_counts(&server, "echo-ws").await["messages_in"] == before {
                    break;
                }
            }
        }
    }

    // The connection beside it echoes while the slow one's writer is stuck.
    send(&mut beside, "beside a stuck reader").await;
    assert_eq!(next_text(&mut beside).await, "beside a stuck reader");
    // Reading now lets the echoes queued before the close out, then the close frame: 1008 for
    // the buffer (a rate close is 1008 too, with another reason).
    let (code, reason) = close_of(&mut slow, Duration::from_secs(10)).await;
    assert_eq!(code, 1008, "closed with {code} {reason:?} after {sent} messages");
    assert_eq!(reason, "send buffer full: the client reads too slowly");
    send(&mut beside, "after").await;
    assert_eq!(next_text(&mut beside).await, "after");
}

/// Deploys `file` as `name` with `policy` from loopback address `source` (so the deploy's
/// connection counts against that address, not 127.0.0.1).
async fn deploy_from(server: &Server, source: &str, name: &str, file: &Path, policy: &str) {
    let client = reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let form = reqwest::multipart::Form::new()
        .part("component", reqwest::multipart::Part::bytes(std::fs::read(file).unwrap()))
        .part("policy", reqwest::multipart::Part::text(policy.to_string()));
    let url = format!("{}/v1/functions/{name}", server.url);
    let response = client.put(url).bearer_auth(&server.admin_token).multipart(form).send().await.expect("deploy");
    assert!(response.status().is_success(), "deploy {name}: {}", response.text().await.unwrap_or_default());
}

/// One plain HTTP request (`GET /healthz`) on a fresh connection from loopback address
/// `source`: the status it was answered with, or `None` when the server closed the connection
/// without a byte of answer (end of stream or reset), as it does to a connection over a cap.
async fn plain_request_from(server: &Server, source: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address: SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source.parse().unwrap(), 0)).unwrap();
    let mut stream = socket.connect(address).await.expect("the kernel completes the handshake");
    // Writing to a connection the server already dropped may fail; what comes back tells.
    let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    read.expect("answered or closed within 5 s").ok();
    if response.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&response);
    Some(text.get(9..12).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("not an HTTP answer: {text}")))
}

/// An upgrade to `url` (from 127.0.0.1) within 5 s: the socket, or the error of a connection
/// closed without an HTTP answer. An HTTP refusal fails the test.
async fn try_connect(url: &str) -> Result<Socket, WsError> {
    let attempt = tokio::time::timeout(Duration::from_secs(5), connect_async(url)).await;
    match attempt.expect("admitted or closed within 5 s") {
        Ok((socket, response)) => {
            assert_eq!(response.status(), 101);
            Ok(socket)
        }
        Err(WsError::Http(response)) => panic!("refused with HTTP {}, not closed at accept", response.status()),
        Err(error) => Err(error),
    }
}

#[tokio::test]
async fn an_open_websocket_holds_its_connection_slot_of_the_per_address_limit() {
    let server = Server::start_with(&["--max-connections-per-ip", "3"]);
    // Deployed from 127.0.0.2: every connection from 127.0.0.1 below is a WebSocket or a probe.
    let policy = "public = true\n[[websocket]]\npath = \"/\"\n";
    deploy_from(&server, "127.0.0.2", "echo-ws", &guest("ws-echo"), policy).await;
    let url = ws_url(&server, "echo-ws", "/");
    let mut sockets = Vec::new();
    for n in 0..3 {
        let mut socket = connect(&url).await;
        send(&mut socket, &format!("socket {n}")).await;
        assert_eq!(next_text(&mut socket).await, format!("socket {n}"));
        sockets.push(socket);
    }

    // The three WebSockets are 127.0.0.1's three connections: a fourth connection is closed at
    // accept, unanswered, whether it asks for a plain request or an upgrade.
    assert_eq!(plain_request_from(&server, "127.0.0.1").await, None, "a plain request past the limit was served");
    assert!(try_connect(&url).await.is_err(), "a fourth WebSocket from one address was admitted");
    // The limit is per address: 127.0.0.2 is served meanwhile.
    assert_eq!(plain_request_from(&server, "127.0.0.2").await, Some(200));
    for (n, socket) in sockets.iter_mut().enumerate() {
        send(socket, &format!("still {n}")).await;
        assert_eq!(next_text(socket).await, format!("still {n}"), "a refused connection closed no open one");
    }

    // Closing one WebSocket gives its slot back (once its session is over): a new upgrade is
    // admitted within a bounded wait, and takes the slot, so the address is full again.
    let mut closed = sockets.pop().unwrap();
    closed.close(None).await.expect("close sent");
    let ended = tokio::time::timeout(Duration::from_secs(10), async { while closed.next().await.is_some() {} });
    ended.await.expect("the server ended the closed WebSocket within 10 s");
    let started = Instant::now();
    let mut again = loop {
        match try_connect(&url).await {
            Ok(socket) => break socket,
            Err(error) => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "no connection admitted 5 s after a close: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    send(&mut again, "in again").await;
    assert_eq!(next_text(&mut again).await, "in again");
    assert_eq!(plain_request_from(&server, "127.0.0.1").await, None, "the new WebSocket holds the freed slot");
}

#[tokio::test]
async fn a_policy_that_drops_the_websocket_entry_closes_its_connections_with_1001() {
    let server = Server::start();
    deploy_with_policy(&server, "echo-ws", &guest("ws-echo"), "public = true\n[[websocket]]\npath = \"/\"\n").await;
    let mut socket = connect(&ws_url(&server, "echo-ws", "/")).await;
    send(&mut socket, "before").await;
    assert_eq!(next_text(&mut socket).await, "before");
    server.set_policy("echo-ws", "public = true\n").await;
    send(&mut socket, "after").await;
    assert_eq!(
        close_of(&mut socket, Duration::from_secs(10)).await,
        (1001, "the function no longer accepts WebSockets here".into())
    );
}

#[tokio::test]
async fn a_component_serving_only_websockets_deploys_and_plain_requests_get_426() {
    let server = Server::start();
    deploy_with_policy(&server, "only", &guest("ws-only"), "public = true\n[[websocket]]\npath = \"/\"\n").await;
    let mut socket = connect(&ws_url(&server, "only", "/")).await;
    send(&mut socket, "hi").await;
    assert_eq!(next_text(&mut socket).await, "only: hi");
    let plain = reqwest::get(server.fn_url("only", "/")).await.unwrap();
    assert_eq!(plain.status(), 426);
    assert_eq!(plain.headers()["upgrade"], "websocket");
    let problem: serde_json::Value = plain.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("WebSockets only"), "{problem}");
}
