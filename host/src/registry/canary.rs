//! Which version a request runs, and the canary's record that `ledge promote` judges: how many
//! requests the canary and the live version served since the canary started, and how many of
//! them failed (a 5xx response: a trap, a timeout, a guest's own 5xx).
//!
//! Invariants:
//! - the record belongs to the canary ([`super::Canary::record`]): two counters per version,
//!   none for a function without a canary; a new canary starts from zero and a promotion or a
//!   rollback drops the record with the canary; a policy or config change keeps it;
//! - counting a request is two relaxed atomic adds at most, on the request's own version;
//! - each node counts the requests it ran: in a cluster the node that receives `ledge promote`
//!   judges with its own counts (a node that does not run the canary judges nothing).
//!
//! The rule ([`fails_more`]): once the canary served [`MIN_CANARY_REQUESTS`], promotion is
//! refused when it failed at a rate more than `max_error_ratio` times the live version's over
//! the same time. The live version's rate is taken as at least one failure in what it served
//! (`max(failures, 1) / requests`): a live version without failures is neither a zero to divide
//! by nor a bar no canary with one failure passes. A canary without failures always passes, and
//! with no live requests to compare with the canary is promoted with a note saying so.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::{Deployment, FunctionMeta, RegistryError};
use crate::runtime::FunctionPre;

/// Requests the canary must have served before its failure rate is judged.
pub const MIN_CANARY_REQUESTS: u64 = 100;
/// `--max-error-ratio` when not given.
pub const DEFAULT_MAX_ERROR_RATIO: f64 = 2.0;

/// One version's requests and failures since the canary started.
#[derive(Default)]
pub struct Tally {
    requests: AtomicU64,
    failures: AtomicU64,
}

impl Tally {
    fn observe(&self, status: u16) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counts(&self, version: u64) -> Counts {
        let failures = self.failures.load(Ordering::Relaxed);
        let requests = self.requests.load(Ordering::Relaxed).max(failures);
        Counts { version, requests, failures }
    }
}

/// The canary's record: its version's tally and the live version's, over the same time.
#[derive(Default)]
pub struct CanaryRecord {
    live: Tally,
    canary: Tally,
}

/// The version one request runs.
pub struct Chosen<'a> {
    pub version: u64,
    pub meta: &'a FunctionMeta,
    pub pre: &'a FunctionPre,
    /// This version's first instance (a cold start).
    pub cold: bool,
    /// Where its outcome is counted while the function has a canary.
    tally: Option<&'a Tally>,
}

impl Chosen<'_> {
    /// Counts the request's outcome (its response status) in the canary's record, if any.
    pub fn observe(&self, status: u16) {
        if let Some(tally) = self.tally {
            tally.observe(status);
        }
    }
}

impl Deployment {
    /// The version a caller gets: the canary for its share of callers (the same callers every
    /// time: a fixed hash of the caller's key), else the live one. `None` when that version's
    /// code is not loaded ([`Deployment::load_code`] first) or cannot be (found damaged at
    /// start: the function is about to leave).
    pub fn choose(&self, caller_key: &str) -> Option<Chosen<'_>> {
        if let Some(canary) = &self.canary {
            let mut hasher = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(caller_key, &mut hasher);
            if std::hash::Hasher::finish(&hasher) % 100 < u64::from(canary.percent) {
                let (meta, pre) = (&canary.meta, canary.pre.get()?);
                let cold = first_start(&canary.unstarted);
                return Some(Chosen { version: meta.version, meta, pre, cold, tally: Some(&canary.record.canary) });
            }
        }
        let pre = self.pre.get()?;
        let tally = self.canary.as_ref().map(|canary| &canary.record.live);
        let cold = first_start(&self.unstarted);
        Some(Chosen { version: self.meta.version, meta: &self.meta, pre, cold, tally })
    }

    /// Loads the code of the live version and of the canary where a start left it for later
    /// (on a blocking thread), so that [`Deployment::choose`] finds it.
    pub async fn load_code(&self) {
        self.pre.load().await;
        if let Some(canary) = &self.canary {
            canary.pre.load().await;
        }
    }

    /// Judges the canary's record under `gate`; `None` without a canary.
    pub fn judge_canary(&self, gate: Gate) -> Option<Judgement> {
        let canary = self.canary.as_ref()?;
        let live = canary.record.live.counts(self.meta.version);
        Some(judge(canary.record.canary.counts(canary.meta.version), live, gate))
    }
}

