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
//! A build runs with the project's `.venv/bin` and `node_modules/.bin` (where they exist) ahead
//! on `PATH`, so a project-local componentize-py or componentize-js needs no activation. A build
//! that fails says what to run when a tool it needs is missing (not just `sh: componentize-py:
//! not found`), and gives the compiler's first error, which `ledge dev` answers with until a
//! build succeeds.
//!
//! Invariants: a manifest is checked whole when it is read (names, an empty build command, an
//! inline policy that does not parse), so `ledge dev` and `ledge deploy` fail before building;
//! [`BuildFailure::first_error`] is at most [`MAX_FIRST_ERROR`] bytes, whatever the build printed.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::SystemTime;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::access::policy::{PolicyFile, is_valid_name};
use crate::http::dev_builds::{MAX_FIRST_ERROR, bounded};

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
const NOT_SOURCES: &[&str] = &["target", ".ledge", "node_modules", ".venv", ".git", "__pycache__"];

/// Folders of a project whose tools a build finds on `PATH` ahead of the inherited ones.
const TOOL_DIRS: &[&str] = &[".venv/bin", "node_modules/.bin"];

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

    /// Runs `spec`'s build command in the project folder, with the project's tool folders
    /// first on `PATH`.
    pub fn build(&self, spec: &FunctionSpec) -> Result<(), BuildFailure> {
        // The shell by its path: the project's tool folders come first on PATH and must not
        // choose it.
        let output = Command::new("/bin/sh")
            .arg("-c")
            .arg(&spec.build)
            .current_dir(&self.dir)
            .env("PATH", self.tool_path())
            .output()
            .map_err(|e| BuildFailure::not_run(&spec.build, e))?;
        if output.status.success() {
            return Ok(());
        }
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        Err(BuildFailure::exited(&spec.build, output.status, text, &self.dir))
    }

    /// `PATH` with the project's `.venv/bin` and `node_modules/.bin` (those that exist) first.
    fn tool_path(&self) -> std::ffi::OsString {
        let inherited = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> =
            TOOL_DIRS.iter().map(|dir| self.dir.join(dir)).filter(|dir| dir.is_dir()).collect();
        // An empty entry would mean the current folder.
        dirs.extend(std::env::split_paths(&inherited).filter(|dir| !dir.as_os_str().is_empty()));
        std::env::join_paths(dirs).unwrap_or(inherited)
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

/// Lines kept from the first error on.
const CONTEXT_LINES: usize = 12;

/// The shell's exit status for a command it did not find.
const NOT_FOUND: i32 = 127;

/// The command that installs a Python project's build tool in a project-local virtual env
/// (Debian 12 and Raspberry Pi OS refuse a system-wide `pip install`, PEP 668).
pub const PYTHON_SETUP: &str = "python3 -m venv .venv && .venv/bin/pip install componentize-py";

/// A build command that failed.
#[derive(Debug)]
pub struct BuildFailure {
    /// What failed and how (`` `cmd` failed (exit status: 1) ``).
    pub summary: String,
    /// Its stdout then its stderr.
    pub output: String,
    /// What to run when a tool the build needs is missing.
    pub hint: Option<String>,
}

impl std::fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:\n{}", self.summary, self.output.trim_end())?;
        match &self.hint {
            Some(hint) => write!(f, "\n{hint}"),
            None => Ok(()),
        }
    }
}

impl BuildFailure {
    /// A build that ran and exited with `status`; `dir` is the project folder.
    pub fn exited(command: &str, status: ExitStatus, output: String, dir: &Path) -> BuildFailure {
        let hint = missing_tool(status, &output).map(|tool| hint_for(&tool, dir));
        BuildFailure { summary: format!("`{command}` failed ({status})"), output, hint }
    }

    /// A build that could not start.
    pub fn not_run(command: &str, error: std::io::Error) -> BuildFailure {
        BuildFailure { summary: format!("cannot run `{command}`"), output: error.to_string(), hint: None }
    }

    /// What to do (when a tool is missing), then the first error with a few lines of context.
    pub fn first_error(&self) -> String {
        let first = first_error(&self.output);
        let text = match &self.hint {
            Some(hint) => format!("{hint}\n{first}"),
            None if first.is_empty() => self.summary.clone(),
            None => first,
        };
        bounded(&text, MAX_FIRST_ERROR)
    }
}

/// The first error in a build's output with the lines after it: the first line that starts with
/// `error` (rustc, cargo, `Error:` of node), else the first that mentions one (a Python
/// traceback's `SyntaxError`), else the output's last lines.
pub fn first_error(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    let starts = |line: &&str| line.trim_start().to_ascii_lowercase().starts_with("error");
    let mentions = |line: &&str| line.to_ascii_lowercase().contains("error");
    let kept = match lines.iter().position(starts).or_else(|| lines.iter().position(mentions)) {
        Some(first) => &lines[first..lines.len().min(first + CONTEXT_LINES)],
        None => &lines[lines.len().saturating_sub(CONTEXT_LINES)..],
    };
    bounded(kept.join("\n").trim_end(), MAX_FIRST_ERROR)
}

