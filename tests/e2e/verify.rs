//! Deploys that prove themselves: `ledge deploy --verify` and `ledge verify` replay the
//! function's recent real traffic (its corpus) against the new build and the live one, refuse a
//! build that answers a route differently (naming that route's traces and the difference, the
//! old version serving on), let an intended change through with `--accept`, deploy a build that
//! behaves the same with "N of N same", and answer outbound calls from the recording, so an
//! upstream that is down changes nothing.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::harness::{Server, client, deploy_with_policy, guest};

/// An upstream answering `42` to every request, until dropped.
struct Upstream {
    authority: String,
    listener: Option<TcpListener>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let serving = listener.try_clone().unwrap();
        std::thread::spawn(move || {
            for stream in serving.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n42");
            }
        });
        Upstream { authority, listener: Some(listener) }
    }

    /// Stops accepting: a request to it from now on is refused.
    fn stop(&mut self) {
        if let Some(listener) = self.listener.take() {
            // The accepting thread holds a clone: shutting the socket down ends its loop.
            // SAFETY: shutdown(2) on a socket this process owns.
            unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&listener), libc::SHUT_RDWR) };
        }
    }
}

/// The function's corpus on `server` (its own traces), route by trace id, once it holds `routes` routes and two listings
/// 300 ms apart agree (the writer stores after the response), or after 15 s.
pub async fn corpus(server: &Server, function: &str, routes: usize) -> Vec<(String, String)> {
    let url = format!("{}/v1/traces?function={function}", server.url);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = None;
    loop {
        let listed: serde_json::Value = server.admin().get(&url).send().await.unwrap().json().await.unwrap();
        let corpus: Vec<(String, String)> = listed["traces"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["reason"] == "corpus")
            .map(|t| (t["id"].as_str().unwrap().to_string(), t["route"].as_str().unwrap().to_string()))
            .collect();
        let mut distinct: Vec<&str> = corpus.iter().map(|(_, route)| route.as_str()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        if (distinct.len() >= routes && last.as_ref() == Some(&corpus)) || Instant::now() > deadline {
            return corpus;
        }
        last = Some(corpus);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn version(server: &Server) -> u64 {
    let url = format!("{}/v1/functions/orders", server.url);
    let meta: serde_json::Value = server.admin().get(url).send().await.unwrap().json().await.unwrap();
    meta["version"].as_u64().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn get(server: &Server, path: &str) -> String {
    client().get(server.fn_url("orders", path)).send().await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_replays_recent_traffic_and_refuses_a_build_that_answers_a_route_differently() {
    let mut upstream = Upstream::start();
    let server = Server::start();
    let policy = "public = true\n[outbound]\nallow = [\"127.0.0.1\"]\n";
    deploy_with_policy(&server, "orders", &guest("orders"), policy).await;
    server.cli_ok(&["config", "set", "orders", "UPSTREAM", &upstream.authority]);
    // Real traffic: every route, the common one most.
    for item in ["tea", "cake"] {
        let created = client().post(server.fn_url("orders", "/orders")).body(item).send().await.unwrap();
        assert_eq!(created.status(), 201);
    }
    for path in ["/orders/1", "/price", "/orders/2", "/", "/", "/"] {
        get(&server, path).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(get(&server, "/price").await, "price: 42\n");
    let corpus = corpus(&server, "orders", 4).await;
    let ids_of =
        |route: &str| -> Vec<String> { corpus.iter().filter(|(_, r)| r == route).map(|(id, _)| id.clone()).collect() };
    let changed_route = ids_of("GET /orders/:id");
    for route in ["GET /price", "POST /orders"] {
        assert!(!ids_of(route).is_empty(), "{route}: {corpus:?}");
    }
    assert!(!changed_route.is_empty(), "{corpus:?}");
    // From here the upstream is down: verification answers outbound calls from the recording.
    upstream.stop();
    let down = client().get(server.fn_url("orders", "/price")).send().await.unwrap();
    assert_eq!(down.status(), 502, "the upstream is down");

    let refactored = guest("orders_refactored");
    let changed = guest("orders_changed");
    let (refactored, changed) = (refactored.to_str().unwrap(), changed.to_str().unwrap());
    // A build that behaves the same deploys, every trace the same.
    let same = server.cli(&["deploy", "orders", refactored, "--verify"]);
    assert!(same.status.success(), "{}", stderr(&same));
    let summary = format!("verification: {n} of {n} same", n = corpus.len());
    assert!(stderr(&same).contains(&summary), "{}", stderr(&same));

    // One route worded differently: refused, naming that route's traces and the difference.
    let refused = server.cli(&["deploy", "orders", changed, "--verify"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    let told = stderr(&refused);
    println!("same build: {}refused build: {told}", stderr(&same));
    assert!(told.contains("409"), "{told}");
    for id in &changed_route {
        assert!(told.contains(&format!("{id} GET /orders/")), "{told}");
    }
    assert!(told.contains(r#"body: live build "order 1: tea\n", new build "order #1: tea\n""#), "{told}");
    assert!(!told.contains("GET /price") && !told.contains("GET /:"), "only the changed route diverged: {told}");
    // The live version serves on (asked without a request, which could join the corpus).
    assert_eq!(version(&server).await, 2, "nothing was installed");

    // A deploy-only token learns trace ids and counts, never what the requests held.
    let deployer = server.mint(&["fn = orders", "op = deploy"]);
    let bytes = std::fs::read(changed).unwrap();
    let response = client()
        .put(format!("{}/v1/functions/orders?verify=50", server.url))
        .bearer_auth(&deployer)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let problem: serde_json::Value = response.json().await.unwrap();
    let text = problem.to_string();
    assert!(!text.contains("/orders/") && !text.contains("tea"), "{text}");
    let diverged: Vec<&str> =
        problem["diverged"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(diverged.len(), changed_route.len(), "{text}");
    assert_eq!(problem["verified"], corpus.len(), "{text}");

    // `ledge verify`: the same check without deploying, with its exit codes.
    assert_eq!(server.cli(&["verify", "orders", refactored]).status.code(), Some(0));
    let diverges = server.cli(&["verify", "orders", changed, "--json"]);
    assert_eq!(diverges.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&diverges.stdout).unwrap();
    assert_eq!(report["diverged"].as_array().unwrap().len(), changed_route.len(), "{report}");
    let too_few = server.cli(&["verify", "orders", refactored, "--require", "100"]);
    assert_eq!(too_few.status.code(), Some(2), "{}", stderr(&too_few));
    assert_eq!(server.cli(&["verify", "orders", "/nonexistent.wasm"]).status.code(), Some(2));
    // A build that also deletes a key no recorded run read: absent from the scratch engines
    // either way, yet on the node it deletes data, so the creating route diverges.
    let purging = server.cli(&["verify", "orders", guest("orders_purging").to_str().unwrap(), "--json"]);
    assert_eq!(purging.status.code(), Some(1), "{}", stderr(&purging));
    let report: serde_json::Value = serde_json::from_slice(&purging.stdout).unwrap();
    let diverged = report["diverged"].as_array().unwrap();
    assert_eq!(diverged.len(), ids_of("POST /orders").len(), "{report}");
    for trace in diverged {
        assert!(trace["request"].as_str().unwrap().starts_with("POST /orders"), "{report}");
        let difference = trace["difference"].as_str().unwrap();
        assert_eq!(difference, r#"data "f/orders/drafts": live build nothing, new build deleted it"#, "{report}");
    }

    // An intended change deploys once its divergences are accepted, and the audit log says so.
    let mut accept = vec!["deploy", "orders", changed, "--verify"];
    for id in &changed_route {
        accept.extend(["--accept", id.as_str()]);
    }
    let accepted = server.cli(&accept);
    assert!(accepted.status.success(), "{}", stderr(&accepted));
    assert_eq!(version(&server).await, 3);
    assert_eq!(get(&server, "/orders/1").await, "order #1: tea\n");
    assert!(server.log().contains("verify-accepted"), "the audit log names the accepted divergences");
}

#[tokio::test]
async fn a_function_without_a_corpus_deploys_with_a_warning_that_nothing_was_verified() {
    let server = Server::start();
    deploy_with_policy(&server, "quiet", &guest("hello"), "public = true\n[record]\nkeep_sample = 0\n").await;
    for _ in 0..3 {
        client().get(server.fn_url("quiet", "/")).send().await.unwrap();
    }
    let hello = guest("hello");
    let deployed = server.cli(&["deploy", "quiet", hello.to_str().unwrap(), "--verify"]);
    assert!(deployed.status.success(), "{}", stderr(&deployed));
    assert!(stderr(&deployed).contains("nothing verified"), "{}", stderr(&deployed));
    let verified = server.cli(&["verify", "quiet", hello.to_str().unwrap()]);
    assert_eq!(verified.status.code(), Some(0));
    assert!(stderr(&verified).contains("nothing verified"), "{}", stderr(&verified));
}
