//! `ledge serve`: opens the engine, the runtime, the token authority and the registry under
//! the data dir, binds the listener, and serves until SIGTERM/SIGINT, then drains and closes
//! the engine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::log_writer::{LogWriter, LogWriterGuard};
use super::serve_args::{LogFormat, ServeArgs};
use crate::access::policy::Ceilings;
use crate::access::rate::RateLimiter;
use crate::access::tokens::Authority;
use crate::cluster::{Cluster, JoinOptions};
use crate::etcd::{Etcd, EtcdTls};
use crate::guest_kv::global::GlobalStore;
use crate::guest_kv::global_queues::GlobalQueues;
use crate::guest_kv::keyspace_of;
use crate::http::App;
use crate::http::server::ConnectionLimits;
use crate::http::tls::{CertSource, Tls};
use crate::metrics::{ArtifactLabels, Metrics};
use crate::queue::Queues;
use crate::registry::config::SecretsKey;
use crate::registry::{Registry, StartLoads};
use crate::runtime::{Runtime, RuntimeOptions};
use crate::telemetry::access::{self, AccessFormat};
use crate::telemetry::{LogBridge, OtlpOptions};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Callers the rate limiter tracks at most (see `access::rate` for the memory this bounds).
const RATE_LIMITER_KEYS: usize = 100_000;

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
        let registry = self.app.registry.clone();
        crate::http::server::serve(self.listener, self.app, self.tls, self.limits, shutdown).await?;
        // Loads still under way would keep the process (a blocking task) until they end.
        registry.stop_start_loads();
        crate::telemetry::flush(TELEMETRY_FLUSH).await;
        // Every request has finished (or the drain deadline passed): checkpoint, so that the next
        // start replays no WAL, then flush and close the engine. A checkpoint that fails leaves
        // the WAL, which the next start replays as after a crash.
        let db = self.db;
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            match db.checkpoint_if_behind() {
                Ok(Some(stamp)) => tracing::info!(stamp, took = ?started.elapsed(), "checkpoint at stop"),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "no checkpoint at stop: the next start replays the WAL"),
            }
            db.close()
        })
        .await??;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Records this build's formats in a data dir that is new, predates recorded formats, or holds
/// older versions this build reads (`datadir`): the marker is the only file written for it.
fn record_formats(data_dir: &std::path::Path, state: &crate::datadir::State) -> anyhow::Result<()> {
    use crate::datadir::State;
    match state {
        State::Current => return Ok(()),
        State::New => {}
        State::Unrecorded => {
            tracing::info!(formats = ?crate::datadir::current(), "the data dir predates recorded format versions: recording them")
        }
        State::Older { found } => tracing::warn!(
            from = ?found,
            to = ?crate::datadir::current(),
            "upgrading the data dir's formats: ledge builds that read only the older ones will refuse it from now on"
        ),
    }
    let marker = data_dir.join(crate::datadir::MARKER);
    crate::datadir::record(data_dir).map_err(|error| anyhow::anyhow!("cannot write {}: {error}", marker.display()))
}

/// How long the last spans, logs and metrics may take to leave at shutdown.
const TELEMETRY_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let _log_writer = init_logging(args.log_format, args.otlp_endpoint.is_some());
    let node = start(args, false).await?;
    let scheme = if node.app.tls { "https" } else { "http" };
    println!("ledge listening on {scheme}://{}", node.address);
    node.run(crate::http::server::shutdown_signal()).await
}

