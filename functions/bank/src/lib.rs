//! A toy bank on serializable transactions: accounts hold integer balances, a transfer moves
//! money between two accounts and never overdraws, whatever runs concurrently.
//!
//! - `PUT /accounts/{id}?balance=N`: opens an account (409 if it exists)
//! - `GET /accounts/{id}`: its balance
//! - `POST /transfer?from=A&to=B&amount=N`: 200, or 409 when `A` lacks the funds
//! - `GET /total`: the sum of all balances and the number of accounts, as JSON
use ledge_sdk::http::{Request, Response};
use ledge_sdk::kv;

const INSUFFICIENT: &str = "insufficient funds";

#[derive(serde::Serialize)]
struct Total {
    total: u64,
    accounts: usize,
}

fn account_key(id: &str) -> String {
    format!("acct/{id}")
}

fn handle(req: Request) -> Result<Response, kv::Error> {
    let path: Vec<&str> = req.path().trim_matches('/').split('/').collect();
    match (req.method(), path.as_slice()) {
        ("PUT", ["accounts", id]) => open(id, req.query_param("balance").and_then(|b| b.parse().ok()).unwrap_or(0)),
        ("GET", ["accounts", id]) => {
            let balance = kv::transaction(|tx| tx.get_u64(account_key(id)))?;
            Ok(match balance {
                Some(balance) => Response::text(format!("{balance}\n")),
                None => Response::text("no such account\n").with_status(404),
            })
        }
        ("POST", ["transfer"]) => {
            let (Some(from), Some(to), Some(amount)) = (
                req.query_param("from"),
                req.query_param("to"),
                req.query_param("amount").and_then(|a| a.parse().ok()),
            ) else {
                return Ok(Response::text("need from, to and amount\n").with_status(400));
            };
            transfer(from, to, amount)
        }
        ("GET", ["total"]) => {
            let (total, accounts) = kv::transaction(|tx| {
                let entries = tx.scan_prefix("acct/", 10_000)?;
                let total: u64 = entries
                    .iter()
                    .map(|(_, value)| std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
                    .sum();
                Ok((total, entries.len()))
            })?;
            Ok(Response::json(&Total { total, accounts }))
        }
        _ => Ok(Response::text("not found\n").with_status(404)),
    }
}

fn open(id: &str, balance: u64) -> Result<Response, kv::Error> {
    let created = kv::transaction(|tx| {
        if tx.get(account_key(id))?.is_some() {
            return Ok(false);
        }
        tx.put(account_key(id), balance)?;
        Ok(true)
    })?;
    Ok(if created { Response::new(201) } else { Response::text("account exists\n").with_status(409) })
}

fn transfer(from: &str, to: &str, amount: u64) -> Result<Response, kv::Error> {
    if from == to {
        return Ok(Response::text("from and to must differ\n").with_status(400));
    }
    let outcome = kv::transaction(|tx| {
        let (Some(source), Some(target)) = (tx.get_u64(account_key(from))?, tx.get_u64(account_key(to))?) else {
            return Err(kv::abort("no such account"));
        };
        if source < amount {
            return Err(kv::abort(INSUFFICIENT));
        }
        tx.put(account_key(from), source - amount)?;
        tx.put(account_key(to), target + amount)?;
        Ok(source - amount)
    });
    match outcome {
        Ok(left) => Ok(Response::text(format!("{left}\n"))),
        Err(kv::Error::Aborted(reason)) if reason == INSUFFICIENT => {
            Ok(Response::text(format!("{reason}\n")).with_status(409))
        }
        Err(kv::Error::Aborted(reason)) => Ok(Response::text(format!("{reason}\n")).with_status(404)),
        Err(other) => Err(other),
    }
}

ledge_sdk::http_handler!(handle);
