//! `ledge serve`: opens the engine, the runtime, the token authority and the registry under
//! the data dir, binds the listener, and serves until SIGTERM/SIGINT, then drains and closes
//! the engine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};

use super::log_writer::{LogWriter, LogWriterGuard};
use crate::access::policy::Ceilings;
use crate::access::rate::RateLimiter;
use crate::access::tokens::Authority;
use crate::cluster::{Cluster, JoinOptions};
use crate::etcd::{Etcd, EtcdTls};
use crate::guest_kv::global::GlobalStore;
use crate::guest_kv::keyspace_of;
use crate::http::App;
use crate::http::server::ConnectionLimits;
use crate::http::tls::{CertSource, Tls};
use crate::metrics::{ArtifactLabels, Metrics};
use crate::registry::Registry;
use crate::registry::config::SecretsKey;
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
    /// A certificate per host name (SNI): `HOST.pem` with `HOST.key` in this folder, reloaded
    /// when it changes; other host names get the default certificate, if any.
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Seconds a client has to send its request head (slow-client protection).
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a connection may stay open with no request in flight and no bytes moving.
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
    /// Open connections in all; more are closed at accept.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Open connections from one client address (IPv6: one /64); more are closed at accept.
    #[arg(long, default_value_t = 256)]
    max_connections_per_ip: usize,
    /// The longest `limits.timeout` any policy may set, e.g. "5m"; longer policies are refused.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    max_timeout: std::time::Duration,
    /// Bytes of key-value data (keys plus values) the node may hold in memory; writes past it
    /// fail with a `limit` error. Default: a quarter of the machine's memory.
    #[arg(long)]
    kv_max_bytes: Option<u64>,
    /// The key that seals functions' secrets (created, mode 0600, if missing). Default
    /// `<data-dir>/keys/secrets.key`; keep it elsewhere so that the data dir alone does not
    /// reveal secrets.
    #[arg(long)]
    secrets_key: Option<PathBuf>,
    /// Also serve `GET /metrics` without a token on this address (keep it private: metrics name
    /// every function). On the main address, metrics need a manage token without `fn` caveat.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Join a cluster whose state lives in etcd: its client endpoints, comma-separated
    /// (http:// or https:// with --etcd-ca). Without it the node is self-contained.
    #[arg(long, value_delimiter = ',', value_parser = parse_url)]
    cluster: Vec<String>,
    /// This node's name in the cluster (default: the host name): letters, digits, '.', '-', '_'.
    #[arg(long, requires = "cluster", value_parser = crate::cluster::check_node_name)]
    node_name: Option<String>,
    /// How other nodes and clients reach this node (default: http(s)://LISTEN-ADDRESS).
    #[arg(long, requires = "cluster", value_parser = parse_url)]
    advertise: Option<String>,
    /// PEM CA certificate that signed etcd's server certificates (https:// endpoints).
    #[arg(long, requires = "cluster")]
    etcd_ca: Option<PathBuf>,
    /// PEM client certificate for etcd (with --etcd-key), when etcd checks clients.
    #[arg(long, requires_all = ["etcd_key", "etcd_ca"])]
    etcd_cert: Option<PathBuf>,
    /// PEM private key of --etcd-cert.
    #[arg(long, requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// Bytes of components the cluster may keep in etcd (every kept version of every distinct
    /// component); a deploy past it is refused. Keep it under etcd's quota (2 GiB by default),
    /// which global key-value data shares.
    #[arg(long, requires = "cluster", default_value_t = crate::cluster::DEFAULT_MAX_ARTIFACT_BYTES)]
    cluster_max_artifact_bytes: u64,
}

