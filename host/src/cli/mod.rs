//! The `ledge` command line (spec: "Command line"): [`serve`] runs a node (its arguments in
//! [`serve_args`]), [`dev`] the author's loop on top of it, [`new`] and [`project`] function
//! projects, [`client`] holds the commands that talk to one over HTTP (`log_text.rs`: how
//! `ledge logs` shows guest text; `queues.rs`: `ledge queues` and `ledge queue`, built on
//! it), [`replay`] replays traces offline, [`compile`] builds artifacts for other nodes; token
//! commands (`token.rs`) and `ledge restore` (`restore.rs`) work on a local data dir or a token
//! alone; `docs.rs` writes completions and man pages from this definition.
//!
//! Layer: the top; it wires every other layer together and nothing imports from it but
//! `main.rs`.
//!
//! Exit codes: 0 ok; 1 the request was refused or failed (stderr names the reason); 2 usage
//! error (clap's own exit code for bad arguments).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::runtime::Profile;
use compile::Arch;
use queues::QueueCommand;
use serve_args::ServeArgs;
use token::{TokenCommand, token};

pub mod client;
pub mod compile;
mod config;
pub mod dev;
mod docs;
mod log_text;
mod log_writer;
pub mod new;
pub mod project;
mod promote;
mod queues;
pub mod replay;
mod restore;
pub mod serve;
pub mod serve_args;
mod token;
mod verification;
mod verify;
mod version;

