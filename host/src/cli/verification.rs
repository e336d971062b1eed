//! What `ledge deploy NAME FILE --verify[=N] [--accept ID|all]... [--verify-timeout D]` adds to
//! a deploy (the server replays recent real traffic against the build before it serves), and
//! how the CLI tells what verification found.

use crate::verify::Report;

/// `--verify[=N]` and what goes with it on `ledge deploy`.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Before the new build serves, replay up to N (default 50) of the function's recent real
    /// requests against it and against the live build; refuse the deploy (exit 1) when a user
    /// would see a difference.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "50")]
    pub verify: Option<usize>,
    /// Deploy despite the divergence on trace ID (repeatable), or `all`: every divergence and a
    /// verification cut short by its time bound.
    #[arg(long, value_name = "ID|all", requires = "verify")]
    pub accept: Vec<String>,
    /// How long verification may take, e.g. 90s or 2m (default 60s, at most 10m).
    #[arg(long, value_name = "DURATION", requires = "verify")]
    pub verify_timeout: Option<String>,
}

impl VerifyArgs {
    /// The deploy query's parameters for these arguments.
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let Some(traces) = self.verify else { return Vec::new() };
        let mut query = vec![("verify", traces.to_string())];
        if self.accept.iter().any(|accepted| accepted == "all") {
            query.push(("accept", "all".to_string()));
        } else if !self.accept.is_empty() {
            query.push(("accept", self.accept.join(",")));
        }
        if let Some(timeout) = &self.verify_timeout {
            query.push(("verify_timeout", timeout.clone()));
        }
        query
    }
}

/// Says what a deploy's verification found (a report, or nothing verified, on stderr).
pub fn print_report(report: &Report) {
    eprintln!("verification: {}", report.summary());
    for diverged in &report.diverged {
        let detail = match (&diverged.request, &diverged.difference) {
            (Some(request), Some(difference)) => format!(": {request}: {difference}"),
            _ => String::new(),
        };
        eprintln!("  accepted divergence on trace {}{detail}", diverged.id);
    }
    for unverified in &report.unverified {
        eprintln!("  not verified: trace {}: {}", unverified.id, unverified.reason);
    }
}
