//! `ledge serve`: opens the engine, the runtime, the token authority and the registry under
//! the data dir, binds the listener, and serves until SIGTERM/SIGINT, then drains and closes
//! the engine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};

use crate::access::rate::RateLimiter;
use crate::access::tokens::Authority;
use crate::http::App;
use crate::http::server::ConnectionLimits;
use crate::http::tls::{CertSource, Tls};
use crate::metrics::{ArtifactLabels, Metrics};
use crate::registry::Registry;
use crate::runtime::{Profile, Runtime, RuntimeOptions};

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

/// Callers the rate limiter tracks at most (see `access::rate` for the memory this bounds).
const RATE_LIMITER_KEYS: usize = 100_000;

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
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
    crate::http::server::serve(listener, app, tls, limits, crate::http::server::shutdown_signal()).await?;
    // Every request has finished (or the drain deadline passed): flush and close the engine.
    tokio::task::spawn_blocking(move || db.close()).await??;
    tracing::info!("stopped");
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