#[derive(Debug, Parser)]
#[command(name = "ledge", version = version::VERSION, about = "WebAssembly edge functions with serializable transactions")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: deploy API, function invocation, metrics.
    Serve(Box<ServeArgs>),
    /// Upload a component as function NAME (creates it or deploys a new version). With no
    /// arguments, inside a project made by `ledge new`: build if stale and deploy every
    /// function as `ledge.toml` says.
    Deploy {
        /// Function name: 1-63 characters of a-z, 0-9 and '-'.
        #[arg(requires = "file")]
        name: Option<String>,
        /// The component (.wasm) to deploy.
        file: Option<PathBuf>,
        /// A policy file (TOML) applied together with the component: both or neither.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Serve the new version to this share of callers only (e.g. 10%), each caller always
        /// getting the same version, until `ledge promote` or `ledge rollback`.
        #[arg(long, requires = "file")]
        canary: Option<String>,
        #[command(flatten)]
        verify: verification::VerifyArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Create a function project (sources, WIT, ledge.toml) in DIR/NAME.
    New {
        /// Function name: 1-63 characters of a-z, 0-9 and '-'.
        name: String,
        #[arg(long, value_enum, default_value_t = new::Lang::Rust)]
        lang: new::Lang,
        /// The folder to create the project in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build, serve and watch projects: every change to a function's sources rebuilds and
    /// redeploys it. Requests from this machine need no token.
    Dev {
        /// Project folders (each with a ledge.toml); default the current one.
        dirs: Vec<PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// List the kept versions of function NAME, and which one is live (and the canary).
    Versions {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Drop NAME's canary or, without one, make VERSION (default: the previous one) live again,
    /// at once and without recompiling.
    Rollback {
        name: String,
        version: Option<u64>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Make NAME's canary the live version, unless it fails more often than the live one.
    Promote {
        name: String,
        #[command(flatten)]
        gate: promote::GateArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show function NAME's recent guest output and request lines; --follow streams new ones.
    /// Guest control characters shown escaped unless --raw.
    Logs {
        name: String,
        /// Keep streaming new lines until interrupted.
        #[arg(long)]
        follow: bool,
        /// Only lines from this far back, e.g. 10m, 1h.
        #[arg(long)]
        since: Option<String>,
        /// JSON lines, as the server sends them (strings decode to the exact guest text; DEL
        /// and C1 controls written as \uXXXX unless --raw).
        #[arg(long)]
        json: bool,
        /// Print guest text as it is, escape sequences and all: guest control characters
        /// (ESC, CR, C1, DEL, ...) are shown escaped (\x1b, \r, \u{9b}, \\ for a backslash)
        /// unless --raw.
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List deployed functions.
    Functions {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List the cluster's live nodes: name, address, version, functions served, load.
    Nodes {
        /// Print the server's JSON reply.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List the node's queues: name, depth, in_flight, oldest_age, dead.
    Queues {
        /// Print the server's JSON reply.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Send to a queue, peek at its messages, redrive or purge them.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Print the shell completion script (e.g. `ledge completions bash > ~/.local/share/bash-completion/completions/ledge`).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (ledge.1 and one per subcommand) into DIR: for packagers.
    #[command(hide = true)]
    ManPages { dir: PathBuf },
    /// Remove function NAME and its key-value data.
    Rm {
        name: String,
        /// Keep the function's key-value data (a later deploy of NAME sees it again).
        #[arg(long)]
        keep_data: bool,
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
    /// Download a consistent backup of the node to FILE (mode 0600: it holds the node's keys).
    ///
    /// The archive holds every function (versions, policies, config), the root keys, the
    /// secrets key, the admin token and the key-value data as of one moment, taken while the
    /// node serves. `ledge restore` makes a new data dir from it.
    Backup {
        /// Where to write the archive (a tar); written whole or not at all.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Make DIR a new data dir from a `ledge backup` archive (offline, no server needed).
    ///
    /// The archive is verified whole first; DIR appears complete or not at all. A node started
    /// on DIR is a copy of the original: same keys, so the original's tokens work on it.
    Restore {
        /// The archive `ledge backup` wrote.
        file: PathBuf,
        /// The data dir to create; it must not exist (or be empty).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// List recorded runs (newest first), of FUNCTION or of every function.
    Traces {
        function: Option<String>,
        /// Only the recordings of this OpenTelemetry trace (32 hex digits, as a trace view
        /// shows it).
        #[arg(long, value_name = "ID")]
        otel_trace: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Export a recorded run.
    #[command(subcommand)]
    Trace(TraceCommand),
    /// Replay the function's recent real requests against FILE and the live build, without
    /// deploying: exit 0 same, 1 diverged, 2 could not verify.
    Verify(verify::VerifyCommand),
    /// Re-execute a recorded run offline and check that it reproduces: exit 0 same, 1 diverged
    /// (the first divergence is printed), 2 no replay was possible.
    Replay(replay::ReplayArgs),
    /// Mint, attenuate, inspect and revoke tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// A function's configuration and secrets, read by its guests through wasi:config and the
    /// environment; changes apply to new requests without a redeploy.
    #[command(subcommand)]
    Config(config::ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum TraceCommand {
    /// Write trace ID to FILE: self-contained but for the component, which --with-component
    /// adds (else `ledge replay FILE` fetches it from the server).
    Get {
        id: String,
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: PathBuf,
        #[arg(long)]
        with_component: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
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
    /// A PEM certificate (or bundle) to trust besides the system's roots, e.g. the one
    /// `ledge serve --tls-self-signed` prints.
    #[arg(long, env = "LEDGE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ledge: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let cli = match cli.command {
        // A replay and a verification have three outcomes (same, diverged, could not tell).
        Command::Replay(args) => return runtime.block_on(replay::replay(args)),
        Command::Verify(args) => return runtime.block_on(verify::verify(args)),
        command => Cli { command },
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::serve(*args).await,
            Command::Deploy { name: Some(name), file: Some(file), policy, canary, verify, server } => {
                client::deploy(&server, &name, &file, policy.as_deref(), canary.as_deref(), &verify).await
            }
            Command::Deploy { policy: Some(_), .. } => {
                Err(anyhow::anyhow!("--policy goes with NAME FILE; a project's policies are in its ledge.toml"))
            }
            Command::Deploy { verify, server, .. } => {
                client::deploy_project(&server, std::path::Path::new("."), &verify).await
            }
            Command::New { name, lang, dir } => {
                new::create(&name, lang, &dir).map(|root| println!("{}", new::next_steps(&root, lang)))
            }
            Command::Dev { dirs, listen } => dev::dev(dirs, listen).await,
            Command::Functions { server } => client::functions(&server).await,
            Command::Nodes { json, server } => client::nodes(&server, json).await,
            Command::Queues { json, server } => queues::list(&server, json).await,
            Command::Queue(command) => queues::queue(command).await,
            Command::Completions { shell } => {
                docs::completions(shell);
                Ok(())
            }
            Command::ManPages { dir } => docs::man_pages(&dir),
            Command::Logs { name, follow, since, json, raw, server } => {
                client::logs(&server, &name, follow, since.as_deref(), json, raw).await
            }
            Command::Versions { name, server } => client::versions(&server, &name).await,
            Command::Rollback { name, version, server } => {
                client::change_version(&server, &name, "rollback", version).await
            }
            Command::Promote { name, gate, server } => promote::promote(&server, &name, &gate).await,
            Command::Rm { name, keep_data, server } => client::remove(&server, &name, keep_data).await,
            Command::Backup { out, server } => client::backup(&server, &out).await,
            Command::Restore { file, data_dir } => restore::restore(file, data_dir).await,
            Command::Token(command) => token(command).await,
            Command::Traces { function, otel_trace, server } => {
                replay::list(&server, function.as_deref(), otel_trace.as_deref()).await
            }
            Command::Trace(TraceCommand::Get { id, out, with_component, server }) => {
                replay::get(&server, &id, &out, with_component).await
            }
            Command::Replay(_) | Command::Verify(_) => unreachable!("handled above"),
            Command::Config(command) => config::config(command).await,
            Command::Compile { file, target, profile, output } => {
                compile::compile(&file, target, profile, output).await
            }
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
