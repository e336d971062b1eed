//! `ledge traces`, `ledge trace get`, `ledge replay`: recorded runs, exported and re-executed
//! offline.
//!
//! A replay runs the guest on this machine in the same runtime as a server (same engine
//! configuration, same invoke path; a WebSocket event's trace through the same event path), with a tape that hands back every recorded host-call
//! result and an empty scratch key-value engine that nothing reads: no live store, no network,
//! nothing on any server changes. It then checks the guest's outputs (host calls, response,
//! stdout/stderr, failure) against the trace, byte for byte.
//!
//! Exit codes: 0 the replay reproduced the trace (or stopped at `--until` before any
//! divergence); 1 it diverged (the first divergence is printed); 2 no replay was possible
//! (usage, an unreadable trace, a refused or unreachable server).
//!
//! This file holds the arguments, the two export commands and the replay itself (load the
//! trace, run the guest on its tape); `compiled.rs` compiles the guest (cached across replays),
//! `inputs.rs` rebuilds its configuration from the trace (`crate::verify::inputs` its request,
//! limits and caller), and `report.rs` compares
//! what the replay did with what the trace holds and prints the verdict.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http_body_util::BodyExt;

use super::ServerArgs;
use super::client;
use crate::record::Tape;
use crate::record::store::{TraceMeta, is_valid_id};
use crate::record::trace::{self, Trace};
use crate::runtime::concurrency::ConcurrencyLimit;
use crate::runtime::events::SocketEvent;
use crate::runtime::{Invocation, Runtime, RuntimeOptions};
use crate::telemetry::TraceCx;
use crate::verify::inputs::{caller, policy, request};
use compiled::prepare;
use inputs::config;
use report::Report;

mod compiled;
mod inputs;
mod report;

/// `ledge replay`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// A trace id (fetched from the server) or a file written by `ledge trace get`.
    pub trace: String,
    /// Replay the recorded inputs into this build of the function instead.
    #[arg(long, value_name = "FILE.wasm")]
    pub against: Option<PathBuf>,
    /// Stop after host call N and show the guest's state there.
    #[arg(long, value_name = "N")]
    pub until: Option<u32>,
    /// Print the timeline and the verdict as JSON.
    #[arg(long)]
    pub json: bool,
    /// Compile the guest with debug info for a native debugger: run `ledge replay` under gdb or
    /// lldb and break in the function's source (the component must carry DWARF).
    #[arg(long)]
    pub debug: bool,
    /// The value of a secret the trace names (traces never hold secret values); repeatable.
    #[arg(long = "secret", value_name = "NAME=VALUE")]
    pub secrets: Vec<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `ledge traces [FUNCTION] [--otel-trace ID]`.
