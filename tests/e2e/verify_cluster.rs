//! Deploy verification in a cluster: traces are kept on the node that ran them, so the node a
//! deploy reaches verifies with the corpus of the nodes that host the function, fetched through
//! its peers (`GET /v1/peer/corpus/...`, signed with the cluster's peer key), and compiles the
//! live build from the cluster's record when it does not run the function itself. Two real
//! `ledge serve` nodes on a real etcd; the shop placed on one of them.

use std::time::{Duration, Instant};

use crate::harness::{Etcd, Server, client, deploy_with_policy, guest};
use crate::verify::corpus;

fn node(etcd: &Etcd, name: &str) -> Server {
    Server::start_with(&["--cluster", &etcd.endpoints(), "--node-name", name])
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_without_traces_verifies_a_deploy_with_the_corpus_of_the_node_that_hosts_it() {
    let etcd = Etcd::start();
    let (a, b) = (node(&etcd, "a"), node(&etcd, "b"));
    deploy_with_policy(&a, "orders", &guest("orders"), "public = true\n[placement]\nreplicas = 1\n").await;
    // The host is the node that runs it for both (the other proxies).
    let started = Instant::now();
    let host_name = loop {
        let mut ran_on = Vec::new();
        for server in [&a, &b] {
            let response = client().get(server.fn_url("orders", "/")).send().await.unwrap();
            if response.status() == 200 {
                ran_on.push(response.headers()["ledge-node"].to_str().unwrap().to_string());
            }
        }
        if ran_on.len() == 2 && ran_on[0] == ran_on[1] {
            break ran_on.remove(0);
        }
        assert!(started.elapsed() < Duration::from_secs(15), "orders placed: {ran_on:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (host, other) = if host_name == "a" { (&a, &b) } else { (&b, &a) };

    // Real traffic on the host: every route it has but the outbound one.
    let created = client().post(host.fn_url("orders", "/orders")).body("tea").send().await.unwrap();
    assert_eq!(created.status(), 201);
    for path in ["/orders/1", "/"] {
        assert_eq!(client().get(host.fn_url("orders", path)).send().await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let corpus = corpus(host, "orders", 3).await;
    assert!(corpus.len() >= 3, "{corpus:?}");
    let changed_route: Vec<&str> =
        corpus.iter().filter(|(_, route)| route == "GET /orders/:id").map(|(id, _)| id.as_str()).collect();
    assert!(!changed_route.is_empty(), "{corpus:?}");
    let listed: serde_json::Value = other
        .admin()
        .get(format!("{}/v1/traces?function=orders", other.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["traces"].as_array().unwrap().len(), 0, "the other node holds no trace: {listed}");

    // Through the other node, a build that answers one route differently is refused, naming
    // the host's trace of that route and the difference; nothing is installed.
    let (changed, refactored) = (guest("orders_changed"), guest("orders_refactored"));
    let refused = other.cli(&["deploy", "orders", changed.to_str().unwrap(), "--verify"]);
    let told = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{told}");
    for id in &changed_route {
        assert!(told.contains(&format!("{id} GET /orders/1")), "{told}");
    }
    assert!(told.contains(r#"body: live build "order 1: tea\n", new build "order #1: tea\n""#), "{told}");
    let meta: serde_json::Value =
        other.admin().get(format!("{}/v1/functions/orders", other.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["version"], 1, "nothing was installed: {meta}");

    // A build that behaves the same deploys, every one of the host's traces the same.
    let same = other.cli(&["deploy", "orders", refactored.to_str().unwrap(), "--verify"]);
    assert!(same.status.success(), "{}", stderr(&same));
    let summary = format!("verification: {n} of {n} same", n = corpus.len());
    assert!(stderr(&same).contains(&summary), "{}", stderr(&same));
    println!("refused: {told}same: {}", stderr(&same));

    // The peer route answers only a signed request: to anyone else it is a missing route.
    let asked = client().get(format!("{}/v1/peer/corpus/orders?limit=5", host.url)).send().await.unwrap();
    assert_eq!(asked.status(), 404);
    let missing = client().get(format!("{}/v1/nope", host.url)).send().await.unwrap();
    let forged = client()
        .get(format!("{}/v1/peer/corpus/orders?limit=5", host.url))
        .header("ledge-peer-request", format!("{};{host_name};1;{}", other_name(&host_name), "00".repeat(32)))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 404);
    let (forged, missing) = (forged.text().await.unwrap(), missing.text().await.unwrap());
    assert_eq!(forged.replace("/v1/peer/corpus/orders", "/v1/nope"), missing, "the same 404 as a missing route");
}

fn other_name(name: &str) -> &'static str {
    if name == "a" { "b" } else { "a" }
}
