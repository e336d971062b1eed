//! Routes by host and path (policy `[[route]]`): requests that match are served by the
//! function without the `/fn/NAME/` prefix, and the guest sees the original path.
//!
//! Invariants: the most specific route wins (an exact host over a wildcard over any host, a
//! longer wildcard domain over a shorter one, then the longer path prefix); two functions never
//! hold the same (host, path) through uploaded policies (the second is refused, naming the
//! first); ledge's own paths (`/fn/`, `/v1/`, `/healthz`, `/readyz`, `/metrics`) cannot be taken
//! (the policy parser refuses them, and the router matches them first anyway).

use std::sync::Arc;

use super::{PolicyError, Registry};
use crate::access::policy::{Route, path_under};

/// How specific a route is: compared as a tuple, larger first.
fn specificity(route: &Route) -> (u8, usize, usize) {
    let host = match route.host.as_deref() {
        None => (0, 0),
        Some(pattern) if pattern.starts_with("*.") => (1, pattern.len()),
        Some(pattern) => (2, pattern.len()),
    };
    (host.0, host.1, route.path.len())
}

fn host_matches(pattern: Option<&str>, host: Option<&str>) -> bool {
    match (pattern, host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(pattern), Some(host)) => match pattern.strip_prefix("*.") {
            Some(domain) => host.strip_suffix(domain).is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
            None => pattern == host,
        },
    }
}

/// How well a route matches a request: compared as a tuple, larger wins ([`rank`]).
pub type Rank = (u8, usize, usize);

/// How specific `route` is for a request to `host` (lower case, no port) and `path`, when it
/// matches: the order [`Registry::route_for`] picks by, for tables kept elsewhere (a cluster's
/// routes of functions other nodes host).
pub fn rank(route: &Route, host: Option<&str>, path: &str) -> Option<Rank> {
    (host_matches(route.host.as_deref(), host) && path_under(path, &route.path)).then(|| specificity(route))
}

impl Registry {
    /// The function serving `host` (lower case, no port) and `path`, if a route matches.
    pub fn route_for(&self, host: Option<&str>, path: &str) -> Option<String> {
        let routes = self.routes.read().expect("routes lock poisoned").clone();
        routes
            .iter()
            .find(|(route, _)| host_matches(route.host.as_deref(), host) && path_under(path, &route.path))
            .map(|(_, name)| name.clone())
    }

    /// Rebuilds the table from the live functions' policies.
    pub(super) fn rebuild_routes(&self) {
        let mut routes: Vec<(Route, String)> = self
            .live
            .read()
            .expect("registry lock poisoned")
            .iter()
            .flat_map(|(name, deployment)| deployment.policy.routes.iter().map(|r| (r.clone(), name.clone())))
            .collect();
        // Most specific first; ties (the same route in two policy files) go by name, and the
        // first one wins.
        routes.sort_by(|a, b| specificity(&b.0).cmp(&specificity(&a.0)).then_with(|| a.1.cmp(&b.1)));
        for pair in routes.windows(2) {
            if pair[0].0 == pair[1].0 {
                tracing::warn!(route = ?pair[0].0, held_by = %pair[0].1, ignored_for = %pair[1].1, "two functions claim one route");
            }
        }
        *self.routes.write().expect("routes lock poisoned") = Arc::new(routes);
    }

    /// Refuses `routes` for `name` when another function holds one of them.
    pub(super) fn check_routes(&self, name: &str, routes: &[Route]) -> Result<(), PolicyError> {
        let table = self.routes.read().expect("routes lock poisoned").clone();
        for route in routes {
            if let Some((_, holder)) = table.iter().find(|(held, holder)| held == route && holder != name) {
                let host = route.host.as_deref().unwrap_or("any host");
                return Err(PolicyError::Conflict(format!(
                    "the route {host} {} is held by function `{holder}`; remove it there first",
                    route.path
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_exactly_or_by_subdomain() {
        assert!(host_matches(Some("api.example.com"), Some("api.example.com")));
        assert!(!host_matches(Some("api.example.com"), Some("x.api.example.com")));
        assert!(host_matches(Some("*.example.com"), Some("a.example.com")));
        assert!(host_matches(Some("*.example.com"), Some("a.b.example.com")));
        assert!(!host_matches(Some("*.example.com"), Some("example.com")));
        assert!(!host_matches(Some("*.example.com"), Some("badexample.com")));
        assert!(host_matches(None, None));
        assert!(!host_matches(Some("a.test"), None));
    }

    #[test]
    fn the_most_specific_route_sorts_first() {
        let route = |host: Option<&str>, path: &str| Route { host: host.map(str::to_string), path: path.to_string() };
        let mut routes = [
            route(None, "/"),
            route(Some("*.example.com"), "/"),
            route(Some("api.example.com"), "/"),
            route(Some("api.example.com"), "/v2"),
            route(Some("*.eu.example.com"), "/"),
        ];
        routes.sort_by_key(|r| std::cmp::Reverse(specificity(r)));
        let order: Vec<_> = routes.iter().map(|r| format!("{:?} {}", r.host, r.path)).collect();
        assert_eq!(order[0], "Some(\"api.example.com\") /v2");
        assert_eq!(order[1], "Some(\"api.example.com\") /");
        assert_eq!(order[2], "Some(\"*.eu.example.com\") /");
        assert_eq!(order[4], "None /");
    }
}
