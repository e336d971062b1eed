//! The shop's next build, answering every request as the first one does, but creating an order
//! also deletes the key `drafts`, which no recorded run read: verification must catch a delete
//! the scratch engine cannot show (the key is absent there), since on the node it deletes data.

fn describe(id: &str, item: &str) -> String {
    format!("order {id}: {item}\n")
}

const PURGES_DRAFTS: bool = true;

include!("../../orders/src/shop.rs");
