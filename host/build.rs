//! What `ledge --version` names besides the crate's version: the commit it was built from, the
//! wasmtime it embeds and the target triple (`ledge X.Y.Z (COMMIT) wasmtime A.B.C TRIPLE`).
//!
//! The commit comes from git when the source is a checkout (else `unknown`: a source archive);
//! wasmtime's version from the workspace's Cargo.lock, which pins it. Only files that exist are
//! watched: a missing one would make cargo rerun this script, and rebuild ledge, every time.

use std::path::Path;
use std::process::Command;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(&root)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .filter(|commit| !commit.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let wasmtime = lock
        .split("[[package]]")
        .find(|package| package.lines().any(|line| line.trim() == "name = \"wasmtime\""))
        .and_then(|package| package.lines().find_map(|line| line.trim().strip_prefix("version = ")))
        .map(|version| version.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=LEDGE_COMMIT={commit}");
    println!("cargo:rustc-env=LEDGE_WASMTIME={wasmtime}");
    println!("cargo:rustc-env=LEDGE_TARGET={}", std::env::var("TARGET").unwrap_or_default());
    println!("cargo:rerun-if-changed=build.rs");
    for watched in [".git/HEAD", ".git/packed-refs", "Cargo.lock"] {
        if root.join(watched).exists() {
            println!("cargo:rerun-if-changed=../{watched}");
        }
    }
    // The branch HEAD names moves with every commit.
    let head = std::fs::read_to_string(root.join(".git/HEAD")).unwrap_or_default();
    if let Some(branch) = head.trim().strip_prefix("ref: ")
        && root.join(".git").join(branch).exists()
    {
        println!("cargo:rerun-if-changed=../.git/{branch}");
    }
}
