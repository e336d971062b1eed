//! `ledge promote NAME [--max-error-ratio F] [--force]`: the canary becomes the live version,
//! unless the server finds it fails too often; a refusal exits 1 with the server's detail.

use clap::Args;

use super::ServerArgs;
use super::client::{print_versions, request, send};
use crate::registry::versions::Promoted;

/// How `ledge promote` judges the canary's record.
#[derive(Debug, Args)]
pub struct GateArgs {
    /// Refuse while the canary's failure rate (5xx, traps, timeouts since it started) is more
    /// than F times the live version's, once it served 100 requests.
    #[arg(long, value_name = "F", default_value_t = crate::registry::canary::DEFAULT_MAX_ERROR_RATIO)]
    max_error_ratio: f64,
    /// Promote whatever the canary's record.
    #[arg(long)]
    force: bool,
}

pub async fn promote(server: &ServerArgs, name: &str, gate: &GateArgs) -> anyhow::Result<()> {
    let mut path = format!("/v1/functions/{name}/promote?max_error_ratio={}", gate.max_error_ratio);
    if gate.force {
        path.push_str("&force=true");
    }
    let promoted: Promoted = send(request(server, reqwest::Method::POST, &path)?, server).await?.json().await?;
    print_versions(&promoted.versions);
    eprintln!("{name}: {}", promoted.judged.note);
    Ok(())
}
