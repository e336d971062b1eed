//! Backups: `ledge backup` takes a consistent copy of a node while it serves, `ledge restore`
//! makes a new data dir from it, and a node started there is the same node (functions,
//! versions, config and secrets, keys and tokens, key-value data as of one moment). Damaged
//! or hostile archives are refused with nothing left behind; only an unconfined manage token
//! may take a backup.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{Server, client, guest, ledge, problem};

/// `ledge backup --out FILE` against `server` with `token`.
fn backup_with(server: &Server, token: &str, out: &Path) -> Output {
    ledge()
        .args(["backup", "--out"])
        .arg(out)
        .env("LEDGE_SERVER", &server.url)
        .env("LEDGE_TOKEN", token)
        .output()
        .expect("running ledge backup")
}

fn restore(archive: &Path, dir: &Path) -> Output {
    ledge().arg("restore").arg(archive).arg("--data-dir").arg(dir).output().expect("running ledge restore")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("file exists").permissions().mode() & 0o777
}

/// `(name, version, sha256)` of every deployed function.
async fn deployed(server: &Server) -> Vec<(String, u64, String)> {
    let list: serde_json::Value =
        server.admin().get(format!("{}/v1/functions", server.url)).send().await.unwrap().json().await.unwrap();
    let functions = list["functions"].as_array().expect("a list").iter();
    functions
        .map(|f| {
            (f["name"].as_str().unwrap().into(), f["version"].as_u64().unwrap(), f["sha256"].as_str().unwrap().into())
        })
        .collect()
}

async fn counter_value(server: &Server) -> u64 {
    let text = client().get(server.fn_url("counter", "/peek")).send().await.unwrap().text().await.unwrap();
    text.trim().parse().unwrap_or_else(|_| panic!("counter: {text}"))
}

async fn bank_total(server: &Server) -> serde_json::Value {
    client().get(server.fn_url("bank", "/total")).send().await.unwrap().json().await.unwrap()
}

const ACCOUNTS: [&str; 5] = ["a", "b", "c", "d", "e"];

/// Increments until `stop` (at most `limit` of them): every count answered, with when.
async fn increment(url: String, stop: Arc<AtomicBool>, limit: usize) -> Vec<(Instant, u64)> {
    let http = client();
    let mut answered = Vec::new();
    for _ in 0..limit {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let response = http.post(&url).send().await.expect("increment");
        assert_eq!(response.status(), 200);
        let count = response.text().await.unwrap().trim().parse().unwrap();
        answered.push((Instant::now(), count));
    }
    answered
}

