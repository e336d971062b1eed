//! Access holds against a hostile caller or token holder: caveats only narrow, the guest never
//! sees a ledge token, confined tokens cannot widen policies, stores stay apart, path-prefix
//! sees the path the guest sees, and callers without a token learn nothing and cost little.

use crate::harness::{Server, client, guest, problem, raw_request};

/// A server with `name` deployed from `file` under `policy`.
async fn server_with(name: &str, file: &str, policy: &str) -> Server {
    let server = Server::start();
    server.deploy(name, &guest(file));
    server.set_policy(name, policy).await;
    server
}

async fn status(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn a_rate_caveat_never_widens_the_policy_and_fresh_caveats_bring_no_fresh_budget() {
    let server = server_with("hello", "hello", "public = false\n[rate]\nquota = 5\nwindow = \"60s\"\n").await;
    let token = server.mint(&["fn = hello"]);
    let wide = crate::harness::attenuate(&token, "rate = 5999/h");
    let url = server.fn_url("hello", "/");
    let mut allowed = 0;
    for _ in 0..10 {
        if status(client().get(&url).bearer_auth(&wide)).await == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 5, "a 5999/h caveat gets exactly the policy's burst of 5");
    for caveat in ["rate = 1/h", "rate = 2/h", "rate = 3/h", "rate = 100/s"] {
        let fresh = crate::harness::attenuate(&token, caveat);
        let refused = client().get(&url).bearer_auth(&fresh).send().await.unwrap();
        assert_eq!(refused.status(), 429, "{caveat} brought a fresh budget");
    }

    // Both quotas are charged; the headers advertise the one that refuses first.
    let other = server.mint(&["fn = hello", "rate = 2/m"]);
    let first = client().get(&url).bearer_auth(&other).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["ratelimit-policy"], "\"hello\";q=2;w=60");
    assert_eq!(first.headers()["ratelimit"].to_str().unwrap().split(';').nth(1), Some("r=1"));
    assert_eq!(status(client().get(&url).bearer_auth(&other)).await, 200);
    assert_eq!(status(client().get(&url).bearer_auth(&other)).await, 429);
}

