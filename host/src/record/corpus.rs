//! The verification corpus (`[record] keep_sample`): which runs are drawn for it, the route key
//! that tells its requests apart, and which corpus trace makes room for a new one.
//!
//! - [`route_key`]: method and path with ids and query values stripped (`GET /users/:id?page`);
//! - [`Sampler`]: the draw, per function, independent of `[record] sample`: one run every
//!   [`STEADY`], and besides, the first run of a route the corpus does not hold yet, at most
//!   [`MAX_PER_SECOND`] draws a second in all, and at most [`MAX_NODE_PER_SECOND`] a second
//!   across every function of the node;
//! - [`victim`]: when the corpus is full, the oldest trace of the route with the most traces
//!   goes, so a rare route survives among common ones;
//! - [`round_robin`]: the order the corpus is handed out in, distinct routes first.
//!
//! Invariants: the sampler holds one small entry per function it drew for (removed with the
//! function), its route set mirrors the stored corpus (at most `keep_sample` routes) and its
//! draws of the current second (at most [`MAX_PER_SECOND`]); a route key is at most
//! [`MAX_ROUTE_KEY`] bytes, so no request makes the host hold more.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// One corpus draw per function at steady state, at most this often.
pub const STEADY: Duration = Duration::from_millis(500);
/// The most corpus draws per function in one second, new routes included.
pub const MAX_PER_SECOND: u32 = 10;
/// The most corpus draws in one second across all functions. Each draw of a successful run
/// keeps and stores its trace: without a bound for the node, 1,000 functions would keep 2,000
/// traces a second at steady state, and 10,000 functions served evenly would record nearly
/// every run (requests spread over 10,000 functions ran at 0.13x of one function). A function
/// whose draw is refused is owed one: it is drawn before functions not owed on one of its next
/// runs, so no tenant's functions can keep the budget from another's (see [`NodeDraws`]).
pub const MAX_NODE_PER_SECOND: u32 = 100;
/// How long a refused function stays owed a draw (one that no longer runs stops holding a
/// place).
const OWED_FOR_SECONDS: u64 = 60;
/// The longest route key; a longer one is cut (at a character boundary).
pub const MAX_ROUTE_KEY: usize = 256;
/// A path segment longer than this is taken for an id.
const MAX_NAME_SEGMENT: usize = 32;

/// The route a request is counted under in the corpus: its method and path, with each segment
/// that looks like an id (all digits; 8 or more hex digits, dashes allowed, as in a UUID; over
/// 32 characters) as `:id`, and the query's keys, sorted, without their values.
pub fn route_key(method: &str, path_and_query: &str) -> String {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let mut key = String::with_capacity(method.len() + path.len() + 1);
    key.push_str(method);
    key.push(' ');
    for (index, segment) in path.split('/').enumerate() {
        if index > 0 {
            key.push('/');
        }
        key.push_str(if is_id(segment) { ":id" } else { segment });
    }
    let mut keys: Vec<&str> =
        query.split('&').filter(|pair| !pair.is_empty()).map(|pair| pair.split('=').next().unwrap_or(pair)).collect();
    keys.sort_unstable();
    keys.dedup();
    for (index, name) in keys.iter().enumerate() {
        key.push(if index == 0 { '?' } else { '&' });
        key.push_str(name);
    }
    if key.len() > MAX_ROUTE_KEY {
        let mut end = MAX_ROUTE_KEY;
        while !key.is_char_boundary(end) {
            end -= 1;
        }
        key.truncate(end);
    }
    key
}

/// A path segment that names one thing rather than a route.
fn is_id(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let digits = !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit);
    let hex = bytes.iter().filter(|b| b.is_ascii_hexdigit()).count() >= 8
        && bytes.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-');
    digits || hex || bytes.len() > MAX_NAME_SEGMENT
}

/// The corpus draw of every function, and the routes each one's stored corpus holds.
pub struct Sampler {
    epoch: Instant,
    functions: Mutex<HashMap<String, Drawn>>,
    /// The node's budget; taken after `functions` when both are held.
    node: Mutex<NodeDraws>,
}

/// The draws of the current second across the node, and the functions owed one. A function
/// refused for want of budget is owed a draw, and the owed are served oldest refusal first:
/// one may draw only from what those refused before it leave, and a function that is not owed
/// only from what all of them leave. So a tenant flooding new routes on many functions cannot
/// keep the budget from another's: each refused function holds its place in line until its
/// next run. At most one entry per function (removed with it, or after [`OWED_FOR_SECONDS`]).
#[derive(Default)]
struct NodeDraws {
    second: u64,
    drawn: u32,
    /// Function → the second it was refused in.
    owed: HashMap<String, u64>,
    /// How many of `owed` were refused in each second.
    owed_per_second: std::collections::BTreeMap<u64, usize>,
}

