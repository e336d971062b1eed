//! The floor with WebAssembly for `scripts/bench.sh`: hyper and a fresh wasmtime instance per
//! request of a `wasi:http/proxy` component, and nothing else: no routing, tokens, rate
//! limits, recording, metrics or logs. The engine is configured as `ledge serve` configures
//! it (pooling allocator, copy-on-write memory images, PAGEMAP_SCAN resets, epoch
//! interruption) and the response goes out whole with `content-length`, as ledge sends it.
//! The gap between this and bare hyper is what wasmtime and wasi-http cost per request; the gap
//! between this and ledge is what ledge's own features cost.
//!
//! `cargo run --release --example bare-wasmtime -- 127.0.0.1:18091 hello.wasm`

use std::convert::Infallible;

use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

struct State {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: NoOutbound,
}

/// Outbound HTTP is not part of the measurement: the defaults refuse it.
struct NoOutbound;

impl wasmtime_wasi_http::WasiHttpHooks for NoOutbound {}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

fn engine() -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(1000)
        .total_core_instances(16_000)
        .total_memories(2000)
        .total_tables(4000)
        .total_stacks(1000)
        .linear_memory_keep_resident(64 << 20)
        .table_keep_resident(1 << 20)
        .pagemap_scan(Enabled::Auto);
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .memory_init_cow(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

async fn handle(
    pre: ProxyPre<State>,
    request: hyper::Request<hyper::body::Incoming>,
) -> wasmtime::Result<hyper::Response<Full<bytes::Bytes>>> {
    let mut store = Store::new(
        pre.engine(),
        State {
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: NoOutbound,
        },
    );
    store.set_epoch_deadline(1);
    store.epoch_deadline_async_yield_and_update(1);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let mut http = store.data_mut().http();
    let request =
        http.new_incoming_request(Scheme::Http, request.map(|body| body.map_err(wasmtime_wasi_http::Error::from)))?;
    let outparam = http.new_response_outparam(sender)?;
    let proxy = pre.instantiate_async(&mut store).await?;
    proxy.wasi_http_incoming_handler().call_handle(&mut store, request, outparam).await?;
    let (parts, body) = receiver.await??.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut response = hyper::Response::from_parts(parts, Full::new(body));
    response.headers_mut().remove(http::header::TRANSFER_ENCODING);
    Ok(response)
}

#[tokio::main]
async fn main() -> wasmtime::Result<()> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:18091".to_string());
    let component = args.next().ok_or_else(|| wasmtime::format_err!("usage: bare-wasmtime ADDRESS COMPONENT"))?;
    let engine = engine()?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    let pre = ProxyPre::new(linker.instantiate_pre(&Component::from_file(&engine, component)?)?)?;
    let ticker = engine.weak();
    std::thread::spawn(move || {
        while let Some(engine) = ticker.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    });
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("bare wasmtime listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let pre = pre.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let pre = pre.clone();
                async move {
                    Ok::<_, Infallible>(handle(pre, request).await.unwrap_or_else(|error| {
                        let mut response = hyper::Response::new(Full::from(format!("{error:#}\n")));
                        *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                        response
                    }))
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
