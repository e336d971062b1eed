//! `ledge dev`'s functions that are declared but not live yet: a project's `ledge.toml` names
//! them, and their first build is running or has failed. The dev loop (`cli::dev`) keeps this
//! map; [`super::App`] reads it only for a function the registry does not have, so once a
//! version is live nothing here changes what a request gets (a later failed build keeps serving
//! the last good version).
//!
//! Invariant: empty outside `ledge dev` (nothing else writes it), so a server answers for a
//! missing function as it always did; what the map holds is bounded (one entry per declared
//! function, each first error at most [`MAX_FIRST_ERROR`] bytes).

use std::collections::HashMap;
use std::sync::Mutex;

/// The most of a build's output a failed function answers with.
pub const MAX_FIRST_ERROR: usize = 4096;

/// Why a function declared by a `ledge dev` project has no live version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// The first build is running.
    Building,
    /// The last build failed: its first error, with some context.
    Failed(String),
}

/// What a request for a pending function gets (mapped to a status in `http::problem`).
#[derive(Debug, thiserror::Error)]
pub enum NotLiveYet {
    #[error("building {0} (first build); retry in a few seconds")]
    Building(String),
    #[error("the build of {name} failed and no version of it is live yet; the first error:\n{first_error}")]
    BuildFailed { name: String, first_error: String },
}

/// Declared functions without a live version, by name.
#[derive(Debug, Default)]
pub struct DevBuilds {
    pending: Mutex<HashMap<String, Pending>>,
}

impl DevBuilds {
    /// Records that `name` has no live version yet, and why.
    pub fn set(&self, name: &str, pending: Pending) {
        let pending = match pending {
            Pending::Failed(text) => Pending::Failed(bounded(&text, MAX_FIRST_ERROR)),
            building => building,
        };
        self.lock().insert(name.to_string(), pending);
    }

    /// `name` is live (or nothing is to be said about it any more).
    pub fn clear(&self, name: &str) {
        self.lock().remove(name);
    }

    /// Why `name` answers no request yet, if it is a declared function.
    pub fn not_live_yet(&self, name: &str) -> Option<NotLiveYet> {
        Some(match self.lock().get(name)? {
            Pending::Building => NotLiveYet::Building(name.to_string()),
            Pending::Failed(first_error) => {
                NotLiveYet::BuildFailed { name: name.to_string(), first_error: first_error.clone() }
            }
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `text` cut to at most `max` bytes on a character boundary, marked with `…` when cut.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_function_says_why_until_it_is_cleared() {
        let builds = DevBuilds::default();
        assert!(builds.not_live_yet("app").is_none());
        builds.set("app", Pending::Building);
        assert_eq!(
            builds.not_live_yet("app").unwrap().to_string(),
            "building app (first build); retry in a few seconds"
        );
        builds.set("app", Pending::Failed("é".repeat(MAX_FIRST_ERROR)));
        let Some(NotLiveYet::BuildFailed { first_error, .. }) = builds.not_live_yet("app") else { panic!() };
        assert!(first_error.len() <= MAX_FIRST_ERROR && first_error.ends_with('…'));
        builds.clear("app");
        assert!(builds.not_live_yet("app").is_none());
        assert_eq!(bounded("short", 10), "short");
    }
}
