//! GCRA rate limits advertised with the IETF RateLimit headers, concurrency limits, and the
//! policy files that set them.

use std::time::Duration;

use sfv::{BareItem, Parser};

use crate::harness::{Server, client, guest, problem};

/// `(policy id, params)` of a RateLimit-Policy or RateLimit header, parsed as an RFC 9651 list.
fn structured(response: &reqwest::Response, header: &str) -> (String, Vec<(String, i64)>) {
    let value = response.headers().get(header).unwrap_or_else(|| panic!("no {header} header")).to_str().unwrap();
    let list = Parser::new(value)
        .parse::<sfv::List>()
        .unwrap_or_else(|e| panic!("{header}: {value:?} is not a structured field: {e}"));
    assert_eq!(list.len(), 1, "{value}");
    let sfv::ListEntry::Item(item) = &list[0] else { panic!("{value}: not an item") };
    let BareItem::String(id) = &item.bare_item else { panic!("{value}: id is not a string") };
    let params = item
        .params
        .iter()
        .map(|(key, value)| match value {
            BareItem::Integer(n) => (key.as_str().to_string(), i64::from(*n)),
            other => panic!("{value:?}: parameter {key} is {other:?}, not an integer"),
        })
        .collect();
    (id.as_str().to_string(), params)
}

fn param(params: &[(String, i64)], key: &str) -> i64 {
    params.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("no {key} in {params:?}")).1
}

async fn hello_server(policy: &str) -> Server {
    let server = Server::start();
    server.deploy("hello", &guest("hello"));
    server.set_policy("hello", policy).await;
    server
}

#[tokio::test]
async fn a_burst_beyond_the_quota_gets_429_with_headers_and_the_guest_does_not_run() {
    let server = hello_server("[rate]\nquota = 3\nwindow = \"3s\"\n").await;
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let response = client().get(server.fn_url("hello", "/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let (id, policy) = structured(&response, "ratelimit-policy");
        assert_eq!((id.as_str(), param(&policy, "q"), param(&policy, "w")), ("hello", 3, 3));
        let (_, state) = structured(&response, "ratelimit");
        remaining.push(param(&state, "r"));
        assert!(param(&state, "t") >= 1);
    }
    assert_eq!(remaining, [2, 1, 0], "r counts down");
    let refused = client().get(server.fn_url("hello", "/")).send().await.unwrap();
    let (_, state) = structured(&refused, "ratelimit");
    let retry_after: i64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(param(&state, "r"), 0);
    assert!(retry_after >= param(&state, "t") && retry_after >= 1, "Retry-After {retry_after} before t");
    problem(refused, 429).await;
    let metrics = server.admin().get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ledge_requests_total{function=\"hello\",status=\"429\"} 1"));
    assert!(
        metrics.contains("ledge_instantiation_duration_seconds_count{function=\"hello\",start=\"warm\"} 2"),
        "the refused request ran no guest"
    );
}

#[tokio::test]
async fn the_budget_recovers_at_the_configured_rate() {
    let server = hello_server("[rate]\nquota = 2\nwindow = \"1s\"\n").await;
    for _ in 0..2 {
        assert_eq!(client().get(server.fn_url("hello", "/")).send().await.unwrap().status(), 200);
    }
    assert_eq!(client().get(server.fn_url("hello", "/")).send().await.unwrap().status(), 429);
    // One request's worth comes back every 500 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let response = client().get(server.fn_url("hello", "/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(param(&structured(&response, "ratelimit").1, "r"), 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = client().get(server.fn_url("hello", "/")).send().await.unwrap();
    assert_eq!(param(&structured(&response, "ratelimit").1, "r"), 1, "a full bucket again, less this request");
}

#[tokio::test]
async fn two_callers_have_independent_budgets_and_a_token_rate_narrows_the_policy() {
    let server = hello_server("[rate]\nquota = 2\nwindow = \"60s\"\n").await;
    let (alice, bob) = (server.mint(&[]), server.mint(&[]));
    for token in [&alice, &alice] {
        assert_eq!(client().get(server.fn_url("hello", "/")).bearer_auth(token).send().await.unwrap().status(), 200);
    }
    assert_eq!(client().get(server.fn_url("hello", "/")).bearer_auth(&alice).send().await.unwrap().status(), 429);
    assert_eq!(client().get(server.fn_url("hello", "/")).bearer_auth(&bob).send().await.unwrap().status(), 200);

    server.set_policy("hello", "[rate]\nquota = 1000\nwindow = \"1s\"\n").await;
    let narrow = server.mint(&["rate = 1/m"]);
    let first = client().get(server.fn_url("hello", "/")).bearer_auth(&narrow).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let (_, policy) = structured(&first, "ratelimit-policy");
    assert_eq!((param(&policy, "q"), param(&policy, "w")), (1, 60), "the stricter quota is advertised");
    let second = client().get(server.fn_url("hello", "/")).bearer_auth(&narrow).send().await.unwrap();
    assert_eq!(second.status(), 429);
    let retry_after: u64 = second.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((50..=60).contains(&retry_after), "{retry_after}");
}

