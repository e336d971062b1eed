//! Cold starts: pre-initialized snapshots, precompiled artifacts reused across restarts, and
//! stale or tampered artifacts recompiled.

use crate::harness::{Server, client, guest, metric, problem};

#[tokio::test]
async fn an_expensive_init_runs_once_at_deploy_and_requests_start_from_its_snapshot() {
    let server = Server::start();
    server.deploy("pre", &guest("preinit"));
    let http = server.admin();
    for index in [0u64, 7, 1_999_999] {
        let body = http.get(server.fn_url("pre", &format!("/{index}"))).send().await.unwrap().text().await.unwrap();
        let expected = index.wrapping_mul(index) ^ (index >> 3);
        assert_eq!(body, format!("init_runs=1 table_len=2000000 value=Some({expected})\n"));
    }
    let meta: serde_json::Value =
        http.get(format!("{}/v1/functions/pre", server.url)).send().await.unwrap().json().await.unwrap();
    assert!(meta["snapshot_sha256"].is_string(), "{meta}");
    assert_eq!(
        metric(&server, "ledge_instantiation_duration_seconds_count{function=\"pre\",start=\"cold\"}").await,
        1.0
    );
    assert_eq!(
        metric(&server, "ledge_instantiation_duration_seconds_count{function=\"pre\",start=\"warm\"}").await,
        2.0
    );
}

#[tokio::test]
async fn a_failing_init_refuses_the_deploy() {
    let server = Server::start();
    let bytes = std::fs::read(guest("bad-init")).unwrap();
    let response = server.admin().put(format!("{}/v1/functions/bad", server.url)).body(bytes).send().await.unwrap();
    let body = problem(response, 400).await;
    assert!(body["detail"].as_str().unwrap().contains("`init` failed"), "{body}");
    problem(server.admin().get(server.fn_url("bad", "/")).send().await.unwrap(), 404).await;
}

#[tokio::test]
async fn a_restart_reuses_precompiled_snapshots_without_recompiling() {
    let mut server = Server::start();
    server.deploy("pre", &guest("preinit"));
    server.deploy("hello", &guest("hello"));
    server.terminate();
    server.restart();
    assert_eq!(metric(&server, "ledge_artifact_loads_total{outcome=\"precompiled\"}").await, 2.0);
    assert_eq!(metric(&server, "ledge_artifact_loads_total{outcome=\"recompiled\"}").await, 0.0);
    let body = client().get(server.fn_url("pre", "/3")).send().await.unwrap().text().await.unwrap();
    assert!(body.starts_with("init_runs=1 table_len=2000000"), "{body}");
    // The first request after a restart is a cold start again.
    assert_eq!(
        metric(&server, "ledge_instantiation_duration_seconds_count{function=\"pre\",start=\"cold\"}").await,
        1.0
    );
}

#[tokio::test]
async fn an_artifact_from_another_engine_configuration_is_recompiled() {
    let mut server = Server::start();
    server.deploy("hello", &guest("hello"));
    server.kill();
    // A genuine artifact, but compiled for a different engine configuration (no epoch
    // interruption), with its digest recorded so only wasmtime's own check can catch it.
    let engine = wasmtime::Engine::new(wasmtime::Config::new().epoch_interruption(false)).unwrap();
    let stale = wasmtime::component::Component::from_file(&engine, guest("hello")).unwrap().serialize().unwrap();
    let version_dir = server.data_dir.join("functions/hello/v1");
    std::fs::write(version_dir.join("code.cwasm"), &stale).unwrap();
    let meta_path = server.data_dir.join("functions/hello/meta.json");
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["code_sha256"] = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&stale)).into()
    };
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();

    server.restart();
    assert_eq!(metric(&server, "ledge_artifact_loads_total{outcome=\"recompiled\"}").await, 1.0);
    let response = client().get(server.fn_url("hello", "/fresh")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "Hello from ledge! You asked for /fresh\n");
    server.restart();
    assert_eq!(metric(&server, "ledge_artifact_loads_total{outcome=\"precompiled\"}").await, 1.0);
}

#[tokio::test]
async fn memory_a_request_scribbled_over_in_a_thousand_pages_is_pristine_for_the_next() {
    // Each scribble dirties 1,000 separate pages of the snapshot's table: far more runs of
    // dirty pages than the slot reset's scan batch (32), so the reset must resume past it.
    let server = Server::start();
    server.deploy("pre", &guest("preinit"));
    let get = |path: &'static str| {
        let (http, url) = (server.admin(), server.fn_url("pre", path));
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let scribble_then_check = || async {
        for _ in 0..5 {
            assert_eq!(get("/scribble").await, "scribbled=1000 wrong=1000\n");
            assert_eq!(get("/check").await, "wrong=0\n");
        }
    };
    scribble_then_check().await;
    // Concurrently, so instances on several slots are reset while others run.
    futures::future::join_all((0..4).map(|_| scribble_then_check())).await;
}
