//! Nothing half-written, nothing stale: a refused deploy leaves nothing, a policy comes with
//! its component, `rm` takes the data along, new folders are durable, limits hold across
//! redeploys, admin actions are audited, and the CLI works over TLS.

use std::time::Duration;

use crate::harness::{Server, client, guest, metric, problem, recorded_post};

#[tokio::test]
async fn a_refused_deploy_leaves_no_policy_behind_for_a_later_deploy() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("strict.toml");
    std::fs::write(&policy, "public = false\n").unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not a component").unwrap();
    let refused = server.cli(&["deploy", "app", garbage.to_str().unwrap(), "--policy", policy.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(!server.data_dir.join("functions/app").exists(), "a refused deploy left files");
    // A policy for a function that was never deployed is refused, not stored for later.
    let early = server.admin().put(format!("{}/v1/functions/app/policy", server.url)).body("public = false\n");
    problem(early.send().await.unwrap(), 404).await;
    assert!(!server.data_dir.join("functions/app").exists());
    // So a plain deploy later gets the default (public here), not the refused policy.
    server.deploy("app", &guest("hello"));
    assert_eq!(client().get(server.fn_url("app", "/")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_policy_given_with_a_component_applies_with_it_and_a_crash_before_the_commit_leaves_neither() {
    let mut server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("private.toml");
    std::fs::write(&policy, "public = false\n").unwrap();
    let deployed =
        server.cli(&["deploy", "app", guest("hello").to_str().unwrap(), "--policy", policy.to_str().unwrap()]);
    assert!(deployed.status.success(), "{}", String::from_utf8_lossy(&deployed.stderr));
    // The very first request already meets the policy: it never ran under a looser one.
    problem(client().get(server.fn_url("app", "/")).send().await.unwrap(), 401).await;
    assert_eq!(server.admin().get(server.fn_url("app", "/")).send().await.unwrap().status(), 200);

    // A crash between writing a first deploy's policy and its commit point leaves a folder with
    // a policy and no meta.json: at start it is debris, and a later deploy does not inherit it.
    server.kill();
    let debris = server.data_dir.join("functions/ghost");
    std::fs::create_dir_all(&debris).unwrap();
    std::fs::write(debris.join("policy.toml"), "public = false\n").unwrap();
    server.restart();
    assert!(!debris.exists(), "the uncommitted folder survived the restart");
    server.deploy("ghost", &guest("hello"));
    assert_eq!(client().get(server.fn_url("ghost", "/")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn rm_deletes_the_functions_data_unless_told_to_keep_it() {
    let server = Server::start();
    let count = || async { client().post(server.fn_url("counter", "/")).send().await.unwrap().text().await.unwrap() };
    server.deploy("counter", &guest("counter"));
    for expected in ["1\n", "2\n", "3\n"] {
        assert_eq!(count().await, expected);
    }
    let removed = server.cli(&["rm", "counter"]);
    assert!(removed.status.success());
    assert!(String::from_utf8_lossy(&removed.stdout).contains("and its key-value data"));
    server.deploy("counter", &guest("counter"));
    assert_eq!(count().await, "1\n", "a new deploy of the name inherited the old data");

    let kept = server.cli(&["rm", "counter", "--keep-data"]);
    assert!(kept.status.success());
    assert!(String::from_utf8_lossy(&kept.stdout).contains("was kept"), "{}", String::from_utf8_lossy(&kept.stdout));
    server.deploy("counter", &guest("counter"));
    assert_eq!(count().await, "2\n", "--keep-data kept the count");
}

#[tokio::test]
async fn rm_waits_for_running_instances_so_no_write_outlives_the_keyspace() {
    let server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    // Sleeps, then commits `slow`: in flight while the function is removed.
    let writer = tokio::spawn(client().get(server.fn_url("misbehave", "/slow-write?ms=1500")).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(server.cli(&["rm", "misbehave"]).status.success());
    assert_eq!(writer.await.unwrap().unwrap().status(), 200, "the running instance finished");
    server.deploy("misbehave", &guest("misbehave"));
    let read = client().get(server.fn_url("misbehave", "/read-slow")).send().await.unwrap();
    assert_eq!(read.text().await.unwrap(), "None\n", "a write of the removed function survived rm");
}

#[test]
fn every_new_folder_is_made_durable_in_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("deep/data");
    let trace = dir.path().join("trace");
    let status = std::process::Command::new("strace")
        .args(["-f", "-e", "trace=mkdir,mkdirat,openat,fsync", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_ledge"))
        .args(["token", "mint", "--data-dir"])
        .arg(&data_dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("strace (scripts/setup.sh installs it)");
    assert!(status.success());
    let trace = std::fs::read_to_string(trace).unwrap();
    let lines: Vec<&str> = trace.lines().collect();
    let created: Vec<String> = ["deep", "deep/data", "deep/data/keys"]
        .iter()
        .map(|relative| dir.path().join(relative).display().to_string())
        .collect();
    for folder in &created {
        let made = lines
            .iter()
            .position(|line| line.contains("mkdir") && line.contains(&format!("\"{folder}\"")) && line.ends_with("= 0"))
            .unwrap_or_else(|| panic!("{folder} was not created:\n{trace}"));
        let parent = std::path::Path::new(folder).parent().unwrap().display().to_string();
        let fd = lines[made..]
            .iter()
            .find_map(|line| {
                let opened = line.contains("openat(") && line.contains(&format!("\"{parent}\""));
                opened.then(|| line.rsplit("= ").next().unwrap().trim().to_string())
            })
            .unwrap_or_else(|| panic!("{parent} was never opened after creating {folder}:\n{trace}"));
        assert!(
            lines[made..].iter().any(|line| line.contains(&format!("fsync({fd})"))),
            "{parent} was not fsynced after creating {folder}:\n{trace}"
        );
    }
}

#[tokio::test]
async fn the_concurrency_limit_holds_across_redeploys_and_policy_changes() {
    let server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    server.set_policy("misbehave", "[limits]\nmax_concurrency = 2\n").await;
    // Long enough to outlast a redeploy (a compile) on a loaded machine.
    let slow = || tokio::spawn(client().get(server.fn_url("misbehave", "/slow-write?ms=8000")).send());
    let running = [slow(), slow()];
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A redeploy must not bring a fresh set of permits while the old version's instances run.
    server.deploy("misbehave", &guest("misbehave"));
    problem(client().get(server.fn_url("misbehave", "/fine")).send().await.unwrap(), 503).await;
    // Neither may a policy change that keeps or lowers the limit.
    server.set_policy("misbehave", "[limits]\nmax_concurrency = 1\n").await;
    problem(client().get(server.fn_url("misbehave", "/fine")).send().await.unwrap(), 503).await;
    // Raising it gives exactly the new room.
    server.set_policy("misbehave", "[limits]\nmax_concurrency = 3\n").await;
    let third = slow();
    tokio::time::sleep(Duration::from_millis(300)).await;
    problem(client().get(server.fn_url("misbehave", "/fine")).send().await.unwrap(), 503).await;
    for request in running.into_iter().chain([third]) {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
}

#[tokio::test]
async fn admin_changes_are_audited_with_the_token_id_never_the_token() {
    let server = Server::start();
    server.deploy("hello", &guest("hello"));
    server.set_policy("hello", "public = true\n").await;
    let token = server.mint(&["fn = hello"]);
    assert!(server.cli(&["token", "revoke", &token]).status.success());
    let refused = server.admin().put(format!("{}/v1/functions/hello", server.url)).body(b"junk".to_vec()).send().await;
    assert_eq!(refused.unwrap().status(), 400);
    assert!(server.cli(&["rm", "hello"]).status.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = server.log();
    let audit: Vec<&str> = log.lines().filter(|line| line.contains("ledge::audit")).collect();
    let admin_id = crate::harness::ledge()
        .args(["token", "inspect", &server.admin_token])
        .output()
        .map(|o| String::from_utf8(o.stdout).unwrap())
        .unwrap();
    let admin_id = admin_id.lines().next().unwrap().trim_start_matches("token id: ").to_string();
    for action in ["deploy", "policy", "revoke", "remove"] {
        assert!(
            audit.iter().any(|line| line.contains(&format!("action=\"{action}\"")) && line.contains(&admin_id)),
            "no audit line for {action}:\n{}",
            audit.join("\n")
        );
    }
    assert!(audit.iter().any(|line| line.contains("outcome=\"refused\"")), "the refused deploy is audited too");
    assert!(!log.contains(&server.admin_token) && !log.contains(&token), "a token reached the log");
}

#[tokio::test]
async fn guests_see_https_over_tls_and_routes_match_whole_segments() {
    let server = Server::start_with(&["--tls-self-signed"]);
    server.deploy_insecure("plain", &guest("plain-wasi"));
    let output = std::process::Command::new("curl")
        .args(["-sS", "-k", "-D", "-"])
        .arg(format!("{}/fn/plain/x", server.url))
        .output()
        .unwrap();
    let response = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
    assert!(response.contains("x-scheme: https"), "{response}");

    let plain = Server::start();
    let status = client().get(format!("{}/v1/functionsX", plain.url)).bearer_auth(&plain.admin_token).send().await;
    problem(status.unwrap(), 404).await;
    // Authenticated requests do not count as aborted transactions (the revocation check reads).
    plain.deploy("hello", &guest("hello"));
    for _ in 0..5 {
        plain.admin().get(format!("{}/v1/functions", plain.url)).send().await.unwrap();
    }
    assert_eq!(metric(&plain, "ledge_kv_transactions_aborted_total{reason=\"caller\"}").await, 0.0);
}

#[tokio::test]
async fn the_cli_works_over_https_trusting_the_certificate_it_is_given() {
    let server = Server::start_with(&["--tls-self-signed"]);
    let certificate = server.data_dir.join("tls/self-signed.pem");
    assert!(
        server
            .printed()
            .iter()
            .any(|line| line.contains(&certificate.display().to_string()) && line.contains("--ca-cert")),
        "ledge serve did not say where its certificate is: {:?}",
        server.printed()
    );
    let untrusted = server.cli(&["functions"]);
    assert_eq!(untrusted.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");

    let path = certificate.to_str().unwrap();
    let deployed = server.cli(&["deploy", "hello", guest("hello").to_str().unwrap(), "--ca-cert", path]);
    assert!(deployed.status.success(), "{}", String::from_utf8_lossy(&deployed.stderr));
    let listed = crate::harness::ledge()
        .args(["functions"])
        .env("LEDGE_SERVER", &server.url)
        .env("LEDGE_TOKEN", &server.admin_token)
        .env("LEDGE_CA_CERT", path)
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("hello"));
    assert!(server.cli(&["rm", "hello", "--ca-cert", path]).status.success());
}

/// Every entry below `dir` that is not a file of mode 0600 or a directory of mode 0700.
fn not_private(dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        let mode = metadata.permissions().mode() & 0o777;
        let expected = if metadata.is_dir() { 0o700 } else { 0o600 };
        if mode != expected {
            found.push(format!("{} {mode:o}", path.display()));
        }
        if metadata.is_dir() {
            found.extend(not_private(&path));
        }
    }
    found
}

#[tokio::test]
async fn every_file_ledge_writes_under_the_data_dir_is_private_whatever_the_dir_was_made_with() {
    use std::os::unix::fs::PermissionsExt;
    // An operator made the data dir world-readable; what ledge writes in it must not be.
    let mut server = Server::start_prepared(&[], |dir| {
        std::fs::create_dir(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    });
    server.deploy("counter", &guest("counter"));
    server.deploy("counter", &guest("counter"));
    assert!(server.cli(&["config", "set", "counter", "greeting", "hi"]).status.success());
    assert!(server.cli(&["config", "set", "counter", "password", "s3cret", "--secret"]).status.success());
    for _ in 0..20 {
        assert_eq!(client().post(server.fn_url("counter", "/")).send().await.unwrap().status(), 200);
    }
    let recorded = recorded_post(&server, "counter", "/").await;
    assert!(recorded.headers().contains_key("ledge-trace"), "a trace is kept");
    // A clean stop, then a restart that recovers from what the first run wrote.
    assert!(server.terminate().success());
    server.restart();
    assert_eq!(client().post(server.fn_url("counter", "/")).send().await.unwrap().status(), 200);
    let archive = server.data_dir.with_file_name("node.tar");
    assert!(server.cli(&["backup", "--out", archive.to_str().unwrap()]).status.success());

    let files = walkdir_count(&server.data_dir);
    assert!(files > 10, "the workload wrote files ({files})");
    let wide = not_private(&server.data_dir);
    assert!(wide.is_empty(), "entries readable by others under the data dir:\n{}", wide.join("\n"));

    // A restored data dir is just as private.
    let restored = server.data_dir.with_file_name("restored");
    let output =
        crate::harness::ledge().arg("restore").arg(&archive).arg("--data-dir").arg(&restored).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let wide = not_private(&restored);
    assert!(wide.is_empty(), "entries readable by others in the restored data dir:\n{}", wide.join("\n"));
}

/// Files below `dir`, at any depth.
fn walkdir_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .map(|path| if path.is_dir() { walkdir_count(&path) } else { 1 })
        .sum()
}
