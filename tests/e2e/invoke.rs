//! Invoking functions: what the guest sees, what the client gets back, and guests that fail.

use crate::harness::{Server, client, guest, problem, python_guest};

#[tokio::test]
async fn hello_greets_with_the_path() {
    let server = Server::start();
    server.deploy("hello", &guest("hello"));
    let response = client().get(server.fn_url("hello", "/world/42")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain; charset=utf-8");
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(response.text().await.unwrap(), "Hello from ledge! You asked for /world/42\n");
    let bare = client().get(server.fn_url("hello", "")).send().await.unwrap();
    assert_eq!(bare.text().await.unwrap(), "Hello from ledge! You asked for /\n");
}

/// Not in the emulated (qemu) run: there a guest may take longer than the grace to return, and
/// then its body is streamed, which is right but not what this checks.
#[tokio::test]
async fn a_body_complete_when_the_guest_returns_goes_out_with_its_length() {
    let server = Server::start();
    server.deploy("hello", &guest("hello"));
    let response = client().get(server.fn_url("hello", "/world/42")).send().await.unwrap();
    assert_eq!(response.headers()["content-length"], "42");
    assert!(!response.headers().contains_key("transfer-encoding"));
    assert_eq!(response.text().await.unwrap(), "Hello from ledge! You asked for /world/42\n");
}

#[tokio::test]
async fn a_body_written_while_the_guest_runs_is_streamed() {
    let server = Server::start();
    server.deploy("plain", &guest("plain-wasi"));
    let started = std::time::Instant::now();
    let mut response = client().get(server.fn_url("plain", "/stream")).send().await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_millis(400), "the head waits for nothing");
    assert!(!response.headers().contains_key("content-length"));
    let first = response.chunk().await.unwrap().expect("a first part");
    assert!(started.elapsed() < std::time::Duration::from_millis(400), "the first part arrives at once");
    assert_eq!(&first[..], b"plain wasi saw /stream\n");
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"and then more\n");
    assert!(started.elapsed() >= std::time::Duration::from_millis(500));
}

#[tokio::test]
async fn echo_sees_method_path_query_headers_and_body() {
    let server = Server::start();
    server.deploy("echo", &guest("echo"));
    let body = "x".repeat(100_000);
    let response = client()
        .post(server.fn_url("echo", "/a/b?q=1&r=two"))
        .header("x-custom", "value-1")
        .header("content-type", "text/csv")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["x-echo-method"], "POST");
    assert_eq!(headers["x-echo-path"], "/a/b");
    assert_eq!(headers["x-echo-query"], "q=1&r=two");
    assert_eq!(headers["x-echo-header-x-custom"], "value-1");
    assert_eq!(headers["content-type"], "text/csv");
    assert_eq!(response.text().await.unwrap(), body);
}

#[tokio::test]
async fn unknown_functions_and_routes_get_404_problems() {
    let server = Server::start();
    let http = server.admin();
    let missing = problem(http.get(server.fn_url("nobody", "/x")).send().await.unwrap(), 404).await;
    assert!(missing["detail"].as_str().unwrap().contains("nobody"));
    problem(http.get(format!("{}/nowhere", server.url)).send().await.unwrap(), 404).await;
    problem(http.post(format!("{}/v1/functions", server.url)).send().await.unwrap(), 405).await;
    assert_eq!(http.get(format!("{}/healthz", server.url)).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_trapping_guest_gets_500_and_the_server_keeps_serving() {
    let server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    server.deploy("hello", &guest("hello"));
    let http = server.admin();
    let trapped = problem(http.get(server.fn_url("misbehave", "/trap")).send().await.unwrap(), 500).await;
    assert!(trapped["detail"].as_str().unwrap().contains("trapped"), "{trapped}");
    let healthy = http.get(server.fn_url("hello", "/")).send().await.unwrap();
    assert_eq!(healthy.status(), 200);
    let same_guest = http.get(server.fn_url("misbehave", "/fine")).send().await.unwrap();
    assert_eq!(same_guest.text().await.unwrap(), "fine\n");
}

#[tokio::test]
async fn outbound_http_is_denied_unless_the_policy_lists_the_host() {
    let server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    let authority = server.url.trim_start_matches("http://").to_string();
    let url = server.fn_url("misbehave", &format!("/outbound?authority={authority}&path=/healthz"));
    let denied = client().get(&url).send().await.unwrap().text().await.unwrap();
    assert_eq!(denied, "refused: ErrorCode::HttpRequestDenied\n");

    let policy = server
        .admin()
        .put(format!("{}/v1/functions/misbehave/policy", server.url))
        .body("[outbound]\nallow = [\"127.0.0.1\"]\n")
        .send()
        .await
        .unwrap();
    assert_eq!(policy.status(), 204);
    let allowed = client().get(&url).send().await.unwrap().text().await.unwrap();
    assert_eq!(allowed, "status 200\n");
}

#[tokio::test]
async fn a_component_built_with_the_plain_wasi_crate_runs_unmodified() {
    let server = Server::start();
    server.deploy("plain", &guest("plain-wasi"));
    let response = client().get(server.fn_url("plain", "/p?q=1")).send().await.unwrap();
    assert_eq!(response.status(), 203);
    assert_eq!(response.text().await.unwrap(), "plain wasi saw /p?q=1\n");
}

#[tokio::test]
async fn a_python_component_built_with_componentize_py_runs_unmodified() {
    let server = Server::start();
    server.deploy("py", &python_guest());
    let response = client().get(server.fn_url("py", "/snake?x=1")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "hello from python at /snake?x=1\n");
}