#[tokio::test]
async fn the_guest_never_sees_a_ledge_token_but_other_credentials_reach_it() {
    let server = server_with("echo", "echo", "public = true\n").await;
    let token = server.mint(&["fn = echo"]);
    let with_token = client().get(server.fn_url("echo", "/")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(with_token.status(), 200);
    assert!(with_token.headers().get("x-echo-header-authorization").is_none(), "the ledge token reached the guest");
    let admin = client().get(server.fn_url("echo", "/")).bearer_auth(&server.admin_token).send().await.unwrap();
    assert!(admin.headers().get("x-echo-header-authorization").is_none(), "the admin token reached the guest");

    // A JWT or a webhook signature is the function's business: untouched, and not a failed
    // authentication however often it comes (more often than failures are allowed).
    let jwt = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";
    for _ in 0..40 {
        let response = client().get(server.fn_url("echo", "/")).header("authorization", jwt).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-echo-header-authorization"], jwt);
    }
    let basic = client().get(server.fn_url("echo", "/")).header("authorization", "Basic YWxpY2U6c2VjcmV0");
    assert_eq!(basic.send().await.unwrap().headers()["x-echo-header-authorization"], "Basic YWxpY2U6c2VjcmV0");

    // On a private function only a ledge token opens the door, and it is stripped too.
    server.set_policy("echo", "public = false\n").await;
    problem(client().get(server.fn_url("echo", "/")).header("authorization", jwt).send().await.unwrap(), 401).await;
    let private = client().get(server.fn_url("echo", "/")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(private.status(), 200);
    assert!(private.headers().get("x-echo-header-authorization").is_none());
}

#[tokio::test]
async fn a_token_confined_to_a_function_may_tighten_its_policy_but_not_widen_it() {
    let server = server_with("hello", "hello", "public = false\n").await;
    let confined = server.mint(&["fn = hello", "op in manage,deploy"]);
    let put = |text: &'static str| {
        client().put(format!("{}/v1/functions/hello/policy", server.url)).bearer_auth(&confined).body(text).send()
    };
    // Fields a policy leaves out fall back to the default (public here): leaving out
    // `public = false` widens too.
    for (policy, field) in [
        ("[limits]\ntimeout = \"2s\"\n", "`public`"),
        ("public = true\n", "`public`"),
        ("public = false\n[kv]\nstores = [\"payments\"]\n", "`kv.stores`"),
        ("public = false\n[outbound]\nallow = [\"evil.example\"]\n", "`outbound.allow`"),
        ("public = false\n[limits]\ntimeout = \"60s\"\n", "`limits.timeout`"),
        ("public = false\n[rate]\nquota = 1000000\nwindow = \"1s\"\nburst = 2000000\n", "`rate.burst`"),
        ("public = false\n[kv]\nmax_bytes = \"1GiB\"\n", "`kv.max_bytes`"),
    ] {
        let refused = problem(put(policy).await.unwrap(), 403).await;
        let detail = refused["detail"].as_str().unwrap();
        assert!(detail.contains(field) && detail.contains("fn"), "{policy}: {detail}");
    }
    assert_eq!(status(client().get(server.fn_url("hello", "/"))).await, 401, "still private");
    let tighter = "public = false\n[limits]\ntimeout = \"2s\"\nmax_concurrency = 4\n";
    assert_eq!(put(tighter).await.unwrap().status(), 204, "tightening");

    // A deploy with a policy is held to the same rule, and refusing it changes nothing.
    let form = reqwest::multipart::Form::new()
        .part("component", reqwest::multipart::Part::bytes(std::fs::read(guest("hello")).unwrap()))
        .part("policy", reqwest::multipart::Part::text("public = true\n"));
    let deploy = client().put(format!("{}/v1/functions/hello", server.url)).bearer_auth(&confined).multipart(form);
    problem(deploy.send().await.unwrap(), 403).await;
    let meta: serde_json::Value =
        server.admin().get(format!("{}/v1/functions/hello", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["version"], 1);
    assert_eq!(status(client().get(server.fn_url("hello", "/"))).await, 401, "still private");
    // A manage token without `fn` caveat may widen.
    server.set_policy("hello", "public = true\n").await;
    assert_eq!(status(client().get(server.fn_url("hello", "/"))).await, 200);
}

#[tokio::test]
async fn store_names_follow_the_name_rule_and_no_store_reaches_into_another() {
    let server = Server::start();
    server.deploy("kv", &guest("kv-wasi"));
    for bad in ["a/b", "Shared", "", "-x"] {
        let response = server
            .admin()
            .put(format!("{}/v1/functions/kv/policy", server.url))
            .body(format!("[kv]\nstores = [\"{bad}\"]\n"))
            .send()
            .await
            .unwrap();
        let detail = problem(response, 400).await["detail"].as_str().unwrap().to_string();
        assert!(detail.contains("store name"), "{bad}: {detail}");
    }
    server.set_policy("kv", "[kv]\nstores = [\"a\", \"a-b\"]\n").await;
    let call = |query: &str| {
        let request = client().get(server.fn_url("kv", query)).send();
        async move { request.await.unwrap().text().await.unwrap().trim().to_string() }
    };
    assert_eq!(call("/set?bucket=a&key=b/k&value=in-a").await, "ok");
    assert_eq!(call("/set?bucket=a-b&key=k&value=in-a-b").await, "ok");
    assert_eq!(call("/list?bucket=a").await, "b/k");
    assert_eq!(call("/list?bucket=a-b").await, "k");
    assert_eq!(call("/get?bucket=a-b&key=b/k").await, "none");
    assert_eq!(call("/list").await, "", "the function's own keyspace is apart too");
}

#[tokio::test]
async fn path_prefix_is_checked_on_the_resolved_path_the_guest_receives() {
    let server = server_with("echo", "echo", "public = false\n").await;
    let token = server.mint(&["fn = echo", "path-prefix = /api/"]);
    let auth = format!("Bearer {token}");
    let headers = [("Authorization", auth.as_str())];
    for escape in
        ["/fn/echo/api/../admin", "/fn/echo/api/%2e%2e/admin", "/fn/echo/api/%2E./admin", "/fn/echo/api/./../x"]
    {
        let (code, response) = raw_request(&server, "GET", escape, &headers);
        assert_eq!(code, 403, "{escape}: {response}");
        assert!(response.contains("outside the allowed prefix"), "{escape}: {response}");
    }
    let (code, response) = raw_request(&server, "GET", "/fn/echo/api/x/%2e%2e/y?q=1", &headers);
    assert_eq!(code, 200, "{response}");
    assert!(response.to_ascii_lowercase().contains("x-echo-path: /api/y\r\n"), "{response}");
    assert!(response.to_ascii_lowercase().contains("x-echo-query: q=1\r\n"), "{response}");

    // Whole segments: `/api` takes `/api` and below it, never `/apix`.
    let segments = server.mint(&["fn = echo", "path-prefix = /api"]);
    let auth = format!("Bearer {segments}");
    let headers = [("Authorization", auth.as_str())];
    for (path, expected) in
        [("/fn/echo/api", 200), ("/fn/echo/api/x", 200), ("/fn/echo/apix", 403), ("/fn/echo/api-v2/x", 403)]
    {
        let (code, response) = raw_request(&server, "GET", path, &headers);
        assert_eq!(code, expected, "{path}: {response}");
    }
    // An encoded slash or backslash would let a guest that decodes before it routes see a path
    // the check did not: refused under a path-prefix, in either case.
    for (token, path) in [
        (&token, "/fn/echo/api/..%2Fadmin"),
        (&token, "/fn/echo/api/x%2f..%2f..%2fadmin"),
        (&segments, "/fn/echo/api%2F..%2Fadmin"),
        (&token, "/fn/echo/api/..%5Cadmin"),
        (&token, "/fn/echo/api/..\\admin"),
    ] {
        let auth = format!("Bearer {token}");
        let (code, response) = raw_request(&server, "GET", path, &[("Authorization", auth.as_str())]);
        assert_eq!(code, 403, "{path}: {response}");
        assert!(response.contains("encoded slash"), "{path}: {response}");
    }
}

#[tokio::test]
async fn callers_without_a_valid_token_cannot_tell_private_from_missing_and_are_limited() {
    let server = server_with("hello", "hello", "public = false\n").await;
    for token in [None, Some("garbage"), Some("eyJhbGciOiJub25lIn0.e30.")] {
        let ask = |name: &str| {
            let request = client().get(server.fn_url(name, "/"));
            match token {
                Some(token) => request.bearer_auth(token),
                None => request,
            }
        };
        let private = problem(ask("hello").send().await.unwrap(), 401).await;
        let missing = problem(ask("no-such-function").send().await.unwrap(), 401).await;
        assert_eq!(private["detail"], missing["detail"], "{token:?}");
    }
    // A valid token may learn that a function does not exist.
    problem(client().get(server.fn_url("nothing", "/")).bearer_auth(&server.admin_token).send().await.unwrap(), 404)
        .await;

    // Metrics name every function: a manage token without `fn` caveat only.
    problem(client().get(format!("{}/metrics", server.url)).send().await.unwrap(), 401).await;
    let confined = server.mint(&["fn = hello"]);
    problem(client().get(format!("{}/metrics", server.url)).bearer_auth(&confined).send().await.unwrap(), 403).await;
    let text = server.admin().get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("function=\"hello\""), "{text}");

    // Failed authentications are limited per client address: the budget (30) spent, the next
    // attempt is refused before its signature is checked, valid token or not.
    let mut failures = 0;
    let refused = loop {
        let response = client().get(server.fn_url("hello", "/")).bearer_auth("garbage").send().await.unwrap();
        if response.status() == 429 {
            break response;
        }
        assert_eq!(response.status(), 401);
        failures += 1;
        assert!(failures <= 40, "failed authentications are not limited");
    };
    // Four failures were charged above (two bad tokens, twice each), none for missing tokens:
    // 26 more fit in the burst of 30, plus one per 2 s the test took (the budget refills at
    // 30 a minute), so a slow machine may see one or two more.
    assert!((26..=28).contains(&failures), "limited after {failures} more failures");
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(problem(refused, 429).await["detail"].as_str().unwrap().contains("failed authentications"));
    let valid = client().get(server.fn_url("hello", "/")).bearer_auth(&server.admin_token).send().await.unwrap();
    assert_eq!(valid.status(), 429);
}

#[tokio::test]
async fn metrics_are_open_on_the_metrics_address_only() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let server = Server::start_with(&["--metrics-listen", &format!("127.0.0.1:{port}")]);
    let open = client().get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap();
    assert_eq!(open.status(), 200);
    assert!(open.text().await.unwrap().contains("ledge_live_instances"));
    problem(client().get(format!("http://127.0.0.1:{port}/v1/functions")).send().await.unwrap(), 404).await;
    problem(client().get(format!("{}/metrics", server.url)).send().await.unwrap(), 401).await;
}

