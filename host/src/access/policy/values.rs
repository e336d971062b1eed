//! The checked values policy fields are written with: sizes (`64MiB`), durations (`10s`),
//! positive and whole counts, fractions, store names, route hosts and paths, cron patterns and schedule
//! paths.
//!
//! Invariants: each type's `Deserialize` refuses a bad value with a message that says what was
//! expected, so a value that parsed is valid (a route path never shadows ledge's own
//! [`RESERVED_PREFIXES`], a size or duration is never zero).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A host name, or `*.` and a domain.
#[derive(Debug, Clone, PartialEq)]
pub struct HostPattern(pub String);

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?.to_ascii_lowercase();
        let name = text.strip_prefix("*.").unwrap_or(&text);
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if valid {
            Ok(HostPattern(text))
        } else {
            Err(serde::de::Error::custom(format!("invalid route host `{text}`: a host name, or `*.` and a domain")))
        }
    }
}

/// A path prefix that leaves ledge's own routes alone.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePrefix(pub String);

/// Paths no route may take: ledge's own API and endpoints.
pub const RESERVED_PREFIXES: &[&str] = &["/fn", "/v1", "/healthz", "/readyz", "/metrics"];

impl<'de> Deserialize<'de> for RoutePrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let trimmed = if text.len() > 1 { text.trim_end_matches('/') } else { &text };
        if !text.starts_with('/') || text.len() > 1024 || text.contains(['?', '#']) {
            return Err(serde::de::Error::custom(format!("invalid route path `{text}`: an absolute path prefix")));
        }
        if let Some(reserved) =
            RESERVED_PREFIXES.iter().find(|r| path_under(trimmed, r) || path_under(r, trimmed) && trimmed != "/")
        {
            return Err(serde::de::Error::custom(format!("route path `{text}` would shadow ledge's own `{reserved}`")));
        }
        Ok(RoutePrefix(trimmed.to_string()))
    }
}

/// `path` is `prefix` or below it, by whole segments (`/api` covers `/api/x`, not `/apix`).
pub fn path_under(path: &str, prefix: &str) -> bool {
    prefix == "/" || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// A cron pattern: the standard 5 fields (minute hour day month weekday), or 6 with seconds
/// first.
#[derive(Debug, Clone, PartialEq)]
pub struct CronPattern(pub String);

impl<'de> Deserialize<'de> for CronPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse::<croner::Cron>()
            .map(|_| CronPattern(text.clone()))
            .map_err(|e| serde::de::Error::custom(format!("invalid cron pattern `{text}`: {e}")))
    }
}

/// The path a scheduled run requests: absolute, at most 1 KiB.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulePath(pub String);

impl<'de> Deserialize<'de> for SchedulePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.starts_with('/') && text.len() <= 1024 && http::Uri::try_from(text.as_str()).is_ok() {
            Ok(SchedulePath(text))
        } else {
            Err(serde::de::Error::custom(format!(
                "invalid schedule path `{text}`: give an absolute path, e.g. \"/tasks/cleanup\""
            )))
        }
    }
}

/// A number from 0.0 to 1.0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fraction(pub f64);

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(d)?;
        if (0.0..=1.0).contains(&value) {
            Ok(Fraction(value))
        } else {
            Err(serde::de::Error::custom(format!("{value} is not a fraction from 0.0 to 1.0")))
        }
    }
}

/// Function and store names: 1 to 63 characters of `a-z`, `0-9` and `-`, starting with a letter
/// or digit. No name contains `/`, which is what keeps keyspaces apart (see `guest_kv`).
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    matches!(bytes.first(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && bytes.len() <= 63
        && bytes.iter().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
}

/// A shared store's name, held to the function-name rule.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreName(pub String);

/// A queue's name, held to the function-name rule.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueName(pub String);

impl<'de> Deserialize<'de> for StoreName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_name(d, "store").map(StoreName)
    }
}

impl<'de> Deserialize<'de> for QueueName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_name(d, "queue").map(QueueName)
    }
}

/// A `kind` name (a store's, a queue's) held to the function-name rule.
fn checked_name<'de, D: Deserializer<'de>>(d: D, kind: &str) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    if is_valid_name(&name) {
        Ok(name)
    } else {
        Err(serde::de::Error::custom(format!(
            "invalid {kind} name `{name}`: use 1 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit"
        )))
    }
}

/// A strictly positive integer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Positive(pub u32);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(d)?;
        match u32::try_from(value) {
            Ok(v) if v > 0 => Ok(Positive(v)),
            _ => Err(serde::de::Error::custom(format!("expected a positive integer, got {value}"))),
        }
    }
}

/// A whole number from 0 to 4294967295 (a count where 0 means none, e.g. `keep_sample`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Count(pub u32);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(d)?;
        u32::try_from(value)
            .map(Count)
            .map_err(|_| serde::de::Error::custom(format!("expected a whole number from 0 to 4294967295, got {value}")))
    }
}

/// A duration written as `500ms`, `10s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(HumanDuration).map_err(serde::de::Error::custom)
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration `{text}`: expected a positive number with a unit, e.g. \"500ms\", \"10s\", \"5m\", \"1h\""
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    if duration.is_zero() { Err(bad()) } else { Ok(duration) }
}

/// A byte size written as `512KiB`, `64MiB`, `1GiB` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(0) => Err(serde::de::Error::custom("a size must be greater than zero")),
            Raw::Bytes(bytes) => Ok(ByteSize(bytes)),
            Raw::Text(text) => parse_size(&text).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

/// A size as policies and `ledge serve`'s size flags write it: bytes, or a whole number of
/// `KiB`, `MiB` or `GiB` (a space before the unit allowed); never zero.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("invalid size `{text}`: expected e.g. \"512KiB\", \"64MiB\", \"1GiB\"");
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.trim_start() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => return Err(bad()),
    };
    match number.checked_mul(1 << shift) {
        Some(bytes) if bytes > 0 => Ok(bytes),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_with_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("1TB").is_err());
        assert_eq!(parse_size("8 MiB"), Ok(8 << 20));
        assert!(parse_size("MiB").is_err() && parse_size("0").is_err() && parse_size("0MiB").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10").is_err());
    }
}
