//! Configuration and secrets: set with `ledge config`, read by guests through wasi:config and
//! the environment, changed without a redeploy; secrets sealed at rest and never shown.

use crate::harness::{Server, client, guest, problem};

async fn seen(server: &Server, key: &str) -> String {
    let url = server.fn_url("misbehave", &format!("/config?key={key}"));
    client().get(url).send().await.unwrap().text().await.unwrap()
}

fn config(server: &Server, args: &[&str]) -> String {
    server.cli_ok(&[&["config"], args].concat())
}

/// Every file under `dir`, read whole.
pub fn all_bytes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(all_bytes(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            found.push((path, bytes));
        }
    }
    found
}

#[tokio::test]
async fn guests_read_config_through_wasi_config_and_the_environment_and_see_changes_at_once() {
    let mut server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    assert_eq!(seen(&server, "GREETING").await, "wasi:config=None env=None\n");
    config(&server, &["set", "misbehave", "GREETING", "hello there"]);
    assert_eq!(seen(&server, "GREETING").await, "wasi:config=Some(\"hello there\") env=Some(\"hello there\")\n");
    config(&server, &["set", "misbehave", "GREETING", "bye"]);
    assert_eq!(seen(&server, "GREETING").await, "wasi:config=Some(\"bye\") env=Some(\"bye\")\n", "no redeploy needed");

    // From a file; kept across a redeploy and a restart; removed on request.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("motd.txt");
    std::fs::write(&file, "line one\nline two").unwrap();
    config(&server, &["set", "misbehave", "MOTD", "--from-file", file.to_str().unwrap()]);
    server.deploy("misbehave", &guest("misbehave"));
    server.restart();
    assert!(seen(&server, "MOTD").await.starts_with("wasi:config=Some(\"line one\\nline two\")"));
    assert!(config(&server, &["list", "misbehave"]).contains("GREETING=bye"));
    config(&server, &["rm", "misbehave", "GREETING"]);
    assert_eq!(seen(&server, "GREETING").await, "wasi:config=None env=None\n");
    let again = server.cli(&["config", "rm", "misbehave", "GREETING"]);
    assert_eq!(again.status.code(), Some(1));

    let http = server.admin();
    let bad_key = http.put(format!("{}/v1/functions/misbehave/config/1BAD", server.url)).body("x").send().await;
    assert!(problem(bad_key.unwrap(), 400).await["detail"].as_str().unwrap().contains("config key"));
    let big = http.put(format!("{}/v1/functions/misbehave/config/BIG", server.url)).body(vec![b'x'; 70_000]);
    problem(big.send().await.unwrap(), 413).await;
    let missing = http.put(format!("{}/v1/functions/nothing/config/KEY", server.url)).body("x").send().await;
    problem(missing.unwrap(), 404).await;
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_and_never_listed_logged_or_exported() {
    let mut server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    let secret = "sk-live-4f9a1c0e7d2b8a6f";
    let set = config(&server, &["set", "misbehave", "API_KEY", secret, "--secret"]);
    assert!(!set.contains(secret));
    assert_eq!(seen(&server, "API_KEY").await, format!("wasi:config=Some(\"{secret}\") env=Some(\"{secret}\")\n"));

    let listed = config(&server, &["list", "misbehave"]);
    assert!(listed.contains("API_KEY=(secret)") && !listed.contains(secret), "{listed}");
    let metrics = server.admin().get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains(secret));
    server.restart();
    assert!(seen(&server, "API_KEY").await.contains(secret), "the sealed secret opens after a restart");
    assert!(!server.log().contains(secret), "a secret reached the log");
    for (path, bytes) in all_bytes(&server.data_dir) {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds the secret in clear",
            path.display()
        );
    }
    // The sealing key is the node's own, private file.
    use std::os::unix::fs::PermissionsExt;
    let key = server.data_dir.join("keys/secrets.key");
    assert_eq!(std::fs::metadata(key).unwrap().permissions().mode() & 0o777, 0o600);
    // Removing the function removes its configuration.
    assert!(server.cli(&["rm", "misbehave"]).status.success());
    server.deploy("misbehave", &guest("misbehave"));
    assert_eq!(seen(&server, "API_KEY").await, "wasi:config=None env=None\n");
}