#[tokio::test]
async fn callers_cannot_set_the_headers_ledge_sets_for_guests() {
    let server = server_with("echo", "echo", "public = true\n").await;
    let forged = [
        ("ledge-schedule", "1"),
        ("ledge-queue", "orders"),
        ("ledge-message-id", "m1"),
        ("ledge-attempt", "1"),
        ("ledge-sent-at", "2026-01-01T00:00:00Z"),
        ("ledge-record", "1"),
        ("ledge-anything", "x"),
    ];
    let mut request = client().get(server.fn_url("echo", "/")).header("x-custom", "kept");
    for (name, value) in forged {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let seen: Vec<String> = response
        .headers()
        .keys()
        .filter_map(|name| name.as_str().strip_prefix("x-echo-header-").map(str::to_string))
        .collect();
    assert!(seen.iter().any(|name| name == "x-custom"), "the guest sees the caller's own headers: {seen:?}");
    let leaked: Vec<&String> = seen.iter().filter(|name| name.starts_with("ledge-")).collect();
    assert!(leaked.is_empty(), "ledge headers from a caller reached the guest: {leaked:?}");

    // `ledge-record` is still read (a manage token gets a trace), then removed: the guest does
    // not see it, and the recording holds what the guest saw, so it replays the same.
    let recorded = client()
        .get(server.fn_url("echo", "/"))
        .bearer_auth(&server.admin_token)
        .header("ledge-record", "1")
        .send()
        .await
        .unwrap();
    let trace = recorded.headers().get("ledge-trace").expect("the run is recorded").to_str().unwrap().to_string();
    assert!(!recorded.headers().keys().any(|name| name.as_str().starts_with("x-echo-header-ledge-")));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let replay = loop {
        let output = server.cli(&["replay", &trace]);
        if output.status.code() != Some(2) || std::time::Instant::now() > deadline {
            break output;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(replay.status.code(), Some(0), "{}", String::from_utf8_lossy(&replay.stdout));
}
