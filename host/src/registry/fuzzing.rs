//! Entry points for the fuzz targets in `fuzz/` and the tests that replay their corpora. Not an
//! API: each takes arbitrary bytes, hands them to the real parser the way the server does, and
//! must return without panicking, whatever they hold. The fuzz crate only calls these; no
//! parsing logic lives there. They reach down to the access layer (tokens, policies) and the
//! runtime (validation), so they live in the registry, the lowest layer above both; compiled
//! only for tests and with the `fuzzing` feature.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};

use crate::access::caveats::{Op, Request, parse_caveat, parse_rate};
use crate::access::keyless::{attenuate, inspect, revocation_id_of};
use crate::access::policy::{Ceilings, Policy, PolicyFile, path_under};
use crate::access::tokens::{AuthError, Authority, is_ledge_token};
use crate::registry::FunctionMeta;
use crate::runtime::validate::is_provided;
use crate::runtime::{Runtime, RuntimeOptions, preinit};

/// The root key every fuzzed token is checked against (a fixed secret, so saved inputs keep
/// their meaning across runs).
const ROOT_KEY_ID: &str = "00000000000000f0";
const ROOT_KEY_HEX: &str = "6c656467652d66757a7a2d726f6f742d6b65792c206e6f74206120736563726574";

/// An authority on the fixed root key, in a directory of its own, and a token it minted with
/// no caveats.
pub struct TokenFixture {
    _dir: tempfile::TempDir,
    pub authority: Authority,
    pub token: String,
}

/// The process's [`TokenFixture`], made on first use.
pub fn token_fixture() -> &'static TokenFixture {
    static FIXTURE: OnceLock<TokenFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).expect("the keys directory");
        std::fs::write(keys.join(format!("root-{ROOT_KEY_ID}.key")), format!("{ROOT_KEY_HEX}\n"))
            .expect("the root key");
        let authority = Authority::open(dir.path()).expect("an authority on the fixed key");
        let token = authority.mint(&[]).expect("a token");
        TokenFixture { _dir: dir, authority, token }
    })
}

/// The facts fuzzed tokens are checked against: an invocation and an admin request, at a fixed
/// time (2026-01-01T00:00:00Z).
fn requests() -> [Request<'static>; 2] {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    [
        Request { op: Op::Invoke, function: Some("hello"), queue: None, method: "GET", path: "/api/x", now },
        Request { op: Op::Deploy, function: None, queue: None, method: "PUT", path: "/v1/functions", now },
    ]
}

/// Token input: the first byte picks what the rest is (`byte % 3`):
/// - 0: a whole `Authorization` header value, verified as the HTTP edge verifies it
///   ([`Authority::verify`], and [`is_ledge_token`] as the invoke handler asks first);
/// - 1: the credentials after `Bearer ` (a token, or a token and its discharges separated by
///   commas), verified likewise, and read by `ledge token inspect` and `ledge token revoke`;
/// - 2: a caveat: parsed and checked directly, then added to a valid token (attenuation) that
///   is verified: the token must pass the caveat check exactly when the caveat allows the
///   request.
pub fn token(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let fixture = token_fixture();
    match mode % 3 {
        0 => verify_header(&fixture.authority, &text),
        1 => {
            verify_header(&fixture.authority, &format!("Bearer {text}"));
            let _ = inspect(&text);
            let _ = revocation_id_of(&text);
        }
        _ => {
            let _ = parse_rate(&text);
            let parsed = parse_caveat(&text);
            let attenuated = attenuate(&fixture.token, &[text.to_string()]);
            let (Ok(caveat), Ok(attenuated)) = (parsed, attenuated) else { return };
            for request in requests() {
                let allowed = caveat.check(&request).is_ok();
                // Other failures (an oversized token) refuse for reasons of their own.
                match fixture.authority.verify(Some(&format!("Bearer {attenuated}")), &request) {
                    Ok(_) => assert!(allowed, "caveat {text:?} refuses the request, yet the token verifies"),
                    Err(AuthError::Refused { reason, .. }) => {
                        assert!(!allowed, "caveat {text:?} allows the request, yet verifying refuses: {reason}")
                    }
                    Err(_) => {}
                }
            }
        }
    }
}

fn verify_header(authority: &Authority, header: &str) {
    let ours = is_ledge_token(header);
    for request in requests() {
        if authority.verify(Some(header), &request).is_ok() {
            assert!(ours, "a token that verifies is recognised as a ledge token");
        }
    }
}

