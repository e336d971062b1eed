//! Routes by host and path (`[[route]]`): served without `/fn/NAME/`, the most specific route
//! winning, conflicts refused, ledge's own paths untouchable, certificates per host over TLS.

use crate::harness::{Server, client, guest, problem, raw_request};

fn with_host(server: &Server, host: &str, target: &str) -> (u16, String) {
    raw_request(server, "GET", target, &[("Host", host)])
}

#[tokio::test]
async fn a_route_serves_a_host_without_the_prefix_and_the_most_specific_route_wins() {
    let server = Server::start();
    server.deploy("echo", &guest("echo"));
    server.deploy("hello", &guest("hello"));
    server.set_policy("hello", "public = true\n[[route]]\nhost = \"*.example.test\"\n").await;
    server.set_policy("echo", "public = true\n[[route]]\nhost = \"api.example.test\"\npath = \"/v2\"\n").await;

    let (status, response) = with_host(&server, "api.example.test", "/v2/items?x=1");
    assert_eq!(status, 200, "{response}");
    assert!(response.contains("x-echo-path: /v2/items\r\n"), "the guest sees the original path: {response}");
    let (_, wildcard) = with_host(&server, "api.example.test:8080", "/other");
    assert!(wildcard.contains("Hello from ledge! You asked for /other\n"), "{wildcard}");
    let (_, sub) = with_host(&server, "Shop.Example.Test", "/v2");
    assert!(sub.contains("You asked for /v2\n"), "{sub}");
    let (apex, _) = with_host(&server, "example.test", "/");
    assert_eq!(apex, 404, "a wildcard covers subdomains, not the domain itself");
    // /fn/NAME/ keeps working, and ledge's own paths are never shadowed.
    assert_eq!(client().get(server.fn_url("echo", "/")).send().await.unwrap().status(), 200);
    assert_eq!(with_host(&server, "api.example.test", "/healthz").1.split("\r\n\r\n").nth(1), Some("ok\n"));

    // The same route for another function is a conflict naming the holder; ledge's paths
    // cannot be taken at all.
    server.deploy("other", &guest("hello"));
    let put = |policy: &'static str| {
        server.admin().put(format!("{}/v1/functions/other/policy", server.url)).body(policy).send()
    };
    let conflict = problem(put("[[route]]\nhost = \"api.example.test\"\npath = \"/v2/\"\n").await.unwrap(), 409).await;
    assert!(conflict["detail"].as_str().unwrap().contains("`echo`"), "{conflict}");
    for reserved in ["/v1", "/fn/x", "/metrics", "/readyz"] {
        let body = format!("[[route]]\npath = \"{reserved}\"\n");
        let refused = server.admin().put(format!("{}/v1/functions/other/policy", server.url)).body(body).send().await;
        assert!(problem(refused.unwrap(), 400).await["detail"].as_str().unwrap().contains("shadow"), "{reserved}");
    }
    // Removing the holder frees the route.
    assert!(server.cli(&["rm", "echo"]).status.success());
    assert_eq!(put("[[route]]\nhost = \"api.example.test\"\npath = \"/v2\"\n").await.unwrap().status(), 204);
    let (_, now) = with_host(&server, "api.example.test", "/v2/x");
    assert!(now.contains("You asked for /v2/x\n"), "{now}");
}

#[tokio::test]
async fn each_host_gets_its_own_certificate_from_the_tls_dir() {
    let dir = tempfile::tempdir().unwrap();
    let params = rcgen::CertificateParams::new(vec!["api.example.test".into()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap().pem();
    std::fs::write(dir.path().join("api.example.test.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("api.example.test.key"), key.serialize_pem()).unwrap();
    let ca = dir.path().join("api.example.test.pem");
    let server = Server::start_with(&["--tls-self-signed", "--tls-dir", dir.path().to_str().unwrap()]);
    server.deploy_insecure("plain", &guest("plain-wasi"));
    let policy = std::process::Command::new("curl")
        .args(["-sSf", "-k", "-X", "PUT", "--data-binary", "public = true\n[[route]]\nhost = \"api.example.test\"\n"])
        .args(["-H", &format!("authorization: Bearer {}", server.admin_token)])
        .arg(format!("{}/v1/functions/plain/policy", server.url))
        .output()
        .unwrap();
    assert!(policy.status.success(), "{}", String::from_utf8_lossy(&policy.stderr));
    let port = server.url.rsplit(':').next().unwrap();
    let output = std::process::Command::new("curl")
        .args(["-sS", "--resolve", &format!("api.example.test:{port}:127.0.0.1"), "--cacert"])
        .arg(&ca)
        .arg(format!("https://api.example.test:{port}/hello?x=1"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the per-host certificate was not served: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "plain wasi saw /hello?x=1\n");
}
