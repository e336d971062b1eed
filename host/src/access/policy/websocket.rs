//! `[[websocket]]` as written ([`WebSocketEntry`]) and resolved ([`WebSocket`], which the
//! policy holds): where a function accepts WebSocket upgrades, and the bounds each entry's
//! connections live within.
//!
//! Invariants: every bound has a default and an upload ceiling (`ceilings.rs`) and takes part
//! in the tighten check ([`WebSocket::within`]); an entry's `path` is a path prefix under the
//! function (`/chat` covers `/chat` and `/chat/x`, not `/chatter`).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{ByteSize, HumanDuration, Positive, RateQuota, WebSocket};
use crate::access::caveats::parse_rate;

/// WebSocket entries one function may have.
pub const MAX_WEBSOCKETS: usize = 16;
/// Origins one entry may list.
pub const MAX_ORIGINS: usize = 64;

impl WebSocket {
    /// An entry at `path` with every other field at its default.
    pub fn defaults(path: &str) -> WebSocket {
        WebSocket {
            path: path.to_string(),
            max_connections: 1000,
            max_message: 64 << 10,
            max_buffer: 1 << 20,
            idle_timeout: Duration::from_secs(300),
            rate: RateQuota { quota: 100, window: Duration::from_secs(1), burst: 100 },
            origins: Vec::new(),
        }
    }

    /// Whether this entry asks for no more than `own`: the same path, origins among its own
    /// (any origin only where `own` allows any), and no larger bound or faster rate.
    pub fn within(&self, own: &WebSocket) -> bool {
        let sustained = |q: &RateQuota| (u128::from(q.quota), q.window.as_nanos().max(1));
        let (mine, theirs) = (sustained(&self.rate), sustained(&own.rate));
        let origins = if own.origins.is_empty() {
            true
        } else {
            !self.origins.is_empty() && self.origins.iter().all(|origin| own.origins.contains(origin))
        };
        self.path == own.path
            && origins
            && self.max_connections <= own.max_connections
            && self.max_message <= own.max_message
            && self.max_buffer <= own.max_buffer
            && self.idle_timeout <= own.idle_timeout
            && mine.0 * theirs.1 <= theirs.0 * mine.1
            && self.rate.burst <= own.rate.burst
    }

    /// Whether `path` (the path the function sees) is under this entry.
    pub fn covers(&self, path: &str) -> bool {
        super::path_under(path, &self.path)
    }
}

/// `[[websocket]]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketEntry {
    pub path: WebSocketPath,
    pub max_connections: Option<Positive>,
    pub max_message: Option<ByteSize>,
    pub max_buffer: Option<ByteSize>,
    pub idle_timeout: Option<HumanDuration>,
    pub rate: Option<MessageRate>,
    pub origins: Option<Vec<Origin>>,
}

impl WebSocketEntry {
    pub fn resolve(&self) -> WebSocket {
        let defaults = WebSocket::defaults(&self.path.0);
        WebSocket {
            max_connections: self.max_connections.map_or(defaults.max_connections, |n| n.0),
            max_message: self.max_message.map_or(defaults.max_message, |b| b.0),
            max_buffer: self.max_buffer.map_or(defaults.max_buffer, |b| b.0),
            idle_timeout: self.idle_timeout.map_or(defaults.idle_timeout, |d| d.0),
            rate: self.rate.map_or(defaults.rate, |r| r.0),
            origins: self
                .origins
                .as_ref()
                .map_or(defaults.origins.clone(), |o| o.iter().map(|o| o.0.clone()).collect()),
            ..defaults
        }
    }
}

/// An absolute path prefix under the function (no query, at most 1 KiB), kept without a
/// trailing `/`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebSocketPath(pub String);

impl<'de> Deserialize<'de> for WebSocketPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if !text.starts_with('/') || text.len() > 1024 || text.contains(['?', '#']) || text.contains("//") {
            return Err(serde::de::Error::custom(format!(
                "invalid websocket path `{text}`: an absolute path prefix under the function, such as \"/chat\""
            )));
        }
        let trimmed = if text.len() > 1 { text.trim_end_matches('/') } else { &text };
        Ok(WebSocketPath(trimmed.to_string()))
    }
}

/// `"N/s"`, `"N/m"` or `"N/h"`: messages per connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MessageRate(pub RateQuota);

impl<'de> Deserialize<'de> for MessageRate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_rate(&text).map(MessageRate).map_err(serde::de::Error::custom)
    }
}

/// An allowed `Origin`: `scheme://host[:port]`, compared exactly (lowercase).
#[derive(Debug, Clone, PartialEq)]
pub struct Origin(pub String);

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let valid = text
            .split_once("://")
            .filter(|(scheme, host)| {
                matches!(*scheme, "http" | "https") && !host.is_empty() && !host.contains(['/', '?', '#', ' '])
            })
            .is_some();
        if !valid || text.len() > 256 {
            return Err(serde::de::Error::custom(format!(
                "invalid origin `{text}`: scheme://host[:port], such as \"https://app.example.com\""
            )));
        }
        Ok(Origin(text.to_ascii_lowercase()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> Result<WebSocket, String> {
        #[derive(Deserialize)]
        struct File {
            websocket: Vec<WebSocketEntry>,
        }
        toml::from_str::<File>(text).map(|file| file.websocket[0].resolve()).map_err(|error| error.to_string())
    }

    #[test]
    fn an_entry_resolves_over_the_defaults_and_bad_values_are_named() {
        let chat = entry("[[websocket]]\npath = \"/chat/\"\nmax_message = \"1KiB\"\nrate = \"5/s\"\n").unwrap();
        assert_eq!(chat.path, "/chat");
        assert_eq!(chat.max_message, 1024);
        assert_eq!(chat.rate, RateQuota { quota: 5, window: Duration::from_secs(1), burst: 5 });
        assert_eq!(chat.max_connections, 1000);
        assert!(chat.covers("/chat") && chat.covers("/chat/room") && !chat.covers("/chatter"));
        for (text, named) in [
            ("path = \"chat\"", "invalid websocket path"),
            ("path = \"/c\"\nrate = \"fast\"", "invalid rate"),
            ("path = \"/c\"\norigins = [\"example.com\"]", "invalid origin"),
            ("path = \"/c\"\nmax_conections = 5", "unknown field"),
        ] {
            let error = entry(&format!("[[websocket]]\n{text}\n")).unwrap_err();
            assert!(error.contains(named), "{text}: {error}");
        }
    }

    #[test]
    fn an_entry_is_within_another_only_when_it_asks_for_no_more() {
        let own = entry("[[websocket]]\npath = \"/chat\"\norigins = [\"https://a.example\"]\n").unwrap();
        assert!(own.within(&own));
        let fewer = WebSocket { max_connections: 10, ..own.clone() };
        assert!(fewer.within(&own) && !own.within(&fewer));
        let any_origin = WebSocket { origins: Vec::new(), ..own.clone() };
        assert!(!any_origin.within(&own), "allowing any origin widens a list");
        assert!(own.within(&any_origin));
        let faster = WebSocket { rate: RateQuota { quota: 200, ..own.rate }, ..own.clone() };
        assert!(!faster.within(&own));
        let longer = WebSocket { idle_timeout: Duration::from_secs(3600), ..own.clone() };
        assert!(!longer.within(&own));
        let elsewhere = WebSocket { path: "/other".into(), ..own.clone() };
        assert!(!elsewhere.within(&own));
    }
}
