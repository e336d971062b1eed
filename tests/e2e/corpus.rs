//! The verification corpus (`[record] keep_sample`): a few successful runs per function, drawn
//! at a bounded rate, distinct routes first, so a rare route survives among common ones.

use std::time::{Duration, Instant};

use crate::harness::{Server, client, guest};

/// The function's corpus traces (`reason` "corpus") as `GET /v1/traces` lists them, once two
/// listings 300 ms apart agree (the writer stores after the response), or after 10 s.
async fn settled_corpus(server: &Server, function: &str) -> Vec<serde_json::Value> {
    let url = format!("{}/v1/traces?function={function}", server.url);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last: Option<Vec<serde_json::Value>> = None;
    loop {
        let listed: serde_json::Value = server.admin().get(&url).send().await.unwrap().json().await.unwrap();
        let corpus: Vec<serde_json::Value> =
            listed["traces"].as_array().expect("a list").iter().filter(|t| t["reason"] == "corpus").cloned().collect();
        if last.as_ref() == Some(&corpus) || Instant::now() > deadline {
            return corpus;
        }
        last = Some(corpus);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn routes(corpus: &[serde_json::Value]) -> Vec<&str> {
    corpus.iter().map(|t| t["route"].as_str().expect("a route")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corpus_keeps_a_rare_route_among_common_ones() {
    let server = Server::start();
    server.deploy("echo", &guest("echo"));
    server.set_policy("echo", "[record]\nkeep_sample = 5\n").await;
    // About 3 s of a common route (ids and query values vary, the route does not), with a rare
    // one twice in the middle.
    let common = "GET /items/:id?page";
    for n in 0..120u32 {
        if n == 60 || n == 61 {
            let rare = client().post(server.fn_url("echo", "/orders")).body("{}").send().await.unwrap();
            assert_eq!(rare.status(), 200);
        }
        let path = format!("/items/{}?page={n}", 1000 + n);
        assert_eq!(client().get(server.fn_url("echo", &path)).send().await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let corpus = settled_corpus(&server, "echo").await;
    let kept = routes(&corpus);
    assert!(!corpus.is_empty() && corpus.len() <= 5, "at most keep_sample corpus traces: {kept:?}");
    assert!(kept.contains(&"POST /orders"), "the rare route survives: {kept:?}");
    assert!(kept.contains(&common), "{kept:?}");
    assert!(kept.iter().filter(|r| **r == common).count() < corpus.len(), "{kept:?}");
    assert!(corpus.iter().all(|t| t["status"] == 200), "only successful runs: {corpus:?}");
    // The corpus is not counted against the other traces: none were kept besides it.
    let url = format!("{}/v1/traces?function=echo", server.url);
    let listed: serde_json::Value = server.admin().get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["traces"].as_array().unwrap().len(), corpus.len(), "{listed}");

    // keep_sample = 0 keeps no more (what is kept stays until the function's next trace).
    server.set_policy("echo", "[record]\nkeep_sample = 0\n").await;
    for n in 0..5 {
        client().put(server.fn_url("echo", &format!("/new/{n}"))).send().await.unwrap();
    }
    let after = settled_corpus(&server, "echo").await;
    assert!(!routes(&after).contains(&"PUT /new/:id"), "{after:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_one_route_records_a_few_runs_a_second() {
    let server = Server::start();
    server.deploy("echo", &guest("echo"));
    server.set_policy("echo", "[record]\nkeep_sample = 50\n").await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let url = server.fn_url("echo", "/hot?x=1");
        tasks.push(tokio::spawn(async move {
            let client = client();
            for _ in 0..25 {
                assert_eq!(client.get(&url).header("x-worker", worker.to_string()).send().await.unwrap().status(), 200);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let corpus = settled_corpus(&server, "echo").await;
    // One draw every 500 ms at steady state, whatever the load (and the first run).
    let most = 2.0 + elapsed * 2.0;
    assert!(!corpus.is_empty() && corpus.len() as f64 <= most, "{} of 200 runs in {elapsed:.2} s", corpus.len());
}

/// Corpus traces per function, from one listing of the node's newest traces.
async fn corpus_by_function(server: &Server) -> std::collections::HashMap<String, usize> {
    let url = format!("{}/v1/traces?limit=1000", server.url);
    let listed: serde_json::Value = server.admin().get(&url).send().await.unwrap().json().await.unwrap();
    let mut counts = std::collections::HashMap::new();
    for trace in listed["traces"].as_array().expect("a list").iter().filter(|t| t["reason"] == "corpus") {
        *counts.entry(trace["function"].as_str().expect("a function").to_string()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_flooding_new_routes_cannot_keep_the_nodes_corpus_budget_from_the_others() {
    let server = Server::start();
    let (flooding, quiet) = (15, 30);
    for n in 0..flooding {
        server.deploy(&format!("flood-{n}"), &guest("echo"));
    }
    for n in 0..quiet {
        server.deploy(&format!("quiet-{n}"), &guest("echo"));
    }
    // Each second, first 10 new routes on each flooding function (150 first runs, over the
    // node's 100 draws a second), then one run of each quiet function.
    let client = client();
    let started = Instant::now();
    for second in 0..4u64 {
        let floods = (0..flooding).flat_map(|n| (0..10).map(move |route| (n, route))).map(|(n, route)| {
            let url = server.fn_url(&format!("flood-{n}"), &format!("/route-{second}-{route}"));
            let client = client.clone();
            async move { assert_eq!(client.get(url).send().await.unwrap().status(), 200) }
        });
        futures::future::join_all(floods).await;
        for n in 0..quiet {
            assert_eq!(client.get(server.fn_url(&format!("quiet-{n}"), "/")).send().await.unwrap().status(), 200);
        }
        tokio::time::sleep_until((started + Duration::from_secs(second + 1)).into()).await;
    }
    // The trace writer stores after the responses: wait (bounded) until every quiet function
    // has its trace, then judge.
    let deadline = Instant::now() + Duration::from_secs(10);
    let counts = loop {
        let counts = corpus_by_function(&server).await;
        if (0..quiet).all(|n| counts.contains_key(&format!("quiet-{n}"))) || Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let starved: Vec<String> = (0..quiet).map(|n| format!("quiet-{n}")).filter(|f| !counts.contains_key(f)).collect();
    assert!(starved.is_empty(), "functions never drawn for their corpus: {starved:?} ({counts:?})");
    // (How many draws the node's budget lets through a second is the sampler's unit test.)
    assert!(counts.keys().any(|f| f.starts_with("flood-")), "the flooding functions are drawn too: {counts:?}");
}