/// Random transfers until `stop` (at most `limit`); each moves money or is refused (409).
async fn transfer(server_url: String, seed: u64, stop: Arc<AtomicBool>, limit: usize) -> usize {
    let http = client();
    let mut seed = seed | 1;
    let mut done = 0;
    for _ in 0..limit {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let (from, to) = (ACCOUNTS[(seed % 5) as usize], ACCOUNTS[((seed >> 8) % 5) as usize]);
        if from == to {
            continue;
        }
        let amount = 1 + (seed >> 16) % 60;
        let url = format!("{server_url}/fn/bank/transfer?from={from}&to={to}&amount={amount}");
        let status = http.post(url).send().await.expect("transfer").status().as_u16();
        assert!(status == 200 || status == 409, "transfer answered {status}");
        done += 1;
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_to_a_consistent_copy_of_the_node() {
    let original = Server::start();
    original.deploy("counter", &guest("counter"));
    original.deploy("counter", &guest("counter"));
    original.deploy("bank", &guest("bank"));
    original.deploy("misbehave", &guest("misbehave"));
    let set = original.cli(&["config", "set", "counter", "GREETING", "hello"]);
    assert!(set.status.success(), "{}", stderr(&set));
    let secret = "sk-backup-7c1e9a";
    let set = original.cli(&["config", "set", "misbehave", "API_KEY", secret, "--secret"]);
    assert!(set.status.success(), "{}", stderr(&set));
    for account in ACCOUNTS {
        let opened = client().put(original.fn_url("bank", &format!("/accounts/{account}?balance=100"))).send().await;
        assert_eq!(opened.unwrap().status(), 201);
    }

    // Increments and transfers from several clients, before, during and after the backup.
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<_> =
        (0..3).map(|_| tokio::spawn(increment(original.fn_url("counter", "/"), stop.clone(), 3000))).collect();
    let transfers: Vec<_> =
        (0..3).map(|i| tokio::spawn(transfer(original.url.clone(), 0x9e37_79b9 + i, stop.clone(), 3000))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("node.tar");
    let backup_started = Instant::now();
    let (url, token, out) = (original.url.clone(), original.admin_token.clone(), archive.clone());
    let output = tokio::task::spawn_blocking(move || {
        ledge().args(["backup", "--out"]).arg(&out).env("LEDGE_SERVER", url).env("LEDGE_TOKEN", token).output()
    })
    .await
    .unwrap()
    .expect("running ledge backup");
    let backup_done = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = Vec::new();
    for task in counters {
        answered.extend(task.await.expect("an increment failed"));
    }
    let mut transferred = 0;
    for task in transfers {
        transferred += task.await.expect("a transfer failed");
    }

    assert!(output.status.success(), "ledge backup failed: {}", stderr(&output));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("kv stamp") && printed.contains("3 functions"), "{printed}");
    assert_eq!(mode(&archive), 0o600, "the archive holds the node's keys");
    assert!(!dir.path().join("node.tar.partial").exists());
    let before = answered.iter().filter(|(at, _)| *at < backup_started).map(|(_, count)| *count).max();
    let before = before.expect("increments were answered before the backup started");
    assert!(answered.iter().any(|(at, _)| *at > backup_done), "the load went on after the backup");
    assert!(transferred > 0);
    let live = counter_value(&original).await;
    assert_eq!(bank_total(&original).await["total"], 500);

    let restored = Server::start_prepared(&[], |data_dir| {
        let output = restore(&archive, data_dir);
        assert!(output.status.success(), "ledge restore failed: {}", stderr(&output));
        assert!(String::from_utf8_lossy(&output.stdout).contains("restored 3 functions"));
        assert_eq!(mode(&data_dir.join("keys/secrets.key")), 0o600);
        assert_eq!(mode(&data_dir.join("admin.token")), 0o600);
    });

    // The same functions and versions (counter's version 1 kept for rollback too).
    assert_eq!(deployed(&restored).await, deployed(&original).await);
    let versions = restored.cli(&["versions", "counter"]);
    let versions = String::from_utf8_lossy(&versions.stdout);
    assert!(versions.lines().any(|line| line.trim_start().starts_with("1 ")), "{versions}");
    // Every count answered before the backup began is in it; nothing from after the end.
    let count = counter_value(&restored).await;
    assert!(count >= before, "restored count {count} lost an increment answered {before} before the backup");
    assert!(count <= live, "restored count {count} is past the live node's final {live}");
    // One moment of the bank: no transfer half in it.
    let total = bank_total(&restored).await;
    assert_eq!((total["total"].as_u64(), total["accounts"].as_u64()), (Some(500), Some(5)), "{total}");

    // Same keys: the original's admin token and tokens minted from its data dir work here.
    assert_eq!(restored.admin_token, original.admin_token);
    let listed =
        client().get(format!("{}/v1/functions", restored.url)).bearer_auth(&original.admin_token).send().await.unwrap();
    assert_eq!(listed.status(), 200);
    let minted = original.mint(&["op = manage"]);
    let listed = client().get(format!("{}/v1/functions", restored.url)).bearer_auth(minted).send().await.unwrap();
    assert_eq!(listed.status(), 200);
    // Config and secrets came along, and the secret opens with the restored key.
    let config = restored.cli(&["config", "list", "counter"]);
    assert!(String::from_utf8_lossy(&config.stdout).contains("GREETING=hello"), "{}", stderr(&config));
    let seen = client().get(restored.fn_url("misbehave", "/config?key=API_KEY")).send().await.unwrap();
    assert!(seen.text().await.unwrap().contains(secret));
}

/// A small node's backup, for the refusal tests.
fn small_backup(dir: &Path) -> PathBuf {
    let server = Server::start();
    server.deploy("counter", &guest("counter"));
    let archive = dir.join("node.tar");
    let output = backup_with(&server, &server.admin_token, &archive);
    assert!(output.status.success(), "{}", stderr(&output));
    archive
}

/// Nothing under `dir` but `expected` (no restored folder, no temporary one).
fn only(dir: &Path, expected: &[&str]) {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, expected, "left behind in {}", dir.display());
}

/// A tar of `(raw name, entry type, data)` entries, names written byte for byte (a tar
/// library refuses to write `..`).
fn crafted_tar(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o600);
        let raw = &mut header.as_gnu_mut().unwrap().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

#[tokio::test]
async fn restore_refuses_an_occupied_dir_and_damaged_or_hostile_archives_leaving_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let archive = small_backup(dir.path());
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();

    // An occupied data dir is left alone.
    let occupied = work.join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("keep.txt"), "mine").unwrap();
    let refused = restore(&archive, &occupied);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("not empty"), "{}", stderr(&refused));
    only(&occupied, &["keep.txt"]);
    // An empty one is fine.
    let empty = work.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let output = restore(&archive, &empty);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(empty.join("admin.token").exists() && empty.join("kv").is_dir());

    // One flipped byte in the key-value image.
    let bytes = std::fs::read(&archive).unwrap();
    let mut reader = tar::Archive::new(std::fs::File::open(&archive).unwrap());
    let (offset, size) = reader
        .entries()
        .unwrap()
        .map(|entry| entry.unwrap())
        .find(|entry| entry.path().unwrap() == Path::new("kv.image"))
        .map(|entry| (entry.raw_file_position() as usize, entry.size() as usize))
        .expect("the archive holds kv.image");
    let mut flipped = bytes.clone();
    flipped[offset + size / 2] ^= 0x01;
    let damaged = dir.path().join("flipped.tar");
    std::fs::write(&damaged, flipped).unwrap();
    let refused = restore(&damaged, &work.join("from-flipped"));
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("`kv.image` does not match its SHA-256"), "{}", stderr(&refused));

    // Cut short.
    let short = dir.path().join("short.tar");
    std::fs::write(&short, &bytes[..bytes.len() / 2]).unwrap();
    let refused = restore(&short, &work.join("from-short"));
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("truncated"), "{}", stderr(&refused));

    // Hostile entries: a path out of the data dir, a link, a file the manifest does not name.
    let image = b"image".as_slice();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(image));
    let manifest = format!(
        r#"{{"format":1,"ledge_version":"0","created_at":"","kv_stamp":0,"files":[{{"path":"kv.image","size":5,"sha256":"{digest}"}}]}}"#
    );
    let regular = tar::EntryType::Regular;
    let hostile = [
        ("../escaped", regular, b"x".as_slice(), "not a plain relative path"),
        ("/tmp/absolute", regular, b"x".as_slice(), "absolute path"),
        ("functions/f/link", tar::EntryType::Symlink, b"".as_slice(), "not a regular file"),
        ("keys/extra.key", regular, b"x".as_slice(), "not in its manifest"),
    ];
    for (name, kind, data, reason) in hostile {
        let path = dir.path().join("hostile.tar");
        let entries =
            [("kv.image", regular, image), (name, kind, data), ("ledge-backup.json", regular, manifest.as_bytes())];
        std::fs::write(&path, crafted_tar(&entries)).unwrap();
        let refused = restore(&path, &work.join("from-hostile"));
        assert_eq!(refused.status.code(), Some(1), "{name}");
        assert!(stderr(&refused).contains(reason), "{name}: {}", stderr(&refused));
    }
    assert!(!dir.path().join("escaped").exists());

    // Whatever was refused left nothing: no data dir, no temporary folder.
    only(&work, &["empty", "occupied"]);
    let usage = ledge().args(["restore"]).arg(&archive).output().unwrap();
    assert_eq!(usage.status.code(), Some(2), "no --data-dir is a usage error");
}