/// The tool the shell (or npm's) did not find: `sh: 1: NAME: not found` (dash),
/// `sh: NAME: not found` (busybox), `bash: NAME: command not found`.
fn missing_tool(status: ExitStatus, output: &str) -> Option<String> {
    let line = output.lines().find_map(|line| {
        let line = line.trim_end();
        line.strip_suffix(": command not found").or_else(|| line.strip_suffix(": not found"))
    })?;
    if status.code() != Some(NOT_FOUND) && !line.starts_with("sh:") && !line.starts_with("bash:") {
        return None;
    }
    let tool = line.rsplit(": ").next()?.trim();
    (!tool.is_empty()).then(|| tool.to_string())
}

/// The command that installs `tool` for a project in `dir`.
fn hint_for(tool: &str, dir: &Path) -> String {
    let at = dir.display();
    match tool {
        "componentize-py" => format!(
            "componentize-py is not installed: run `{PYTHON_SETUP}` in {at} (Debian: `sudo apt install python3-venv` \
             first), or `pipx install componentize-py`; ledge finds .venv/bin by itself"
        ),
        "npm" | "node" | "npx" => {
            format!("{tool} is not installed: install Node.js and npm (Debian: `sudo apt install nodejs npm`)")
        }
        "python3" | "python" => {
            format!("{tool} is not installed: install Python 3 (Debian: `sudo apt install python3 python3-venv`)")
        }
        "cargo" | "rustc" => format!(
            "{tool} is not installed: install Rust from https://rustup.rs, then `rustup target add wasm32-wasip2`"
        ),
        _ if dir.join("package.json").exists() && !dir.join("node_modules").exists() => {
            format!("{tool} is not installed: run `npm install` in {at} (once)")
        }
        _ if dir.join("package.json").exists() => {
            format!("{tool} is not installed in {at}/node_modules: run `npm install` in {at}")
        }
        _ => format!("{tool} is not installed (nor found in {at}/.venv/bin or {at}/node_modules/.bin)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn the_first_error_is_the_compilers_first_with_a_few_lines_of_context() {
        let cargo = "   Compiling hello v0.1.0\nwarning: unused import\nerror: expected one of `:`, found `(`\n \
                     --> src/lib.rs:4:11\n  |\n4 | fn handle((req: Request) -> Response {\n\nerror: could not \
                     compile `hello` (lib) due to 1 previous error\n";
        let first = first_error(cargo);
        assert!(first.starts_with("error: expected one of") && first.contains("src/lib.rs:4:11"), "{first}");
        let python = "Traceback (most recent call last):\n  File \"app.py\", line 3\n    def (\nSyntaxError: invalid \
                      syntax\n";
        assert!(first_error(python).starts_with("SyntaxError: invalid syntax"));
        let long = format!("error: {}\n", "x".repeat(10_000)).repeat(20);
        assert!(first_error(&long).len() <= MAX_FIRST_ERROR);
        let quiet = (0..50).map(|i| format!("line {i}\n")).collect::<String>();
        assert!(first_error(&quiet).ends_with("line 49") && !first_error(&quiet).contains("line 37\n"));
    }

    #[test]
    fn a_missing_tool_names_the_command_that_installs_it() {
        let dir = tempfile::tempdir().unwrap();
        let exit = |code: i32| ExitStatus::from_raw(code << 8);
        let failure = BuildFailure::exited(
            "componentize-py x",
            exit(127),
            "sh: 1: componentize-py: not found\n".into(),
            dir.path(),
        );
        assert!(failure.hint.as_deref().unwrap().contains(PYTHON_SETUP), "{failure}");
        assert!(failure.first_error().starts_with("componentize-py is not installed: run `python3 -m venv"));
        assert!(failure.to_string().ends_with("ledge finds .venv/bin by itself"), "{failure}");

        std::fs::write(dir.path().join("package.json"), "{}").unwrap();
        let npm =
            BuildFailure::exited("npm run build", exit(127), "sh: 1: componentize-js: not found\n".into(), dir.path());
        assert!(npm.hint.as_deref().unwrap().contains("run `npm install` in"), "{npm}");
        let no_npm =
            BuildFailure::exited("npm run build", exit(127), "bash: npm: command not found\n".into(), dir.path());
        assert!(no_npm.hint.as_deref().unwrap().contains("sudo apt install nodejs npm"), "{no_npm}");

        let compiler = BuildFailure::exited("cargo build", exit(101), "error: file not found\n".into(), dir.path());
        assert!(compiler.hint.is_none());
        assert_eq!(compiler.first_error(), "error: file not found");
    }
}
