//! Deploying, listing, redeploying and removing functions over the HTTP API and the CLI.

use crate::harness::{Server, client, guest, problem};

#[tokio::test]
async fn deploy_reports_metadata_and_redeploy_bumps_the_version() {
    let server = Server::start();
    let http = server.admin();
    let bytes = std::fs::read(guest("hello")).unwrap();
    let first = http.put(format!("{}/v1/functions/hello", server.url)).body(bytes.clone()).send().await.unwrap();
    assert_eq!(first.status(), 201);
    let meta: serde_json::Value = first.json().await.unwrap();
    assert_eq!(meta["name"], "hello");
    assert_eq!(meta["version"], 1);
    assert_eq!(meta["size"], bytes.len());
    let expected_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    assert_eq!(meta["sha256"], expected_sha);
    assert!(meta["deployed_at"].as_str().unwrap().ends_with('Z'));

    let second = http.put(format!("{}/v1/functions/hello", server.url)).body(bytes).send().await.unwrap();
    assert_eq!(second.status(), 200);
    let meta: serde_json::Value = second.json().await.unwrap();
    assert_eq!(meta["version"], 2);

    let one: serde_json::Value =
        http.get(format!("{}/v1/functions/hello", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(one["version"], 2);
    let all: serde_json::Value =
        http.get(format!("{}/v1/functions", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(all["functions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_same_bytes_deployed_again_reuse_their_compiled_code_and_survive_a_restart() {
    let mut server = Server::start();
    server.deploy("first", &guest("preinit"));
    server.deploy("second", &guest("preinit"));
    server.deploy("second", &guest("preinit"));
    let log = server.log();
    assert_eq!(log.matches("reusing the code compiled for the same bytes").count(), 2, "{log}");
    let first = client().get(server.fn_url("first", "/")).send().await.unwrap().text().await.unwrap();
    let second = client().get(server.fn_url("second", "/")).send().await.unwrap().text().await.unwrap();
    assert_eq!(first, second, "the reused pre-initialized snapshot answers alike");
    assert_eq!(server.terminate().code(), Some(0));
    server.restart();
    let again = client().get(server.fn_url("second", "/")).send().await.unwrap().text().await.unwrap();
    assert_eq!(again, first);
    assert!(!server.log().contains("recompiling function"), "the reused code is stored with each version");
}

#[tokio::test]
async fn cli_deploys_lists_and_removes() {
    let server = Server::start();
    server.deploy("hello", &guest("hello"));
    server.deploy("echo", &guest("echo"));
    let listed = server.cli(&["functions"]);
    assert!(listed.status.success());
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.contains("hello") && listed.contains("echo"), "{listed}");

    let removed = server.cli(&["rm", "echo"]);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    let gone = server.admin().get(server.fn_url("echo", "/")).send().await.unwrap();
    problem(gone, 404).await;
    let again = server.cli(&["rm", "echo"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("no function named `echo`"));
}

#[tokio::test]
async fn cli_reports_usage_errors_and_unreachable_servers() {
    let usage = crate::harness::ledge().args(["deploy", "name-without-file"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
    let unreachable = crate::harness::ledge().args(["functions", "--server", "http://127.0.0.1:9"]).output().unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach the ledge server"));
}

#[tokio::test]
async fn bad_uploads_get_400_naming_the_reason_and_leave_nothing_behind() {
    let server = Server::start();
    let http = server.admin();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", b"definitely not wasm".to_vec(), "not a WebAssembly binary"),
        ("core", b"\0asm\x01\0\0\0".to_vec(), "core WebAssembly module, not a component"),
        ("truncated", b"\0asm\x0d\0\x01\0\x07\x05".to_vec(), "component is invalid"),
        ("unknown-import", std::fs::read(guest("unknown-import")).unwrap(), "acme:test/missing"),
    ];
    for (name, bytes, expected) in cases {
        let response = http.put(format!("{}/v1/functions/{name}", server.url)).body(bytes).send().await.unwrap();
        let body = problem(response, 400).await;
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(expected), "{name}: {detail}");
        let lookup = http.get(format!("{}/v1/functions/{name}", server.url)).send().await.unwrap();
        problem(lookup, 404).await;
    }
    let functions_dir = server.data_dir.join("functions");
    let leftovers: Vec<_> = std::fs::read_dir(functions_dir).unwrap().collect();
    assert!(leftovers.is_empty(), "refused deploys left files: {leftovers:?}");

    let bad_name = http.put(format!("{}/v1/functions/Bad_Name", server.url)).body(vec![0u8]).send().await.unwrap();
    assert!(problem(bad_name, 400).await["detail"].as_str().unwrap().contains("invalid function name"));
}

#[tokio::test]
async fn uploads_over_the_cap_get_413_without_being_read_whole() {
    let server = Server::start_with(&["--max-upload", "100000"]);
    let http = server.admin();
    let declared = http.put(format!("{}/v1/functions/big", server.url)).body(vec![0u8; 200_000]).send().await.unwrap();
    assert!(problem(declared, 413).await["detail"].as_str().unwrap().contains("100000"));

    // A chunked upload declares no length: it is cut off once it passes the cap.
    let chunks = futures::stream::iter((0..15).map(|_| Ok::<_, std::io::Error>(vec![0u8; 10_000])));
    let streamed = http
        .put(format!("{}/v1/functions/big", server.url))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    problem(streamed, 413).await;
    problem(http.get(format!("{}/v1/functions/big", server.url)).send().await.unwrap(), 404).await;
}

#[tokio::test]
async fn redeploy_under_concurrent_load_fails_no_request() {
    let server = Server::start();
    server.deploy("svc", &guest("hello"));
    let url = server.fn_url("svc", "/load");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Answers so far from each version: the redeploy waits for the old one to have served, and
    // the load goes on until the new one has (under emulation a first answer takes seconds).
    let served = std::sync::Arc::new([std::sync::atomic::AtomicU32::new(0), std::sync::atomic::AtomicU32::new(0)]);
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (url, stop, served) = (url.clone(), stop.clone(), served.clone());
        workers.push(tokio::spawn(async move {
            let http = client();
            let (mut hello, mut echo) = (0u32, 0u32);
            for _ in 0..2_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let response = http.get(&url).send().await.expect("request failed during redeploy");
                assert_eq!(response.status(), 200, "a request failed during redeploy");
                let from_echo = response.headers().contains_key("x-echo-method");
                let _ = response.bytes().await.expect("body failed during redeploy");
                if from_echo {
                    echo += 1
                } else {
                    hello += 1
                }
                served[usize::from(from_echo)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (hello, echo)
        }));
    }
    let answered = |version: usize| {
        let served = served.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while served[version].load(std::sync::atomic::Ordering::Relaxed) == 0
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    };
    answered(0).await;
    let redeploy = server.cli(&["deploy", "svc", guest("echo").to_str().unwrap()]);
    assert!(redeploy.status.success());
    answered(1).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut hello, mut echo) = (0, 0);
    for worker in workers {
        let (h, e) = worker.await.unwrap();
        hello += h;
        echo += e;
    }
    assert!(hello > 0 && echo > 0, "both versions served: hello {hello}, echo {echo}");
    // After the swap every new request gets the new version.
    let after = client().get(&url).send().await.unwrap();
    assert!(after.headers().contains_key("x-echo-method"));
}

#[tokio::test]
async fn cli_deploy_applies_a_policy_file_with_the_component_and_refuses_a_bad_one() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[rate]\nquota = \"lots\"\n").unwrap();
    let refused = server.cli(&["deploy", "hello", guest("hello").to_str().unwrap(), "--policy", bad.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("quota"), "{}", String::from_utf8_lossy(&refused.stderr));
    problem(server.admin().get(server.fn_url("hello", "/")).send().await.unwrap(), 404).await;

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "public = true\n[rate]\nquota = 1\nwindow = \"60s\"\n").unwrap();
    let deployed =
        server.cli(&["deploy", "hello", guest("hello").to_str().unwrap(), "--policy", good.to_str().unwrap()]);
    assert!(deployed.status.success(), "{}", String::from_utf8_lossy(&deployed.stderr));
    assert_eq!(client().get(server.fn_url("hello", "/")).send().await.unwrap().status(), 200);
    assert_eq!(
        client().get(server.fn_url("hello", "/")).send().await.unwrap().status(),
        429,
        "the policy's quota applies"
    );
}
