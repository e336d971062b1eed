//! Deployed functions survive restarts and crashes, and precompiled code is reused only
//! when it is intact.

use crate::harness::{Server, client, damage, guest, metric, python_guest};

#[tokio::test]
async fn functions_survive_a_restart_without_recompiling() {
    let mut server = Server::start();
    server.deploy("hello", &guest("hello"));
    assert_eq!(server.terminate().code(), Some(0));
    server.restart();
    let response = client().get(server.fn_url("hello", "/again")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "Hello from ledge! You asked for /again\n");
    let log = server.log();
    assert!(log.contains("loaded precompiled artifact"), "{log}");
    assert!(!log.contains("recompiling function"), "{log}");
}

/// The commits the engine replayed at the server's last start, from its "engine recovered" line.
fn replayed_at_last_start(server: &Server) -> u64 {
    let log = server.log();
    let line = log.lines().rev().find(|line| line.contains("engine recovered")).expect("a recovery line");
    let commits = line.split("commits=").nth(1).and_then(|rest| rest.split_whitespace().next());
    commits.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no commit count in {line}"))
}

#[tokio::test]
async fn a_graceful_stop_checkpoints_so_the_next_start_replays_nothing_and_a_crash_replays_the_log() {
    let mut server = Server::start();
    server.deploy("counter", &guest("counter"));
    for _ in 0..20 {
        assert_eq!(client().post(server.fn_url("counter", "/")).send().await.unwrap().status(), 200);
    }
    assert_eq!(server.terminate().code(), Some(0));
    server.restart();
    assert_eq!(replayed_at_last_start(&server), 0, "the stop left everything in a checkpoint");
    let count = client().get(server.fn_url("counter", "/peek")).send().await.unwrap().text().await.unwrap();
    assert_eq!(count.trim(), "20");
    for _ in 0..5 {
        assert_eq!(client().post(server.fn_url("counter", "/")).send().await.unwrap().status(), 200);
    }
    server.kill();
    server.restart();
    assert!(replayed_at_last_start(&server) >= 5, "after SIGKILL the log since the checkpoint is replayed");
    let count = client().get(server.fn_url("counter", "/peek")).send().await.unwrap().text().await.unwrap();
    assert_eq!(count.trim(), "25");
}

#[tokio::test]
async fn an_acknowledged_deploy_survives_sigkill() {
    let mut server = Server::start();
    server.deploy("echo", &guest("echo"));
    server.kill();
    server.restart();
    let response = client().post(server.fn_url("echo", "/")).body("still here").send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "still here");
}

#[tokio::test]
async fn a_tampered_artifact_is_detected_and_recompiled() {
    let mut server = Server::start();
    server.deploy("hello", &guest("hello"));
    server.kill();
    damage(&server.data_dir.join("functions/hello/v1/code.cwasm"));
    server.restart();
    let response = client().get(server.fn_url("hello", "/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(server.log().contains("recompiling function"));
    assert_eq!(metric(&server, "ledge_artifact_loads_total{outcome=\"recompiled\"}").await, 1.0);
    // The rewritten artifact is trusted again on the next start.
    server.restart();
    assert_eq!(client().get(server.fn_url("hello", "/x")).send().await.unwrap().status(), 200);
    assert_eq!(server.log().matches("recompiling function").count(), 1);
}

#[tokio::test]
async fn a_function_that_cannot_be_loaded_does_not_keep_the_others_down() {
    let mut server = Server::start();
    server.deploy("hello", &guest("hello"));
    server.deploy("echo", &guest("echo"));
    server.kill();
    let version = server.data_dir.join("functions/echo/v1");
    for file in ["code.cwasm", "component.wasm"] {
        std::fs::write(version.join(file), b"damaged").unwrap();
    }
    server.restart();
    assert_eq!(client().get(server.fn_url("hello", "/")).send().await.unwrap().status(), 200);
    assert_eq!(server.admin().get(server.fn_url("echo", "/")).send().await.unwrap().status(), 404);
    assert!(server.log().contains("cannot load function; redeploy it"));
}

#[tokio::test]
async fn a_restarted_node_serves_while_it_still_loads_code_is_ready_once_every_build_is_loaded_and_a_stop_meanwhile_loses_nothing()
 {
    let mut server = Server::start();
    server.deploy("hello", &guest("hello"));
    server.deploy("py", &python_guest());
    assert_eq!(server.terminate().code(), Some(0));
    // The Python build's precompiled code is damaged: the start recompiles it, for seconds.
    damage(&server.data_dir.join("functions/py/v1/code.cwasm"));
    server.restart_listening();
    let response = client().get(server.fn_url("hello", "/early")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "Hello from ledge! You asked for /early\n");
    // Served, while the node is not ready yet: the recompile still runs.
    let response = client().get(format!("{}/readyz", server.url)).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["detail"], "still loading the deployed functions' code", "{problem}");
    // The Python function's own first request waits for its build.
    let response = client().get(server.fn_url("py", "/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while client().get(format!("{}/readyz", server.url)).send().await.unwrap().status() != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Each build loaded once, by its request or by the start's loader, whichever came first.
    assert_eq!(metric(&server, "ledge_artifact_loads_total{outcome=\"precompiled\"}").await, 1.0);
    assert_eq!(metric(&server, "ledge_artifact_loads_total{outcome=\"recompiled\"}").await, 1.0);

    // A stop while the build is being recompiled: the node stops cleanly, the build is not
    // taken for one that cannot be loaded, and the next start serves it.
    assert_eq!(server.terminate().code(), Some(0));
    damage(&server.data_dir.join("functions/py/v1/code.cwasm"));
    server.restart_listening();
    let response = client().get(format!("{}/readyz", server.url)).send().await.unwrap();
    assert_eq!(response.status(), 503, "still loading when the stop comes");
    assert_eq!(server.terminate().code(), Some(0));
    server.restart();
    assert_eq!(client().get(server.fn_url("py", "/")).send().await.unwrap().status(), 200);
    assert!(!server.log().contains("cannot load function"), "{}", server.log());
}