fn parse_url(text: &str) -> Result<String, String> {
    crate::cluster::check_url(text)
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum LogFormat {
    Human,
    Json,
}

/// Callers the rate limiter tracks at most (see `access::rate` for the memory this bounds).
const RATE_LIMITER_KEYS: usize = 100_000;

impl ServeArgs {
    /// What `ledge serve --listen LISTEN --data-dir DATA_DIR` would use, everything else at its
    /// default (no policy files: `DATA_DIR/policies` is read only if someone creates it).
    pub fn defaults(listen: SocketAddr, data_dir: &std::path::Path) -> ServeArgs {
        use clap::{CommandFactory as _, FromArgMatches as _};
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        let policies = data_dir.join("policies");
        let argv = [
            "serve".into(),
            "--listen".into(),
            listen.to_string().into(),
            "--data-dir".into(),
            data_dir.as_os_str().to_owned(),
            "--policies".into(),
            policies.into_os_string(),
        ];
        let matches: Vec<std::ffi::OsString> = argv.into_iter().collect();
        Serve::from_arg_matches(&Serve::command().get_matches_from(matches)).expect("the defaults parse").args
    }
}

/// A node with everything opened and its listener bound, ready to serve.
pub struct Node {
    pub app: Arc<App>,
    pub address: SocketAddr,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<Tls>>,
    limits: ConnectionLimits,
    db: ledge_kv::Db,
}

impl Node {
    /// Serves until `shutdown`, drains, then flushes and closes the engine.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        crate::http::server::serve(self.listener, self.app, self.tls, self.limits, shutdown).await?;
        // Every request has finished (or the drain deadline passed): flush and close the engine.
        let db = self.db;
        tokio::task::spawn_blocking(move || db.close()).await??;
        tracing::info!("stopped");
        Ok(())
    }
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let _log_writer = init_logging(args.log_format);
    let node = start(args, false).await?;
    let scheme = if node.app.tls { "https" } else { "http" };
    println!("ledge listening on {scheme}://{}", node.address);
    node.run(crate::http::server::shutdown_signal()).await
}

