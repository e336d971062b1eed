//! `ledge new NAME --lang rust|python|js`: a working function project, offline apart from the
//! language's own package registry.
//!
//! The templates live in `host/templates/` and are compiled into the binary, with the SDK and
//! its WIT (the SDK is not on crates.io: a Rust project gets its source in `sdk/`). Python and
//! JavaScript projects get the WIT in `wit/`; for JavaScript at `wasi:*@0.2.10`, the version
//! componentize-js's runtime (StarlingMonkey) is built against. Every template greets from its
//! sources and counts visits in one transaction.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::ValueEnum;

use super::project::PYTHON_SETUP;
use crate::access::policy::is_valid_name;

/// The languages `ledge new` writes projects in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// `(path in the project, contents)` with `{{name}}` and `{{crate}}` still to fill in.
type Files = &'static [(&'static str, &'static str)];

macro_rules! embed {
    ($($path:literal => $source:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $source)))),*]
    };
}

const RUST: Files = embed! {
    "Cargo.toml" => "templates/rust/Cargo.toml",
    ".cargo/config.toml" => "templates/rust/.cargo/config.toml",
    "src/lib.rs" => "templates/rust/src/lib.rs",
    "ledge.toml" => "templates/rust/ledge.toml",
    ".gitignore" => "templates/rust/.gitignore",
    "README.md" => "templates/rust/README.md",
};

const PYTHON: Files = embed! {
    "app.py" => "templates/python/app.py",
    "ledge.toml" => "templates/python/ledge.toml",
    ".gitignore" => "templates/python/.gitignore",
    "README.md" => "templates/python/README.md",
};

const JS: Files = embed! {
    "app.js" => "templates/js/app.js",
    "package.json" => "templates/js/package.json",
    "ledge.toml" => "templates/js/ledge.toml",
    ".gitignore" => "templates/js/.gitignore",
    "README.md" => "templates/js/README.md",
};

/// The SDK's source, for Rust projects (under `sdk/`).
const SDK: Files = embed! {
    "Cargo.toml" => "../guest-sdk/Cargo.toml",
    "src/lib.rs" => "../guest-sdk/src/lib.rs",
    "src/http.rs" => "../guest-sdk/src/http.rs",
    "src/kv.rs" => "../guest-sdk/src/kv.rs",
    "src/queue.rs" => "../guest-sdk/src/queue.rs",
    "src/ws.rs" => "../guest-sdk/src/ws.rs",
};

/// ledge's WIT: the SDK's `wit/` folder.
const WIT: Files = embed! {
    "worlds.wit" => "../guest-sdk/wit/worlds.wit",
    "transactions.wit" => "../guest-sdk/wit/transactions.wit",
    "caller.wit" => "../guest-sdk/wit/caller.wit",
    "queues.wit" => "../guest-sdk/wit/queues.wit",
    "websocket.wit" => "../guest-sdk/wit/websocket.wit",
    "deps/README.md" => "../guest-sdk/wit/deps/README.md",
    "deps/cli/cli.wit" => "../guest-sdk/wit/deps/cli/cli.wit",
    "deps/clocks/clocks.wit" => "../guest-sdk/wit/deps/clocks/clocks.wit",
    "deps/filesystem/filesystem.wit" => "../guest-sdk/wit/deps/filesystem/filesystem.wit",
    "deps/http/http.wit" => "../guest-sdk/wit/deps/http/http.wit",
    "deps/io/io.wit" => "../guest-sdk/wit/deps/io/io.wit",
    "deps/random/random.wit" => "../guest-sdk/wit/deps/random/random.wit",
    "deps/sockets/sockets.wit" => "../guest-sdk/wit/deps/sockets/sockets.wit",
    "deps/keyvalue/world.wit" => "../guest-sdk/wit/deps/keyvalue/world.wit",
    "deps/keyvalue/store.wit" => "../guest-sdk/wit/deps/keyvalue/store.wit",
    "deps/keyvalue/atomic.wit" => "../guest-sdk/wit/deps/keyvalue/atomic.wit",
    "deps/keyvalue/batch.wit" => "../guest-sdk/wit/deps/keyvalue/batch.wit",
    "deps/keyvalue/watch.wit" => "../guest-sdk/wit/deps/keyvalue/watch.wit",
    "deps/config/store.wit" => "../guest-sdk/wit/deps/config/store.wit",
    "deps/config/world.wit" => "../guest-sdk/wit/deps/config/world.wit",
};

/// The WASI version the SDK's WIT is at, and the one componentize-js 0.23 needs.
const SDK_WASI: &str = "0.2.12";
const STARLINGMONKEY_WASI: &str = "0.2.10";