/// A policy file, as an upload is checked (`Registry::check_upload` without the route table of
/// other functions) and a `policies/` file is read: UTF-8, parsed, resolved over the default
/// policy, held to the default ceilings; then compared both ways (what a confined token may
/// change), and its schedules parsed and matched as the scheduler does.
pub fn policy_toml(data: &[u8]) {
    // The upload handler refuses a body that is not UTF-8 before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let ceilings = Ceilings::default();
    let base = Policy::default().within(&ceilings);
    let Ok(file) = PolicyFile::parse(text) else { return };
    let policy = file.resolve(&base);
    let _ = policy.check_ceilings(&ceilings);
    let _ = base.widened_by(&policy);
    let _ = policy.widened_by(&base);
    // A function's own file over a `default.toml` that is this one.
    let _ = file.resolve(&policy).check_ceilings(&ceilings);
    for (pattern, path) in &policy.schedules {
        let cron: Option<croner::Cron> = pattern.parse().ok();
        for second in [0, 1_767_225_600, 1_772_323_199, 4_102_444_800] {
            if let (Some(cron), Some(at)) = (&cron, DateTime::<Utc>::from_timestamp(second, 0)) {
                let _ = cron.is_time_matching(&at);
            }
        }
        let _ = path_under(path, "/");
    }
    for route in &policy.routes {
        let _ = path_under("/api/x", &route.path);
    }
}

/// The runtime deploys are validated with (on-demand allocation, standard profile).
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let options = RuntimeOptions { pooling: false, ..Default::default() };
        Runtime::new(&options, Arc::default(), None).expect("a runtime")
    })
}

/// Uploads at most this large run the whole check with compilation; Cranelift takes about half a
/// second per example component under the fuzzer's instrumentation, too slow to explore with.
pub const COMPILE_AT_MOST: usize = 16 << 10;

