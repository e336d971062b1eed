//! WebSocket load for `scripts/bench-websocket.sh`, four modes:
//!
//! - `ws-load idle URL N`: opens N connections (32 at a time), prints `open N`, and holds them
//!   until stdin closes (the script reads the server's memory and descriptors meanwhile);
//! - `ws-load echo URL CONNECTIONS SECONDS`: each connection sends a message and waits for its
//!   echo, again and again; prints messages echoed per second;
//! - `ws-load broadcast URL CLIENTS ROUNDS`: CLIENTS join one room; one sends ROUNDS messages,
//!   one at a time (after warm-ups that every client received: each joins in its `on-open`,
//!   which runs after the handshake), and each round's latency is the time until every other
//!   client received it; prints p50, p99 and max in microseconds;
//! - `ws-load serve-echo`: the floor for `echo`, with no wasm: a WebSocket echo server on the same
//!   stack as ledge's (tokio, hyper's upgrade, tokio-tungstenite), on 127.0.0.1 and a free port;
//!   prints `listening PORT` and serves until stdin closes.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(url: &str) -> Socket {
    connect_async(url).await.unwrap_or_else(|error| panic!("connecting to {url}: {error}")).0
}

/// The next text or binary message.
async fn next_data(socket: &mut Socket) -> Vec<u8> {
    loop {
        match socket.next().await.expect("open").expect("a message") {
            Message::Text(text) => return text.as_bytes().to_vec(),
            Message::Binary(bytes) => return bytes.to_vec(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => continue,
        }
    }
}

async fn idle(url: &str, count: usize) {
    let mut sockets = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(32) {
        let opened = futures::future::join_all(chunk.iter().map(|_| connect(url))).await;
        sockets.extend(opened);
    }
    println!("open {}", sockets.len());
    let mut rest = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut rest).await;
    drop(sockets);
}

async fn echo(url: &str, connections: usize, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let workers = (0..connections).map(|n| async move {
        let mut socket = connect(url).await;
        let mut echoed = 0u64;
        let payload = format!("message from connection {n}");
        while Instant::now() < deadline {
            socket.send(Message::text(payload.clone())).await.expect("sent");
            assert_eq!(next_data(&mut socket).await, payload.as_bytes());
            echoed += 1;
        }
        echoed
    });
    let started = Instant::now();
    let echoed: u64 = futures::future::join_all(workers).await.into_iter().sum();
    println!(
        "echoed {echoed} messages in {:.1} s: {:.0} messages/s",
        started.elapsed().as_secs_f64(),
        echoed as f64 / started.elapsed().as_secs_f64()
    );
}

async fn serve_echo() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    println!("listening {}", listener.local_addr().expect("bound").port());
    let serve = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let Ok(socket) = tokio_tungstenite::accept_async(stream).await else { return };
                let (mut sink, mut stream) = socket.split();
                while let Some(Ok(message)) = stream.next().await {
                    if (message.is_text() || message.is_binary()) && sink.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    };
    let (mut stdin, mut rest) = (tokio::io::stdin(), Vec::new());
    tokio::select! {
        () = serve => {}
        _ = stdin.read_to_end(&mut rest) => {}
    }
}

async fn broadcast(url: &str, clients: usize, rounds: usize) {
    let mut listeners = Vec::with_capacity(clients - 1);
    for _ in 1..clients {
        listeners.push(connect(url).await);
    }
    let mut sender = connect(url).await;
    // A client joins its room in `on-open`, which runs after the handshake: until every
    // listener has had a message, keep sending warm-ups; then drain the extras.
    let mut joined = vec![false; listeners.len()];
    while joined.contains(&false) {
        sender.send(Message::text("warm-up")).await.expect("sent");
        for (listener, joined) in listeners.iter_mut().zip(joined.iter_mut()) {
            if !*joined {
                *joined = tokio::time::timeout(Duration::from_millis(200), next_data(listener)).await.is_ok();
            }
        }
    }
    for listener in &mut listeners {
        while tokio::time::timeout(Duration::from_millis(100), next_data(listener)).await.is_ok() {}
    }
    let mut latencies = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let text = format!("round {round}");
        let started = Instant::now();
        sender.send(Message::text(text.clone())).await.expect("sent");
        let received = listeners.iter_mut().map(next_data);
        for got in futures::future::join_all(received).await {
            assert_eq!(got, text.as_bytes());
        }
        latencies.push(started.elapsed().as_micros() as u64);
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "broadcast to {} clients, {rounds} rounds: p50 {} µs, p99 {} µs, max {} µs",
        clients - 1,
        at(0.5),
        at(0.99),
        latencies[latencies.len() - 1]
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |at: usize| -> usize { args.get(at).and_then(|n| n.parse().ok()).expect("a number") };
    match args.first().map(String::as_str) {
        Some("idle") => idle(&args[1], number(2)).await,
        Some("echo") => echo(&args[1], number(2), number(3) as u64).await,
        Some("broadcast") => broadcast(&args[1], number(2), number(3)).await,
        Some("serve-echo") => serve_echo().await,
        _ => {
            eprintln!(
                "usage: ws-load idle URL N | echo URL CONNECTIONS SECONDS | broadcast URL CLIENTS ROUNDS | serve-echo"
            );
            std::process::exit(2);
        }
    }
}
