//! Reading kept traces: listings, one trace (stored or decoded), and a function's
//! verification corpus in the order it is handed out.
//!
//! Invariants: every read is one snapshot of the engine, so a trace is seen whole or not at all
//! (its keys are written in one transaction, see `store.rs`).

use ledge_kv::{Isolation, TxError, prefix_end};

use super::corpus;
use super::store::{CORPUS, TraceMeta, Traces, chunk_key, is_valid_id};
use super::trace::{self, Trace, TraceFileError};

/// Why a kept trace could not be handed over.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading traces: {0}")]
    Store(#[from] TxError),
    #[error("trace `{id}` does not decode: {error}")]
    Decode { id: String, error: TraceFileError },
}

impl Traces {
    /// The newest traces (of `function`, or of all; of one OpenTelemetry trace, or of any),
    /// newest first, at most `limit`.
    pub fn list(
        &self,
        function: Option<&str>,
        otel_trace_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TraceMeta>, TxError> {
        let prefix = match function {
            Some(name) => format!("sys/trace-list/{name}/"),
            None => "sys/trace-list/".to_string(),
        };
        let mut tx = self.db.begin(Isolation::Snapshot);
        let entries = tx.scan(prefix.as_bytes(), &prefix_end(prefix.as_bytes()), usize::MAX)?;
        let mut metas: Vec<TraceMeta> = entries
            .iter()
            .filter_map(|(_, value)| serde_json::from_slice::<TraceMeta>(value).ok())
            .filter(|meta| otel_trace_id.is_none_or(|id| meta.otel_trace_id.as_deref() == Some(id)))
            .collect();
        metas.sort_by(|a, b| b.id.cmp(&a.id));
        metas.truncate(limit);
        Ok(metas)
    }

    /// The function trace `id` belongs to.
    pub fn function_of(&self, id: &str) -> Result<Option<String>, TxError> {
        if !is_valid_id(id) {
            return Ok(None);
        }
        let mut tx = self.db.begin(Isolation::Snapshot);
        Ok(tx.get(format!("sys/trace-id/{id}").as_bytes())?.map(|f| String::from_utf8_lossy(&f).into_owned()))
    }

    /// Trace `id` of `function`: its metadata and its compressed bytes.
    pub fn get(&self, function: &str, id: &str) -> Result<Option<(TraceMeta, Vec<u8>)>, TxError> {
        let mut tx = self.db.begin(Isolation::Snapshot);
        let Some(meta) = tx.get(format!("sys/trace-list/{function}/{id}").as_bytes())? else { return Ok(None) };
        let Ok(meta) = serde_json::from_slice::<TraceMeta>(&meta) else { return Ok(None) };
        let mut bytes = Vec::with_capacity(meta.size as usize);
        for n in 0..meta.chunks {
            bytes.extend(tx.get(chunk_key(id, n).as_bytes())?.unwrap_or_default());
        }
        Ok(Some((meta, bytes)))
    }

    /// Trace `id` of `function`, decoded.
    pub fn load(&self, function: &str, id: &str) -> Result<Option<Trace>, LoadError> {
        let Some((_, bytes)) = self.get(function, id)? else { return Ok(None) };
        trace::decompress(&bytes).map(Some).map_err(|error| LoadError::Decode { id: id.to_string(), error })
    }

    /// `function`'s corpus (`[record] keep_sample`), at most `limit`: newest first, but
    /// covering distinct routes first (the newest of each route, then the second newest of
    /// each, ...; see [`corpus::round_robin`]).
    pub fn corpus(&self, function: &str, limit: usize) -> Result<Vec<TraceMeta>, TxError> {
        let prefix = format!("{CORPUS}{function}/");
        let mut tx = self.db.begin(Isolation::Snapshot);
        let mut metas = Vec::new();
        for (key, _) in tx.scan(prefix.as_bytes(), &prefix_end(prefix.as_bytes()), usize::MAX)? {
            let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            let meta = tx.get(format!("sys/trace-list/{function}/{id}").as_bytes())?;
            metas.extend(meta.and_then(|meta| serde_json::from_slice::<TraceMeta>(&meta).ok()));
        }
        metas.sort_by(|a, b| b.id.cmp(&a.id));
        Ok(corpus::round_robin(metas, |meta| meta.route.as_str(), limit))
    }
}