/// Opens the data dir, the engine, the runtime and the registry, and binds the listener.
/// `dev`: requests from this machine need no token (`ledge dev`).
pub async fn start(args: ServeArgs, dev: bool) -> anyhow::Result<Node> {
    // Export settings are checked before anything is written: a wrong variable stops the start
    // with its reason and an untouched data dir.
    let otlp = match &args.otlp_endpoint {
        Some(endpoint) => {
            let node = args.node_name.clone().unwrap_or_else(host_name);
            Some(OtlpOptions::from_env(endpoint, args.otlp_max_traces_per_second, &node)?)
        }
        None => None,
    };
    // So are the data dir's formats: one this build cannot read stops the start with the
    // versions found and what to do, before anything in the data dir changes.
    let formats = crate::datadir::inspect(&args.data_dir)?;
    crate::storage::keep_new_files_private();
    crate::storage::create_private_dir(&args.data_dir)?;
    // A new data dir names its formats first; one that exists is marked only once the engine
    // and the registry have opened it, so a start that fails leaves it as it was.
    let new_data_dir = formats == crate::datadir::State::New;
    if new_data_dir {
        record_formats(&args.data_dir, &formats)?;
    }
    let defaults = RuntimeOptions::for_profile(args.profile);
    let options = RuntimeOptions {
        pooling: !args.no_pooling,
        max_instances: args.max_instances.unwrap_or(defaults.max_instances),
        keep_resident: args.keep_resident.unwrap_or(defaults.keep_resident),
        trust_precompiled: args.trust_precompiled,
        kv_write_buffers: args.kv_write_buffers.unwrap_or(defaults.kv_write_buffers),
        ..defaults
    };
    let kv_max_bytes = args.kv_max_bytes.unwrap_or_else(default_kv_budget);
    let db = {
        let dir = args.data_dir.join("kv");
        // The host's own records (`sys/`: revocations, kept traces, each bounded on its own)
        // never compete with guest data for the budget.
        let options = ledge_kv::Options::default()
            .keyspace_of(keyspace_of)
            .max_live_bytes(kv_max_bytes)
            .unbudgeted_prefix(b"sys/");
        tokio::task::spawn_blocking(move || ledge_kv::Db::open_with(&dir, options)).await??
    };
    let recovered = db.stats();
    tracing::info!(
        wal_bytes = recovered.recovered_wal_bytes,
        commits = recovered.recovered_commits,
        took_us = recovered.recovery_micros,
        "engine recovered"
    );
    let queues = {
        let (db, max_body) = (db.clone(), args.queue_max_body);
        let max_total = args.queues_max_bytes.unwrap_or_else(|| default_kv_budget() / 4);
        tokio::task::spawn_blocking(move || Queues::open(db, max_body, max_total)).await??
    };
    let metrics = Arc::new(Metrics::new().with_kv(db.clone()));
    if let Some(options) = &otlp {
        crate::telemetry::install(options, metrics.clone())?;
    }
    let own_addresses = crate::runtime::outbound::own_addresses(args.listen.ip());
    let etcd = match args.cluster.is_empty() {
        true => None,
        false => Some(Arc::new(Etcd::connect(&args.cluster, etcd_tls(&args)?.as_ref()).await?)),
    };
    let global_kv = etcd.as_ref().map(|etcd| GlobalStore::new(etcd.clone(), args.global_kv_max_bytes));
    let global_queues = match (&etcd, &global_kv) {
        (Some(etcd), Some(store)) => {
            let node = args.node_name.clone().unwrap_or_else(host_name);
            Some(GlobalQueues::new(store.clone(), etcd.clone(), &node, args.queue_max_body))
        }
        _ => None,
    };
    let websockets = crate::websocket::Hub::new(metrics.clone());
    let runtime = Runtime::new(&options, metrics.clone(), Some(db.clone()))?
        .with_own_addresses(own_addresses)
        .with_queues(queues.clone(), global_queues.clone())
        .with_websockets(websockets.clone());
    let runtime = Arc::new(global_kv.iter().fold(runtime, |runtime, store| runtime.with_global_kv(store.clone())));
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
    let (registry, start_loads) = {
        let (data_dir, policies, runtime) = (args.data_dir.clone(), policies.map(PathBuf::from), runtime.clone());
        let db = db.clone();
        tokio::task::spawn_blocking(move || {
            Registry::open(&data_dir, policies.as_deref(), ceilings, runtime, Some(db), secrets)
        })
        .await??
    };
    if !new_data_dir {
        record_formats(&args.data_dir, &formats)?;
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let address = listener.local_addr()?;
    let registry = Arc::new(registry);
    spawn_start_loads(start_loads, registry.clone(), metrics.clone());
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
                global_kv,
            };
            let live = metrics.live_instances.clone();
            let cluster = Cluster::join(options, registry.clone(), authority.clone(), move || live.get()).await?;
            println!("cluster node {} at {}", cluster.node, cluster.advertise);
            Some(cluster)
        }
        None => None,
    };
    if let Some(cluster) = &cluster {
        // Before the server accepts a connection: every id it gives names this node.
        websockets.join_cluster(cluster.node.clone(), cluster.clone());
        let (logs, traces, sockets) = (runtime.logs().clone(), traces.clone(), websockets.clone());
        cluster.on_removed(move |name| {
            logs.forget(name);
            sockets.forget(name);
            let (traces, name) = (traces.clone(), name.to_string());
            tokio::spawn(async move { traces.forget(&name).await });
        });
    }
    let scratch = args.data_dir.join("verify-scratch");
    let verifier =
        crate::verify::Verifier::new(runtime.clone(), registry.clone(), traces.clone(), cluster.clone(), scratch)?;
    let verifier = Arc::new(verifier);
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
        dev_builds: Default::default(),
        data_dir: args.data_dir.clone(),
        db: db.clone(),
        traces,
        verifier,
        queues,
        global_queues,
        global_polls: Default::default(),
        global_in_flight: Default::default(),
        websockets,
    });
    let consumers = Arc::downgrade(&app.registry);
    app.queues.take_bounds_from(Box::new(move |queue| {
        let (_, consumer) = consumers.upgrade()?.consumer_of(queue)?;
        Some(crate::queue::Bounds { max_depth: consumer.max_depth, max_bytes: consumer.max_bytes })
    }));
    app.spawn_deliveries();
    // Tests and scripts wait for this line to learn the port.
    println!("admin token in {}", admin_token.display());
    let limits = ConnectionLimits {
        header_read_timeout: std::time::Duration::from_secs(args.header_timeout.max(1)),
        idle_timeout: std::time::Duration::from_secs(args.idle_timeout.max(1)),
        max_connections: args.max_connections.max(1),
        max_connections_per_address: args.max_connections_per_ip.max(1),
        max_peer_connections: args.max_peer_connections.max(1),
        ..ConnectionLimits::default()
    };
    Ok(Node { app, address, listener, tls, limits, db })
}