#[tokio::test]
async fn only_a_manage_token_without_fn_caveat_may_take_a_backup() {
    let server = Server::start();
    server.deploy("counter", &guest("counter"));
    let url = format!("{}/v1/backup", server.url);
    problem(client().get(&url).send().await.unwrap(), 401).await;
    let confined = server.mint(&["op = manage", "fn = counter"]);
    let refused = problem(client().get(&url).bearer_auth(&confined).send().await.unwrap(), 403).await;
    assert!(refused["detail"].as_str().unwrap().contains("fn = counter"), "{refused}");
    let invoker = server.mint(&["op = invoke"]);
    problem(client().get(&url).bearer_auth(&invoker).send().await.unwrap(), 403).await;
    problem(server.admin().post(&url).send().await.unwrap(), 405).await;
    // The archive holds the root keys: a manage token narrowed to "read-only" could mint a full
    // admin token from it, so only a full admin token (caveats `time` and `id` at most) gets one.
    for narrowed in [
        server.mint(&["method = GET"]),
        server.mint(&["op = manage"]),
        crate::harness::attenuate(&server.admin_token, "path-prefix = /v1/backup"),
    ] {
        let refused = problem(client().get(&url).bearer_auth(&narrowed).send().await.unwrap(), 403).await;
        assert!(refused["detail"].as_str().unwrap().contains("full admin token"), "{refused}");
    }
    let tomorrow = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(86_400));
    let full = crate::harness::attenuate(&server.admin_token, &format!("time < {tomorrow}"));
    assert!(crate::harness::inspect(&full).contains("id = "), "a branch of the admin token");
    let response = client().get(&url).bearer_auth(&full).send().await.unwrap();
    assert_eq!(response.status(), 200, "a full admin token with `time` and `id` caveats takes a backup");

    let response = server.admin().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-tar");
    let length: usize = response.headers()["content-length"].to_str().unwrap().parse().unwrap();
    assert_eq!(response.bytes().await.unwrap().len(), length);

    // The CLI says why and leaves no file, whole or partial.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("node.tar");
    let refused = backup_with(&server, &confined, &out);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("403"), "{}", stderr(&refused));
    only(dir.path(), &[]);
    let nowhere = backup_with(&server, &server.admin_token, &dir.path().join("missing/node.tar"));
    assert_eq!(nowhere.status.code(), Some(1));
    assert!(stderr(&nowhere).contains("cannot create"), "{}", stderr(&nowhere));
}