/// True exactly once per version: for its first instance (a cold start).
fn first_start(unstarted: &AtomicBool) -> bool {
    unstarted.load(Ordering::Relaxed) && unstarted.swap(false, Ordering::Relaxed)
}

/// One version's requests and failures, as judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub version: u64,
    pub requests: u64,
    pub failures: u64,
}

/// `ledge promote`'s options: `--max-error-ratio` and `--force`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    pub max_error_ratio: f64,
    pub force: bool,
}

impl Default for Gate {
    fn default() -> Self {
        Gate { max_error_ratio: DEFAULT_MAX_ERROR_RATIO, force: false }
    }
}

/// What the gate found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Within the ratio.
    Healthy,
    /// Fewer than [`MIN_CANARY_REQUESTS`]: promoted unjudged.
    TooShort,
    /// The live version served nothing since the canary started: nothing to compare with.
    NoLiveRequests,
    /// This node does not run the canary (cluster mode), so it has no record to judge.
    NotRunHere,
    /// Over the ratio, and promotion refused.
    Refused,
    /// Over the ratio, promoted with `--force`.
    Forced,
}

/// The gate's finding, with the counts it judged; `note` says it in words.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Judgement {
    pub verdict: Verdict,
    pub canary: Option<Counts>,
    pub live: Option<Counts>,
    pub max_error_ratio: f64,
    pub note: String,
}

impl Judgement {
    /// What a node without the canary reports (cluster mode).
    pub fn not_run_here(gate: Gate) -> Judgement {
        let note = "this node does not run the canary, so it has no record of the canary's failures to judge; \
                    promoted unjudged (ask the node that served it)"
            .to_string();
        Judgement {
            verdict: Verdict::NotRunHere,
            canary: None,
            live: None,
            max_error_ratio: gate.max_error_ratio,
            note,
        }
    }

    /// The judgement, or the refusal it is (a 409 naming both rates).
    pub fn refusal(self) -> Result<Judgement, RegistryError> {
        match self.verdict {
            Verdict::Refused => Err(RegistryError::Versions(self.note)),
            _ => Ok(self),
        }
    }
}

/// Whether the canary failed more than `ratio` times as often as the live version (see the
/// module's rule): `false` for a canary without failures or a live version without requests.
pub fn fails_more(canary: Counts, live: Counts, ratio: f64) -> bool {
    // canary.failures / canary.requests > ratio * max(live.failures, 1) / live.requests,
    // multiplied out so that nothing divides.
    canary.failures > 0
        && live.requests > 0
        && canary.failures as f64 * live.requests as f64 > ratio * live.failures.max(1) as f64 * canary.requests as f64
}

/// Judges `canary` against `live` under `gate`.
pub fn judge(canary: Counts, live: Counts, gate: Gate) -> Judgement {
    let ratio = gate.max_error_ratio;
    let (verdict, note) = if canary.requests < MIN_CANARY_REQUESTS {
        let note = format!(
            "the canary (version {}) served {} requests since it started, fewer than the {MIN_CANARY_REQUESTS} \
             needed to judge its record: promoted without comparing failure rates",
            canary.version,
            thousands(canary.requests),
        );
        (Verdict::TooShort, note)
    } else if live.requests == 0 {
        let note = format!(
            "the canary (version {}) failed {} of {} requests since it started; the live version ({}) served \
             none over that time, so there is nothing to compare with: promoted",
            canary.version,
            percent(canary.failures, canary.requests),
            thousands(canary.requests),
            live.version,
        );
        (Verdict::NoLiveRequests, note)
    } else {
        let over = fails_more(canary, live, ratio);
        let floor = match live.failures {
            0 => format!(" (taken as at least one failure: {})", percent(1, live.requests)),
            _ => String::new(),
        };
        let rates = format!(
            "the canary (version {}) failed {} of {} requests since it started, the live version ({}) {} of {}{floor}: {} {}x",
            canary.version,
            percent(canary.failures, canary.requests),
            thousands(canary.requests),
            live.version,
            percent(live.failures, live.requests),
            thousands(live.requests),
            if over { "more than" } else { "within" },
            ratio_text(ratio),
        );
        match (over, gate.force) {
            (false, _) => (Verdict::Healthy, rates),
            (true, false) => (Verdict::Refused, format!("{rates}; promote with --force (force=true) to override")),
            (true, true) => (Verdict::Forced, format!("forced: {rates}")),
        }
    };
    Judgement { verdict, canary: Some(canary), live: Some(live), max_error_ratio: ratio, note }
}

