//! The `ledge` command line (spec: "Command line").
//!
//! Exit codes: 0 ok; 1 the request was refused or failed (stderr names the reason); 2 usage
//! error (clap's own exit code for bad arguments).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::auth::{self, Authority};
use crate::limits::RateLimiter;
use crate::metrics::{ArtifactLabels, Metrics};
use crate::registry::Registry;
use crate::routes::App;
use crate::runtime::{Profile, Runtime, RuntimeOptions};
use crate::server::ConnectionLimits;
use crate::tls::{CertSource, Tls};

#[derive(Debug, Parser)]
#[command(name = "ledge", version, about = "WebAssembly edge functions with serializable transactions")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: deploy API, function invocation, metrics.
    Serve(ServeArgs),
    /// Upload a component as function NAME (creates it or deploys a new version).
    Deploy {
        /// Function name: 1-63 characters of a-z, 0-9 and '-'.
        name: String,
        /// The component (.wasm) to deploy.
        file: PathBuf,
        /// A policy file (TOML) to apply to the function before the component goes live.
        #[arg(long)]
        policy: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List deployed functions.
    Functions {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove function NAME.
    Rm {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Compile a component ahead of time for another node (e.g. an ARM64 board), which then
    /// deploys the artifact without compiling (it must run with --trust-precompiled).
    Compile {
        /// The component (.wasm) to compile.
        file: PathBuf,
        /// The node's architecture: aarch64 or x86_64 (Linux).
        #[arg(long, value_enum, default_value_t = Arch::Aarch64)]
        target: Arch,
        /// The node's `ledge serve --profile`.
        #[arg(long, value_enum, default_value_t = Profile::Standard)]
        profile: Profile,
        /// Where to write the artifact (default: FILE with the extension .cwasm).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Mint, attenuate, inspect and revoke tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Arch {
    Aarch64,
    #[value(name = "x86_64")]
    X86_64,
}

impl Arch {
    fn triple(self) -> &'static str {
        match self {
            Arch::Aarch64 => "aarch64-unknown-linux-gnu",
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
        }
    }
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Mint a token from the root key in a local data dir (no server needed).
    Mint {
        /// The data dir of the server the token is for.
        #[arg(long, default_value = "./ledge-data")]
        data_dir: PathBuf,
        /// A first-party caveat, e.g. "fn = hello" or "time < 2026-12-31T00:00:00Z"; repeatable.
        #[arg(long = "caveat")]
        caveats: Vec<String>,
    },
    /// Narrow a token with more caveats; needs no key, only the token.
    Attenuate {
        token: String,
        /// A first-party caveat to add; repeatable.
        #[arg(long = "caveat")]
        caveats: Vec<String>,
    },
    /// Print a token's id, key id and caveats (never its signature).
    Inspect { token: String },
    /// Revoke a token (and every token attenuated from it) on a server, by token or token id.
    Revoke {
        token_or_id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where deployed functions, key-value data and keys live.
    #[arg(long, default_value = "./ledge-data")]
    data_dir: PathBuf,
    /// Directory of policy files (default.toml and NAME.toml).
    #[arg(long, default_value = "./policies")]
    policies: PathBuf,
    /// Largest component accepted by deploy, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    max_upload: u64,
    /// Memory and address-space sizing: `standard` for servers, `small` for ARM64 boards
    /// (39-bit address space, 1 GB RAM).
    #[arg(long, value_enum, default_value_t = Profile::Standard, overrides_with = "profile")]
    profile: Profile,
    /// Component instances that may be live at once (sizes the pooling allocator; default
    /// from the profile: 256 standard, 32 small).
    #[arg(long)]
    max_instances: Option<u32>,
    /// Bytes of each pooled linear memory kept resident and reset in place between requests
    /// (default from the profile: 16 MiB standard, 1 MiB small).
    #[arg(long)]
    keep_resident: Option<usize>,
    /// Accept precompiled artifacts from `ledge compile` at deploy. They are native code that
    /// runs unchecked: only for deployers you trust as much as the node itself.
    #[arg(long)]
    trust_precompiled: bool,
    /// Turn rate limiting off (benchmarks, or a node behind a gateway that limits already).
    #[arg(long)]
    no_rate_limit: bool,
    /// Never use the pooling allocator (always allocate instance memory on demand).
    #[arg(long)]
    no_pooling: bool,
    /// PEM certificate chain for TLS (with --tls-key); reloaded on SIGHUP or when it changes.
    #[arg(long, requires = "tls_key", conflicts_with = "tls_self_signed")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with --tls-cert).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve TLS with a self-signed certificate kept in <data-dir>/tls/ (development only).
    #[arg(long)]
    tls_self_signed: bool,
    /// Seconds a client has to send its request head (slow-client protection).
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// Where client commands send their requests.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Base URL of the ledge server.
    #[arg(long, env = "LEDGE_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Bearer token for the request.
    #[arg(long, env = "LEDGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Callers the rate limiter tracks at most (see `limits` for the memory this bounds).
const RATE_LIMITER_KEYS: usize = 100_000;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ledge: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Deploy { name, file, policy, server } => {
                crate::client::deploy(&server, &name, &file, policy.as_deref()).await
            }
            Command::Functions { server } => crate::client::functions(&server).await,
            Command::Rm { name, server } => crate::client::remove(&server, &name).await,
            Command::Token(command) => token(command).await,
            Command::Compile { file, target, profile, output } => compile(&file, target, profile, output).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ledge: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    crate::storage::create_private_dir(&args.data_dir)?;
    let defaults = RuntimeOptions::for_profile(args.profile);
    let options = RuntimeOptions {
        pooling: !args.no_pooling,
        max_instances: args.max_instances.unwrap_or(defaults.max_instances),
        keep_resident: args.keep_resident.unwrap_or(defaults.keep_resident),
        trust_precompiled: args.trust_precompiled,
        ..defaults
    };
    let db = {
        let dir = args.data_dir.join("kv");
        tokio::task::spawn_blocking(move || ledge_kv::Db::open(&dir)).await??
    };
    let metrics = Arc::new(Metrics::new().with_kv(db.clone()));
    let runtime = Arc::new(Runtime::new(&options, metrics.clone(), Some(db.clone()))?);
    let authority = Arc::new(Authority::open(&args.data_dir)?.with_revocations(db.clone()));
    let admin_token = authority.ensure_admin_token(&args.data_dir)?;
    let policies = args.policies.is_dir().then_some(args.policies.as_path());
    let (registry, report) = {
        let (data_dir, policies, runtime) = (args.data_dir.clone(), policies.map(PathBuf::from), runtime.clone());
        tokio::task::spawn_blocking(move || Registry::open(&data_dir, policies.as_deref(), runtime)).await??
    };
    tracing::info!(precompiled = report.precompiled, recompiled = report.recompiled, "functions loaded");
    let loads = [("precompiled", report.precompiled), ("recompiled", report.recompiled)];
    for (outcome, count) in loads {
        metrics.artifact_loads.get_or_create(&ArtifactLabels { outcome }).inc_by(count as u64);
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let address = listener.local_addr()?;
    let registry = Arc::new(registry);
    registry.spawn_policy_watcher();
    let limiter = (!args.no_rate_limit).then(|| RateLimiter::new(RATE_LIMITER_KEYS));
    let app = Arc::new(App { registry, authority, limiter, runtime, metrics, max_upload: args.max_upload });
    // Tests and scripts wait for this line to learn the port.
    println!("admin token in {}", admin_token.display());
    let tls = match (args.tls_cert, args.tls_key, args.tls_self_signed) {
        (Some(cert), Some(key), _) => Some(CertSource::Files { cert, key }),
        (_, _, true) => Some(CertSource::SelfSigned { data_dir: args.data_dir.clone() }),
        _ => None,
    }
    .map(|source| Tls::new(&source).map(Arc::new))
    .transpose()?;
    if let Some(tls) = &tls {
        tls.spawn_reloader();
    }
    let limits = ConnectionLimits {
        header_read_timeout: std::time::Duration::from_secs(args.header_timeout.max(1)),
        ..ConnectionLimits::default()
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("ledge listening on {scheme}://{address}");
    crate::server::serve(listener, app, tls, limits, crate::server::shutdown_signal()).await?;
    // Every request has finished (or the drain deadline passed): flush and close the engine.
    tokio::task::spawn_blocking(move || db.close()).await??;
    tracing::info!("stopped");
    Ok(())
}

async fn compile(
    file: &std::path::Path,
    target: Arch,
    profile: Profile,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let options = RuntimeOptions { pooling: false, ..RuntimeOptions::for_profile(profile) };
    // The host runtime validates and runs `init`; the artifact is compiled for the target.
    let host = Runtime::new(&options, Arc::default(), None)?;
    let artifact = host.compile_for(&bytes, target.triple(), &options).await?;
    let output = output.unwrap_or_else(|| file.with_extension("cwasm"));
    crate::storage::write_durably(&output, &artifact)?;
    println!(
        "compiled {} for {} ({:?} profile): {} ({} bytes)",
        file.display(),
        target.triple(),
        profile,
        output.display(),
        artifact.len()
    );
    Ok(())
}

async fn token(command: TokenCommand) -> anyhow::Result<()> {
    let output = match command {
        TokenCommand::Mint { data_dir, caveats } => {
            crate::storage::create_private_dir(&data_dir)?;
            Authority::open(&data_dir)?.mint(&caveats).map_err(anyhow::Error::msg)?
        }
        TokenCommand::Attenuate { token, caveats } => auth::attenuate(&token, &caveats).map_err(anyhow::Error::msg)?,
        TokenCommand::Inspect { token } => auth::inspect(&token).map_err(anyhow::Error::msg)?,
        TokenCommand::Revoke { token_or_id, server } => {
            let id = auth::token_id_of(&token_or_id).map_err(anyhow::Error::msg)?;
            crate::client::revoke(&server, &id).await?;
            format!("revoked {id}")
        }
    };
    println!("{output}");
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,wasmtime_wasi_http=warn"));
    // Colours only for a person at a terminal, never into files or journald.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