/// Loads the deployed functions' code in the background, while the node serves (see
/// `registry::code`); "functions loaded" says when it is done.
fn spawn_start_loads(loads: StartLoads, registry: Arc<Registry>, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        let report = loads.finish(&registry).await;
        let loads = [("precompiled", report.precompiled), ("recompiled", report.recompiled)];
        for (outcome, count) in loads {
            metrics.artifact_loads.get_or_create(&ArtifactLabels { outcome }).inc_by(count as u64);
        }
        tracing::info!(precompiled = report.precompiled, recompiled = report.recompiled, "functions loaded");
        registry.mark_loaded();
    });
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

/// Logs go to stderr through a writer thread ([`LogWriter`]): a request's log line is buffered
/// (up to 8 MiB; beyond it lines are dropped and counted, never waited for) and written in
/// batches, so no worker ever blocks on the terminal or the journal. Keep the guard until exit:
/// dropping it writes what is buffered. `otlp`: ledge's events (info and above, whatever
/// `LEDGE_LOG` says) also go to the OTLP log exporter once it is installed.
pub(super) fn init_logging(format: LogFormat, otlp: bool) -> LogWriterGuard {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("LEDGE_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,wasmtime_wasi_http=warn"))
    };
    // Colours only for a person at a terminal, never into files or journald.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = LogWriter::spawn(std::io::stderr(), |dropped| {
        tracing::warn!(dropped, "log writer behind: lines dropped");
    });
    // The access line, written by hand in the same format (colours aside: at a terminal it
    // stays a `tracing` event).
    let access_format = match format {
        LogFormat::Human => (!ansi).then_some(AccessFormat::Human),
        LogFormat::Json => Some(AccessFormat::Json),
    };
    if let Some(access_format) = access_format.filter(|_| access::filter_passes(filter())) {
        let access_writer = writer.clone();
        access::install(access_format, Box::new(move |line| access_writer.append(line)));
    }
    let text = tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi);
    let text: Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync> = match format {
        LogFormat::Human => Box::new(text.with_filter(filter())),
        LogFormat::Json => Box::new(text.json().with_filter(filter())),
    };
    let otlp = otlp.then(|| LogBridge.with_filter(LogBridge::targets()));
    tracing_subscriber::registry().with(text).with(otlp).init();
    guard
}