/// Opens the data dir, the engine, the runtime and the registry, and binds the listener.
/// `dev`: requests from this machine need no token (`ledge dev`).
pub async fn start(args: ServeArgs, dev: bool) -> anyhow::Result<Node> {
    crate::storage::create_private_dir(&args.data_dir)?;
    let defaults = RuntimeOptions::for_profile(args.profile);
    let options = RuntimeOptions {
        pooling: !args.no_pooling,
        max_instances: args.max_instances.unwrap_or(defaults.max_instances),
        keep_resident: args.keep_resident.unwrap_or(defaults.keep_resident),
        trust_precompiled: args.trust_precompiled,
        ..defaults
    };
    let kv_max_bytes = args.kv_max_bytes.unwrap_or_else(default_kv_budget);
    let db = {
        let dir = args.data_dir.join("kv");
        let options = ledge_kv::Options::default().keyspace_of(keyspace_of).max_live_bytes(kv_max_bytes);
        tokio::task::spawn_blocking(move || ledge_kv::Db::open_with(&dir, options)).await??
    };
    let metrics = Arc::new(Metrics::new().with_kv(db.clone()));
    let own_addresses = crate::runtime::outbound::own_addresses(args.listen.ip());
    let etcd = match args.cluster.is_empty() {
        true => None,
        false => Some(Arc::new(Etcd::connect(&args.cluster, etcd_tls(&args)?.as_ref()).await?)),
    };
    let mut runtime = Runtime::new(&options, metrics.clone(), Some(db.clone()))?.with_own_addresses(own_addresses);
    if let Some(etcd) = &etcd {
        runtime = runtime.with_global_kv(GlobalStore::new(etcd.clone()));
    }
    let runtime = Arc::new(runtime);
    let authority = Arc::new(Authority::open(&args.data_dir)?.with_revocations(db.clone()));
    let admin_token = authority.ensure_admin_token(&args.data_dir)?;
    let policies = args.policies.is_dir().then_some(args.policies.as_path());
    let ceilings = Ceilings { max_timeout: args.max_timeout };
    let node_secrets = args.secrets_key.clone().unwrap_or_else(|| args.data_dir.join("keys/secrets.key"));
    // In cluster mode secrets are sealed under the cluster's key, cached beside the node's own.
    let cluster_secrets = node_secrets.with_file_name(crate::cluster::SECRETS_KEY_CACHE);
    let secrets_path = if etcd.is_some() && cluster_secrets.exists() { &cluster_secrets } else { &node_secrets };
    let secrets =
        SecretsKey::open(secrets_path).map_err(|e| anyhow::anyhow!("secrets key {}: {e}", secrets_path.display()))?;
    let (registry, report) = {
        let (data_dir, policies, runtime) = (args.data_dir.clone(), policies.map(PathBuf::from), runtime.clone());
        let db = db.clone();
        tokio::task::spawn_blocking(move || {
            Registry::open(&data_dir, policies.as_deref(), ceilings, runtime, Some(db), secrets)
        })
        .await??
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
    registry.spawn_scheduler();
    let limiter = (!args.no_rate_limit).then(|| RateLimiter::new(RATE_LIMITER_KEYS));
    let source = match (args.tls_cert, args.tls_key, args.tls_self_signed) {
        (Some(cert), Some(key), _) => Some(CertSource::Files { cert, key }),
        (_, _, true) => Some(CertSource::SelfSigned { data_dir: args.data_dir.clone() }),
        _ => None,
    };
    let tls = match (&source, &args.tls_dir) {
        (None, None) => None,
        (source, dir) => Some(Arc::new(Tls::new(source.as_ref(), dir.as_deref())?)),
    };
    if let Some(tls) = &tls {
        tls.spawn_reloader();
        if let (true, Some(certificate)) = (args.tls_self_signed, tls.certificate()) {
            println!("self-signed certificate in {} (client commands: --ca-cert FILE)", certificate.display());
        }
    }
    if let Some(address) = args.metrics_listen {
        let metrics_listener = tokio::net::TcpListener::bind(address).await?;
        println!("metrics on http://{}/metrics", metrics_listener.local_addr()?);
        tokio::spawn(crate::http::server::serve_metrics(metrics_listener, metrics.clone()));
    }
    let auth_failures = RateLimiter::new(RATE_LIMITER_KEYS);
    let traces =
        crate::record::Traces::start(db.clone(), metrics.traces_stored.clone(), metrics.traces_dropped.clone())?;
    let cluster = match etcd {
        Some(etcd) => {
            let scheme = if tls.is_some() { "https" } else { "http" };
            let options = JoinOptions {
                etcd,
                node: args.node_name.clone().unwrap_or_else(host_name),
                advertise: args.advertise.clone().unwrap_or_else(|| format!("{scheme}://{address}")),
                data_dir: args.data_dir.clone(),
                secrets_cache: cluster_secrets,
                max_artifact_bytes: args.cluster_max_artifact_bytes,
            };
            let live = metrics.live_instances.clone();
            let cluster = Cluster::join(options, registry.clone(), authority.clone(), move || live.get()).await?;
            println!("cluster node {} at {}", cluster.node, cluster.advertise);
            Some(cluster)
        }
        None => None,
    };
    if let Some(cluster) = &cluster {
        let (logs, traces) = (runtime.logs().clone(), traces.clone());
        cluster.on_removed(move |name| {
            logs.forget(name);
            let (traces, name) = (traces.clone(), name.to_string());
            tokio::spawn(async move { traces.forget(&name).await });
        });
    }
    let app = Arc::new(App {
        cluster,
        registry,
        authority,
        limiter,
        runtime,
        metrics,
        max_upload: args.max_upload,
        auth_failures,
        tls: tls.is_some(),
        dev,
        data_dir: args.data_dir.clone(),
        db: db.clone(),
        traces,
    });
    // Tests and scripts wait for this line to learn the port.
    println!("admin token in {}", admin_token.display());
    let limits = ConnectionLimits {
        header_read_timeout: std::time::Duration::from_secs(args.header_timeout.max(1)),
        idle_timeout: std::time::Duration::from_secs(args.idle_timeout.max(1)),
        max_connections: args.max_connections.max(1),
        max_connections_per_address: args.max_connections_per_ip.max(1),
        ..ConnectionLimits::default()
    };
    Ok(Node { app, address, listener, tls, limits, db })
}

/// The TLS material for `https://` etcd endpoints (`--etcd-ca`, `--etcd-cert`, `--etcd-key`).
fn etcd_tls(args: &ServeArgs) -> anyhow::Result<Option<EtcdTls>> {
    let read = |path: &PathBuf| std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    let Some(ca) = &args.etcd_ca else { return Ok(None) };
    let identity = match (&args.etcd_cert, &args.etcd_key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    Ok(Some(EtcdTls { ca: read(ca)?, identity }))
}

/// The machine's host name (the default node name).
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    if name.is_empty() { "node".to_string() } else { name.to_string() }
}

/// A quarter of the machine's memory (`/proc/meminfo`), or 1 GiB where that cannot be read.
fn default_kv_budget() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    });
    total_kib.map_or(1 << 30, |kib| kib * 1024 / 4)
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("`{text}`: {error} (e.g. \"30s\", \"5m\")"))
}

/// Logs go to stderr through a writer thread ([`LogWriter`]): a request's log line is buffered
/// (up to 8 MiB; beyond it lines are dropped and counted, never waited for) and written in
/// batches, so no worker ever blocks on the terminal or the journal. Keep the guard until exit:
/// dropping it writes what is buffered.
pub(super) fn init_logging(format: LogFormat) -> LogWriterGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,wasmtime_wasi_http=warn"));
    // Colours only for a person at a terminal, never into files or journald.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = LogWriter::spawn(std::io::stderr(), |dropped| {
        tracing::warn!(dropped, "log writer behind: lines dropped");
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}
