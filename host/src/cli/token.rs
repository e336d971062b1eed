//! `ledge token mint|attenuate|inspect|revoke`: tokens made and read on this machine, from the
//! root key in a local data dir or from a token alone; only `revoke` talks to a server.
//!
//! Invariants: `mint` needs no server (it creates the data dir, private, if missing); `attenuate`
//! needs no key, only the token, and can only narrow it; `inspect` never prints a signature.

use std::path::PathBuf;

use clap::Subcommand;

use super::ServerArgs;
use super::client;
use crate::access::keyless;
use crate::access::tokens::Authority;

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Mint a token from the root key in a local data dir (no server needed).
    Mint {
        /// The data dir of the server the token is for.
        #[arg(long, default_value = "./ledge-data")]
        data_dir: PathBuf,
        /// A first-party caveat, e.g. "fn = hello" or "time < 2026-12-31T00:00:00Z"; repeatable.
        #[arg(long = "caveat")]
        caveats: Vec<String>,
    },
    /// Narrow a token with more caveats; needs no key, only the token. Adds a caveat
    /// `id = <32 hex>` after them: the new token is a branch of its own, which `ledge token revoke`
    /// revokes without touching the token it came from or its siblings.
    Attenuate {
        token: String,
        /// A first-party caveat to add; repeatable.
        #[arg(long = "caveat")]
        caveats: Vec<String>,
    },
    /// Print a token's id, key id, caveats and the id a revoke of it takes (never its signature).
    Inspect { token: String },
    /// Revoke a token (and every token attenuated from it) on a server, by token or id: a
    /// token's last `id` caveat, or its root id when it has none (then its whole family).
    Revoke {
        token_or_id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub(super) async fn token(command: TokenCommand) -> anyhow::Result<()> {
    let output = match command {
        TokenCommand::Mint { data_dir, caveats } => {
            crate::storage::create_private_dir(&data_dir)?;
            Authority::open(&data_dir)?.mint(&caveats).map_err(anyhow::Error::msg)?
        }
        TokenCommand::Attenuate { token, caveats } => {
            keyless::attenuate_branch(&token, &caveats).map_err(anyhow::Error::msg)?
        }
        TokenCommand::Inspect { token } => keyless::inspect(&token).map_err(anyhow::Error::msg)?,
        TokenCommand::Revoke { token_or_id, server } => {
            let id = keyless::revocation_id_of(&token_or_id).map_err(anyhow::Error::msg)?;
            client::revoke(&server, &id).await?;
            format!("revoked {id}")
        }
    };
    println!("{output}");
    Ok(())
}
