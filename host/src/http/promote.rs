//! `POST /v1/functions/{name}/promote[?max_error_ratio=F&force=true]`: the canary becomes the
//! live version, unless its record says it fails too often (`registry::canary` has the rule).
//!
//! Invariants: the parameters are parsed strictly (an unknown one, or a bad value, is a 400
//! naming it, and nothing is promoted); every promotion and refusal is audited, a forced one
//! with the rates it overrode. In a cluster each node counts the requests it ran, and the node
//! that receives the promote judges with its own counts (it fetches none from its peers).

use http::StatusCode;

use super::audit::audit;
use super::{App, Problem, ResponseBody, json};
use crate::access::tokens::Caller;
use crate::cluster::{Cluster, ClusterError};
use crate::registry::canary::{Gate, Judgement};
use crate::registry::versions::Promoted;

impl App {
    /// Promotes `name`'s canary if its record passes the gate that `query` sets.
    pub(super) async fn promote(
        &self,
        query: Option<&str>,
        name: &str,
        caller: &Caller,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        let gate = gate(query)?;
        let outcome = match &self.cluster {
            Some(cluster) => promote_in_cluster(cluster, self, name, gate).await,
            None => match self.registry.promote_judged(name, Some(gate)).await {
                Ok((versions, judged)) => {
                    Ok(Promoted { versions, judged: judged.unwrap_or_else(|| Judgement::not_run_here(gate)) })
                }
                Err(error) => Err(ClusterError::from(error)),
            },
        };
        let detail = |p: &Promoted| format!("version {} live; {}", p.versions.live, p.judged.note);
        audit("promote", name, caller, outcome.as_ref().map(detail));
        Ok(json(StatusCode::OK, &outcome?))
    }
}

/// Judges with this node's record of the canary, then promotes it through etcd. Not atomic
/// with the write (another node may change the canary in between): a simplification, as is
/// judging by one node's counts.
async fn promote_in_cluster(cluster: &Cluster, app: &App, name: &str, gate: Gate) -> Result<Promoted, ClusterError> {
    let judged = app.registry.lookup(name).and_then(|deployment| deployment.judge_canary(gate));
    let judged = judged.unwrap_or_else(|| Judgement::not_run_here(gate)).refusal()?;
    let versions = cluster.promote(name).await?;
    Ok(Promoted { versions, judged })
}

/// The gate that `max_error_ratio=F` (a number, 0 or more; default 2.0) and `force=true|false`
/// set; any other parameter is refused.
fn gate(query: Option<&str>) -> Result<Gate, Problem> {
    let bad = |detail: String| Problem::new(StatusCode::BAD_REQUEST, detail);
    let mut gate = Gate::default();
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "max_error_ratio" => {
                gate.max_error_ratio =
                    value.parse::<f64>().ok().filter(|r| r.is_finite() && *r >= 0.0).ok_or_else(|| {
                        bad(format!("max_error_ratio=`{value}`: give a number of 0 or more, such as 2.0"))
                    })?
            }
            "force" => {
                gate.force = match value.as_ref() {
                    "true" => true,
                    "false" => false,
                    other => return Err(bad(format!("force=`{other}`: give true or false"))),
                }
            }
            other => {
                return Err(bad(format!("unknown parameter `{other}` (this route takes max_error_ratio, force)")));
            }
        }
    }
    Ok(gate)
}

#[cfg(test)]
mod tests {
    use super::gate;

    #[test]
    fn the_parameters_are_parsed_strictly() {
        assert_eq!(gate(None).unwrap(), Default::default());
        let parsed = gate(Some("max_error_ratio=3.5&force=true")).unwrap();
        assert_eq!((parsed.max_error_ratio, parsed.force), (3.5, true));
        for (query, named) in [
            ("max_error_ratio=abc", "max_error_ratio=`abc`"),
            ("max_error_ratio=-1", "max_error_ratio=`-1`"),
            ("max_error_ratio=NaN", "max_error_ratio=`NaN`"),
            ("force=yes", "force=`yes`"),
            ("forse=true", "unknown parameter `forse`"),
        ] {
            let problem = gate(Some(query)).unwrap_err();
            assert_eq!(problem.status, 400);
            assert!(problem.detail.contains(named), "{query}: {}", problem.detail);
        }
    }
}
