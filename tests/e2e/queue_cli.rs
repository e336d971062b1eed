//! `ledge queues` and `ledge queue send|peek|redrive|purge` against a real server: messages
//! sent from a file (binary), as text (with a key) and from standard input, listed, peeked
//! (text escaped, binary as base64), purged; bad names, bad arguments and narrowed tokens
//! refused with the exit codes the spec gives.

use std::io::Write;
use std::process::{Output, Stdio};

use crate::harness::{Server, attenuate, ledge};

/// The fields of `queue`'s row in `ledge queues`, after checking the header.
fn row(server: &Server, queue: &str) -> Vec<String> {
    let listed = server.cli_ok(&["queues"]);
    let mut lines = listed.lines();
    let header: Vec<&str> = lines.next().expect("a header line").split_whitespace().collect();
    assert_eq!(header, ["NAME", "DEPTH", "IN_FLIGHT", "OLDEST_AGE", "DEAD"], "{listed}");
    let row = lines.find(|line| line.split_whitespace().next() == Some(queue));
    let row = row.unwrap_or_else(|| panic!("no row for {queue}:\n{listed}"));
    row.split_whitespace().map(String::from).collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn queue_commands_send_list_peek_and_purge() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("message.bin");
    std::fs::write(&file, [0xff, 0x00, 0xfe, b'x']).unwrap();

    let binary = server.cli_ok(&["queue", "send", "jobs", "--data", &format!("@{}", file.display())]);
    let binary = binary.trim();
    // A key with characters that mean something in a query must arrive whole.
    let text = "hello \x1b[2J world";
    let sent = server.cli_ok(&["queue", "send", "jobs", "--data", text, "--key", "user/42 &x=1"]);
    let sent = sent.trim();
    assert!(!binary.is_empty() && !sent.is_empty() && binary != sent, "ids {binary:?} and {sent:?}");
    assert!(!binary.contains(char::is_whitespace), "one id per send: {binary:?}");

    let jobs = row(&server, "jobs");
    assert_eq!(jobs.len(), 5, "{jobs:?}");
    assert_eq!((jobs[1].as_str(), jobs[2].as_str(), jobs[4].as_str()), ("2", "0", "0"), "{jobs:?}");
    let age = &jobs[3];
    assert!(age.ends_with('s') && age[..age.len() - 1].parse::<u64>().is_ok(), "oldest_age {age:?}");
    let json: serde_json::Value = serde_json::from_str(&server.cli_ok(&["queues", "--json"])).unwrap();
    let listed = json["queues"].as_array().unwrap().iter().find(|q| q["name"] == "jobs").cloned();
    assert_eq!(listed.expect("jobs in the JSON")["depth"], 2, "{json}");

    let peeked = server.cli_ok(&["queue", "peek", "jobs"]);
    assert!(!peeked.contains('\x1b'), "a control character reached the terminal: {peeked:?}");
    let lines: Vec<&str> = peeked.lines().collect();
    assert_eq!(lines.len(), 4, "two messages, each a line of facts and a line of body:\n{peeked}");
    assert!(lines[0].starts_with(&format!("{binary}  sent_at ")), "{peeked}");
    assert!(lines[0].ends_with("attempts 0  size 4"), "{peeked}");
    assert_eq!(lines[1], "  base64:/wD+eA==", "{peeked}");
    assert!(lines[2].starts_with(&format!("{sent}  key user/42 &x=1  sent_at ")), "{peeked}");
    assert!(lines[2].ends_with(&format!("attempts 0  size {}", text.len())), "{peeked}");
    assert_eq!(lines[3], "  hello \\x1b[2J world", "{peeked}");
    let limited = server.cli_ok(&["queue", "peek", "jobs", "--limit", "1"]);
    assert_eq!(limited.lines().count(), 2, "{limited}");
    let json: serde_json::Value = serde_json::from_str(&server.cli_ok(&["queue", "peek", "jobs", "--json"])).unwrap();
    let messages = json["messages"].as_array().unwrap();
    assert_eq!((messages[0]["encoding"].as_str(), messages[0]["body"].as_str()), (Some("base64"), Some("/wD+eA==")));
    assert_eq!((messages[1]["body"].as_str(), messages[1]["key"].as_str()), (Some(text), Some("user/42 &x=1")));
    assert_eq!(server.cli_ok(&["queue", "peek", "jobs", "--dead"]), "", "nothing is dead");

    // Standard input, and a delay.
    let mut piped = ledge()
        .args(["queue", "send", "later", "--data", "@-", "--delay", "1h"])
        .env("LEDGE_SERVER", &server.url)
        .env("LEDGE_TOKEN", &server.admin_token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    piped.stdin.take().unwrap().write_all(b"from stdin").unwrap();
    let output = piped.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let later = server.cli_ok(&["queue", "peek", "later"]);
    assert!(later.ends_with("size 10\n  from stdin\n"), "{later}");

    assert_eq!(server.cli_ok(&["queue", "redrive", "jobs"]), "redriven 0\n");
    assert_eq!(server.cli_ok(&["queue", "purge", "jobs", "--dead"]), "purged 0\n");
    assert_eq!(server.cli_ok(&["queue", "purge", "jobs"]), "purged 2\n");
    assert_eq!(row(&server, "jobs")[1], "0");
    assert_eq!(server.cli_ok(&["queue", "peek", "jobs"]), "");
    assert_eq!(row(&server, "later")[1], "1", "a purge touches its own queue only");
}

#[test]
fn bad_names_arguments_and_narrowed_tokens_are_refused() {
    let server = Server::start();
    for name in ["Bad_Name", "a/b", "a b"] {
        for command in [vec!["queue", "send", name, "--data", "x"], vec!["queue", "peek", name]] {
            let output = server.cli(&command);
            assert_eq!(output.status.code(), Some(1), "{command:?}: {}", stderr(&output));
            let message = stderr(&output);
            assert!(message.contains("invalid queue name") && message.contains("a-z, 0-9 and '-'"), "{message}");
        }
    }
    for usage in [&["queue", "send", "jobs"][..], &["queue", "send", "jobs", "--data", "x", "--delay", "soon"]] {
        assert_eq!(server.cli(usage).status.code(), Some(2), "{usage:?}");
    }

    let narrowed = attenuate(&server.admin_token, "fn = x");
    for command in [
        vec!["queues", "--token", &narrowed],
        vec!["queue", "send", "jobs", "--data", "x", "--token", &narrowed],
        vec!["queue", "purge", "jobs", "--token", &narrowed],
    ] {
        let output = server.cli(&command);
        assert_eq!(output.status.code(), Some(1), "{command:?}: {}", stderr(&output));
        assert!(stderr(&output).contains("403"), "{command:?}: {}", stderr(&output));
    }
    let listed = server.cli_ok(&["queues"]);
    assert!(!listed.contains("jobs"), "a refused send made no queue:\n{listed}");
}
