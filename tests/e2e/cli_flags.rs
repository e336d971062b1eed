//! The command line as an operator meets it: completion scripts generated from the CLI
//! definition, and size and duration flags that take the units policies take (a bare number
//! keeping its old meaning).

use crate::harness::{Server, build_version, client, ledge};

#[test]
fn completions_are_generated_for_bash_zsh_and_fish_and_name_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let output = ledge().args(["completions", shell]).output().expect("ledge");
        assert!(output.status.success(), "{shell}: {}", String::from_utf8_lossy(&output.stderr));
        let script = String::from_utf8(output.stdout).expect("utf-8");
        for command in ["serve", "deploy", "queues", "completions"] {
            assert!(script.contains(command), "{shell} completion lacks `{command}`");
        }
    }
    let unknown = ledge().args(["completions", "tcsh"]).output().expect("ledge");
    assert_eq!(unknown.status.code(), Some(2), "an unknown shell is a usage error");
}

#[tokio::test]
async fn size_and_duration_flags_take_units_and_refuse_what_they_cannot_mean() {
    let server = Server::start_with(&[
        "--kv-max-bytes",
        "64MiB",
        "--max-upload",
        "1MiB",
        "--idle-timeout",
        "2m",
        "--header-timeout",
        "10s",
    ]);
    // The upload limit took its unit: a 2 MiB body is refused before it is read whole.
    let response =
        server.admin().put(format!("{}/v1/functions/big", server.url)).body(vec![0u8; 2 << 20]).send().await.unwrap();
    assert_eq!(response.status(), 413);
    // Liveness is open to anyone, so it says nothing about the build: no version, no commit.
    let health = client().get(format!("{}/healthz", server.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let (version, commit) = build_version();
    for (name, value) in health.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        assert!(!value.contains(&version) && !value.contains(&commit), "{name}: {value}");
    }
    assert_eq!(health.text().await.unwrap(), "ok\n");
    for (flag, value) in [("--idle-timeout", "1.5s"), ("--kv-max-bytes", "64 apples"), ("--header-timeout", "soon")] {
        let output = ledge().args(["serve", flag, value]).output().expect("ledge");
        assert_eq!(output.status.code(), Some(2), "{flag} {value}");
        assert!(String::from_utf8_lossy(&output.stderr).contains(value), "the error names `{value}`");
    }
}

#[test]
fn the_version_is_one_line_naming_the_commit_wasmtime_and_the_target() {
    let output = ledge().arg("--version").output().expect("ledge");
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let line = text.strip_suffix('\n').expect("one line");
    assert!(!line.contains('\n'), "{text}");
    let words: Vec<&str> = line.split(' ').collect();
    let [name, version, commit, wasmtime, wasmtime_version, triple] = words.as_slice() else {
        panic!("not `ledge X.Y.Z (COMMIT) wasmtime A.B.C TRIPLE`: {line}");
    };
    assert_eq!((*name, *wasmtime), ("ledge", "wasmtime"), "{line}");
    assert_eq!(*version, env!("CARGO_PKG_VERSION"));
    let commit = commit.strip_prefix('(').and_then(|c| c.strip_suffix(')')).expect("(COMMIT)");
    // The tests run from a checkout: the commit is known.
    assert!(commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
    assert!(wasmtime_version.starts_with("48."), "{line}");
    assert!(triple.contains("-linux-"), "{line}");
}
