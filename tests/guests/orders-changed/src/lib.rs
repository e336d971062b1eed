//! The shop's next build: one route's answer is worded differently (`#` before the id), which
//! verification must catch on that route's recorded requests.

fn describe(id: &str, item: &str) -> String {
    format!("order #{id}: {item}\n")
}

const PURGES_DRAFTS: bool = false;

include!("../../orders/src/shop.rs");
