//! What a replay found: the first divergence from the trace (the tape's own, else a difference
//! in the failure, the response head, the response body, stdout or stderr, in that order), the
//! timeline of host calls, and with `--until` the guest's state where it stopped; printed as
//! text or JSON.
//!
//! Invariants: a replay stopped by `--until` before any divergence is `stopped`, never
//! `diverged`, and its outputs are not compared (the guest had not finished).

use serde::Serialize;

use super::ReplayArgs;
use crate::record::tape::{Divergence, Replayed, Step, show_bytes};
use crate::record::trace::Trace;

/// What a replay found.
#[derive(Serialize)]
pub(super) struct Report {
    id: String,
    function: String,
    version: u64,
    /// Replayed into another build (`--against`).
    against: Option<String>,
    steps: Vec<Step>,
    logs: Vec<(String, u32, String)>,
    /// `same`, `diverged` or `stopped`.
    verdict: &'static str,
    pub(super) divergence: Option<Divergence>,
    recorded: Outcome,
    replayed: Outcome,
    /// With `--until`: the guest's state where it stopped.
    state: Option<State>,
}

/// How a run ended: status, body, failure.
#[derive(Serialize, PartialEq)]
struct Outcome {
    status: Option<u16>,
    headers: Vec<(String, String)>,
    body: String,
    body_bytes: usize,
    failure: Option<String>,
    calls: u32,
}

#[derive(Serialize)]
struct State {
    stopped_after: u32,
    kv_reads: Vec<String>,
    kv_buffered_writes: Vec<String>,
    response_so_far: Option<u16>,
    memory_bytes: u64,
}

impl Outcome {
    fn of(output: &crate::record::trace::Output) -> Outcome {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        Outcome {
            status: output.response.as_ref().map(|r| r.status),
            headers: output
                .response
                .iter()
                .flat_map(|r| r.headers.iter().map(|(name, value)| (name.clone(), text(value))))
                .collect(),
            body: text(&output.body[..output.body.len().min(4096)]),
            body_bytes: output.body.len(),
            failure: output.failure.as_ref().map(|f| {
                let first_line = f.message.lines().next().unwrap_or_default();
                format!("{} at host call {}: {first_line}", f.kind, f.at_call)
            }),
            calls: output.calls,
        }
    }
}

/// The bytes a stream got, over all its chunks.
fn stream(output: &crate::record::trace::Output, name: &str) -> Vec<u8> {
    output.logs.iter().filter(|chunk| chunk.stream == name).flat_map(|chunk| chunk.bytes.clone()).collect()
}

impl Report {
    pub(super) fn new(trace: &Trace, replayed: Replayed, args: &ReplayArgs) -> Report {
        let recorded = &trace.output;
        let output = &replayed.output;
        let stopped = replayed.stopped && replayed.divergence.is_none();
        let at_end = output.calls;
        let mismatch = |what: &str, expected: String, actual: String| Divergence {
            at_call: at_end,
            expected: format!("{what} {expected}"),
            actual: format!("{what} {actual}"),
        };
        let divergence = replayed.divergence.clone().or_else(|| {
            if stopped {
                return None;
            }
            if replayed.unplayed > 0 {
                return Some(Divergence {
                    at_call: at_end + 1,
                    expected: format!(
                        "{} more host calls ({} next)",
                        replayed.unplayed, trace.events[at_end as usize].call
                    ),
                    actual: "no more host calls".into(),
                });
            }
            let failure = |output: &crate::record::trace::Output| {
                output.failure.as_ref().map(|f| format!("{} at host call {}: {}", f.kind, f.at_call, f.message))
            };
            if failure(recorded) != failure(output) {
                let show = |f: Option<String>| f.unwrap_or_else(|| "no failure".into());
                return Some(mismatch("failure:", show(failure(recorded)), show(failure(output))));
            }
            let head =
                |output: &crate::record::trace::Output| output.response.as_ref().map(|r| (r.status, r.headers.clone()));
            if head(recorded) != head(output) {
                let show = |o: &crate::record::trace::Output| {
                    let o = Outcome::of(o);
                    format!("{:?} {:?}", o.status, o.headers)
                };
                return Some(mismatch("response head:", show(recorded), show(output)));
            }
            if recorded.body != output.body {
                return Some(mismatch("response body:", show_bytes(&recorded.body), show_bytes(&output.body)));
            }
            for name in ["stdout", "stderr"] {
                let (expected, actual) = (stream(recorded, name), stream(output, name));
                if expected != actual {
                    return Some(mismatch(&format!("{name}:"), show_bytes(&expected), show_bytes(&actual)));
                }
            }
            None
        });
        let state = stopped.then(|| State::at(&replayed, args.until.unwrap_or_default()));
        let verdict = match (&divergence, stopped) {
            (Some(_), _) => "diverged",
            (None, true) => "stopped",
            (None, false) => "same",
        };
        Report {
            id: trace.id.clone(),
            function: trace.function.clone(),
            version: trace.version,
            against: args.against.as_ref().map(|p| p.display().to_string()),
            logs: output
                .logs
                .iter()
                .map(|c| (c.stream.clone(), c.at_call, String::from_utf8_lossy(&c.bytes).into_owned()))
                .collect(),
            steps: replayed.steps,
            verdict,
            divergence,
            recorded: Outcome::of(recorded),
            replayed: Outcome::of(output),
            state,
        }
    }

