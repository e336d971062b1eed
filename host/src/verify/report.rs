//! What a verification found ([`Report`]), how much of it a caller may see, and whether a
//! deploy that asked to be verified may go on ([`Accept`], [`Refusal`]).
//!
//! Invariants: request lines, differences and the reasons a trace could not be replayed hold
//! users' data: [`Report::redact`] leaves trace ids and counts only, for a caller not allowed
//! `op manage` on the function (and for the audit log); a divergence lets a deploy through only
//! when accepted by its trace's id or by `all`, and a verification cut short by its deadline, or
//! one that could compare no trace at all, only with `all`.

use serde::{Deserialize, Serialize};

/// What a verification found.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Traces replayed on both builds and compared.
    pub verified: usize,
    pub same: usize,
    pub diverged: Vec<Diverged>,
    pub unverified: Vec<Unverified>,
}

/// A trace on which the new build did something the live one did not.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Diverged {
    pub id: String,
    /// `METHOD /path?query` as recorded (absent once redacted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The first difference (absent once redacted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub difference: Option<String>,
}

/// A trace that was not compared, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Unverified {
    pub id: String,
    pub reason: String,
}

pub(super) const TIMED_OUT: &str = "not verified within the time bound";
const NOT_REPLAYED: &str = "could not be replayed";

pub(super) fn unverified(id: String, reason: &str) -> Unverified {
    Unverified { id, reason: reason.to_string() }
}

impl Report {
    /// Whether the deadline left traces unverified.
    pub fn timed_out(&self) -> bool {
        self.unverified.iter().any(|unverified| unverified.reason == TIMED_OUT)
    }

    /// Trace ids and counts only.
    pub fn redact(&mut self) {
        for diverged in &mut self.diverged {
            (diverged.request, diverged.difference) = (None, None);
        }
        for unverified in &mut self.unverified {
            if unverified.reason != TIMED_OUT {
                unverified.reason = NOT_REPLAYED.into();
            }
        }
    }

    /// One line for people: `N of M same`, and what else happened.
    pub fn summary(&self) -> String {
        let mut summary = format!("{} of {} same", self.same, self.verified);
        if !self.diverged.is_empty() {
            summary += &format!(", {} diverged", self.diverged.len());
        }
        if !self.unverified.is_empty() {
            summary += &format!(", {} not verified", self.unverified.len());
        }
        if self.verified == 0 && self.unverified.is_empty() {
            summary = "nothing verified (the function has no corpus yet: [record] keep_sample)".into();
        }
        summary
    }
}

/// Which divergences a deploy goes ahead with (`accept=ID,...` or `accept=all`).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Accept {
    #[default]
    Nothing,
    These(Vec<String>),
    All,
}

impl Accept {
    fn covers(&self, id: &str) -> bool {
        match self {
            Accept::Nothing => false,
            Accept::These(ids) => ids.iter().any(|accepted| accepted == id),
            Accept::All => true,
        }
    }
}

/// Why a deploy that asked to be verified was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the new build diverged from the live one on {} of {} traces ({}); nothing was deployed (accept=ID,... or accept=all deploys it anyway)",
        refused.len(), report.verified, described(report, refused)
    )]
    Diverged { report: Report, refused: Vec<String> },
    #[error(
        "verification did not finish within its time bound: {} traces not verified ({}); nothing was deployed (accept=all deploys it anyway)",
        report.unverified.iter().filter(|u| u.reason == TIMED_OUT).count(),
        report.unverified.iter().filter(|u| u.reason == TIMED_OUT).map(|u| u.id.as_str()).collect::<Vec<_>>().join(", ")
    )]
    TimedOut { report: Report },
    #[error(
        "no trace could be verified ({} not verified: {}); nothing was deployed (accept=all deploys it anyway)",
        report.unverified.len(),
        report.unverified.iter().map(|u| format!("{} {}", u.id, u.reason)).collect::<Vec<_>>().join("; ")
    )]
    NothingVerified { report: Report },
}

impl Refusal {
    pub fn report(&self) -> &Report {
        match self {
            Refusal::Diverged { report, .. } | Refusal::TimedOut { report } | Refusal::NothingVerified { report } => {
                report
            }
        }
    }
}

fn described(report: &Report, refused: &[String]) -> String {
    let lines: Vec<String> = report
        .diverged
        .iter()
        .filter(|diverged| refused.contains(&diverged.id))
        .map(|diverged| match (&diverged.request, &diverged.difference) {
            (Some(request), Some(difference)) => format!("{} {request}: {difference}", diverged.id),
            _ => diverged.id.clone(),
        })
        .collect();
    lines.join("; ")
}

/// Whether a deploy may go on after `report`: the divergences it accepted (to audit), or why
/// not.
pub fn judge(report: &Report, accept: &Accept) -> Result<Vec<String>, Refusal> {
    let refused: Vec<String> = report.diverged.iter().filter(|d| !accept.covers(&d.id)).map(|d| d.id.clone()).collect();
    if !refused.is_empty() {
        return Err(Refusal::Diverged { report: report.clone(), refused });
    }
    if report.timed_out() && *accept != Accept::All {
        return Err(Refusal::TimedOut { report: report.clone() });
    }
    // A corpus none of which could be compared proves nothing: not a pass.
    if report.verified == 0 && !report.unverified.is_empty() && *accept != Accept::All {
        return Err(Refusal::NothingVerified { report: report.clone() });
    }
    Ok(report.diverged.iter().map(|d| d.id.clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            verified: 3,
            same: 1,
            diverged: ["a", "b"]
                .map(|id| Diverged {
                    id: id.into(),
                    request: Some("GET /secret?user=7".into()),
                    difference: Some("body".into()),
                })
                .to_vec(),
            unverified: vec![unverified("c".into(), "the build made outbound request GET http://x/?token=1")],
        }
    }

    #[test]
    fn a_divergence_passes_only_when_accepted_and_a_deadline_only_with_all() {
        assert!(
            matches!(judge(&report(), &Accept::Nothing), Err(Refusal::Diverged { refused, .. }) if refused == ["a", "b"])
        );
        assert!(
            matches!(judge(&report(), &Accept::These(vec!["a".into()])), Err(Refusal::Diverged { refused, .. }) if refused == ["b"])
        );
        assert_eq!(judge(&report(), &Accept::These(vec!["a".into(), "b".into()])).unwrap(), ["a", "b"]);
        let mut late = Report { verified: 1, same: 1, ..Report::default() };
        late.unverified.push(unverified("d".into(), TIMED_OUT));
        assert!(matches!(judge(&late, &Accept::These(vec!["d".into()])), Err(Refusal::TimedOut { .. })));
        assert!(judge(&late, &Accept::All).is_ok());
    }

    #[test]
    fn a_redacted_report_holds_ids_and_counts_only() {
        let mut redacted = report();
        redacted.redact();
        let text = serde_json::to_string(&redacted).unwrap();
        assert!(!text.contains("secret") && !text.contains("token=1"), "{text}");
        assert!(text.contains("\"a\"") && text.contains("\"verified\":3"), "{text}");
        let refusal = judge(&redacted, &Accept::Nothing).unwrap_err().to_string();
        assert!(refusal.contains("on 2 of 3 traces (a; b)"), "{refusal}");
    }
}