/// Writes project `name` into `dir/name` (which must not exist or be empty); returns its path.
pub fn create(name: &str, lang: Lang, dir: &Path) -> anyhow::Result<PathBuf> {
    if !is_valid_name(name) {
        bail!(
            "invalid function name `{name}`: use 1 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit"
        );
    }
    let root = dir.join(name);
    if root.read_dir().is_ok_and(|mut entries| entries.next().is_some()) {
        bail!("{} exists and is not empty; choose another name or --dir", root.display());
    }
    let fill = |text: &str| text.replace("{{name}}", name).replace("{{crate}}", &name.replace('-', "_"));
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    let template = match lang {
        Lang::Rust => RUST,
        Lang::Python => PYTHON,
        Lang::Js => JS,
    };
    files.extend(template.iter().map(|(path, text)| (PathBuf::from(path), fill(text))));
    let (wit_root, wasi) = match lang {
        Lang::Rust => {
            files.extend(SDK.iter().map(|(path, text)| (Path::new("sdk").join(path), text.to_string())));
            ("sdk/wit", SDK_WASI)
        }
        Lang::Python => ("wit", SDK_WASI),
        Lang::Js => ("wit", STARLINGMONKEY_WASI),
    };
    files.extend(WIT.iter().map(|(path, text)| (Path::new(wit_root).join(path), at_wasi(text, wasi))));
    for (path, text) in files {
        let path = root.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(root)
}

/// The WIT text with its WASI packages at version `wasi` (annotations included).
fn at_wasi(text: &str, wasi: &str) -> String {
    if wasi == SDK_WASI {
        return text.to_string();
    }
    text.replace(&format!("@{SDK_WASI}"), &format!("@{wasi}"))
        .replace(&format!("@since(version = {SDK_WASI})"), &format!("@since(version = {wasi})"))
}

/// What to tell the user after `ledge new`.
pub fn next_steps(root: &Path, lang: Lang) -> String {
    let prepare = match lang {
        Lang::Rust => "rustup target add wasm32-wasip2   # once".to_string(),
        // A project-local env: Debian 12 and Raspberry Pi OS refuse a system-wide pip (PEP 668).
        Lang::Python => format!("{PYTHON_SETUP}   # once (Debian: apt install python3-venv)"),
        Lang::Js => "npm install   # once: componentize-js (Debian: apt install nodejs npm)".to_string(),
    };
    format!("created {}\n  cd {}\n  {prepare}\n  ledge dev", root.display(), root.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn javascript_projects_get_the_wit_at_the_version_componentize_js_needs() {
        let dir = tempfile::tempdir().unwrap();
        let root = create("js-app", Lang::Js, dir.path()).unwrap();
        let http = std::fs::read_to_string(root.join("wit/deps/http/http.wit")).unwrap();
        assert!(http.starts_with("package wasi:http@0.2.10;"), "{}", &http[..40]);
        let everything: String = WIT
            .iter()
            .filter(|(path, _)| path.ends_with(".wit"))
            .map(|(path, _)| std::fs::read_to_string(root.join("wit").join(path)).unwrap())
            .collect();
        assert!(!everything.contains("0.2.12"));
        let app = std::fs::read_to_string(root.join("app.js")).unwrap();
        assert!(app.contains("Hello from js-app") && !app.contains("{{"));
        assert!(create("js-app", Lang::Js, dir.path()).is_err(), "an existing project is not overwritten");
        assert!(create("Bad_Name", Lang::Rust, dir.path()).is_err());
    }

    #[test]
    fn rust_projects_carry_the_sdk_and_name_their_crate() {
        let dir = tempfile::tempdir().unwrap();
        let root = create("my-fn", Lang::Rust, dir.path()).unwrap();
        let manifest = std::fs::read_to_string(root.join("ledge.toml")).unwrap();
        assert!(manifest.contains("name = \"my-fn\"") && manifest.contains("release/my_fn.wasm"), "{manifest}");
        assert!(root.join("sdk/src/kv.rs").exists() && root.join("sdk/wit/deps/http/http.wit").exists());
        let project = super::super::project::Project::load(&root).unwrap();
        assert_eq!(project.functions[0].name, "my-fn");
        assert_eq!(project.functions[0].policy_text().unwrap().trim(), "public = true");
    }

    #[test]
    fn projects_carry_every_file_of_the_sdk_and_its_wit() {
        // A file added to the SDK but not embedded breaks every new project's first build.
        fn files(root: &Path, dir: &Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    files(root, &path, found);
                } else {
                    found.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
        let mut on_disk = Vec::new();
        for part in ["src", "wit"] {
            files(&sdk, &sdk.join(part), &mut on_disk);
        }
        on_disk.push("Cargo.toml".into());
        let mut embedded: Vec<String> = SDK.iter().map(|(path, _)| path.to_string()).collect();
        embedded.extend(WIT.iter().map(|(path, _)| format!("wit/{path}")));
        on_disk.sort();
        embedded.sort();
        assert_eq!(embedded, on_disk);
    }
}