pub async fn list(server: &ServerArgs, function: Option<&str>, otel_trace: Option<&str>) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Reply {
        traces: Vec<TraceMeta>,
    }
    if let Some(id) = otel_trace {
        anyhow::ensure!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "`{id}` is not an OpenTelemetry trace id (32 hexadecimal digits)"
        );
    }
    let filters: Vec<String> =
        [function.map(|f| format!("function={f}")), otel_trace.map(|id| format!("otel_trace={id}"))]
            .into_iter()
            .flatten()
            .collect();
    let query = if filters.is_empty() { String::new() } else { format!("?{}", filters.join("&")) };
    let reply: Reply = client::get(server, &format!("/v1/traces{query}")).await?.json().await?;
    println!(
        "{:<21}  {:<20} {:>7}  {:<24}  {:>6} {:>10} {:>9}  {:<9} OTEL TRACE",
        "ID", "FUNCTION", "VERSION", "TIME", "STATUS", "DURATION", "SIZE", "REASON"
    );
    for meta in reply.traces {
        println!(
            "{:<21}  {:<20} {:>7}  {:<24}  {:>6} {:>8}µs {:>9}  {:<9} {}",
            meta.id,
            meta.function,
            meta.version,
            meta.recorded_at,
            meta.status,
            meta.duration_us,
            meta.size,
            meta.reason,
            meta.otel_trace_id.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

/// `ledge trace get ID -o FILE [--with-component]`: written whole or not at all.
pub async fn get(server: &ServerArgs, id: &str, out: &Path, with_component: bool) -> anyhow::Result<()> {
    anyhow::ensure!(is_valid_id(id), "`{id}` is not a trace id (21 hexadecimal digits, as `ledge traces` lists)");
    let query = if with_component { "?component=true" } else { "" };
    let bytes = client::get(server, &format!("/v1/traces/{id}{query}")).await?.bytes().await?;
    trace::decode(&bytes).map_err(|error| anyhow::anyhow!("the server sent a bad trace: {error}"))?;
    let out = if out.parent().is_some_and(|p| p.as_os_str().is_empty()) {
        Path::new(".").join(out)
    } else {
        out.to_path_buf()
    };
    crate::storage::write_durably(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "trace {id} written to {} ({} bytes{})",
        out.display(),
        bytes.len(),
        if with_component { ", with its component" } else { "" }
    );
    Ok(())
}

/// A replay that could not run: exit 2.
struct CouldNotReplay(anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for CouldNotReplay {
    fn from(error: E) -> Self {
        CouldNotReplay(error.into())
    }
}

/// `ledge replay`.
pub async fn replay(args: ReplayArgs) -> ExitCode {
    match run(&args).await {
        Ok(report) => {
            report.print(args.json);
            if report.divergence.is_some() { ExitCode::from(1) } else { ExitCode::SUCCESS }
        }
        Err(CouldNotReplay(error)) => {
            eprintln!("ledge: cannot replay: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: &ReplayArgs) -> Result<Report, CouldNotReplay> {
    let (trace, component) = load(args).await?;
    if trace.recorded_on != std::env::consts::ARCH {
        eprintln!(
            "note: recorded on {}, replaying on {}: float NaN bit patterns and relaxed SIMD results may differ, and would show as a divergence",
            trace.recorded_on,
            std::env::consts::ARCH
        );
    }
    let component = match &args.against {
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        None => match component {
            Some(component) => component,
            None => client::get(&args.server, &format!("/v1/traces/{}/component", trace.id))
                .await
                .context(
                    "the trace file has no component (export it with --with-component, or give --against FILE.wasm)",
                )?
                .bytes()
                .await?
                .to_vec(),
        },
    };
    if args.against.is_none() && crate::registry::sha256_hex(&component) != trace.runs_sha256 {
        return Err(anyhow::anyhow!(
            "the component is not the one the trace ran (sha256 {}); give --against FILE.wasm to replay into another build",
            trace.runs_sha256
        )
        .into());
    }
    let scratch = tempfile::tempdir().context("cannot create a scratch directory")?;
    let db = ledge_kv::Db::open(scratch.path()).context("cannot open the scratch key-value engine")?;
    let options = RuntimeOptions { pooling: false, debug_info: args.debug, ..RuntimeOptions::default() };
    let runtime = Runtime::new(&options, Arc::default(), Some(db))?;
    let pre = prepare(&runtime, &component, args.against.is_some(), args.debug).await?;

    let policy = policy(&trace);
    let caller = caller(&trace);
    let config = Arc::new(config(&trace, &args.secrets)?);
    let tape = Tape::replay(trace.events.clone(), args.until);
    let permit = ConcurrencyLimit::new(1).try_acquire().expect("a fresh limit has a permit");
    let invocation = Invocation {
        function: &trace.function,
        pre: &pre,
        policy: &policy,
        cold: false,
        caller,
        permit,
        tls: trace.request.is_tls(),
        config,
        tape: Some(tape.clone()),
    };
    if trace.request.is_websocket_event() {
        let (conn, event) = SocketEvent::from_recorded(&trace.request).map_err(anyhow::Error::msg)?;
        // What the event came to is on the tape, as for a request.
        let _ = runtime.websocket_event(invocation, &conn, event, TraceCx::default()).await;
    } else {
        let request = request(&trace)?;
        if let Ok(response) = runtime.invoke(invocation, request, &trace.request.path_and_query).await {
            // The tape collects the body as it passes; a body that breaks off is a failure there.
            let _ = response.into_body().collect().await;
        }
    }
    // The instance may still be finishing on a task of its own: the tape is ours once it is gone.
    let deadline = tokio::time::Instant::now() + policy.timeout + Duration::from_secs(1);
    while Arc::strong_count(&tape) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let replayed = tape.replayed().expect("a replay tape");
    Ok(Report::new(&trace, replayed, args))
}

/// The trace named by `args.trace`: a file, else an id fetched from the server.
async fn load(args: &ReplayArgs) -> Result<(Trace, Option<Vec<u8>>), CouldNotReplay> {
    let path = Path::new(&args.trace);
    let bytes = if path.exists() {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
    } else if is_valid_id(&args.trace) {
        client::get(&args.server, &format!("/v1/traces/{}?component=true", args.trace)).await?.bytes().await?.to_vec()
    } else {
        return Err(anyhow::anyhow!("`{}` is neither a file nor a trace id (21 hexadecimal digits)", args.trace).into());
    };
    let file = trace::decode(&bytes).map_err(|error| anyhow::anyhow!("{}: {error}", args.trace))?;
    Ok((file.trace, file.component))
}
