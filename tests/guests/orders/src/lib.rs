//! The shop the deploy verification tests deploy (see `shop.rs`), as it first ships.

fn describe(id: &str, item: &str) -> String {
    format!("order {id}: {item}\n")
}

const PURGES_DRAFTS: bool = false;

include!("shop.rs");
