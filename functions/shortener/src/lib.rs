//! A URL shortener.
//!
//! - `POST /` with the URL as the body: creates a short code, `201` with the code in the body
//!   and, relative to the request, in `location`
//! - `GET /{code}`: `302` to the URL, or `404`
//! - `GET /?prefix=ab`: the codes starting with `ab` and their URLs, as JSON
use ledge_sdk::http::{Request, Response};
use ledge_sdk::kv;

#[derive(serde::Serialize)]
struct Link {
    code: String,
    url: String,
}

const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

fn handle(req: Request) -> Result<Response, kv::Error> {
    match (req.method(), req.path()) {
        ("POST", "/") => {
            let url = req.text().unwrap_or("").trim().to_string();
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
                return Ok(Response::text("the body must be an http(s) URL of at most 2048 bytes\n").with_status(400));
            }
            let code = kv::transaction(|tx| {
                // A fresh code each attempt; the transaction makes "check then claim" atomic.
                loop {
                    let code = random_code();
                    if tx.get(format!("link/{code}"))?.is_none() {
                        tx.put(format!("link/{code}"), url.as_str())?;
                        return Ok(code);
                    }
                }
            })?;
            Ok(Response::text(format!("{code}\n")).with_status(201).with_header("location", &code))
        }
        ("GET", "/") => {
            let prefix = req.query_param("prefix").unwrap_or("");
            let links = kv::transaction(|tx| tx.scan_prefix(format!("link/{prefix}"), 1000))?;
            let links: Vec<Link> = links
                .iter()
                .map(|(key, url)| Link {
                    code: String::from_utf8_lossy(&key["link/".len()..]).into_owned(),
                    url: String::from_utf8_lossy(url).into_owned(),
                })
                .collect();
            Ok(Response::json(&links))
        }
        ("GET", path) => {
            let code = path.trim_start_matches('/');
            match kv::transaction(|tx| tx.get_string(format!("link/{code}")))? {
                Some(url) => Ok(Response::redirect(&url)),
                None => Ok(Response::text("no such link\n").with_status(404)),
            }
        }
        _ => Ok(Response::text("method not allowed\n").with_status(405)),
    }
}

fn random_code() -> String {
    let random = ledge_sdk::random_u64();
    (0..7).map(|i| ALPHABET[((random >> (i * 8)) % ALPHABET.len() as u64) as usize] as char).collect()
}

ledge_sdk::http_handler!(handle);