/// An uploaded component, through what a deploy checks before it stores anything (up to, not
/// including, pre-initialization and the trial instantiation). An upload of at most
/// [`COMPILE_AT_MOST`] bytes, or one that is not a component, takes the real path: the header,
/// wasmtime's validation and compilation ([`Runtime::compile`]), the static limits, the imports
/// and the HTTP export ([`Runtime::prepare`]) and the `init` export's type. A larger component
/// is validated as wasmtime validates it before compiling (wasmparser, wasmtime's own version),
/// and its imports are held to the interfaces ledge provides, without compiling.
pub fn deploy_validate(data: &[u8]) {
    let runtime = runtime();
    if data.len() <= COMPILE_AT_MOST || !data.starts_with(COMPONENT_HEADER) {
        let Ok(component) = runtime.compile(data) else { return };
        let _ = runtime.check_static_limits(&component);
        let _ = runtime.prepare(&component);
        let _ = preinit::wants_preinit(&component);
        return;
    }
    let mut validator = wasmparser::Validator::new();
    if validator.validate_all(data).is_err() {
        return;
    }
    // The component's own imports: those outside any nested module or component.
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(data) {
        match payload {
            Ok(wasmparser::Payload::ModuleSection { .. } | wasmparser::Payload::ComponentSection { .. }) => depth += 1,
            Ok(wasmparser::Payload::End(_)) => depth = depth.saturating_sub(1),
            Ok(wasmparser::Payload::ComponentImportSection(imports)) if depth == 0 => {
                for import in imports.into_iter().flatten() {
                    let _ = is_provided(import.name.name);
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// The preamble of a WebAssembly component (binary format, layer 1).
const COMPONENT_HEADER: &[u8] = b"\0asm\x0d\0\x01\0";

/// A function's `meta.json` (or a version's `version.json`), parsed as the registry parses it at
/// start; what parses must also be written back (the server rewrites it after recompiling) and
/// read again unchanged.
pub fn meta_json(data: &[u8]) {
    let Ok(meta) = serde_json::from_slice::<FunctionMeta>(data) else { return };
    let written = serde_json::to_vec_pretty(&meta).expect("a parsed meta.json serializes");
    let again: FunctionMeta = serde_json::from_slice(&written).expect("a written meta.json parses");
    assert_eq!(again, meta, "meta.json survives being written back");
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::*;
    use crate::registry::CanarySplit;

    /// The saved corpus of fuzz target `target` (`fuzz/corpus/<target>/`).
    fn corpus_dir(target: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
    }

    /// Runs every file of `target`'s corpus through `run`; fails on an empty or missing corpus.
    fn replay(target: &str, run: fn(&[u8])) {
        ledge_kv::fuzzing::replay_corpus(&corpus_dir(target), run);
    }

    #[test]
    fn token_corpus_replays_without_panicking() {
        replay("token", token);
    }

    #[test]
    fn policy_toml_corpus_replays_without_panicking() {
        replay("policy_toml", policy_toml);
    }

    #[test]
    fn deploy_validate_corpus_replays_without_panicking() {
        replay("deploy_validate", deploy_validate);
    }

    #[test]
    fn meta_json_corpus_replays_without_panicking() {
        replay("meta_json", meta_json);
    }

    #[test]
    fn a_minted_token_verifies_and_an_attenuated_one_is_held_to_its_caveat() {
        let fixture = token_fixture();
        let [invoke, deploy] = requests();
        let header = format!("Bearer {}", fixture.token);
        assert!(fixture.authority.verify(Some(&header), &invoke).is_ok());
        let narrowed = attenuate(&fixture.token, &["op = deploy".to_string()]).unwrap();
        let header = format!("Bearer {narrowed}");
        assert!(fixture.authority.verify(Some(&header), &invoke).unwrap_err().is_forbidden());
        assert!(fixture.authority.verify(Some(&header), &deploy).is_ok());
    }

    /// Writes the seed corpora of the host targets (`cargo test -p ledge --lib
    /// write_seed_corpora -- --ignored`); fuzzing grows them, `cargo fuzz cmin` trims them.
    #[test]
    #[ignore = "writes fuzz/corpus seeds; run by hand"]
    fn write_seed_corpora() {
        let write = |target: &str, name: &str, bytes: &[u8]| {
            let dir = corpus_dir(target);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        };

        // Tokens: minted and attenuated on the fixed key, with discharges, from another key.
        let fixture = token_fixture();
        let caveats = [
            "op = invoke",
            "op in deploy, invoke, manage",
            "fn = hello",
            "fn in echo,hello",
            "method in get,HEAD",
            "path-prefix = /api/",
            "kv-prefix = acct/",
            "kv = read",
            "rate = 10/s",
            "rate = 100/h",
            "time < 2999-01-01T00:00:00Z",
            "time < 2000-01-01T00:00:00Z",
        ];
        let all: Vec<String> = caveats.iter().map(|c| c.to_string()).collect();
        let minted = fixture.authority.mint(&all[..3]).unwrap();
        let attenuated = attenuate(&minted, &all[3..]).unwrap();
        let other = {
            let dir = tempfile::tempdir().unwrap();
            Authority::open(dir.path()).unwrap().mint(&["fn = hello".into()]).unwrap()
        };
        write("token", "plain", &[&[1][..], fixture.token.as_bytes()].concat());
        write("token", "minted", &[&[1][..], minted.as_bytes()].concat());
        write("token", "attenuated", &[&[1][..], attenuated.as_bytes()].concat());
        write("token", "discharges", format!("\x01{minted}, {}", fixture.token).as_bytes());
        write("token", "other-key", &[&[1][..], other.as_bytes()].concat());
        write("token", "header", format!("\x00Bearer {attenuated}").as_bytes());
        write("token", "basic", b"\x00Basic dXNlcjpwYXNz");
        for (i, caveat) in caveats.iter().enumerate() {
            write("token", &format!("caveat-{i}"), &[&[2][..], caveat.as_bytes()].concat());
        }

        // Policies: the repository's files and one with every field.
        let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        for entry in fs::read_dir(&policies).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                write("policy_toml", &name, &fs::read(&path).unwrap());
            }
        }
        let full = r#"public = true

[rate]
quota = 5
window = "1s"
burst = 10

[limits]
timeout = "500ms"
memory = "32MiB"
max_body = 65536
max_concurrency = 4

[outbound]
allow = ["api.example.com", "*.example.org"]

[kv]
stores = ["shared-cache"]
max_bytes = "1GiB"

[versions]
keep = 3

[[schedule]]
cron = "*/5 * * * *"
path = "/tasks/cleanup?full=1"

[[schedule]]
cron = "0 30 2 * * MON-FRI"
path = "/tasks/report"

[[route]]
host = "*.example.com"
path = "/api/"

[[route]]
host = "shop.example.com"

[[route]]
path = "/"
"#;
        write("policy_toml", "full.toml", full.as_bytes());
        write("policy_toml", "reserved-route.toml", b"[[route]]\npath = \"/v1/functions\"\n");
        write("policy_toml", "bad-cron.toml", b"[[schedule]]\ncron = \"61 * * * *\"\npath = \"/x\"\n");

        // meta.json: as the deploy pipeline writes it, with and without a snapshot and canary.
        let meta = FunctionMeta {
            name: "hello".into(),
            version: 3,
            sha256: "ab".repeat(32),
            size: 59091,
            deployed_at: "2026-11-25T08:03:13Z".into(),
            code_sha256: "cd".repeat(32),
            snapshot_sha256: None,
            canary: None,
        };
        write("meta_json", "plain.json", &serde_json::to_vec_pretty(&meta).unwrap());
        let full = FunctionMeta {
            snapshot_sha256: Some("ef".repeat(32)),
            canary: Some(CanarySplit { version: 4, percent: 10 }),
            ..meta.clone()
        };
        write("meta_json", "canary.json", &serde_json::to_vec_pretty(&full).unwrap());
        let old = FunctionMeta { code_sha256: String::new(), ..meta };
        write("meta_json", "no-code-digest.json", &serde_json::to_vec(&old).unwrap());

        // Components: the smallest example and guests that take the refusal paths, and headers.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (name, path) in [
            ("hello", "functions/target/wasm32-wasip2/release/hello.wasm"),
            ("preinit", "tests/guests/target/wasm32-wasip2/release/preinit.wasm"),
            ("unknown-import", "tests/guests/target/wasm32-wasip2/release/unknown_import.wasm"),
        ] {
            let bytes = fs::read(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e} (build the guests first)"));
            write("deploy_validate", name, &bytes);
        }
        write("deploy_validate", "empty-component", b"\0asm\x0d\0\x01\0");
        write("deploy_validate", "core-module", b"\0asm\x01\0\0\0");
        write("deploy_validate", "garbage", b"garbage!");
    }
}
