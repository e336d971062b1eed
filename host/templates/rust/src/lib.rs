//! {{name}}: a ledge function. `GET` answers with a greeting; `POST` counts visits in one
//! serializable transaction on the function's own keyspace.
use ledge_sdk::http::{Request, Response};
use ledge_sdk::kv;

const GREETING: &str = "Hello from {{name}}";

fn handle(req: Request) -> Result<Response, kv::Error> {
    if req.method() == "POST" {
        let visits = kv::transaction(|tx| {
            let n = tx.get_u64("visits")?.unwrap_or(0) + 1;
            tx.put("visits", n)?;
            Ok(n)
        })?;
        return Ok(Response::text(format!("visit {visits}\n")));
    }
    Ok(Response::text(format!("{GREETING}! You asked for {}\n", req.path())))
}

ledge_sdk::http_handler!(handle);
