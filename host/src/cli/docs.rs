//! What the packages ship besides the binary, generated from the CLI definition itself so that
//! they never drift from it: shell completions (`ledge completions SHELL`) and man pages (the
//! hidden `ledge man-pages DIR`, which `scripts/package.sh` runs): `ledge.1` and one page per
//! subcommand, nested ones included (`ledge-token-mint.1`).

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use super::Cli;

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut Cli::command(), "ledge", &mut std::io::stdout());
}

/// Writes the man pages into `dir` (created if missing) and prints each file's name.
pub fn man_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir).with_context(|| format!("cannot write into {}", dir.display()))?;
    let mut pages: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".1"))
        .collect();
    pages.sort();
    for page in pages {
        println!("{page}");
    }
    Ok(())
}
