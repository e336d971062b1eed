//! ARM64 edge boards: ahead-of-time compilation for another node, and the small profile.
//! (The whole suite, or its emulated subset, runs on aarch64 under qemu-user in CI.)

use crate::harness::{Server, client, guest, ledge, problem};

/// The `--profile` every server of this run uses (`LEDGE_TEST_SERVE_ARGS`), default standard.
fn profile() -> String {
    let args = std::env::var("LEDGE_TEST_SERVE_ARGS").unwrap_or_default();
    let mut words = args.split_whitespace();
    while let Some(word) = words.next() {
        if word == "--profile" {
            return words.next().unwrap_or("standard").to_string();
        }
    }
    "standard".into()
}

fn compile(target: &str, profile: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("hello.cwasm");
    let status = ledge()
        .args(["compile", "--target", target, "--profile", profile, "-o"])
        .arg(&output)
        .arg(guest("hello"))
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(output).unwrap()
}

#[tokio::test]
async fn precompiled_artifacts_deploy_only_when_trusted_and_built_for_this_node() {
    let this = std::env::consts::ARCH;
    let other = if this == "aarch64" { "x86_64" } else { "aarch64" };
    let matching = compile(this, &profile());
    let put = |server: &Server, body: Vec<u8>| {
        server.admin().put(format!("{}/v1/functions/hello", server.url)).body(body).send()
    };

    let cautious = Server::start();
    let refused = problem(put(&cautious, matching.clone()).await.unwrap(), 400).await;
    assert!(refused["detail"].as_str().unwrap().contains("--trust-precompiled"), "{refused}");

    let trusting = Server::start_with(&["--trust-precompiled"]);
    let foreign = problem(put(&trusting, compile(other, &profile())).await.unwrap(), 400).await;
    assert!(foreign["detail"].as_str().unwrap().contains("not compiled for this node"), "{foreign}");
    let other_profile = if profile() == "small" { "standard" } else { "small" };
    problem(put(&trusting, compile(this, other_profile)).await.unwrap(), 400).await;
    assert_eq!(put(&trusting, matching).await.unwrap().status(), 201);
    let response = client().get(trusting.fn_url("hello", "/aot")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "Hello from ledge! You asked for /aot\n");
}

#[tokio::test]
async fn the_small_profile_serves_within_its_memory_cap() {
    let server = Server::start_with(&["--profile", "small"]);
    server.deploy("misbehave", &guest("misbehave"));
    // The small profile reserves 128 MiB per memory; a policy asking for more is capped there.
    server.set_policy("misbehave", "[limits]\nmemory = \"512MiB\"\n").await;
    let hog = problem(client().get(server.fn_url("misbehave", "/hog")).send().await.unwrap(), 500).await;
    assert!(hog["detail"].as_str().unwrap().contains("memory limit"), "{hog}");
    assert_eq!(client().get(server.fn_url("misbehave", "/fine")).send().await.unwrap().status(), 200);
    // The small profile exists so that the pool fits a board's address space: natively it must.
    // Under qemu-user the emulator's own address-space layout decides, so there either allocator
    // is fine as long as the server says which one it runs (the memory cap held above).
    let log = server.log();
    let emulated = std::env::var("LEDGE_RUNNER").is_ok_and(|runner| !runner.trim().is_empty());
    if emulated {
        assert!(log.contains("allocator=Pooling") || log.contains("allocator=OnDemand"), "{log}");
    } else {
        assert!(log.contains("allocator=Pooling"), "the small profile fell back to on-demand allocation:\n{log}");
    }
}
