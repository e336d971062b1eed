//! The `ledge.transaction` span of each transaction a guest runs: from begin to commit or
//! rollback, with its isolation, keyspace kind and outcome (`ledge.tx.outcome`: `committed`,
//! `conflict`, `denied`, `limit`, or `rolled-back` for one the guest abandoned; `error` for a
//! host failure), and for `wasi:keyvalue` operations the conflicts retried (`ledge.tx.retries`).

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

use super::bindings::ledge::platform::transactions::Error as WitError;
use crate::telemetry::{TraceCx, names};

/// A transaction's span; it ends when dropped, as `rolled-back` unless an outcome was set.
pub struct TxSpan {
    span: TraceCx,
    /// The first refusal an operation met, which a rollback after it is reported as.
    refused: Option<&'static str>,
    finished: bool,
}

impl TxSpan {
    /// A span under `parent` for a transaction of `isolation` (`serializable`, `snapshot`) on a
    /// node-local or global keyspace.
    pub fn begin(parent: &TraceCx, isolation: &'static str, global: bool) -> TxSpan {
        let span = parent.child(names::TRANSACTION, SpanKind::Internal, || {
            vec![
                KeyValue::new("ledge.tx.isolation", isolation),
                KeyValue::new("ledge.tx.scope", if global { "global" } else { "local" }),
            ]
        });
        TxSpan { span, refused: None, finished: false }
    }

    /// Notes what an operation inside the transaction met.
    pub fn note<T>(&mut self, result: &Result<T, WitError>) {
        if let Err(error) = result {
            self.refused = self.refused.or(Some(outcome_of(error)));
        }
    }

    pub fn retries(&self, retries: u32) {
        self.span.set("ledge.tx.retries", i64::from(retries));
    }

    /// Ends the span with the outcome of the commit (or of whatever ended it before).
    pub fn finish<T>(mut self, result: &Result<T, WitError>) {
        let outcome = match result {
            Ok(_) => "committed",
            Err(error) => outcome_of(error),
        };
        self.end(outcome);
    }

    fn end(&mut self, outcome: &'static str) {
        self.finished = true;
        self.span.set("ledge.tx.outcome", outcome);
        if outcome == "error" {
            self.span.fail("the transaction failed in the host");
        }
        self.span.end();
    }
}

impl Drop for TxSpan {
    fn drop(&mut self) {
        if !self.finished {
            self.end(self.refused.unwrap_or("rolled-back"));
        }
    }
}

fn outcome_of(error: &WitError) -> &'static str {
    match error {
        WitError::Conflict(_) => "conflict",
        WitError::Denied(_) => "denied",
        WitError::Limit(_) => "limit",
        _ => "error",
    }
}
