//! Kept versions, instant rollback, canaries that split callers stickily, the
//! `ledge-version` header, and the promote gate on the canary's record.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::harness::{Server, client, get_from, guest, metric, problem};

/// The version of `app` that served a GET from source address `source`.
async fn version_for(server: &Server, source: IpAddr) -> u64 {
    crate::harness::version_from(server, "app", source).await
}

async fn served(server: &Server) -> (String, String) {
    let response = client().get(server.fn_url("app", "/")).send().await.unwrap();
    let version = response.headers()["ledge-version"].to_str().unwrap().to_string();
    (version, response.text().await.unwrap())
}

#[tokio::test]
async fn a_rollback_restores_the_previous_version_within_one_request_and_survives_a_restart() {
    let mut server = Server::start();
    server.deploy("app", &guest("hello"));
    server.deploy("app", &guest("echo"));
    let (version, _) = served(&server).await;
    assert_eq!(version, "2");
    let listed = server.cli_ok(&["versions", "app"]);
    assert!(listed.lines().any(|l| l.trim_start().starts_with("1 ")), "{listed}");
    assert!(listed.lines().any(|l| l.trim_start().starts_with("2 ") && l.ends_with("live")), "{listed}");

    server.cli_ok(&["rollback", "app"]);
    assert_eq!(served(&server).await, ("1".to_string(), "Hello from ledge! You asked for /\n".to_string()));
    server.cli_ok(&["rollback", "app", "2"]);
    assert_eq!(served(&server).await.0, "2");
    server.cli_ok(&["rollback", "app", "1"]);
    // A new deploy after a rollback is numbered after every kept version.
    server.deploy("app", &guest("hello"));
    assert_eq!(served(&server).await.0, "3");
    server.cli_ok(&["rollback", "app", "2"]);
    server.restart();
    assert_eq!(served(&server).await.0, "2", "the rollback is durable");
    let missing = server.admin().post(format!("{}/v1/functions/app/rollback", server.url)).body("9").send().await;
    problem(missing.unwrap(), 409).await;
    let nothing = server.admin().post(format!("{}/v1/functions/app/promote", server.url)).send().await;
    assert!(problem(nothing.unwrap(), 409).await["detail"].as_str().unwrap().contains("no canary"));
}

