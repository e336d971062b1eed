//! Server-wide ceilings ([`Ceilings`], from `ledge serve` flags) and the fixed limits on what
//! one policy may name ([`MAX_SCHEDULES`], [`MAX_REPLICAS`]), and the checks against them.
//!
//! Invariants: a value someone wrote past a ceiling is refused, never quietly lowered; only the
//! built-in values are brought under the ceilings ([`Policy::within`]).

use std::time::Duration;

use super::Policy;

/// Schedules one function may have.
pub const MAX_SCHEDULES: usize = 16;

/// Most nodes a `[placement] replicas` may name (more is a typo, not a cluster).
pub const MAX_REPLICAS: u32 = 1000;

/// Server-wide ceilings no policy may exceed, whoever writes it (`ledge serve --max-timeout`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ceilings {
    /// The longest wall-clock time any request may run.
    pub max_timeout: Duration,
}

impl Default for Ceilings {
    fn default() -> Self {
        Ceilings { max_timeout: Duration::from_secs(300) }
    }
}

impl Policy {
    /// This policy with its built-in values brought under `ceilings` (the built-in 10 s timeout
    /// on a server started with `--max-timeout 2s` becomes 2 s): only values someone wrote are
    /// refused for exceeding a ceiling.
    pub fn within(mut self, ceilings: &Ceilings) -> Policy {
        self.timeout = self.timeout.min(ceilings.max_timeout);
        self
    }

    /// Refuses a policy past the server's ceilings; the message names the field and the flag.
    pub fn check_ceilings(&self, ceilings: &Ceilings) -> Result<(), String> {
        if self.schedules.len() > MAX_SCHEDULES {
            return Err(format!("schedule: at most {MAX_SCHEDULES} entries per function"));
        }
        if self.replicas > MAX_REPLICAS {
            return Err(format!("placement.replicas: at most {MAX_REPLICAS} (0 = every node)"));
        }
        if self.timeout > ceilings.max_timeout {
            return Err(format!(
                "limits.timeout of {:?} is above this server's ceiling of {:?} (ledge serve --max-timeout)",
                self.timeout, ceilings.max_timeout
            ));
        }
        Ok(())
    }
}
