//! `ledge traces`, `ledge trace get`, `ledge replay`: recorded runs, exported and re-executed
//! offline.
//!
//! A replay runs the guest on this machine in the same runtime as a server (same engine
//! configuration, same invoke path), with a tape that hands back every recorded host-call
//! result and an empty scratch key-value engine that nothing reads: no live store, no network,
//! nothing on any server changes. It then checks the guest's outputs (host calls, response,
//! stdout/stderr, failure) against the trace, byte for byte.
//!
//! Exit codes: 0 the replay reproduced the trace (or stopped at `--until` before any
//! divergence); 1 it diverged (the first divergence is printed); 2 no replay was possible
//! (usage, an unreadable trace, a refused or unreachable server).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http_body_util::BodyExt;
use serde::Serialize;

use super::ServerArgs;
use super::client;
use crate::access::policy::Policy;
use crate::access::tokens::Caller;
use crate::record::Tape;
use crate::record::store::{TraceMeta, is_valid_id};
use crate::record::tape::{Divergence, Replayed, Step, show_bytes};
use crate::record::trace::{self, Trace};
use crate::runtime::concurrency::ConcurrencyLimit;
use crate::runtime::{GuestConfig, Invocation, Runtime, RuntimeOptions};

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

/// `ledge traces [FUNCTION]`.
pub async fn list(server: &ServerArgs, function: Option<&str>) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Reply {
        traces: Vec<TraceMeta>,
    }
    let query = function.map(|f| format!("?function={f}")).unwrap_or_default();
    let reply: Reply = client::get(server, &format!("/v1/traces{query}")).await?.json().await?;
    println!(
        "{:<21}  {:<20} {:>7}  {:<24}  {:>6} {:>10} {:>9}  REASON",
        "ID", "FUNCTION", "VERSION", "TIME", "STATUS", "DURATION", "SIZE"
    );
    for meta in reply.traces {
        println!(
            "{:<21}  {:<20} {:>7}  {:<24}  {:>6} {:>8}µs {:>9}  {}",
            meta.id,
            meta.function,
            meta.version,
            meta.recorded_at,
            meta.status,
            meta.duration_us,
            meta.size,
            meta.reason
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

/// What a replay found.
#[derive(Serialize)]
struct Report {
    id: String,
    function: String,
    version: u64,
    /// Replayed into another build (`--against`).
    against: Option<String>,
    steps: Vec<Step>,
    logs: Vec<(String, u32, String)>,
    /// `same`, `diverged` or `stopped`.
    verdict: &'static str,
    divergence: Option<Divergence>,
    recorded: Outcome,
    replayed: Outcome,
    /// With `--until`: the guest's state where it stopped.
    state: Option<State>,
}

/// How a run ended: status, body, failure.
#[derive(Serialize, PartialEq)]
struct Outcome {
    status: Option<u16>,
    headers: Vec<(String, String)>,
    body: String,
    body_bytes: usize,
    failure: Option<String>,
    calls: u32,
}

#[derive(Serialize)]
struct State {
    stopped_after: u32,
    kv_reads: Vec<String>,
    kv_buffered_writes: Vec<String>,
    response_so_far: Option<u16>,
    memory_bytes: u64,
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

    let policy = Policy {
        memory: trace.facts.memory_limit,
        timeout: Duration::from_millis(trace.facts.timeout_ms),
        max_body: trace.facts.max_body,
        kv_stores: trace.facts.kv_stores.clone(),
        kv_max_bytes: trace.facts.kv_max_bytes,
        ..Policy::default()
    };
    let caller = trace.facts.caller.clone().map_or_else(Caller::default, |facts| Caller {
        token_id: facts.token_id,
        caveats: facts.caveats,
        key_prefixes: facts.key_prefixes,
        read_only: facts.read_only,
        ..Caller::default()
    });
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
        tls: trace.request.scheme == "https",
        config,
        tape: Some(tape.clone()),
    };
    let request = request(&trace)?;
    if let Ok(response) = runtime.invoke(invocation, request, &trace.request.path_and_query).await {
        // The tape collects the body as it passes; a body that breaks off is a failure there.
        let _ = response.into_body().collect().await;
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

/// Compiles the component (from the cache of earlier replays when it can), pre-initializing
/// another build the way a deploy would.
async fn prepare(
    runtime: &Runtime,
    component: &[u8],
    another_build: bool,
    debug: bool,
) -> anyhow::Result<wasmtime_wasi_http::p2::bindings::ProxyPre<crate::runtime::GuestState>> {
    let mut compiled = compile_cached(runtime, component, debug)?;
    if another_build && crate::runtime::preinit::wants_preinit(&compiled)? {
        let snapshot = crate::runtime::preinit::snapshot(runtime, component).await?;
        compiled = compile_cached(runtime, &snapshot, debug)?;
    }
    Ok(runtime.prepare(&compiled)?)
}

/// Compiled code of earlier replays, so that stepping (`--until N`, then N-1, ...) does not
/// compile again: `$XDG_CACHE_HOME/ledge/replay` (or `~/.cache/ledge/replay`), mode 0700.
fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?;
    Some(base.join("ledge").join("replay"))
}

fn compile_cached(runtime: &Runtime, component: &[u8], debug: bool) -> anyhow::Result<wasmtime::component::Component> {
    let name = format!(
        "{}-{}-{}{}.cwasm",
        crate::registry::sha256_hex(component),
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        if debug { "-debug" } else { "" }
    );
    let cached = cache_dir().map(|dir| dir.join(name));
    if let Some(path) = cached.as_ref().filter(|path| path.exists()) {
        // SAFETY: the file is native code this user's own replays wrote into a folder only
        // they can write; wasmtime still refuses one built for another engine or version.
        if let Ok(component) = unsafe { wasmtime::component::Component::deserialize_file(runtime.engine(), path) } {
            return Ok(component);
        }
    }
    let compiled = runtime.compile(component)?;
    if let (Some(path), Ok(code)) = (cached, compiled.serialize()) {
        // Best effort: a replay without a cache is only slower.
        let dir = path.parent().expect("a cache file has a folder");
        let staged = path.with_extension(format!("{}.partial", std::process::id()));
        let _ = crate::storage::create_private_dir(dir)
            .and_then(|()| std::fs::write(&staged, code))
            .and_then(|()| std::fs::rename(&staged, &path));
    }
    Ok(compiled)
}

/// The function's configuration as recorded, secrets from `--secret NAME=VALUE`.
fn config(trace: &Trace, secrets: &[String]) -> anyhow::Result<GuestConfig> {
    let mut given = std::collections::HashMap::new();
    for secret in secrets {
        let (name, value) =
            secret.split_once('=').ok_or_else(|| anyhow::anyhow!("--secret {secret}: give NAME=VALUE"))?;
        given.insert(name.to_string(), value.to_string());
    }
    let mut pairs = Vec::new();
    let mut names = Vec::new();
    for (key, value) in &trace.facts.config {
        let value = match value {
            Some(value) => value.clone(),
            None => {
                names.push(key.clone());
                given.remove(key).unwrap_or_else(|| {
                    eprintln!("warning: the trace names secret `{key}` but holds no value (pass --secret {key}=VALUE); the guest sees an empty value");
                    String::new()
                })
            }
        };
        pairs.push((key.clone(), value));
    }
    if let Some(unknown) = given.keys().next() {
        anyhow::bail!("--secret {unknown}: the trace names no such secret");
    }
    Ok(GuestConfig::new(pairs, names))
}

type ReplayBody = http_body_util::StreamBody<
    futures::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>>,
>;

/// The recorded request, its body the recorded chunks.
fn request(trace: &Trace) -> anyhow::Result<http::Request<ReplayBody>> {
    let recorded = &trace.request;
    let uri = format!("{}://{}{}", recorded.scheme, recorded.authority, recorded.path_and_query);
    let mut builder = http::Request::builder().method(recorded.method.as_str()).uri(uri);
    for (name, value) in &recorded.headers {
        builder = builder.header(name, value.as_slice());
    }
    let mut frames: Vec<Result<http_body::Frame<bytes::Bytes>, std::io::Error>> =
        recorded.body.iter().map(|chunk| Ok(http_body::Frame::data(bytes::Bytes::from(chunk.clone())))).collect();
    if let Some(error) = &recorded.body_error {
        frames.push(Err(std::io::Error::other(error.clone())));
    }
    Ok(builder.body(http_body_util::StreamBody::new(futures::stream::iter(frames)))?)
}

impl Outcome {
    fn of(output: &crate::record::trace::Output) -> Outcome {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        Outcome {
            status: output.response.as_ref().map(|r| r.status),
            headers: output
                .response
                .iter()
                .flat_map(|r| r.headers.iter().map(|(name, value)| (name.clone(), text(value))))
                .collect(),
            body: text(&output.body[..output.body.len().min(4096)]),
            body_bytes: output.body.len(),
            failure: output.failure.as_ref().map(|f| {
                let first_line = f.message.lines().next().unwrap_or_default();
                format!("{} at host call {}: {first_line}", f.kind, f.at_call)
            }),
            calls: output.calls,
        }
    }
}

/// The bytes a stream got, over all its chunks.
fn stream(output: &crate::record::trace::Output, name: &str) -> Vec<u8> {
    output.logs.iter().filter(|chunk| chunk.stream == name).flat_map(|chunk| chunk.bytes.clone()).collect()
}

impl Report {
    fn new(trace: &Trace, replayed: Replayed, args: &ReplayArgs) -> Report {
        let recorded = &trace.output;
        let output = &replayed.output;
        let stopped = replayed.stopped && replayed.divergence.is_none();
        let at_end = output.calls;
        let mismatch = |what: &str, expected: String, actual: String| Divergence {
            at_call: at_end,
            expected: format!("{what} {expected}"),
            actual: format!("{what} {actual}"),
        };
        let divergence = replayed.divergence.clone().or_else(|| {
            if stopped {
                return None;
            }
            if replayed.unplayed > 0 {
                return Some(Divergence {
                    at_call: at_end + 1,
                    expected: format!(
                        "{} more host calls ({} next)",
                        replayed.unplayed, trace.events[at_end as usize].call
                    ),
                    actual: "no more host calls".into(),
                });
            }
            let failure = |output: &crate::record::trace::Output| {
                output.failure.as_ref().map(|f| format!("{} at host call {}: {}", f.kind, f.at_call, f.message))
            };
            if failure(recorded) != failure(output) {
                let show = |f: Option<String>| f.unwrap_or_else(|| "no failure".into());
                return Some(mismatch("failure:", show(failure(recorded)), show(failure(output))));
            }
            let head =
                |output: &crate::record::trace::Output| output.response.as_ref().map(|r| (r.status, r.headers.clone()));
            if head(recorded) != head(output) {
                let show = |o: &crate::record::trace::Output| {
                    let o = Outcome::of(o);
                    format!("{:?} {:?}", o.status, o.headers)
                };
                return Some(mismatch("response head:", show(recorded), show(output)));
            }
            if recorded.body != output.body {
                return Some(mismatch("response body:", show_bytes(&recorded.body), show_bytes(&output.body)));
            }
            for name in ["stdout", "stderr"] {
                let (expected, actual) = (stream(recorded, name), stream(output, name));
                if expected != actual {
                    return Some(mismatch(&format!("{name}:"), show_bytes(&expected), show_bytes(&actual)));
                }
            }
            None
        });
        let state = stopped.then(|| State::at(&replayed, args.until.unwrap_or_default()));
        let verdict = match (&divergence, stopped) {
            (Some(_), _) => "diverged",
            (None, true) => "stopped",
            (None, false) => "same",
        };
        Report {
            id: trace.id.clone(),
            function: trace.function.clone(),
            version: trace.version,
            against: args.against.as_ref().map(|p| p.display().to_string()),
            logs: output
                .logs
                .iter()
                .map(|c| (c.stream.clone(), c.at_call, String::from_utf8_lossy(&c.bytes).into_owned()))
                .collect(),
            steps: replayed.steps,
            verdict,
            divergence,
            recorded: Outcome::of(recorded),
            replayed: Outcome::of(output),
            state,
        }
    }

    fn print(&self, as_json: bool) {
        if as_json {
            println!("{}", serde_json::to_string_pretty(self).unwrap_or_default());
            return;
        }
        let against = self.against.as_ref().map(|p| format!(" against {p}")).unwrap_or_default();
        println!("replaying trace {} of {} v{}{against}", self.id, self.function, self.version);
        let mut logs = self.logs.iter().peekable();
        for step in &self.steps {
            while let Some((stream, _, text)) = logs.next_if(|(_, at, _)| *at < step.number) {
                print_log(stream, text);
            }
            println!("#{:<4} {}({}) -> {}", step.number, step.call, step.args, step.summary);
        }
        for (stream, _, text) in logs {
            print_log(stream, text);
        }
        if let Some(state) = &self.state {
            println!("stopped after host call {}:", state.stopped_after);
            println!("  key-value reads: {}", joined(&state.kv_reads));
            println!("  buffered writes: {}", joined(&state.kv_buffered_writes));
            let response = state.response_so_far.map_or_else(|| "not set yet".into(), |s| format!("status {s}"));
            println!("  response: {response}");
            println!("  linear memory: {} bytes", state.memory_bytes);
            return;
        }
        match (&self.replayed.status, &self.replayed.failure) {
            (_, Some(failure)) => println!("failed: {failure}"),
            (Some(status), None) => println!("response: {status}, {} body bytes", self.replayed.body_bytes),
            (None, None) => println!("no response"),
        }
        match &self.divergence {
            None => println!("same: the replay reproduced the recorded run ({} host calls)", self.replayed.calls),
            Some(d) => {
                println!("diverged at host call {}:", d.at_call);
                println!("  the trace has: {}", d.expected);
                println!("  the guest did: {}", d.actual);
                if self.recorded != self.replayed {
                    println!("  recorded response: {:?} {}", self.recorded.status, self.recorded.body);
                    println!("  replayed response: {:?} {}", self.replayed.status, self.replayed.body);
                }
            }
        }
    }
}

fn print_log(stream: &str, text: &str) {
    for line in text.lines() {
        println!("      {stream}: {line}");
    }
}

fn joined(items: &[String]) -> String {
    if items.is_empty() { "none".into() } else { items.join("; ") }
}

impl State {
    /// The guest's key-value view after the steps so far: what it read, and what it wrote since
    /// its last commit.
    fn at(replayed: &Replayed, stopped_after: u32) -> State {
        let mut kv_reads = Vec::new();
        let mut kv_buffered_writes = Vec::new();
        for step in &replayed.steps {
            let function = step.call.rsplit('.').next().unwrap_or_default();
            match function {
                "get" | "scan" | "exists" | "get-many" | "list-keys" | "current" => {
                    kv_reads.push(format!("{}({}) = {}", function, step.args, step.summary))
                }
                "put" | "delete" if step.call.starts_with("ledge:platform") => {
                    kv_buffered_writes.push(format!("{}({})", function, step.args))
                }
                "commit" | "rollback" => kv_buffered_writes.clear(),
                _ => {}
            }
        }
        State {
            stopped_after,
            kv_reads,
            kv_buffered_writes,
            response_so_far: replayed.output.response.as_ref().map(|r| r.status),
            memory_bytes: replayed.memory_bytes,
        }
    }
}
