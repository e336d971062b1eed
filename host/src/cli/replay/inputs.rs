//! What a replay hands the guest besides the tape and what `crate::verify::inputs` rebuilds:
//! the function's configuration as recorded (secret values from `--secret NAME=VALUE`, since
//! traces hold secrets by name only).
//!
//! Invariants: a `--secret` the trace does not name is refused; a named secret without a value
//! reaches the guest as an empty value, with a warning.

use crate::record::trace::Trace;
use crate::runtime::GuestConfig;

/// The function's configuration as recorded, secrets from `--secret NAME=VALUE`.
pub(super) fn config(trace: &Trace, secrets: &[String]) -> anyhow::Result<GuestConfig> {
    let mut given = std::collections::HashMap::new();
    for secret in secrets {
        let (name, value) =
            secret.split_once('=').ok_or_else(|| anyhow::anyhow!("--secret {secret}: give NAME=VALUE"))?;
        given.insert(name.to_string(), value.to_string());
    }
    let mut pairs = Vec::new();
    let mut names = Vec::new();
    for (key, value) in &trace.facts.config {
        let value = match value {
            Some(value) => value.clone(),
            None => {
                names.push(key.clone());
                given.remove(key).unwrap_or_else(|| {
                    eprintln!("warning: the trace names secret `{key}` but holds no value (pass --secret {key}=VALUE); the guest sees an empty value");
                    String::new()
                })
            }
        };
        pairs.push((key.clone(), value));
    }
    if let Some(unknown) = given.keys().next() {
        anyhow::bail!("--secret {unknown}: the trace names no such secret");
    }
    Ok(GuestConfig::new(pairs, names))
}
