//! `ledge verify NAME FILE [--traces N] [--json] [--require N]`: the check `ledge deploy
//! --verify` makes (`verification.rs`), without deploying, for CI pipelines.
//!
//! Exit codes of `ledge verify`: 0 every verified trace behaved the same (also when nothing was
//! verified, said on stderr, unless `--require N`); 1 the build diverged; 2 no verification was
//! possible (a refused or unreachable server, an unreadable file, fewer than `--require`
//! traces verified).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::{ServerArgs, client};
use crate::verify::Report;

/// `ledge verify`'s arguments.
#[derive(Debug, clap::Args)]
pub struct VerifyCommand {
    /// The function whose recent traffic is replayed.
    pub name: String,
    /// The new build (.wasm).
    pub file: PathBuf,
    /// How many recent requests to replay (1 to 200).
    #[arg(long, value_name = "N", default_value_t = crate::verify::DEFAULT_TRACES)]
    pub traces: usize,
    /// Exit 2 when fewer than N traces could be verified.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub require: usize,
    /// How long verification may take, e.g. 90s or 2m (default 60s).
    #[arg(long, value_name = "DURATION")]
    pub verify_timeout: Option<String>,
    /// Print the server's report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `ledge verify`.
pub async fn verify(args: VerifyCommand) -> ExitCode {
    let report = match request(&args).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("ledge: cannot verify: {error:#}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        println!("{}: {}", args.name, report.summary());
        for diverged in &report.diverged {
            println!("diverged  {}  {}", diverged.id, diverged.request.as_deref().unwrap_or("-"));
            if let Some(difference) = &diverged.difference {
                println!("          {difference}");
            }
        }
        for unverified in &report.unverified {
            println!("not verified  {}  {}", unverified.id, unverified.reason);
        }
    }
    if !report.diverged.is_empty() {
        return ExitCode::from(1);
    }
    if report.verified < args.require {
        eprintln!("ledge: {} traces verified, fewer than --require {}", report.verified, args.require);
        return ExitCode::from(2);
    }
    if report.verified == 0 && !report.unverified.is_empty() {
        eprintln!("ledge: could not verify: {}", report.summary());
        return ExitCode::from(2);
    }
    if report.verified == 0 {
        eprintln!("{}", report.summary());
    }
    ExitCode::SUCCESS
}

async fn request(args: &VerifyCommand) -> anyhow::Result<Report> {
    let bytes = read(&args.file).await?;
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("traces", &args.traces.to_string());
    if let Some(timeout) = &args.verify_timeout {
        query.append_pair("verify_timeout", timeout);
    }
    let path = format!("/v1/functions/{}/verify?{}", args.name, query.finish());
    let builder = client::request(&args.server, reqwest::Method::POST, &path)?;
    let response = client::send(builder.header("content-type", "application/wasm").body(bytes), &args.server).await?;
    Ok(response.json().await?)
}

async fn read(file: &Path) -> anyhow::Result<Vec<u8>> {
    tokio::fs::read(file).await.with_context(|| format!("cannot read {}", file.display()))
}
