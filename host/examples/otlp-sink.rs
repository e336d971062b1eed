//! An OTLP/HTTP receiver that reads every export and discards it, for `scripts/bench-otel.sh`:
//! what exporting costs ledge, with a collector that is never the bottleneck. It answers each
//! POST with 200 and an empty protobuf body (an export response with nothing rejected).
//!
//! `cargo run --release --example otlp-sink -- 127.0.0.1:18096`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18096".to_string());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("OTLP sink listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = service_fn(|request: hyper::Request<hyper::body::Incoming>| async move {
                // Read it all, as a collector would, then forget it.
                let _ = request.into_body().collect().await;
                let mut response = hyper::Response::new(Full::new(Bytes::new()));
                response.headers_mut().insert("content-type", "application/x-protobuf".parse().expect("valid"));
                Ok::<_, Infallible>(response)
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