    pub(super) fn print(&self, as_json: bool) {
        if as_json {
            println!("{}", serde_json::to_string_pretty(self).unwrap_or_default());
            return;
        }
        let against = self.against.as_ref().map(|p| format!(" against {p}")).unwrap_or_default();
        println!("replaying trace {} of {} v{}{against}", self.id, self.function, self.version);
        let mut logs = self.logs.iter().peekable();
        for step in &self.steps {
            while let Some((stream, _, text)) = logs.next_if(|(_, at, _)| *at < step.number) {
                print_log(stream, text);
            }
            println!("#{:<4} {}({}) -> {}", step.number, step.call, step.args, step.summary);
        }
        for (stream, _, text) in logs {
            print_log(stream, text);
        }
        if let Some(state) = &self.state {
            println!("stopped after host call {}:", state.stopped_after);
            println!("  key-value reads: {}", joined(&state.kv_reads));
            println!("  buffered writes: {}", joined(&state.kv_buffered_writes));
            let response = state.response_so_far.map_or_else(|| "not set yet".into(), |s| format!("status {s}"));
            println!("  response: {response}");
            println!("  linear memory: {} bytes", state.memory_bytes);
            return;
        }
        match (&self.replayed.status, &self.replayed.failure) {
            (_, Some(failure)) => println!("failed: {failure}"),
            (Some(status), None) => println!("response: {status}, {} body bytes", self.replayed.body_bytes),
            (None, None) => println!("no response"),
        }
        match &self.divergence {
            None => println!("same: the replay reproduced the recorded run ({} host calls)", self.replayed.calls),
            Some(d) => {
                println!("diverged at host call {}:", d.at_call);
                println!("  the trace has: {}", d.expected);
                println!("  the guest did: {}", d.actual);
                if self.recorded != self.replayed {
                    println!("  recorded response: {:?} {}", self.recorded.status, self.recorded.body);
                    println!("  replayed response: {:?} {}", self.replayed.status, self.replayed.body);
                }
            }
        }
    }
}

fn print_log(stream: &str, text: &str) {
    for line in text.lines() {
        println!("      {stream}: {line}");
    }
}

fn joined(items: &[String]) -> String {
    if items.is_empty() { "none".into() } else { items.join("; ") }
}

impl State {
    /// The guest's key-value view after the steps so far: what it read, and what it wrote since
    /// its last commit.
    fn at(replayed: &Replayed, stopped_after: u32) -> State {
        let mut kv_reads = Vec::new();
        let mut kv_buffered_writes = Vec::new();
        for step in &replayed.steps {
            let function = step.call.rsplit('.').next().unwrap_or_default();
            match function {
                "get" | "scan" | "exists" | "get-many" | "list-keys" | "current" => {
                    kv_reads.push(format!("{}({}) = {}", function, step.args, step.summary))
                }
                "put" | "delete" if step.call.starts_with("ledge:platform") => {
                    kv_buffered_writes.push(format!("{}({})", function, step.args))
                }
                "commit" | "rollback" => kv_buffered_writes.clear(),
                _ => {}
            }
        }
        State {
            stopped_after,
            kv_reads,
            kv_buffered_writes,
            response_so_far: replayed.output.response.as_ref().map(|r| r.status),
            memory_bytes: replayed.memory_bytes,
        }
    }
}