#[tokio::test]
async fn only_the_versions_the_policy_keeps_stay_on_disk() {
    let server = Server::start();
    server.deploy("app", &guest("hello"));
    server.set_policy("app", "[versions]\nkeep = 2\n").await;
    for _ in 0..3 {
        server.deploy("app", &guest("hello"));
    }
    let dirs: Vec<String> = std::fs::read_dir(server.data_dir.join("functions/app"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut dirs = dirs;
    dirs.sort();
    assert_eq!(dirs, ["v3", "v4"]);
}

#[tokio::test]
async fn a_canary_serves_its_share_of_callers_each_always_the_same_version_until_promoted() {
    let server = Server::start();
    server.deploy("app", &guest("hello"));
    let canary = server.cli(&["deploy", "app", guest("echo").to_str().unwrap(), "--canary", "10%"]);
    assert!(canary.status.success(), "{}", String::from_utf8_lossy(&canary.stderr));
    // 1,000 callers (distinct loopback addresses), two requests each.
    let mut on_canary = 0;
    for i in 0..1000u32 {
        let source = IpAddr::from([127, 1, (i / 250) as u8, (i % 250 + 1) as u8]);
        let first = version_for(&server, source).await;
        assert_eq!(version_for(&server, source).await, first, "caller {source} switched versions");
        on_canary += u32::from(first == 2);
    }
    // 10% of 1,000: 100 expected; outside 60..=140 is more than four standard deviations off.
    assert!((60..=140).contains(&on_canary), "{on_canary} of 1,000 callers on the canary");
    assert!(metric(&server, "ledge_version_requests_total{function=\"app\",version=\"2\",status=\"200\"}").await > 0.0);
    let listed = server.cli_ok(&["versions", "app"]);
    assert!(listed.contains("canary 10%"), "{listed}");

    server.cli_ok(&["promote", "app"]);
    for i in 0..20u32 {
        assert_eq!(version_for(&server, IpAddr::from([127, 1, 9, i as u8 + 1])).await, 2);
    }
    // A canary rolled back leaves the live version alone.
    let again = server.cli(&["deploy", "app", guest("hello").to_str().unwrap(), "--canary", "50%"]);
    assert!(again.status.success());
    server.cli_ok(&["rollback", "app"]);
    for i in 0..20u32 {
        assert_eq!(version_for(&server, IpAddr::from([127, 1, 9, i as u8 + 1])).await, 2);
    }
    let refused = server.cli(&["deploy", "app", guest("hello").to_str().unwrap(), "--canary", "150%"]);
    assert_eq!(refused.status.code(), Some(1));
}

/// GETs `path` of `app` once from each of 300 callers (distinct loopback addresses): by version,
/// the requests it served and how many failed (5xx).
async fn spread(server: &Server, path: &str) -> BTreeMap<u64, (u64, u64)> {
    let mut served = BTreeMap::new();
    for i in 0..300u32 {
        let source = IpAddr::from([127, 2, (i / 250) as u8, (i % 250 + 1) as u8]);
        let (status, headers) = get_from(server, &format!("/fn/app{path}"), source).await;
        let version = headers.iter().find_map(|line| line.strip_prefix("ledge-version: ")).expect("ledge-version");
        let entry: &mut (u64, u64) = served.entry(version.trim().parse().unwrap()).or_default();
        *entry = (entry.0 + 1, entry.1 + u64::from(status >= 500));
    }
    served
}

#[tokio::test]
async fn promote_refuses_a_canary_failing_more_often_than_the_live_version_unless_forced() {
    let server = Server::start();
    server.deploy("app", &guest("hello"));
    // The canary traps on /trap, where the live version answers.
    server.cli_ok(&["deploy", "app", guest("misbehave").to_str().unwrap(), "--canary", "50%"]);
    let served = spread(&server, "/trap").await;
    let ((canary, failed), (live, live_failed)) = (served[&2], served[&1]);
    assert!(canary >= 100 && failed == canary && live_failed == 0, "{served:?}");

    let refused = server.cli(&["promote", "app"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let rates = format!(
        "the canary (version 2) failed 100.0% of {canary} requests since it started, the live version (1) 0.0% of {live}"
    );
    assert!(stderr.contains(&rates) && stderr.contains("more than 2.0x"), "{stderr}");
    let promote = |query: &str| server.admin().post(format!("{}/v1/functions/app/promote{query}", server.url)).send();
    let detail =
        problem(promote("?max_error_ratio=10").await.unwrap(), 409).await["detail"].as_str().unwrap().to_string();
    assert!(detail.contains(&rates) && detail.contains("more than 10.0x") && detail.contains("--force"), "{detail}");
    for (query, named) in [("?max_error_ratio=lots", "max_error_ratio=`lots`"), ("?forse=true", "`forse`")] {
        let detail = problem(promote(query).await.unwrap(), 400).await["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(named), "{detail}");
    }
    assert!(server.cli_ok(&["versions", "app"]).contains("canary 50%"), "still a canary");

    let forced = server.cli(&["promote", "app", "--force"]);
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    let note = String::from_utf8_lossy(&forced.stderr);
    assert!(note.starts_with("app: forced: the canary (version 2) failed 100.0%"), "{note}");
    assert_eq!(spread(&server, "/").await.keys().collect::<Vec<_>>(), [&2], "version 2 serves everyone");

    // A canary as healthy as the live version promotes; its record started at zero.
    server.cli_ok(&["deploy", "app", guest("hello").to_str().unwrap(), "--canary", "50%"]);
    let served = spread(&server, "/").await;
    assert!(served[&3].0 >= 100 && served.values().all(|(_, failed)| *failed == 0), "{served:?}");
    let healthy = server.cli(&["promote", "app"]);
    assert!(healthy.status.success(), "{}", String::from_utf8_lossy(&healthy.stderr));
    let note = String::from_utf8_lossy(&healthy.stderr);
    assert!(note.contains("the canary (version 3) failed 0.0% of") && note.contains("within 2.0x"), "{note}");
    // A new canary's record is too short to judge: promoted, saying so.
    server.cli_ok(&["deploy", "app", guest("misbehave").to_str().unwrap(), "--canary", "50%"]);
    let reply: serde_json::Value = promote("").await.unwrap().json().await.unwrap();
    assert_eq!(reply["live"], 4);
    assert_eq!(reply["judged"]["verdict"], "too_short", "{reply}");
    assert!(reply["judged"]["note"].as_str().unwrap().contains("served 0 requests"), "{reply}");
}
