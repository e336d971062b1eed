//! The physical limit for `scripts/bench.sh`: hyper answering the hello function's response
//! with no WebAssembly, no routing, no tokens, no logs, on the same tokio runtime shape as
//! `ledge serve` (multi-threaded, one worker per core).
//!
//! `cargo run --release --example bare-hyper -- 127.0.0.1:18090`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18090".to_string());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("bare hyper listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let service = service_fn(|request: hyper::Request<hyper::body::Incoming>| async move {
                let text = format!("Hello from ledge! You asked for {}\n", request.uri().path());
                let mut response = hyper::Response::new(Full::new(Bytes::from(text)));
                response.headers_mut().insert("content-type", "text/plain; charset=utf-8".parse().expect("valid"));
                Ok::<_, Infallible>(response)
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
