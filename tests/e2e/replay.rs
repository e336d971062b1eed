//! Record and replay: runs are recorded at the host boundary (on request, on failure, by
//! sampling), kept per function with retention, readable only with a manage token, and
//! `ledge replay` re-executes them offline (exit 0 same, 1 diverged, 2 could not replay).

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::harness::{Server, client, guest, ledge, metric};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `ledge replay ARGS` against `server` with its admin token.
fn replay(server: &Server, args: &[&str]) -> Output {
    let mut all = vec!["replay"];
    all.extend_from_slice(args);
    server.cli(&all)
}

/// `request` with the admin token and `ledge-record: 1`; returns (status, body, ledge-trace).
async fn recorded(server: &Server, request: reqwest::RequestBuilder) -> (u16, String, Option<String>) {
    let response = request
        .bearer_auth(&server.admin_token)
        .header("ledge-record", "1")
        .send()
        .await
        .expect("request reaches the server");
    let trace = response.headers().get("ledge-trace").map(|v| v.to_str().unwrap().to_string());
    (response.status().as_u16(), response.text().await.unwrap(), trace)
}

/// The function's traces as `GET /v1/traces` lists them (newest first), once the writer has
/// stored `count` of them (bounded wait: traces are written after the response); its
/// verification corpus (`[record] keep_sample`, tested in `corpus.rs`) left out.
async fn traces(server: &Server, function: &str, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = format!("{}/v1/traces?function={function}", server.url);
        let listed: serde_json::Value = server.admin().get(url).send().await.unwrap().json().await.unwrap();
        let listed: Vec<serde_json::Value> =
            listed["traces"].as_array().expect("a list").iter().filter(|t| t["reason"] != "corpus").cloned().collect();
        if listed.len() >= count || Instant::now() > deadline {
            return listed;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A recorded first increment of the deployed counter (answering 1): its trace id, once stored.
async fn recorded_increment(server: &Server) -> String {
    let (status, body, trace) = recorded(server, client().post(server.fn_url("counter", "/"))).await;
    assert_eq!((status, body.as_str()), (200, "1\n"));
    let id = trace.expect("a recorded response names its trace");
    assert_eq!(traces(server, "counter", 1).await.len(), 1);
    id
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", stdout(output), stderr(output)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_counter_increment_replays_offline_to_the_same_response_and_changes_nothing() {
    let server = Server::start();
    server.deploy("counter", &guest("counter"));
    let id = recorded_increment(&server).await;

    // By id: the trace and its component come from the server.
    let output = replay(&server, &[&id]);
    assert_eq!(output.status.code(), Some(0), "{}{}", stdout(&output), stderr(&output));
    let timeline = stdout(&output);
    assert!(timeline.contains("#2    ledge:platform/transactions.get(\"hits\") -> none"), "{timeline}");
    assert!(timeline.contains("#4    ledge:platform/transactions.commit() -> "), "{timeline}");
    assert!(timeline.contains("same: the replay reproduced the recorded run (4 host calls)"), "{timeline}");

    // Exported with its component, it replays with no server at all.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("counter.trace");
    let export = server.cli(&["trace", "get", &id, "-o", file.to_str().unwrap(), "--with-component"]);
    assert!(export.status.success(), "{}", stderr(&export));
    let offline = ledge()
        .args(["replay", file.to_str().unwrap(), "--json"])
        .env("LEDGE_SERVER", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(offline.status.code(), Some(0), "{}{}", stdout(&offline), stderr(&offline));
    let report = json(&offline);
    assert_eq!(report["verdict"], "same");
    // The head as the guest set it: whether ledge sent the body whole (with `content-length`)
    // or streamed it depends on timing, which a replay must not compare.
    let headers = report["recorded"]["headers"].to_string();
    assert!(headers.contains("content-type") && !headers.contains("content-length"), "{headers}");
    assert_eq!(report["replayed"]["body"], "1\n");
    assert_eq!(report["replayed"]["status"], 200);

    // Replaying wrote nothing: the live count is still 1, and the next increment makes 2.
    let peek = client().get(server.fn_url("counter", "/peek")).send().await.unwrap().text().await.unwrap();
    assert_eq!(peek, "1\n");

    // Stepping: stop after host call 2 and show what the guest had read and buffered.
    let stepped = ledge().args(["replay", file.to_str().unwrap(), "--until", "3"]).output().unwrap();
    assert_eq!(stepped.status.code(), Some(0), "{}", stderr(&stepped));
    let state = stdout(&stepped);
    assert!(state.contains("stopped after host call 3:"), "{state}");
    assert!(state.contains("key-value reads: get(\"hits\") = none"), "{state}");
    assert!(state.contains("buffered writes: put(\"hits\", \"1\")"), "{state}");
    assert!(state.contains("response: not set yet"), "{state}");
    assert!(!state.contains("#4"), "the replay stops before host call 4: {state}");

    // A caller who may not read traces asks for a recording: nothing is recorded or named.
    let anonymous = client().post(server.fn_url("counter", "/")).header("ledge-record", "1").send().await.unwrap();
    assert_eq!(anonymous.status(), 200);
    assert!(anonymous.headers().get("ledge-trace").is_none());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(traces(&server, "counter", 2).await.len(), 1);

    // Removing the function removes its traces.
    assert!(server.cli(&["rm", "counter"]).status.success());
    assert_eq!(traces(&server, "counter", 0).await.len(), 0);
    let gone = replay(&server, &[&id]);
    assert_eq!(gone.status.code(), Some(2), "{}", stderr(&gone));
    assert!(stderr(&gone).contains("404"), "{}", stderr(&gone));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_called_an_outbound_host_replays_with_that_host_down() {
    let target = Server::start();
    let target_authority = target.url.trim_start_matches("http://").to_string();
    let server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    server.set_policy("misbehave", "[outbound]\nallow = [\"127.0.0.1\"]\n").await;
    let url = server.fn_url("misbehave", &format!("/outbound?authority={target_authority}&path=/healthz"));
    let (status, body, trace) = recorded(&server, client().get(url)).await;
    assert_eq!((status, body.as_str()), (200, "status 200\n"));
    let id = trace.expect("a trace id");
    traces(&server, "misbehave", 1).await;
    drop(target);

    let output = replay(&server, &[&id]);
    assert_eq!(output.status.code(), Some(0), "{}{}", stdout(&output), stderr(&output));
    let timeline = stdout(&output);
    assert!(
        timeline.contains(&format!("wasi:http/outgoing-handler.handle(GET http://{target_authority}/healthz) -> 200")),
        "{timeline}"
    );
    // Live, the host is down now: the same request fails, the replay did not.
    let live = client()
        .get(server.fn_url("misbehave", &format!("/outbound?authority={target_authority}&path=/healthz")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(live.starts_with("refused"), "{live}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trap_is_recorded_without_asking_and_the_replay_traps_at_the_same_host_call() {
    let server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    // Anonymous: recorded (the default `[record] errors = true`), but not named to the caller.
    let anonymous = client().get(server.fn_url("misbehave", "/count-then-trap")).send().await.unwrap();
    assert_eq!(anonymous.status(), 500);
    assert!(anonymous.headers().get("ledge-trace").is_none());
    // A caller who may manage the function is told which trace it is.
    let managed = client()
        .get(server.fn_url("misbehave", "/count-then-trap"))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(managed.status(), 500);
    let id = managed.headers().get("ledge-trace").expect("the trace is named").to_str().unwrap().to_string();
    let listed = traces(&server, "misbehave", 2).await;
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|t| t["status"] == 500 && t["reason"] == "error"), "{listed:?}");
    // A successful request is not kept.
    client().get(server.fn_url("misbehave", "/")).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(traces(&server, "misbehave", 3).await.len(), 2);

    let output = replay(&server, &[&id, "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report = json(&output);
    assert_eq!(report["verdict"], "same");
    let failure = report["replayed"]["failure"].as_str().expect("the replay trapped");
    assert!(failure.starts_with("trap at host call 4: "), "{failure}");
    assert_eq!(report["replayed"]["failure"], report["recorded"]["failure"]);
    let logs = report["logs"].to_string();
    assert!(logs.contains("trapped after counting to 2"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn replaying_against_a_changed_build_reports_the_divergence_and_the_response_diff() {
    let server = Server::start();
    server.deploy("counter", &guest("counter"));
    let id = recorded_increment(&server).await;
    let hello = guest("hello");
    let output = replay(&server, &[&id, "--against", hello.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}{}", stdout(&output), stderr(&output));
    let report = stdout(&output);
    assert!(report.contains("diverged at host call 1:"), "{report}");
    assert!(report.contains("the trace has: 4 more host calls (ledge:platform/transactions.begin next)"), "{report}");
    assert!(report.contains("recorded response: Some(200) 1"), "{report}");
    assert!(report.contains("replayed response: Some(200) Hello"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_the_newest_traces_within_count_and_bytes() {
    let server = Server::start();
    server.deploy("counter", &guest("counter"));
    server.set_policy("counter", "[record]\nsample = 1.0\nmax_traces = 3\n").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let response =
            client().post(server.fn_url("counter", "/")).bearer_auth(&server.admin_token).send().await.unwrap();
        ids.push(response.headers().get("ledge-trace").expect("sampled runs are named").to_str().unwrap().to_string());
        // Ids are per millisecond: keep their order unambiguous.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The writer stores in order; wait until the fifth is in, then only three are kept.
    let deadline = Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let listed = traces(&server, "counter", 1).await;
        if listed.first().is_some_and(|t| t["id"] == ids[4].as_str()) || Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let kept: Vec<&str> = listed.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(kept, vec![ids[4].as_str(), ids[3].as_str(), ids[2].as_str()]);
    assert!(listed.iter().all(|t| t["reason"] == "sampled"));
    assert_eq!(metric(&server, "ledge_traces_stored_total").await, 5.0);
    assert_eq!(metric(&server, "ledge_traces_dropped_total").await, 0.0);

    // Bytes: each counter trace is a few hundred bytes, so 1000 bytes keep at most three and at
    // least one.
    server.set_policy("counter", "[record]\nsample = 1.0\nmax_traces = 100\nmax_trace_bytes = 1000\n").await;
    for _ in 0..6 {
        client().post(server.fn_url("counter", "/")).send().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listed = traces(&server, "counter", 1).await;
    let bytes: u64 = listed.iter().map(|t| t["size"].as_u64().unwrap()).sum();
    assert!(bytes <= 1000 && !listed.is_empty(), "{} traces, {bytes} bytes", listed.len());

    // A run too large to record whole (over 8 MiB of body) is not kept.
    server.deploy("echo", &guest("echo"));
    server.set_policy("echo", "[limits]\nmax_body = \"16MiB\"\n").await;
    let big = vec![b'x'; 9 << 20];
    let (status, _, trace) = recorded(&server, client().post(server.fn_url("echo", "/")).body(big)).await;
    assert_eq!(status, 200);
    assert_eq!(trace, None, "an incomplete recording is not named");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(traces(&server, "echo", 1).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn reading_traces_needs_a_manage_token_for_their_function() {
    let server = Server::start();
    server.deploy("counter", &guest("counter"));
    server.deploy("hello", &guest("hello"));
    let id = recorded_increment(&server).await;
    let invoke_only = server.mint(&["op in invoke"]);
    let other_function = server.mint(&["fn = hello"]);
    let url = |path: &str| format!("{}{path}", server.url);

    let none = client().get(url("/v1/traces")).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let bad = server.admin().get(url("/v1/traces?function=../f")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let none = client().get(url(&format!("/v1/traces/{id}"))).send().await.unwrap();
    assert_eq!(none.status(), 401);
    // A caller who may not read a trace cannot tell it from one that does not exist, nor learn
    // whose it is.
    let last = id.chars().last().unwrap();
    let absent = format!("{}{}", &id[..id.len() - 1], if last == '0' { '1' } else { '0' });
    for token in [&invoke_only, &other_function] {
        let listing = client().get(url("/v1/traces?function=counter")).bearer_auth(token).send().await.unwrap();
        assert_eq!(listing.status(), 403);
        for suffix in ["", "/component"] {
            let answer = |trace: String| {
                let request = client().get(url(&format!("/v1/traces/{trace}{suffix}"))).bearer_auth(token);
                async move {
                    let response = request.send().await.unwrap();
                    (response.status().as_u16(), response.text().await.unwrap().replace(&trace, "ID"))
                }
            };
            let (existing, missing) = (answer(id.clone()).await, answer(absent.clone()).await);
            assert_eq!(existing, missing, "{suffix}");
            assert_eq!(existing.0, 404, "{suffix}: {}", existing.1);
            assert!(!existing.1.contains("counter"), "the answer names the function: {}", existing.1);
        }
    }
    let cli = ledge()
        .args(["traces", "counter"])
        .env("LEDGE_SERVER", &server.url)
        .env("LEDGE_TOKEN", &invoke_only)
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(1));
    assert!(stderr(&cli).contains("403"), "{}", stderr(&cli));
    let cli = ledge()
        .args(["replay", &id])
        .env("LEDGE_SERVER", &server.url)
        .env("LEDGE_TOKEN", &invoke_only)
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(2));
    // A manage token confined to the function reads it.
    let manager = server.mint(&["fn = counter", "op in manage"]);
    let read = client().get(url(&format!("/v1/traces/{id}"))).bearer_auth(&manager).send().await.unwrap();
    assert_eq!(read.status(), 200);
    assert!(read.bytes().await.unwrap().starts_with(b"LEDGETRC"));
    let log = server.log();
    let export = log.lines().find(|line| line.contains("action=\"trace-export\"")).expect("the export is audited");
    assert!(export.contains("target_name=\"counter\"") && export.contains(&id), "{export}");

    // Asking for a recording with an invoke-only token records nothing.
    let asked = client()
        .post(server.fn_url("counter", "/"))
        .bearer_auth(&invoke_only)
        .header("ledge-record", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), 200);
    assert!(asked.headers().get("ledge-trace").is_none());

    // Nor once the address has used up its failed authentications: the refusal comes before
    // the lookup, the same for a trace that exists and one that does not.
    for _ in 0..40 {
        client().get(url("/v1/traces")).bearer_auth("garbage").send().await.unwrap();
    }
    let answer = async |trace: &str| {
        let response = client().get(url(&format!("/v1/traces/{trace}"))).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap().replace(trace, "ID"))
    };
    let (existing, missing) = (answer(&id).await, answer(&absent).await);
    assert_eq!(existing, missing);
    assert_eq!(existing.0, 429, "{}", existing.1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_trace_or_an_unreachable_server_gives_exit_2_and_says_what_is_wrong() {
    let server = Server::start();
    server.deploy("counter", &guest("counter"));
    let id = recorded_increment(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.trace");
    assert!(server.cli(&["trace", "get", &id, "-o", file.to_str().unwrap()]).status.success());
    let bytes = std::fs::read(&file).unwrap();

    let check = |name: &str, content: &[u8], expected: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let output =
            ledge().args(["replay", path.to_str().unwrap()]).env("LEDGE_SERVER", &server.url).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{name}: {}", stderr(&output));
        assert!(stderr(&output).contains(expected), "{name}: {}", stderr(&output));
    };
    check("truncated.trace", &bytes[..bytes.len() / 2], "the file is cut short");
    let mut flipped = bytes.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x40;
    check("flipped.trace", &flipped, "corrupted: its checksum does not match");
    check("text.trace", b"hello, this is not a trace", "not a ledge trace");
    let mut newer = bytes.clone();
    newer[8] = 7;
    check("newer.trace", &newer, "trace format 7");

    let missing = replay(&server, &["0000000000000000000ab"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("no trace"), "{}", stderr(&missing));
    let unreachable = ledge().args(["replay", &id]).env("LEDGE_SERVER", "http://127.0.0.1:9").output().unwrap();
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(stderr(&unreachable).contains("cannot reach the ledge server"), "{}", stderr(&unreachable));
    let usage = ledge().args(["replay", "no-such-file"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
    assert!(stderr(&usage).contains("neither a file nor a trace id"), "{}", stderr(&usage));
    // The exported trace without a component, with the server gone: it says how to go on.
    let offline =
        ledge().args(["replay", file.to_str().unwrap()]).env("LEDGE_SERVER", "http://127.0.0.1:9").output().unwrap();
    assert_eq!(offline.status.code(), Some(2));
    assert!(stderr(&offline).contains("--with-component"), "{}", stderr(&offline));
    assert!(Path::new(&file).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trace_names_secrets_but_never_holds_their_values() {
    let server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    let set = server.cli(&["config", "set", "misbehave", "API_KEY", "s3cret-value", "--secret"]);
    assert!(set.status.success(), "{}", stderr(&set));
    let (status, body, trace) =
        recorded(&server, client().get(server.fn_url("misbehave", "/config?key=API_KEY"))).await;
    assert_eq!(status, 200);
    assert!(body.contains("s3cret-value"), "{body}");
    let id = trace.expect("a trace id");
    traces(&server, "misbehave", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.trace");
    assert!(server.cli(&["trace", "get", &id, "-o", file.to_str().unwrap(), "--with-component"]).status.success());

    // The configuration in the trace names the secret without its value, so replaying without
    // the value gives another response.
    let file_bytes = std::fs::read(&file).unwrap();
    let decoded = ledge::record::trace::decode(&file_bytes).expect("a good trace");
    assert!(decoded.trace.facts.config.contains(&("API_KEY".to_string(), None)), "{:?}", decoded.trace.facts.config);
    let without = ledge().args(["replay", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(without.status.code(), Some(1), "{}", stdout(&without));
    assert!(stderr(&without).contains("names secret `API_KEY`"), "{}", stderr(&without));
    let with = ledge().args(["replay", file.to_str().unwrap(), "--secret", "API_KEY=s3cret-value"]).output().unwrap();
    assert_eq!(with.status.code(), Some(0), "{}{}", stdout(&with), stderr(&with));
}

#[tokio::test(flavor = "multi_thread")]
async fn each_event_of_a_recorded_websocket_connection_replays_and_a_failing_event_is_kept_unasked() {
    use crate::websocket::{close_of, next_text, send, ws_url};
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let server = Server::start();
    let policy = "public = true\n[[websocket]]\npath = \"/\"\n";
    crate::harness::deploy_with_policy(&server, "echo-rec", &guest("ws-echo"), policy).await;

    // A connection nobody asked to record: only its failing event is kept ([record] errors).
    let mut plain = crate::websocket::connect(&ws_url(&server, "echo-rec", "/")).await;
    send(&mut plain, "unrecorded").await;
    assert_eq!(next_text(&mut plain).await, "unrecorded");
    send(&mut plain, "trap").await;
    let kept = traces(&server, "echo-rec", 1).await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!((kept[0]["reason"].as_str(), kept[0]["status"].as_u64()), (Some("error"), Some(500)), "{kept:?}");

    // A manager asks for every event of a connection to be recorded.
    let mut request = ws_url(&server, "echo-rec", "/room?x=1").into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("authorization", format!("Bearer {}", server.admin_token).parse().unwrap());
    headers.insert("ledge-record", "1".parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("a recorded connection");
    send(&mut socket, "count").await;
    assert_eq!(next_text(&mut socket).await, "2", "on-open and this message each counted in the keyspace");
    socket.send(tokio_tungstenite::tungstenite::Message::binary(vec![0, 159, 255])).await.unwrap();
    send(&mut socket, "close").await;
    assert_eq!(close_of(&mut socket, Duration::from_secs(10)).await, (4000, "asked".into()));

    // open, count, binary, close, then on-close: five traces besides the first.
    let listed = traces(&server, "echo-rec", 6).await;
    let requested: Vec<&serde_json::Value> = listed.iter().filter(|t| t["reason"] == "requested").collect();
    assert_eq!(requested.len(), 5, "{listed:?}");
    let mut statuses: Vec<u64> = requested.iter().map(|t| t["status"].as_u64().unwrap()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [101, 200, 200, 200, 200], "open accepted, then each event handled");
    for trace in requested.iter().copied().chain(&kept) {
        let id = trace["id"].as_str().unwrap();
        let replayed = replay(&server, &[id, "--json"]);
        assert_eq!(replayed.status.code(), Some(0), "{id}: {}{}", stdout(&replayed), stderr(&replayed));
        assert_eq!(json(&replayed)["verdict"], "same", "{id}");
    }
    // The trapping event replays to the same trap.
    let trapped = json(&replay(&server, &[kept[0]["id"].as_str().unwrap(), "--json"]));
    assert!(trapped["replayed"]["failure"].as_str().is_some_and(|f| f.starts_with("trap")), "{trapped}");

    // A refusal by on-open is kept as a 403 carrying the close code, and replays too.
    let mut request = ws_url(&server, "echo-rec", "/?refuse").into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {}", server.admin_token).parse().unwrap());
    request.headers_mut().insert("ledge-record", "1".parse().unwrap());
    let (mut refused, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(close_of(&mut refused, Duration::from_secs(10)).await, (4003, "not today".into()));
    let listed = traces(&server, "echo-rec", 7).await;
    let refusal = &listed[0];
    assert_eq!(refusal["status"], 403, "{listed:?}");
    let replayed = json(&replay(&server, &[refusal["id"].as_str().unwrap(), "--json"]));
    assert_eq!(replayed["verdict"], "same");
    assert_eq!(replayed["replayed"]["body"], "not today", "{replayed}");
}
