//! `ledge compile`: a component compiled ahead of time for another node's architecture and
//! profile, which that node deploys without compiling (`--trust-precompiled`).

use std::path::PathBuf;
use std::sync::Arc;

use clap::ValueEnum;

use crate::runtime::{Profile, Runtime, RuntimeOptions};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Arch {
    Aarch64,
    #[value(name = "x86_64")]
    X86_64,
}

impl Arch {
    fn triple(self) -> &'static str {
        match self {
            Arch::Aarch64 => "aarch64-unknown-linux-gnu",
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
        }
    }
}

pub async fn compile(
    file: &std::path::Path,
    target: Arch,
    profile: Profile,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let options = RuntimeOptions { pooling: false, ..RuntimeOptions::for_profile(profile) };
    // The host runtime validates and runs `init`; the artifact is compiled for the target.
    let host = Runtime::new(&options, Arc::default(), None)?;
    let artifact = host.compile_for(&bytes, target.triple(), &options).await?;
    let output = output.unwrap_or_else(|| file.with_extension("cwasm"));
    crate::storage::write_durably(&output, &artifact)?;
    println!(
        "compiled {} for {} ({:?} profile): {} ({} bytes)",
        file.display(),
        target.triple(),
        profile,
        output.display(),
        artifact.len()
    );
    Ok(())
}
