//! Data-dir formats: `format.json` names the version of each on-disk format. A data dir from a
//! build before versions were recorded opens with everything in it and gets its marker; one
//! whose marker names a later version is refused with the versions and what to do, and left
//! exactly as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use crate::harness::{Server, build_version, client, guest, ledge, recorded_post};

/// Every entry under `dir` (and `dir`): a file's bytes, each entry's mode and modification time.
type Snapshot = BTreeMap<PathBuf, (Option<Vec<u8>>, u32, SystemTime)>;

fn snapshot(dir: &Path) -> Snapshot {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Snapshot::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        let bytes = if metadata.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|entry| entry.unwrap().path()));
            None
        } else {
            Some(std::fs::read(&path).unwrap())
        };
        found.insert(path, (bytes, metadata.permissions().mode(), metadata.modified().unwrap()));
    }
    found
}

fn marker(server: &Server) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(server.data_dir.join("format.json")).expect("format.json")).unwrap()
}

async fn post(url: String) -> String {
    let response = client().post(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The ids of the function's kept traces (its verification corpus left out), once there are at
/// least `count` (traces are stored after the response).
async fn kept_traces(server: &Server, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = format!("{}/v1/traces?function=counter", server.url);
        let listed: serde_json::Value = server.admin().get(url).send().await.unwrap().json().await.unwrap();
        let ids: Vec<String> = listed["traces"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["reason"] != "corpus")
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect();
        if ids.len() >= count || Instant::now() > deadline {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_data_dir_from_before_recorded_formats_opens_whole_and_a_newer_one_is_refused_untouched() {
    let mut server = Server::start();
    let (version, commit) = build_version();
    let recorded = marker(&server);
    let formats = serde_json::json!({"wal": 2, "checkpoint": 1, "registry": 1, "traces": 2});
    assert_eq!(recorded["formats"], formats, "a new data dir names its formats from the start");
    assert_eq!(recorded["recorded_by"], format!("{version} ({commit})"));

    // Functions, their data and a kept trace.
    server.deploy("counter", &guest("counter"));
    for expected in 1..=3 {
        assert_eq!(post(server.fn_url("counter", "/")).await, format!("{expected}\n"));
    }
    let traced = recorded_post(&server, "counter", "/").await;
    let trace = traced.headers()["ledge-trace"].to_str().unwrap().to_string();
    assert_eq!(kept_traces(&server, 1).await, std::slice::from_ref(&trace));

    // The same data dir as an older build left it: no marker (none was written before).
    assert!(server.terminate().success());
    std::fs::remove_file(server.data_dir.join("format.json")).unwrap();
    server.restart();
    assert_eq!(post(server.fn_url("counter", "/")).await, "5\n", "the function and its data are kept");
    assert_eq!(kept_traces(&server, 1).await, [trace], "so are its traces");
    assert_eq!(marker(&server)["formats"], formats, "and the formats are recorded");

    // A newer build's: its marker names a later WAL format and a format this build does not know.
    assert!(server.terminate().success());
    let mut newer = marker(&server);
    newer["formats"]["wal"] = 3.into();
    newer["formats"]["queues"] = 1.into();
    std::fs::write(server.data_dir.join("format.json"), serde_json::to_vec(&newer).unwrap()).unwrap();
    let before = snapshot(&server.data_dir);
    let mut child = ledge()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&server.data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("ledge serve started on a data dir of a newer format");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening"));
    for expected in [
        "engine WAL format 3 (this build reads 1 to 2)",
        "a `queues` format 1, unknown to this build",
        "written by a newer ledge",
        "ledge restore FILE --data-dir NEW_DIR",
        "Nothing in the data dir was changed",
    ] {
        assert!(stderr.contains(expected), "`{expected}` not in: {stderr}");
    }
    assert!(snapshot(&server.data_dir) == before, "a refused start changed the data dir");
}
