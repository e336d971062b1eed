//! `ledge logs`: a function's guest output and request lines, recent or followed live.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use crate::harness::{Server, client, guest, problem};

#[tokio::test]
async fn logs_show_guest_output_and_request_lines_and_follow_them_live() {
    let server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    let mut follower = crate::harness::ledge()
        .args(["logs", "misbehave", "--follow"])
        .env("LEDGE_SERVER", &server.url)
        .env("LEDGE_TOKEN", &server.admin_token)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (sender, lines) = channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Instant::now();
    let printed = client().get(server.fn_url("misbehave", "/print")).header("x-request-id", "trace-123").send().await;
    assert_eq!(printed.unwrap().status(), 200);
    let mut seen = Vec::new();
    let (mut guest_line, mut request_line) = (None, None);
    while guest_line.is_none() || request_line.is_none() {
        let line = lines.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|_| panic!("followed: {seen:?}"));
        if line.contains("stdout: hello from the guest's stdout") {
            guest_line = Some(sent.elapsed());
        }
        if line.contains("GET /fn/misbehave/print -> 200") && line.contains("id trace-123") && line.contains("v1") {
            request_line = Some(sent.elapsed());
        }
        seen.push(line);
    }
    assert!(guest_line.unwrap() < Duration::from_secs(1), "the guest's line took {guest_line:?}");
    let _ = follower.kill();
    let _ = follower.wait();

    let recent = server.cli(&["logs", "misbehave", "--since", "10m", "--json"]);
    assert!(recent.status.success());
    let entries: Vec<serde_json::Value> =
        String::from_utf8(recent.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(entries.iter().any(|e| e["kind"] == "stderr" && e["text"] == "and from its stderr"), "{entries:?}");
    let request = entries.iter().find(|e| e["kind"] == "request").expect("a request line");
    assert_eq!((request["status"].as_u64(), request["version"].as_u64()), (Some(200), Some(1)));
    assert_eq!(request["request_id"], "trace-123");

    // Only a manage token for the function reads its log.
    let other = server.mint(&["fn = other", "op = manage"]);
    let refused = client().get(format!("{}/v1/functions/misbehave/logs", server.url)).bearer_auth(other).send().await;
    problem(refused.unwrap(), 403).await;
    problem(server.admin().get(format!("{}/v1/functions/nothing/logs", server.url)).send().await.unwrap(), 404).await;
}

/// What misbehave's `/escapes` prints: an OSC 52 clipboard write, cursor movement, a carriage
/// return that hides what came before it, a C1 CSI, DEL, a tab and a backslash.
const HOSTILE: &str = "clip\x1b]52;c;bGVkZ2U=\x07 up\x1b[2A hidden\rshown \u{9b}31mred\x7f tab\tback\\slash";

/// A guest's escape sequences reach the operator's terminal only with `--raw`: `ledge logs`
/// shows them escaped, and `--json` holds the exact text (with no raw control character).
#[tokio::test]
async fn guest_control_characters_are_shown_escaped_unless_raw() {
    let server = Server::start();
    server.deploy("misbehave", &guest("misbehave"));
    let printed = client().get(server.fn_url("misbehave", "/escapes")).send().await.unwrap();
    assert_eq!(printed.status(), 200);
    let is_control = |c: char| c.is_control() && c != '\n';

    let shown = server.cli_ok(&["logs", "misbehave"]);
    let escaped = "clip\\x1b]52;c;bGVkZ2U=\\x07 up\\x1b[2A hidden\\rshown \\u{9b}31mred\\x7f tab\\tback\\\\slash";
    assert!(shown.contains(&format!("misbehave stdout: {escaped}\n")), "{shown:?}");
    assert!(
        !shown.contains('\x1b') && !shown.chars().any(is_control),
        "a control character reached the terminal: {shown:?}"
    );

    let raw = server.cli_ok(&["logs", "misbehave", "--raw"]);
    assert!(raw.contains(&format!("misbehave stdout: {HOSTILE}\n")), "{raw:?}");

    let json = server.cli_ok(&["logs", "misbehave", "--json"]);
    assert!(!json.chars().any(is_control), "a control character in the JSON lines: {json:?}");
    let entries: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(entries.iter().any(|e| e["kind"] == "stdout" && e["text"] == HOSTILE), "{entries:?}");
}

/// A server whose stderr nobody reads (a stuck terminal or journal) keeps answering: its log
/// lines wait in memory up to the writer's 8 MiB bound, lines past it are dropped and counted,
/// and once stderr drains the server logs how many it dropped.
#[tokio::test]
async fn a_stalled_stderr_never_blocks_requests_and_dropped_lines_are_counted() {
    let mut server = Server::start_with_piped_stderr();
    let stderr = server.take_stderr();
    server.deploy("misbehave", &guest("misbehave"));
    // Each /flood writes 128 KiB to stdout, of which the host logs its per-request cap of 64 KiB
    // (16 lines of 4,000 bytes): 600 requests log 37.5 MiB, past the pipe's 64 KiB, the 8 MiB
    // bound and the batch the blocked writer thread holds (at most another 8 MiB).
    let client = client();
    for _ in 0..600 {
        let flood =
            tokio::time::timeout(Duration::from_secs(10), client.get(server.fn_url("misbehave", "/flood")).send())
                .await
                .expect("a request waited on the stalled stderr")
                .unwrap();
        assert_eq!(flood.status(), 200);
    }
    let (sender, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("no report of dropped lines after stderr drained");
        if line.contains("log writer behind: lines dropped") {
            break line;
        }
    };
    let dropped: u64 = report
        .split("dropped=")
        .nth(1)
        .and_then(|count| count.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no count in {report:?}"));
    // 37.5 MiB logged, at most 16 MiB and the pipe kept: over 21 MiB of 4 KiB lines dropped.
    assert!(dropped >= 5_000, "only {dropped} lines reported dropped: {report}");
}
