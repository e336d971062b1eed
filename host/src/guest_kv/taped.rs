//! Key-value host calls through the run's tape (see [`crate::record`]): a call's result is
//! recorded, or on replay handed back from the trace without touching the engine.
//!
//! Calls that create resources (`begin`, `open`, `cas.new`) run live in both modes (a replay
//! has an empty scratch engine); only their outcome is recorded and checked.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::bindings::ledge::platform::transactions::Error as WitError;
use super::bindings::wasi::keyvalue::store;
use crate::record::Tape;
use crate::record::tape::show_bytes;

/// A key-value error as a trace keeps it: both APIs' errors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RecordedError {
    Conflict(String),
    Denied(String),
    Limit(String),
    Internal(String),
    NoSuchStore,
    AccessDenied,
    Other(String),
}

impl From<WitError> for RecordedError {
    fn from(error: WitError) -> Self {
        match error {
            WitError::Conflict(m) => RecordedError::Conflict(m),
            WitError::Denied(m) => RecordedError::Denied(m),
            WitError::Limit(m) => RecordedError::Limit(m),
            WitError::Internal(m) => RecordedError::Internal(m),
        }
    }
}

impl From<RecordedError> for WitError {
    fn from(error: RecordedError) -> Self {
        match error {
            RecordedError::Conflict(m) => WitError::Conflict(m),
            RecordedError::Denied(m) => WitError::Denied(m),
            RecordedError::Limit(m) => WitError::Limit(m),
            RecordedError::Internal(m) | RecordedError::Other(m) => WitError::Internal(m),
            RecordedError::NoSuchStore | RecordedError::AccessDenied => WitError::Denied("access denied".into()),
        }
    }
}

impl From<store::Error> for RecordedError {
    fn from(error: store::Error) -> Self {
        match error {
            store::Error::NoSuchStore => RecordedError::NoSuchStore,
            store::Error::AccessDenied => RecordedError::AccessDenied,
            store::Error::Other(m) => RecordedError::Other(m),
        }
    }
}

impl From<RecordedError> for store::Error {
    fn from(error: RecordedError) -> Self {
        match error {
            RecordedError::NoSuchStore => store::Error::NoSuchStore,
            RecordedError::AccessDenied | RecordedError::Denied(_) => store::Error::AccessDenied,
            RecordedError::Conflict(m)
            | RecordedError::Limit(m)
            | RecordedError::Internal(m)
            | RecordedError::Other(m) => store::Error::Other(m),
        }
    }
}

/// A result summary for the replay's timeline.
pub trait Shown {
    fn shown(&self) -> String;
}

impl Shown for () {
    fn shown(&self) -> String {
        "ok".into()
    }
}

impl Shown for Option<Vec<u8>> {
    fn shown(&self) -> String {
        self.as_ref().map_or_else(|| "none".into(), |value| show_bytes(value))
    }
}

macro_rules! shown_by_display {
    ($($t:ty),*) => {$(impl Shown for $t {
        fn shown(&self) -> String {
            self.to_string()
        }
    })*};
}
shown_by_display!(u64, i64, bool, String);

impl Shown for Vec<String> {
    fn shown(&self) -> String {
        format!("{} connections", self.len())
    }
}

impl Shown for Vec<(Vec<u8>, Vec<u8>)> {
    fn shown(&self) -> String {
        let keys: Vec<String> = self.iter().take(8).map(|(key, _)| show_bytes(key)).collect();
        format!("{} entries [{}{}]", self.len(), keys.join(", "), if self.len() > 8 { ", …" } else { "" })
    }
}

impl Shown for Vec<(String, Option<Vec<u8>>)> {
    fn shown(&self) -> String {
        let found = self.iter().filter(|(_, value)| value.is_some()).count();
        format!("{} keys, {found} found", self.len())
    }
}

impl Shown for (Vec<String>, Option<String>) {
    fn shown(&self) -> String {
        format!("{} keys{}", self.0.len(), if self.1.is_some() { ", more" } else { "" })
    }
}

impl Shown for Option<(String, Vec<String>)> {
    fn shown(&self) -> String {
        self.as_ref()
            .map_or_else(|| "anonymous".into(), |(id, caveats)| format!("token {id} ({} caveats)", caveats.len()))
    }
}

/// Runs `live` through `tape` (or just runs it): the result is recorded, or replayed.
pub async fn taped<T, E>(
    tape: Option<&Tape>,
    call: &str,
    args: String,
    live: impl Future<Output = wasmtime::Result<Result<T, E>>>,
) -> wasmtime::Result<Result<T, E>>
where
    T: Serialize + DeserializeOwned + Shown,
    E: Into<RecordedError> + From<RecordedError>,
{
    let Some(tape) = tape else { return live.await };
    let live = async { live.await.map(|result| result.map_err(Into::into)) };
    let summarize = |result: &Result<T, RecordedError>| match result {
        Ok(value) => value.shown(),
        Err(error) => format!("error {error:?}"),
    };
    let recorded = tape.call_async(call, || args, summarize, live).await?;
    Ok(recorded.map_err(E::from))
}

/// Records (or checks, on replay) the outcome of a call that creates a resource.
pub fn observed<T, E: std::fmt::Debug>(
    tape: Option<&Tape>,
    call: &str,
    args: impl FnOnce() -> String,
    outcome: &Result<T, E>,
) -> wasmtime::Result<()> {
    let Some(tape) = tape else { return Ok(()) };
    let outcome = match outcome {
        Ok(_) => "ok".to_string(),
        Err(error) => format!("error {error:?}"),
    };
    tape.observe(call, args, &outcome)
}

/// `describe()` when the run has a tape (argument summaries cost nothing otherwise).
pub fn described(tape: Option<&Tape>, describe: impl FnOnce() -> String) -> String {
    if tape.is_some() { describe() } else { String::new() }
}
