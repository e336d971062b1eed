//! A guest written only against `wasi:keyvalue@0.2.0-draft2` (as a Spin or wasmCloud guest
//! would be), with no ledge SDK. Routes, all on bucket `default` unless `?bucket=` says else:
//! `/set?key=k&value=v`, `/get?key=k`, `/incr?key=k&by=n`, `/cas?key=k&from=a&to=b`,
//! `/batch` (set-many, get-many, delete-many), `/list`, `/cas-hog?key=k` (CAS handles until refused).
wit_bindgen::generate!({ world: "kv-wasi", path: "wit", generate_all });

use wasi::keyvalue::{atomics, batch, store};
use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Component;

fn param(query: &str, name: &str) -> String {
    query.split('&').find_map(|pair| pair.strip_prefix(&format!("{name}="))).unwrap_or("").to_string()
}

fn run(path: &str, query: &str) -> Result<String, String> {
    let bucket_name = match param(query, "bucket") {
        name if name.is_empty() => "default".to_string(),
        name => name,
    };
    let bucket = store::open(&bucket_name).map_err(|e| format!("open: {e:?}"))?;
    let key = param(query, "key");
    let fail = |e: store::Error| format!("{e:?}");
    match path {
        "/set" => bucket.set(&key, param(query, "value").as_bytes()).map(|()| "ok".into()),
        "/get" => {
            bucket.get(&key).map(|v| v.map_or_else(|| "none".to_string(), |v| String::from_utf8_lossy(&v).into_owned()))
        }
        "/incr" => atomics::increment(&bucket, &key, param(query, "by").parse().unwrap_or(1)).map(|n| n.to_string()),
        "/cas" => {
            let cas = atomics::Cas::new(&bucket, &key).map_err(|e| format!("cas: {e:?}"))?;
            let current = cas.current().map_err(|e| format!("current: {e:?}"))?;
            if current.as_deref() != Some(param(query, "from").as_bytes()) {
                return Ok("mismatch".into());
            }
            return atomics::swap(cas, param(query, "to").as_bytes()).map(|()| "swapped".into()).map_err(|e| match e {
                atomics::CasError::CasFailed(_) => "cas-failed".to_string(),
                atomics::CasError::StoreError(e) => format!("{e:?}"),
            });
        }
        "/batch" => {
            let entries = vec![("b1".to_string(), b"one".to_vec()), ("b2".to_string(), b"two".to_vec())];
            batch::set_many(&bucket, &entries).map_err(fail)?;
            let got =
                batch::get_many(&bucket, &["b1".to_string(), "b2".to_string(), "b3".to_string()]).map_err(fail)?;
            batch::delete_many(&bucket, &["b1".to_string()]).map_err(fail)?;
            let after = bucket.exists("b1").map_err(fail)?;
            Ok(format!("{got:?} b1-exists-after-delete={after}"))
        }
        "/cas-hog" => {
            // Opens compare-and-swap handles (each holds a transaction) without releasing them.
            let mut held = Vec::new();
            loop {
                match atomics::Cas::new(&bucket, &key) {
                    Ok(cas) => held.push(cas),
                    Err(e) => return Ok(format!("held {}, then: {e:?}", held.len())),
                }
                if held.len() > 10_000 {
                    return Ok("never refused".into());
                }
            }
        }
        "/list" => {
            let mut keys = Vec::new();
            let mut cursor = None;
            loop {
                let page = bucket.list_keys(cursor.as_deref()).map_err(fail)?;
                keys.extend(page.keys);
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            Ok(keys.join(","))
        }
        _ => Ok("unknown route".into()),
    }
    .map_err(fail)
}

impl wasip2::exports::http::incoming_handler::Guest for Component {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query.split_once('?').unwrap_or((&path_with_query, ""));
        let (status, body) = match run(path, query) {
            Ok(body) => (200, body),
            Err(error) => (500, error),
        };
        let response = OutgoingResponse::new(Fields::new());
        response.set_status_code(status).unwrap();
        let outgoing = response.body().unwrap();
        ResponseOutparam::set(out, Ok(response));
        let stream = outgoing.write().unwrap();
        stream.blocking_write_and_flush(format!("{body}\n").as_bytes()).unwrap();
        drop(stream);
        OutgoingBody::finish(outgoing, None).unwrap();
    }
}

wasip2::http::proxy::export!(Component);
