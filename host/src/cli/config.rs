//! `ledge config set|list|rm`: a function's configuration and secrets, over HTTP.

use std::path::PathBuf;

use clap::Subcommand;

use super::{ServerArgs, client};

#[derive(Debug, Subcommand)]
pub(super) enum ConfigCommand {
    /// Set KEY of FUNCTION to VALUE (or to the contents of --from-file).
    Set {
        function: String,
        /// Letters, digits and '_', not starting with a digit.
        key: String,
        #[arg(required_unless_present = "from_file", conflicts_with = "from_file")]
        value: Option<String>,
        /// Read the value from this file (UTF-8, at most 64 KiB).
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// Store it sealed; listings show only its name.
        #[arg(long)]
        secret: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List FUNCTION's configuration (secrets by name only).
    List {
        function: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove KEY from FUNCTION's configuration.
    Rm {
        function: String,
        key: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Runs `command`.
pub(super) async fn config(command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Set { function, key, value, from_file, secret, server } => {
            let value = match (value, from_file) {
                (Some(value), _) => value,
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
                (None, None) => unreachable!("clap requires one of them"),
            };
            client::set_config(&server, &function, &key, value, secret).await
        }
        ConfigCommand::List { function, server } => client::list_config(&server, &function).await,
        ConfigCommand::Rm { function, key, server } => client::remove_config(&server, &function, &key).await,
    }
}
