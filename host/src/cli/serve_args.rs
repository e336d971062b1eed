//! `ledge serve`'s arguments ([`ServeArgs`], also what `ledge dev` starts a node with) and the
//! parsers of their values; every limit names its default in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::runtime::Profile;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(super) listen: SocketAddr,
    /// Where deployed functions, key-value data and keys live.
    #[arg(long, default_value = "./ledge-data")]
    pub(super) data_dir: PathBuf,
    /// Directory of policy files (default.toml and NAME.toml).
    #[arg(long, default_value = "./policies")]
    pub(super) policies: PathBuf,
    /// Largest component accepted by deploy, e.g. "64MiB" (a bare number is bytes).
    #[arg(long, default_value = "64MiB", value_parser = crate::access::policy::parse_size)]
    pub(super) max_upload: u64,
    /// Memory and address-space sizing: `standard` for servers, `small` for ARM64 boards
    /// (39-bit address space, 1 GB RAM).
    #[arg(long, value_enum, default_value_t = Profile::Standard, overrides_with = "profile")]
    pub(super) profile: Profile,
    /// Component instances that may be live at once (sizes the pooling allocator; default
    /// from the profile: 256 standard, 32 small).
    #[arg(long)]
    pub(super) max_instances: Option<u32>,
    /// Bytes of each pooled linear memory kept resident and reset in place between requests
    /// (default from the profile: 16 MiB standard, 1 MiB small).
    #[arg(long)]
    pub(super) keep_resident: Option<usize>,
    /// Accept precompiled artifacts from `ledge compile` at deploy. They are native code that
    /// runs unchecked: only for deployers you trust as much as the node itself.
    #[arg(long)]
    pub(super) trust_precompiled: bool,
    /// Turn rate limiting off (benchmarks, or a node behind a gateway that limits already).
    #[arg(long)]
    pub(super) no_rate_limit: bool,
    /// Never use the pooling allocator (always allocate instance memory on demand).
    #[arg(long)]
    pub(super) no_pooling: bool,
    /// PEM certificate chain for TLS (with --tls-key); reloaded on SIGHUP or when it changes.
    #[arg(long, requires = "tls_key", conflicts_with = "tls_self_signed")]
    pub(super) tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with --tls-cert).
    #[arg(long, requires = "tls_cert")]
    pub(super) tls_key: Option<PathBuf>,
    /// Serve TLS with a self-signed certificate kept in <data-dir>/tls/ (development only).
    #[arg(long)]
    pub(super) tls_self_signed: bool,
    /// A certificate per host name (SNI): `HOST.pem` with `HOST.key` in this folder, reloaded
    /// when it changes; other host names get the default certificate, if any.
    #[arg(long)]
    pub(super) tls_dir: Option<PathBuf>,
    /// How long a client has to send its request head (slow-client protection), e.g. "10s" (a
    /// bare number is seconds).
    #[arg(long, default_value = "10s", value_parser = parse_seconds)]
    pub(super) header_timeout: u64,
    /// How long a connection may stay open with no request in flight and no bytes moving, e.g.
    /// "60s" or "2m" (a bare number is seconds).
    #[arg(long, default_value = "60s", value_parser = parse_seconds)]
    pub(super) idle_timeout: u64,
    /// Open connections in all; more are closed at accept.
    #[arg(long, default_value_t = 4096)]
    pub(super) max_connections: usize,
    /// Open connections from one client address (IPv6: one /64); more are closed at accept. A
    /// request a cluster peer proxies counts for the client it vouches for, not for the peer.
    #[arg(long, default_value_t = 256)]
    pub(super) max_connections_per_ip: usize,
    /// Cluster mode: open connections from the other nodes (proxied requests), limited apart
    /// from clients' per-address limit.
    #[arg(long, default_value_t = 4096)]
    pub(super) max_peer_connections: usize,
    /// The longest `limits.timeout` any policy may set, e.g. "5m"; longer policies are refused.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub(super) max_timeout: std::time::Duration,
    /// Bytes of key-value data (keys plus values) the node may hold in memory, e.g. "2GiB" (a
    /// bare number is bytes); writes past it fail with a `limit` error. Default: a quarter of
    /// the machine's memory.
    #[arg(long, value_parser = crate::access::policy::parse_size)]
    pub(super) kv_max_bytes: Option<u64>,
    /// Bytes the open key-value transactions of all instances may buffer for writing together,
    /// e.g. "256MiB" (each instance's share at most 16 MiB); a write past it fails with a
    /// `limit` error. Default from the profile: 256 MiB standard, 64 MiB small.
    #[arg(long, value_parser = crate::access::policy::parse_size)]
    pub(super) kv_write_buffers: Option<u64>,
    /// The key that seals functions' secrets (created, mode 0600, if missing). Default
    /// `<data-dir>/keys/secrets.key`; keep it elsewhere so that the data dir alone does not
    /// reveal secrets.
    #[arg(long)]
    pub(super) secrets_key: Option<PathBuf>,
    /// Also serve `GET /metrics` without a token on this address (keep it private: metrics name
    /// every function). On the main address, metrics need a manage token without `fn` caveat.
    #[arg(long)]
    pub(super) metrics_listen: Option<SocketAddr>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub(super) log_format: LogFormat,
    /// Join a cluster whose state lives in etcd: its client endpoints, comma-separated
    /// (http:// or https:// with --etcd-ca). Without it the node is self-contained.
    #[arg(long, value_delimiter = ',', value_parser = parse_url)]
    pub(super) cluster: Vec<String>,
    /// This node's name in the cluster (default: the host name): letters, digits, '.', '-', '_'.
    #[arg(long, requires = "cluster", value_parser = crate::cluster::check_node_name)]
    pub(super) node_name: Option<String>,
    /// How other nodes and clients reach this node (default: http(s)://LISTEN-ADDRESS).
    #[arg(long, requires = "cluster", value_parser = parse_url)]
    pub(super) advertise: Option<String>,
    /// PEM CA certificate that signed etcd's server certificates (https:// endpoints).
    #[arg(long, requires = "cluster")]
    pub(super) etcd_ca: Option<PathBuf>,
    /// PEM client certificate for etcd (with --etcd-key), when etcd checks clients.
    #[arg(long, requires_all = ["etcd_key", "etcd_ca"])]
    pub(super) etcd_cert: Option<PathBuf>,
    /// PEM private key of --etcd-cert.
    #[arg(long, requires = "etcd_cert")]
    pub(super) etcd_key: Option<PathBuf>,
    /// Bytes of components the cluster may keep in etcd (every kept version of every distinct
    /// component); a deploy past it is refused. Keep it under etcd's quota (2 GiB by default),
    /// which global key-value data shares.
    #[arg(
        long,
        requires = "cluster",
        default_value_t = crate::cluster::DEFAULT_MAX_ARTIFACT_BYTES,
        value_parser = crate::access::policy::parse_size
    )]
    pub(super) cluster_max_artifact_bytes: u64,
    /// Largest queue message body, e.g. "256KiB" (at most 1MiB, the engine's largest value); a
    /// bigger send is refused (a guest `limit` error, HTTP 413).
    #[arg(long, default_value = "1MiB", value_parser = parse_message_size)]
    pub(super) queue_max_body: u64,
    /// Bytes of messages this node's queues may keep together, e.g. "512MiB" (the engine holds
    /// them in memory, outside --kv-max-bytes); a send past it is refused like a full queue.
    /// Default: a quarter of --kv-max-bytes' default (a sixteenth of the machine's memory).
    #[arg(long, value_parser = crate::access::policy::parse_size)]
    pub(super) queues_max_bytes: Option<u64>,
    /// Bytes of global key-value data in etcd, all keyspaces together (the same on every node).
    #[arg(long, requires = "cluster", default_value = "512MiB", value_parser = crate::access::policy::parse_size)]
    pub(super) global_kv_max_bytes: u64,
    /// Export traces, metrics and logs over OTLP to this collector (a base URL: /v1/traces,
    /// /v1/metrics, /v1/logs are appended for http/protobuf). Off when neither this nor
    /// OTEL_EXPORTER_OTLP_ENDPOINT is set. OTEL_EXPORTER_OTLP_PROTOCOL (http/protobuf or grpc),
    /// OTEL_EXPORTER_OTLP_HEADERS, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER(_ARG) and
    /// OTEL_METRIC_EXPORT_INTERVAL are honoured.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", hide_env_values = true)]
    pub(super) otlp_endpoint: Option<String>,
    /// Most new traces exported per second (started here, or continuing a caller's or a
    /// peer's), a quarter of them for any one function; more are not exported and count in
    /// ledge_otel_dropped_total.
    #[arg(long, default_value = "1000")]
    pub(super) otlp_max_traces_per_second: std::num::NonZeroU32,
}

fn parse_url(text: &str) -> Result<String, String> {
    crate::cluster::check_url(text)
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum LogFormat {
    Human,
    Json,
}

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

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("`{text}`: {error} (e.g. \"30s\", \"5m\")"))
}

/// Whole seconds: a bare number, or a duration with its unit ("10s", "2m").
fn parse_seconds(text: &str) -> Result<u64, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(seconds);
    }
    let duration = parse_duration(text)?;
    if duration.subsec_nanos() != 0 {
        return Err(format!("`{text}`: give whole seconds (e.g. \"10s\", \"2m\")"));
    }
    Ok(duration.as_secs())
}

/// A queue message size: at most the engine's largest value, which holds the body.
fn parse_message_size(text: &str) -> Result<u64, String> {
    let size = crate::access::policy::parse_size(text)?;
    let most = ledge_kv::Options::default().max_value_len as u64;
    if size > most {
        return Err(format!("at most {most} bytes (the engine's largest value)"));
    }
    Ok(size)
}
