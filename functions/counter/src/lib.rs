//! A hit counter: every request except `GET /peek` increments `hits` in one serializable
//! transaction and answers with the new count.
use ledge_sdk::http::{Request, Response};
use ledge_sdk::kv;

fn handle(req: Request) -> Result<Response, kv::Error> {
    if req.path() == "/peek" {
        let hits = kv::transaction(|tx| tx.get_u64("hits"))?.unwrap_or(0);
        return Ok(Response::text(format!("{hits}\n")));
    }
    let hits = kv::transaction(|tx| {
        let n = tx.get_u64("hits")?.unwrap_or(0) + 1;
        tx.put("hits", n)?;
        Ok(n)
    })?;
    Ok(Response::text(format!("{hits}\n")))
}

ledge_sdk::http_handler!(handle);