impl NodeDraws {
    fn owe(&mut self, function: &str, second: u64) {
        self.owed.insert(function.to_string(), second);
        *self.owed_per_second.entry(second).or_default() += 1;
    }

    fn settle(&mut self, function: &str) {
        if let Some(since) = self.owed.remove(function)
            && let Some(count) = self.owed_per_second.get_mut(&since)
        {
            *count -= 1;
            if *count == 0 {
                self.owed_per_second.remove(&since);
            }
        }
    }

    /// Draws that come before one of `function`'s: those owed to functions refused earlier,
    /// or all owed ones for a function not owed a draw.
    fn ahead_of(&self, function: &str) -> usize {
        match self.owed.get(function) {
            Some(since) => self.owed_per_second.range(..since).map(|(_, count)| count).sum(),
            None => self.owed.len(),
        }
    }
}

/// One function's draws.
#[derive(Default)]
struct Drawn {
    /// Routes of the stored corpus, with how many traces each (as the trace writer last
    /// stored them).
    routes: HashMap<String, u32>,
    /// Milliseconds (since the sampler's epoch) before which no steady draw is made.
    next_steady: u64,
    /// The second (since the epoch) `in_second` and `new_in_second` count.
    second: u64,
    in_second: u32,
    /// Routes drawn as new in this second (not drawn again while their trace is on its way).
    new_in_second: Vec<String>,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler { epoch: Instant::now(), functions: Mutex::new(HashMap::new()), node: Mutex::default() }
    }
}

impl Sampler {
    /// Whether this run of `function` (`keep_sample` from its policy) is recorded for the
    /// corpus.
    pub fn draw(&self, function: &str, keep_sample: u32, method: &str, path_and_query: &str) -> bool {
        if keep_sample == 0 {
            return false;
        }
        self.draw_at(self.epoch.elapsed().as_millis() as u64, function, method, path_and_query)
    }

    fn draw_at(&self, now_ms: u64, function: &str, method: &str, path_and_query: &str) -> bool {
        let mut functions = self.functions.lock();
        if !functions.contains_key(function) {
            functions.insert(function.to_string(), Drawn::default());
        }
        let drawn = functions.get_mut(function).expect("inserted above");
        if drawn.second != now_ms / 1000 {
            drawn.second = now_ms / 1000;
            drawn.in_second = 0;
            drawn.new_in_second.clear();
        }
        if drawn.in_second >= MAX_PER_SECOND {
            return false;
        }
        if now_ms >= drawn.next_steady {
            if !self.node_draws(now_ms, function) {
                return false;
            }
            drawn.next_steady = now_ms + STEADY.as_millis() as u64;
            drawn.in_second += 1;
            return true;
        }
        let route = route_key(method, path_and_query);
        if drawn.routes.contains_key(&route)
            || drawn.new_in_second.contains(&route)
            || !self.node_draws(now_ms, function)
        {
            return false;
        }
        drawn.in_second += 1;
        drawn.new_in_second.push(route);
        true
    }

    /// Counts one draw of `function` against the node's budget for this second; false (and
    /// `function` owed a draw, if it was not) when what is left is held for others in line.
    fn node_draws(&self, now_ms: u64, function: &str) -> bool {
        let mut node = self.node.lock();
        let second = now_ms / 1000;
        if node.second != second {
            node.second = second;
            node.drawn = 0;
            let expired: Vec<String> = node
                .owed
                .iter()
                .filter(|(_, since)| second.saturating_sub(**since) >= OWED_FOR_SECONDS)
                .map(|(name, _)| name.clone())
                .collect();
            for name in expired {
                node.settle(&name);
            }
        }
        if node.drawn as usize + node.ahead_of(function) >= MAX_NODE_PER_SECOND as usize {
            if !node.owed.contains_key(function) {
                node.owe(function, second);
            }
            return false;
        }
        node.drawn += 1;
        node.settle(function);
        true
    }

    /// The routes `function`'s stored corpus holds now, with how many traces each.
    pub fn set_routes(&self, function: &str, routes: HashMap<String, u32>) {
        let mut functions = self.functions.lock();
        match functions.get_mut(function) {
            Some(drawn) => drawn.routes = routes,
            None if !routes.is_empty() => {
                functions.insert(function.to_string(), Drawn { routes, ..Drawn::default() });
            }
            None => {}
        }
    }

