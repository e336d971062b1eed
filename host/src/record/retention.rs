//! What one function keeps of its traces, as the trace writer sees it ([`Kept`]), and which
//! traces go when a new one takes it past its [`Retention`].
//!
//! Invariants: the traces kept for `[record] errors`, `sample` and `ledge-record` are at most
//! `max_traces`, the oldest going first; the corpus (`keep_sample`) is counted apart, at most
//! `keep_sample` traces, a full corpus making room by [`corpus::victim`] (so it never evicts
//! the others, nor they it); and all of them together hold at most `max_bytes`, the oldest
//! going first whichever kind it is.

use std::collections::{HashMap, VecDeque};

use super::corpus;

/// How many traces, and how many bytes of them, a function keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    /// Traces kept for errors, sampling and asking (the corpus not counted).
    pub max_traces: u32,
    /// Bytes of every kept trace, the corpus included.
    pub max_bytes: u64,
    /// Traces kept as the verification corpus.
    pub keep_sample: u32,
}

/// One function's kept traces, oldest first, and their total size.
#[derive(Default)]
pub(super) struct Kept {
    pub(super) traces: VecDeque<KeptTrace>,
    pub(super) bytes: u64,
    /// How many of `traces` are the corpus.
    corpus: usize,
}

pub(super) struct KeptTrace {
    pub(super) id: String,
    pub(super) size: u64,
    pub(super) chunks: u32,
    /// The route key of a corpus trace; `None` for every other.
    pub(super) corpus: Option<String>,
}

impl Kept {
    pub(super) fn push(&mut self, trace: KeptTrace) {
        self.bytes += trace.size;
        self.corpus += usize::from(trace.corpus.is_some());
        self.traces.push_back(trace);
    }

    /// Takes traces out until what is left is within `retention`.
    pub(super) fn over(&mut self, retention: Retention) -> Vec<KeptTrace> {
        let mut victims = Vec::new();
        while self.traces.len().saturating_sub(self.corpus) > retention.max_traces as usize {
            let Some(oldest) = self.traces.iter().position(|t| t.corpus.is_none()) else { break };
            victims.push(self.take(oldest));
        }
        while self.corpus > retention.keep_sample as usize {
            let routes = self.traces.iter().filter_map(|t| t.corpus.as_deref());
            let Some(nth) = corpus::victim(routes) else { break };
            let Some(index) =
                self.traces.iter().enumerate().filter(|(_, t)| t.corpus.is_some()).nth(nth).map(|(i, _)| i)
            else {
                break;
            };
            victims.push(self.take(index));
        }
        while self.bytes > retention.max_bytes && !self.traces.is_empty() {
            victims.push(self.take(0));
        }
        victims
    }

    fn take(&mut self, index: usize) -> KeptTrace {
        let trace = self.traces.remove(index).expect("a kept trace's index");
        self.bytes -= trace.size;
        self.corpus -= usize::from(trace.corpus.is_some());
        trace
    }

    /// The corpus's routes, with how many traces each.
    pub(super) fn routes(&self) -> HashMap<String, u32> {
        let mut routes = HashMap::new();
        for route in self.traces.iter().filter_map(|t| t.corpus.as_ref()) {
            *routes.entry(route.clone()).or_default() += 1;
        }
        routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(id: usize, corpus: Option<&str>) -> KeptTrace {
        KeptTrace { id: format!("{id:03}"), size: 10, chunks: 1, corpus: corpus.map(str::to_string) }
    }

    fn ids(traces: &[KeptTrace]) -> Vec<&str> {
        traces.iter().map(|t| t.id.as_str()).collect()
    }

    #[test]
    fn the_corpus_and_the_other_traces_are_bounded_apart_and_together_by_bytes() {
        let retention = Retention { max_traces: 2, max_bytes: 1000, keep_sample: 3 };
        let mut kept = Kept::default();
        kept.push(trace(0, Some("POST /orders")));
        for n in 1..=6 {
            kept.push(trace(n, Some("GET /")));
            kept.push(trace(100 + n, None));
            kept.over(retention);
        }
        // The errors kept the newest two; the corpus its rare route and the newest common ones.
        assert_eq!(ids(kept.traces.make_contiguous()), ["000", "005", "105", "006", "106"]);
        assert_eq!(kept.routes(), HashMap::from([("POST /orders".to_string(), 1), ("GET /".to_string(), 2)]));
        // Bytes count every kind: the oldest goes, whichever it is.
        let victims = kept.over(Retention { max_bytes: 35, ..retention });
        assert_eq!(ids(&victims), ["000", "005"]);
        assert_eq!((kept.traces.len(), kept.bytes), (3, 30));
        // A corpus of 0 (lowered) empties it at the next store.
        let victims = kept.over(Retention { keep_sample: 0, ..retention });
        assert_eq!(ids(&victims), ["006"]);
        assert!(kept.routes().is_empty());
    }
}
