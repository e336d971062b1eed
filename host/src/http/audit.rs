//! The audit log (target `ledge::audit`): one line per admin change, with the token's root id
//! and branch (its last `id` caveat, `-` when none), never the token.

use crate::access::tokens::Caller;

/// One line in the audit log per admin change: who (token id), what, on what, and how it ended.
pub(super) fn audit<T, E: std::fmt::Display>(action: &str, target: &str, caller: &Caller, outcome: Result<T, E>)
where
    T: std::fmt::Display,
{
    let token_id = caller.token_id.as_deref().unwrap_or("-");
    let token_branch = caller.branch_id.as_deref().unwrap_or("-");
    match outcome {
        Ok(detail) => tracing::info!(
            target: "ledge::audit", action, target_name = target, token_id, token_branch, outcome = "ok", %detail,
            "admin change"
        ),
        Err(error) => tracing::warn!(
            target: "ledge::audit", action, target_name = target, token_id, token_branch, outcome = "refused", %error,
            "admin change"
        ),
    }
}