    /// Drops what is known of `function` (removed).
    pub fn forget(&self, function: &str) {
        let mut functions = self.functions.lock();
        functions.remove(function);
        self.node.lock().settle(function);
    }

    /// Functions with an entry (for tests of the bound).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.functions.lock().len()
    }
}

/// Of a full corpus's routes (one per trace, oldest trace first), the index of the trace to
/// evict: the oldest trace of the route with the most traces (of routes tied for the most,
/// the one whose oldest trace is oldest).
pub fn victim<'a>(routes: impl Iterator<Item = &'a str> + Clone) -> Option<usize> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for route in routes.clone() {
        *counts.entry(route).or_default() += 1;
    }
    let most = counts.values().copied().max()?;
    routes.into_iter().position(|route| counts[route] == most)
}

/// `newest_first` reordered to cover distinct routes first: the newest of each route (routes
/// in the order of their newest trace), then the second newest of each, and so on; at most
/// `limit`.
pub fn round_robin<T>(newest_first: Vec<T>, route: impl Fn(&T) -> &str, limit: usize) -> Vec<T> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: HashMap<String, std::collections::VecDeque<T>> = HashMap::new();
    for item in newest_first {
        let key = route(&item).to_string();
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push_back(item);
    }
    let mut out = Vec::new();
    while out.len() < limit {
        let before = out.len();
        for key in &order {
            if out.len() == limit {
                break;
            }
            if let Some(item) = groups.get_mut(key).and_then(std::collections::VecDeque::pop_front) {
                out.push(item);
            }
        }
        if out.len() == before {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_keys_strip_ids_and_query_values() {
        assert_eq!(route_key("GET", "/"), "GET /");
        assert_eq!(route_key("GET", "/users/42/orders"), "GET /users/:id/orders");
        assert_eq!(route_key("GET", "/users/43/orders"), route_key("GET", "/users/42/orders"));
        assert_eq!(route_key("DELETE", "/items/550e8400-e29b-41d4-a716-446655440000"), "DELETE /items/:id");
        assert_eq!(route_key("GET", "/blobs/deadbeef01"), "GET /blobs/:id");
        assert_eq!(route_key("GET", "/tokens/"), "GET /tokens/");
        let long = format!("/s/{}", "x".repeat(33));
        assert_eq!(route_key("GET", &long), "GET /s/:id");
        // Words stay: short hex-looking words and names are routes, not ids.
        assert_eq!(route_key("POST", "/orders/add/cafe"), "POST /orders/add/cafe");
        assert_eq!(route_key("GET", "/v2/feed"), "GET /v2/feed");
        // The query keeps its keys, sorted and once each, without values.
        assert_eq!(route_key("GET", "/search?q=shoes&page=2&q=hats&flag"), "GET /search?flag&page&q");
        assert_eq!(route_key("GET", "/search?page=3&q=x"), route_key("GET", "/search?q=y&page=1"));
        assert_ne!(route_key("GET", "/a"), route_key("POST", "/a"));
        // Bounded, whatever the request.
        let huge = format!("/{}", "ab/".repeat(500));
        assert!(route_key("GET", &huge).len() <= MAX_ROUTE_KEY);
        let wide = format!("/{}", "é/".repeat(300));
        assert!(route_key("GET", &wide).len() <= MAX_ROUTE_KEY);
    }

    #[test]
    fn the_draw_is_steady_and_takes_new_routes_first_within_a_cap() {
        let sampler = Sampler::default();
        // The first run of a function is drawn; the same route again within 500 ms is not.
        assert!(sampler.draw_at(1_000, "f", "GET", "/"));
        sampler.set_routes("f", HashMap::from([("GET /".to_string(), 1)]));
        assert!(!sampler.draw_at(1_100, "f", "GET", "/"));
        // A route the corpus does not hold is drawn even so, once.
        assert!(sampler.draw_at(1_200, "f", "POST", "/orders"));
        assert!(!sampler.draw_at(1_201, "f", "POST", "/orders"), "its trace is on its way");
        // 500 ms after the last steady draw, the next run is drawn whatever its route.
        assert!(sampler.draw_at(1_500, "f", "GET", "/"));
        assert!(!sampler.draw_at(1_600, "f", "GET", "/"));
        // A flood of new routes: at most MAX_PER_SECOND draws a second.
        let drawn = (0..1000).filter(|n| sampler.draw_at(3_000 + n % 900, "f", "GET", &format!("/p{n}"))).count();
        assert_eq!(drawn, MAX_PER_SECOND as usize);
        // keep_sample = 0 draws nothing; forgetting a function drops its entry.
        assert!(!sampler.draw("g", 0, "GET", "/"));
        assert_eq!(sampler.len(), 1, "no entry for a function that keeps no corpus");
        sampler.forget("f");
        assert_eq!(sampler.len(), 0);
        sampler.set_routes("f", HashMap::new());
        assert_eq!(sampler.len(), 0, "an empty corpus makes no entry");
    }

    #[test]
    fn the_node_draws_at_most_its_budget_a_second_and_a_refused_function_is_drawn_later() {
        let sampler = Sampler::default();
        let budget = MAX_NODE_PER_SECOND as usize;
        let drawn_at = |ms: u64, functions: std::ops::Range<usize>| {
            functions.filter(|n| sampler.draw_at(ms, &format!("f{n}"), "GET", "/")).count()
        };
        // 3x the budget of functions, each with its first run in the same second.
        assert_eq!(drawn_at(10_000, 0..3 * budget), budget, "one draw each, up to the node's budget");
        assert_eq!(drawn_at(10_999, 0..3 * budget), 0, "the budget of that second is spent");
        // Those refused are drawn on their next runs, a budget's worth a second.
        assert_eq!(drawn_at(11_000, budget..3 * budget), budget);
        assert_eq!(drawn_at(12_000, 2 * budget..3 * budget), budget);
    }

    #[test]
    fn a_flood_of_new_routes_on_many_functions_cannot_keep_the_budget_from_others() {
        let sampler = Sampler::default();
        let budget = MAX_NODE_PER_SECOND as usize;
        let flooders = (budget / MAX_PER_SECOND as usize) * 2;
        // Each second the flooding tenant's functions come first, each with new routes up to
        // its own cap, then the other tenant's functions run once each.
        let mut others_drawn = std::collections::HashSet::new();
        for second in 0..5u64 {
            let ms = 20_000 + second * 1000;
            for route in 0..MAX_PER_SECOND {
                for flooder in 0..flooders {
                    sampler.draw_at(ms, &format!("flood{flooder}"), "GET", &format!("/{second}/{route}"));
                }
            }
            for other in 0..50 {
                if sampler.draw_at(ms + 500, &format!("other{other}"), "GET", "/") {
                    others_drawn.insert(other);
                }
            }
        }
        assert_eq!(others_drawn.len(), 50, "every other function was drawn within 5 s: {others_drawn:?}");
        // A function owed a draw that never runs again stops holding a place.
        let sampler = Sampler::default();
        for n in 0..=budget {
            sampler.draw_at(30_000, &format!("g{n}"), "GET", "/");
        }
        assert_eq!(sampler.node.lock().owed.len(), 1, "the one past the budget is owed a draw");
        sampler.draw_at(30_000 + OWED_FOR_SECONDS * 1000, "g0", "GET", "/x");
        let node = sampler.node.lock();
        assert!(node.owed.is_empty() && node.owed_per_second.is_empty(), "owed entries expire");
    }

    #[test]
    fn the_victim_is_the_oldest_trace_of_the_most_common_route() {
        // Oldest first.
        let routes = ["GET /", "POST /orders", "GET /", "GET /a", "GET /"];
        assert_eq!(victim(routes.iter().copied()), Some(0));
        let routes = ["POST /orders", "GET /a", "GET /", "GET /a", "GET /"];
        assert_eq!(victim(routes.iter().copied()), Some(1), "tied: the route whose oldest trace is oldest");
        // Evicting repeatedly from a corpus of common and rare routes keeps the rare one.
        let mut corpus = vec!["POST /orders"];
        for common in ["GET /"; 20] {
            corpus.push(common);
            if corpus.len() > 5 {
                let index = victim(corpus.iter().copied()).unwrap();
                corpus.remove(index);
            }
        }
        assert!(corpus.contains(&"POST /orders") && corpus.len() == 5, "{corpus:?}");
        assert_eq!(victim(std::iter::empty()), None);
    }

    #[test]
    fn the_corpus_is_handed_out_distinct_routes_first() {
        let newest_first =
            vec![(1, "GET /"), (2, "GET /"), (3, "POST /o"), (4, "GET /"), (5, "GET /a"), (6, "POST /o")];
        let ordered: Vec<i32> = round_robin(newest_first.clone(), |t| t.1, 10).into_iter().map(|t| t.0).collect();
        assert_eq!(ordered, [1, 3, 5, 2, 6, 4]);
        let first: Vec<i32> = round_robin(newest_first, |t| t.1, 2).into_iter().map(|t| t.0).collect();
        assert_eq!(first, [1, 3]);
    }
}
