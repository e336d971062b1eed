//! Policy `[[schedule]]`: synthetic requests on a cron schedule, one run of an entry at a time.

use std::time::{Duration, Instant};

use crate::harness::{Server, client, guest, problem};

async fn peek(server: &Server) -> u64 {
    let text = client().get(server.fn_url("counter", "/peek")).send().await.unwrap().text().await.unwrap();
    text.trim().parse().unwrap()
}

#[tokio::test]
async fn a_schedule_runs_the_function_on_time_and_its_runs_are_logged() {
    let server = Server::start();
    server.deploy("counter", &guest("counter"));
    // Six fields: seconds first. Every second.
    server.set_policy("counter", "[[schedule]]\ncron = \"* * * * * *\"\npath = \"/tick\"\n").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while peek(&server).await < 3 {
        assert!(Instant::now() < deadline, "the schedule did not run three times in 15 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs = server.cli(&["logs", "counter", "--json"]);
    let text = String::from_utf8(logs.stdout).unwrap();
    let runs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["request_id"] == "schedule")
        .collect();
    assert!(runs.len() >= 3 && runs.iter().all(|e| e["status"] == 200 && e["text"] == "GET /tick"), "{text}");
    // Removing the schedule stops the runs.
    server.set_policy("counter", "public = true\n").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stopped = peek(&server).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(peek(&server).await, stopped);
}

#[tokio::test]
async fn a_run_still_going_makes_the_next_one_skip_and_bad_patterns_are_refused() {
    let server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    server.set_policy("misbehave", "[[schedule]]\ncron = \"* * * * * *\"\npath = \"/slow-write?ms=2500\"\n").await;
    tokio::time::sleep(Duration::from_millis(6500)).await;
    server.set_policy("misbehave", "public = true\n").await;
    let logs = String::from_utf8(server.cli(&["logs", "misbehave", "--json"]).stdout).unwrap();
    let runs = logs.lines().filter(|l| l.contains("\"request_id\":\"schedule\"")).count();
    // Each run takes 2.5 s: at most one every three seconds (one may still be running).
    assert!((1..=3).contains(&runs), "{runs} runs in 6.5 s:\n{logs}");
    assert!(server.log().contains("the previous one is still running"));

    let put = |policy: &'static str| {
        server.admin().put(format!("{}/v1/functions/misbehave/policy", server.url)).body(policy).send()
    };
    let bad = problem(put("[[schedule]]\ncron = \"every day\"\npath = \"/x\"\n").await.unwrap(), 400).await;
    assert!(bad["detail"].as_str().unwrap().contains("cron"), "{bad}");
    problem(put("[[schedule]]\ncron = \"*/5 * * * *\"\npath = \"x\"\n").await.unwrap(), 400).await;
    assert_eq!(put("[[schedule]]\ncron = \"*/5 * * * *\"\npath = \"/x\"\n").await.unwrap().status(), 204);
    // A token confined to the function may not add a schedule (it makes the function run).
    let confined = server.mint(&["fn = misbehave", "op = manage"]);
    let widened = client()
        .put(format!("{}/v1/functions/misbehave/policy", server.url))
        .bearer_auth(confined)
        .body("public = true\n[[schedule]]\ncron = \"0 * * * *\"\npath = \"/y\"\n")
        .send()
        .await
        .unwrap();
    assert!(problem(widened, 403).await["detail"].as_str().unwrap().contains("`schedule`"));
}
