//! The guest's compiled code for a replay: compiled from the trace's component (or the
//! `--against` build, pre-initialized the way a deploy would), and kept across replays so that
//! stepping through one trace compiles once.
//!
//! Invariants: the cache is best effort (a replay without it is only slower) and private to the
//! user (a folder of mode 0700); a cached file is named by the component's sha256, the ledge
//! version, the architecture and the debug flag, and is written under a temporary name and then
//! renamed, so a reader never sees half of one.

use std::path::{Path, PathBuf};

use crate::runtime::Runtime;

/// Compiles the component (from the cache of earlier replays when it can), pre-initializing
/// another build the way a deploy would.
pub(super) async fn prepare(
    runtime: &Runtime,
    component: &[u8],
    another_build: bool,
    debug: bool,
) -> anyhow::Result<crate::runtime::FunctionPre> {
    let mut compiled = compile_cached(runtime, component, debug)?;
    if another_build && crate::runtime::preinit::wants_preinit(&compiled)? {
        let snapshot = crate::runtime::preinit::snapshot(runtime, component).await?;
        compiled = compile_cached(runtime, &snapshot, debug)?;
    }
    Ok(runtime.prepare(&compiled)?)
}

/// Compiled code of earlier replays, so that stepping (`--until N`, then N-1, ...) does not
/// compile again: `$XDG_CACHE_HOME/ledge/replay` (or `~/.cache/ledge/replay`), mode 0700.
fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?;
    Some(base.join("ledge").join("replay"))
}

fn compile_cached(runtime: &Runtime, component: &[u8], debug: bool) -> anyhow::Result<wasmtime::component::Component> {
    let name = format!(
        "{}-{}-{}{}.cwasm",
        crate::registry::sha256_hex(component),
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        if debug { "-debug" } else { "" }
    );
    let cached = cache_dir().map(|dir| dir.join(name));
    if let Some(path) = cached.as_ref().filter(|path| path.exists()) {
        // SAFETY: the file is native code this user's own replays wrote into a folder only
        // they can write; wasmtime still refuses one built for another engine or version.
        if let Ok(component) = unsafe { wasmtime::component::Component::deserialize_file(runtime.engine(), path) } {
            return Ok(component);
        }
    }
    let compiled = runtime.compile(component)?;
    if let (Some(path), Ok(code)) = (cached, compiled.serialize()) {
        // Best effort: a replay without a cache is only slower.
        let dir = path.parent().expect("a cache file has a folder");
        let staged = path.with_extension(format!("{}.partial", std::process::id()));
        let _ = crate::storage::create_private_dir(dir)
            .and_then(|()| std::fs::write(&staged, code))
            .and_then(|()| std::fs::rename(&staged, &path));
    }
    Ok(compiled)
}
