//! Function projects: a folder with a `ledge.toml` naming its functions, how to build each, the
//! component the build produces, what to watch, and each function's policy inline.
//!
//! ```toml
//! [[function]]
//! name = "hello"
//! build = "cargo build --release"
//! component = "target/wasm32-wasip2/release/hello.wasm"
//! watch = ["src", "Cargo.toml"]     # optional: default, the whole folder but build outputs
//! [function.policy]                 # optional: a policy file's fields
//! public = true
//! ```
//!
//! Invariant: a manifest is checked whole when it is read (names, an empty build command, an
//! inline policy that does not parse), so `ledge dev` and `ledge deploy` fail before building.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::access::policy::{PolicyFile, is_valid_name};

/// The file that makes a folder a project.
pub const MANIFEST: &str = "ledge.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    function: Vec<FunctionSpec>,
}

/// One function of a project, as `ledge.toml` describes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    pub name: String,
    /// A shell command run in the project folder.
    pub build: String,
    /// The component the build writes, relative to the project folder.
    pub component: PathBuf,
    /// Files and folders whose changes trigger a rebuild, relative to the project folder.
    #[serde(default)]
    pub watch: Vec<PathBuf>,
    #[serde(default)]
    policy: Option<toml::Table>,
}

/// A project folder and its functions.
#[derive(Debug, Clone)]
pub struct Project {
    pub dir: PathBuf,
    pub functions: Vec<FunctionSpec>,
}

/// Folders that hold outputs and state, never sources.
const NOT_SOURCES: &[&str] = &["target", ".ledge", "node_modules", ".git", "__pycache__"];

impl Project {
    /// Reads and checks `DIR/ledge.toml`.
    pub fn load(dir: &Path) -> anyhow::Result<Project> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{} is not a ledge project (no readable {MANIFEST})", dir.display()))?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if manifest.function.is_empty() {
            bail!("{}: no [[function]]", path.display());
        }
        for spec in &manifest.function {
            if !is_valid_name(&spec.name) {
                bail!("{}: invalid function name `{}` (a-z, 0-9 and '-', 1 to 63)", path.display(), spec.name);
            }
            if spec.build.trim().is_empty() {
                bail!("{}: function `{}` has an empty build command", path.display(), spec.name);
            }
            if let Some(text) = spec.policy_text() {
                PolicyFile::parse(&text)
                    .map_err(|e| anyhow::anyhow!("{}: the policy of `{}`: {e}", path.display(), spec.name))?;
            }
        }
        let dir = dir.canonicalize().with_context(|| format!("cannot resolve {}", dir.display()))?;
        Ok(Project { dir, functions: manifest.function })
    }

    /// Runs `spec`'s build command in the project folder; on failure, its output.
    pub fn build(&self, spec: &FunctionSpec) -> Result<(), String> {
        let output = Command::new("sh")
            .arg("-c")
            .arg(&spec.build)
            .current_dir(&self.dir)
            .output()
            .map_err(|e| format!("cannot run `{}`: {e}", spec.build))?;
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "`{}` failed ({}):\n{}{}",
            spec.build,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }

    pub fn component(&self, spec: &FunctionSpec) -> PathBuf {
        self.dir.join(&spec.component)
    }

    /// Every watched file with its modification time and size, in a stable order: what the
    /// dev loop compares to see a change.
    pub fn sources(&self, spec: &FunctionSpec) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
        let roots: Vec<PathBuf> = if spec.watch.is_empty() {
            vec![self.dir.clone()]
        } else {
            spec.watch.iter().map(|p| self.dir.join(p)).collect()
        };
        let component = self.component(spec);
        let mut files = Vec::new();
        for root in roots {
            collect_files(&root, &mut files);
        }
        files.retain(|(path, _, _)| *path != component);
        files.sort();
        files
    }

    /// Whether the component is missing or older than a source.
    pub fn is_stale(&self, spec: &FunctionSpec) -> bool {
        let Some(built) = std::fs::metadata(self.component(spec)).and_then(|m| m.modified()).ok() else {
            return true;
        };
        self.sources(spec).iter().any(|(_, modified, _)| modified.is_some_and(|m| m > built))
    }
}

impl FunctionSpec {
    /// The inline policy as policy-file text.
    pub fn policy_text(&self) -> Option<String> {
        self.policy.as_ref().map(|table| toml::to_string(table).unwrap_or_default())
    }
}

fn collect_files(path: &Path, files: &mut Vec<(PathBuf, Option<SystemTime>, u64)>) {
    let Ok(metadata) = std::fs::metadata(path) else { return };
    if metadata.is_file() {
        files.push((path.to_path_buf(), metadata.modified().ok(), metadata.len()));
        return;
    }
    let Ok(entries) = std::fs::read_dir(path) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if NOT_SOURCES.iter().any(|skip| name == *skip) {
            continue;
        }
        collect_files(&entry.path(), files);
    }
}