#[tokio::test]
async fn concurrent_instances_beyond_the_limit_get_503_with_headers() {
    let server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    server.set_policy("misbehave", "[limits]\nmax_concurrency = 1\n").await;
    let busy = tokio::spawn(client().get(server.fn_url("misbehave", "/slow-write?ms=800")).send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = client().get(server.fn_url("misbehave", "/fine")).send().await.unwrap();
    structured(&refused, "ratelimit");
    assert!(problem(refused, 503).await["detail"].as_str().unwrap().contains("busy"));
    assert_eq!(busy.await.unwrap().unwrap().status(), 200);
    // The slot frees when the busy instance is torn down, just after its response ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client().get(server.fn_url("misbehave", "/fine")).send().await.unwrap().status() != 200 {
        assert!(std::time::Instant::now() < deadline, "the slot was never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn bad_policies_are_refused_and_the_old_policy_stays() {
    let server = hello_server("[rate]\nquota = 1\nwindow = \"60s\"\n").await;
    let bad = server
        .admin()
        .put(format!("{}/v1/functions/hello/policy", server.url))
        .body("[rate]\nquota = 1\nwindwo = \"1s\"\n");
    let detail = problem(bad.send().await.unwrap(), 400).await["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("windwo") && detail.contains("line 3"), "{detail}");
    let zero =
        server.admin().put(format!("{}/v1/functions/hello/policy", server.url)).body("[limits]\nmemory = \"0MiB\"\n");
    assert!(problem(zero.send().await.unwrap(), 400).await["detail"].as_str().unwrap().contains("memory"));
    assert_eq!(client().get(server.fn_url("hello", "/")).send().await.unwrap().status(), 200);
    assert_eq!(client().get(server.fn_url("hello", "/")).send().await.unwrap().status(), 429, "quota 1 still in force");
}

#[tokio::test]
async fn policy_files_apply_without_a_restart_and_a_broken_edit_changes_nothing() {
    let server = Server::start();
    server.deploy("hello", &guest("hello"));
    let file = server.data_dir.with_file_name("policies").join("hello.toml");
    std::fs::write(&file, "public = true\n[rate]\nquota = 1\nwindow = \"60s\"\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = client().get(server.fn_url("hello", "/")).send().await.unwrap();
        if response.status() == 200 && structured(&response, "ratelimit-policy").1.contains(&("q".to_string(), 1)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the policy file was not picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::fs::write(&file, "public = true\n[rate]\nquota = \"many\"\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(server.log().contains("policy file refused"));
    let response = client().get(server.fn_url("hello", "/")).send().await.unwrap();
    assert_eq!(response.status(), 429, "the old quota stays in force");
}

#[tokio::test]
async fn a_flood_of_distinct_rate_caveats_never_shakes_off_a_tokens_own_rate_nor_resets_another_familys() {
    let server = hello_server("public = false\n[rate]\nquota = 100000\nwindow = \"60s\"\n").await;
    let url = server.fn_url("hello", "/");
    let get = |token: &str| client().get(&url).bearer_auth(token).send();
    let hourly = server.mint(&["fn = hello", "rate = 1/h"]);
    assert_eq!(get(&hourly).await.unwrap().status(), 200);
    assert_eq!(get(&hourly).await.unwrap().status(), 429, "its burst of one is spent");
    // Other families' budgets, before the flood: `rate = n/h` for n = 3..=9, two requests each.
    let others: Vec<(i64, String)> =
        (3..=9).map(|n| (n, server.mint(&["fn = hello", &format!("rate = {n}/h")]))).collect();
    for (n, token) in &others {
        for expected in [n - 1, n - 2] {
            let response = get(token).await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(param(&structured(&response, "ratelimit").1, "r"), expected);
        }
    }

    // No key needed: the holder attenuates its token 150 times, each time with 7 more distinct
    // rates (10/h to 1059/h: 1,050 in all, none the other families', where 64 caveat limiters once
    // made a table full), and cycles through the tokens.
    let flood: Vec<String> = (0..150)
        .map(|i| {
            let mut command = crate::harness::ledge();
            command.args(["token", "attenuate", &hourly]);
            for n in 0..7 {
                command.args(["--caveat", &format!("rate = {}/h", 10 + 7 * i + n)]);
            }
            let output = command.output().expect("ledge token attenuate");
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            String::from_utf8(output.stdout).expect("utf-8").trim().to_string()
        })
        .collect();
    for round in 0..2 {
        for (i, token) in flood.iter().enumerate() {
            let response = get(token).await.unwrap();
            assert_eq!(response.status(), 429, "round {round}, token {i}: the 1/h limit was shaken off");
            assert!(response.headers().contains_key("retry-after"));
        }
    }
    assert_eq!(get(&hourly).await.unwrap().status(), 429, "no fresh burst for the token itself");

    // No other family's limiter was reset: each one's next request leaves what it would have.
    for (n, token) in &others {
        let response = get(token).await.unwrap();
        assert_eq!(response.status(), 200);
        let (_, policy) = structured(&response, "ratelimit-policy");
        assert_eq!((param(&policy, "q"), param(&policy, "w")), (*n, 3600));
        assert_eq!(
            param(&structured(&response, "ratelimit").1, "r"),
            n - 3,
            "the flood reset the {n}/h family's budget"
        );
    }
}
