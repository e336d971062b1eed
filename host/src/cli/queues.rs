//! `ledge queues` and `ledge queue send|peek|redrive|purge`: the node's queues over HTTP
//! (`/v1/queues`, served by `http/queues.rs`).
//!
//! Invariants: a queue name travels as one percent-encoded path segment and a key as a
//! percent-encoded query value, so the server judges exactly what the user typed (and names
//! the rule a bad name breaks); nothing a sender put in a message (body, key) reaches the
//! terminal as a control character: readable output is escaped as `ledge logs` escapes guest
//! text, and `--json` output keeps the server's JSON with its raw control and bidirectional
//! characters written as `\uXXXX` (`log_text`).

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use reqwest::Method;
use serde::Deserialize;

use super::ServerArgs;
use super::client::{request, send};
use super::log_text::{escape, escape_json};

#[derive(Debug, Subcommand)]
pub(super) enum QueueCommand {
    /// Send a message to queue NAME (created on first use); prints its id once it is durable.
    Send {
        /// Queue name: 1-63 characters of a-z, 0-9 and '-'.
        name: String,
        /// The body: TEXT as it is, @FILE a file's bytes, @- standard input.
        #[arg(long, value_name = "TEXT|@FILE|@-")]
        data: String,
        /// Deliver it no sooner than this from now, e.g. 10s, 5m.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        delay: Option<Duration>,
        /// Messages with the same key are delivered one at a time, in send order.
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show queue NAME's waiting (or dead-lettered) messages without taking them.
    ///
    /// Oldest first: a line of facts (id, key, sent_at, attempts, size), then the body on one
    /// line, UTF-8 with its control characters escaped, anything else as `base64:...`.
    Peek {
        name: String,
        /// The messages that failed every attempt instead.
        #[arg(long)]
        dead: bool,
        /// At most this many messages (the server's default: 100).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Print the server's JSON reply.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Move queue NAME's dead-lettered messages back to waiting.
    Redrive {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete queue NAME's waiting messages (or, with --dead, its dead-lettered ones).
    Purge {
        name: String,
        /// Purge the dead-lettered messages instead.
        #[arg(long)]
        dead: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// One row of `GET /v1/queues`.
#[derive(Deserialize)]
struct QueueRow {
    name: String,
    depth: u64,
    in_flight: u64,
    oldest_age_ms: u64,
    dead: u64,
}

/// A message of a peek.
#[derive(Deserialize)]
struct Message {
    id: String,
    key: Option<String>,
    sent_at: String,
    attempts: u32,
    size: u64,
    /// `utf-8` or `base64`.
    encoding: String,
    body: String,
}

/// `ledge queues [--json]`.
pub(super) async fn list(server: &ServerArgs, json: bool) -> anyhow::Result<()> {
    #[derive(Deserialize)]
    struct Reply {
        queues: Vec<QueueRow>,
    }
    let response = send(request(server, Method::GET, "/v1/queues")?, server).await?;
    if json {
        print!("{}", with_newline(response.text().await?));
        return Ok(());
    }
    let reply: Reply = response.json().await?;
    println!("{:<24} {:>8} {:>9} {:>10} {:>8}", "NAME", "DEPTH", "IN_FLIGHT", "OLDEST_AGE", "DEAD");
    for queue in reply.queues {
        println!(
            "{:<24} {:>8} {:>9} {:>10} {:>8}",
            queue.name,
            queue.depth,
            queue.in_flight,
            age(queue.oldest_age_ms),
            queue.dead
        );
    }
    Ok(())
}

/// `ledge queue ...`.
pub(super) async fn queue(command: QueueCommand) -> anyhow::Result<()> {
    match command {
        QueueCommand::Send { name, data, delay, key, server } => {
            #[derive(Deserialize)]
            struct Sent {
                id: String,
            }
            let body = message_body(&data).await?;
            let mut query = form_urlencoded::Serializer::new(String::new());
            if let Some(delay) = delay {
                query.append_pair("delay_ms", &delay.as_millis().to_string());
            }
            if let Some(key) = &key {
                query.append_pair("key", key);
            }
            let path = with_query(messages_path(&name), query.finish());
            let builder = request(&server, Method::POST, &path)?.header("content-type", "application/octet-stream");
            let sent: Sent = send(builder.body(body), &server).await?.json().await?;
            println!("{}", sent.id);
        }
        QueueCommand::Peek { name, dead, limit, json, server } => {
            #[derive(Deserialize)]
            struct Reply {
                messages: Vec<Message>,
            }
            let mut query = form_urlencoded::Serializer::new(String::new());
            if dead {
                query.append_pair("dead", "true");
            }
            if let Some(limit) = limit {
                query.append_pair("limit", &limit.to_string());
            }
            let path = with_query(messages_path(&name), query.finish());
            let response = send(request(&server, Method::GET, &path)?, &server).await?;
            if json {
                // The server's JSON is pretty-printed: line by line, every string stays whole.
                let text = response.text().await?;
                for line in text.lines() {
                    println!("{}", escape_json(line));
                }
                return Ok(());
            }
            let reply: Reply = response.json().await?;
            for message in &reply.messages {
                println!("{}", shown(message));
            }
        }
        QueueCommand::Redrive { name, server } => {
            let path = format!("/v1/queues/{}/redrive", segment(&name));
            println!(
                "redriven {}",
                count(send(request(&server, Method::POST, &path)?, &server).await?, "redriven").await?
            );
        }
        QueueCommand::Purge { name, dead, server } => {
            let path = with_query(messages_path(&name), if dead { "dead=true".into() } else { String::new() });
            println!(
                "purged {}",
                count(send(request(&server, Method::DELETE, &path)?, &server).await?, "purged").await?
            );
        }
    }
    Ok(())
}

/// The count `field` of a reply, e.g. `{"purged": 2}`.
async fn count(response: reqwest::Response, field: &str) -> anyhow::Result<u64> {
    let reply: serde_json::Value = response.json().await?;
    reply[field].as_u64().with_context(|| format!("the server's reply holds no `{field}` count"))
}

/// `--data`: `@-` standard input, `@FILE` a file's bytes, anything else the text itself.
async fn message_body(data: &str) -> anyhow::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    match data.strip_prefix('@') {
        Some("-") => {
            let mut body = Vec::new();
            tokio::io::stdin().read_to_end(&mut body).await.context("cannot read the message from standard input")?;
            Ok(body)
        }
        Some(path) => tokio::fs::read(path).await.with_context(|| format!("cannot read {path}")),
        None => Ok(data.as_bytes().to_vec()),
    }
}

/// `name` as one path segment: a valid name is unchanged, anything else reaches the server
/// whole for it to refuse (a space as `%20`: a path has no `+` for it, and a `+` itself is
/// `%2B`).
fn segment(name: &str) -> String {
    form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>().replace('+', "%20")
}

fn messages_path(name: &str) -> String {
    format!("/v1/queues/{}/messages", segment(name))
}

fn with_query(path: String, query: String) -> String {
    if query.is_empty() { path } else { format!("{path}?{query}") }
}

fn with_newline(mut text: String) -> String {
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// How long the oldest message has waited, in its largest whole unit: `0s`, `12s`, `3m`, `2h`,
/// `5d`.
fn age(ms: u64) -> String {
    match ms / 1000 {
        seconds @ 0..60 => format!("{seconds}s"),
        seconds @ 60..3600 => format!("{}m", seconds / 60),
        seconds @ 3600..86_400 => format!("{}h", seconds / 3600),
        seconds => format!("{}d", seconds / 86_400),
    }
}

/// A peeked message: a line of its facts, then its body indented on one line (a UTF-8 body
/// escaped, another as `base64:` and the text the server sent).
fn shown(message: &Message) -> String {
    let key = match &message.key {
        Some(key) => format!("  key {}", escape(key)),
        None => String::new(),
    };
    let body = match message.encoding.as_str() {
        "utf-8" => escape(&message.body).into_owned(),
        encoding => format!("{}:{}", escape(encoding), escape(&message.body)),
    };
    format!(
        "{}{key}  sent_at {}  attempts {}  size {}\n  {body}",
        escape(&message.id),
        escape(&message.sent_at),
        message.attempts,
        message.size
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_shown_in_their_largest_whole_unit() {
        let shown: Vec<String> =
            [0, 999, 12_000, 59_999, 60_000, 200_000, 3_600_000, 7_300_000, 86_400_000 * 3].map(age).into();
        assert_eq!(shown, ["0s", "0s", "12s", "59s", "1m", "3m", "1h", "2h", "3d"]);
    }

    #[test]
    fn names_and_keys_travel_percent_encoded() {
        assert_eq!(messages_path("orders-2"), "/v1/queues/orders-2/messages");
        assert_eq!(segment("a/b?c#d e+"), "a%2Fb%3Fc%23d%20e%2B");
        assert_eq!(with_query(messages_path("q"), String::new()), "/v1/queues/q/messages");
    }

    #[test]
    fn bodies_and_keys_show_no_control_character() {
        let message = Message {
            id: "m1".into(),
            key: Some("k\x1b[2J".into()),
            sent_at: "2025-01-01T00:00:00.000Z".into(),
            attempts: 2,
            size: 9,
            encoding: "utf-8".into(),
            body: "a\u{9b}31m\nb".into(),
        };
        assert_eq!(
            shown(&message),
            "m1  key k\\x1b[2J  sent_at 2025-01-01T00:00:00.000Z  attempts 2  size 9\n  a\\u{9b}31m\\nb"
        );
        let binary = Message { key: None, encoding: "base64".into(), body: "/wA=".into(), ..message };
        assert!(shown(&binary).ends_with("size 9\n  base64:/wA="), "{}", shown(&binary));
    }
}