/// `12.0%`; a rate under 0.1% keeps two significant figures (`0.074%`), so it never reads as
/// zero.
fn percent(part: u64, whole: u64) -> String {
    let value = if whole == 0 { 0.0 } else { part as f64 * 100.0 / whole as f64 };
    if value == 0.0 || value >= 0.1 {
        return format!("{value:.1}%");
    }
    let decimals = (1.0 - value.log10().floor()) as usize;
    format!("{value:.decimals$}%")
}

/// `1,350`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `2.0`, `2.5`, `0.25`: as given, with at least one decimal.
fn ratio_text(ratio: f64) -> String {
    let text = ratio.to_string();
    if text.contains('.') || text.contains('e') { text } else { format!("{text}.0") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(version: u64, failures: u64, requests: u64) -> Counts {
        Counts { version, requests, failures }
    }

    #[test]
    fn the_rule_compares_rates_with_a_floor_of_one_live_failure() {
        // 12% against 1%: more than twice.
        assert!(fails_more(counts(3, 18, 150), counts(2, 14, 1350), 2.0));
        // 2% against 1%: within 2x (exactly 2x is not more than 2x).
        assert!(!fails_more(counts(3, 2, 100), counts(2, 10, 1000), 2.0));
        assert!(!fails_more(counts(3, 3, 150), counts(2, 10, 1000), 2.0));
        assert!(fails_more(counts(3, 4, 150), counts(2, 10, 1000), 2.0));
        // A canary without failures always passes, whatever the live version did.
        assert!(!fails_more(counts(3, 0, 500), counts(2, 0, 500), 0.0));
        // A live version without failures counts as one in what it served: 1 in 1,000 = 0.1%.
        assert!(!fails_more(counts(3, 1, 500), counts(2, 0, 1000), 2.0), "0.2% is not more than 2 x 0.1%");
        assert!(fails_more(counts(3, 2, 500), counts(2, 0, 1000), 2.0), "0.4% is");
        // No live requests: nothing to divide by, never refused by the rule.
        assert!(!fails_more(counts(3, 150, 150), counts(2, 0, 0), 2.0));
        // The ratio matters.
        assert!(!fails_more(counts(3, 18, 150), counts(2, 14, 1350), 20.0));
    }

    #[test]
    fn judgements_name_both_rates_and_what_was_done() {
        let refused = judge(counts(3, 18, 150), counts(2, 14, 1350), Gate::default());
        assert_eq!(refused.verdict, Verdict::Refused);
        assert_eq!(
            refused.note,
            "the canary (version 3) failed 12.0% of 150 requests since it started, the live version (2) 1.0% of \
             1,350: more than 2.0x; promote with --force (force=true) to override"
        );
        assert!(refused.clone().refusal().is_err());
        let forced = judge(counts(3, 18, 150), counts(2, 14, 1350), Gate { force: true, ..Gate::default() });
        assert_eq!(forced.verdict, Verdict::Forced);
        assert!(forced.note.starts_with("forced: the canary (version 3) failed 12.0%"), "{}", forced.note);
        let short = judge(counts(3, 99, 99), counts(2, 0, 1000), Gate::default());
        assert_eq!(short.verdict, Verdict::TooShort);
        assert!(short.note.contains("fewer than the 100"), "{}", short.note);
        let clean = judge(counts(3, 0, 150), counts(2, 0, 1350), Gate { max_error_ratio: 2.5, force: false });
        assert_eq!(clean.verdict, Verdict::Healthy);
        assert!(
            clean.note.contains("0.0% of 1,350 (taken as at least one failure: 0.074%): within 2.5x"),
            "{}",
            clean.note
        );
        let alone = judge(counts(3, 150, 150), counts(2, 0, 0), Gate::default());
        assert_eq!(alone.verdict, Verdict::NoLiveRequests);
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(percent(1, 1_000_000), "0.00010%");
        assert_eq!(percent(1, 3), "33.3%");
    }

    #[test]
    fn a_tally_counts_5xx_as_failures() {
        let tally = Tally::default();
        for status in [200, 404, 500, 503, 504, 101] {
            tally.observe(status);
        }
        assert_eq!(tally.counts(7), counts(7, 3, 6));
    }
}
