//! `GET /v1/functions/{name}/logs[?since=10m][&follow=true]`: the function's live log as JSON
//! lines (`application/x-ndjson`); following keeps the response open and sends each new entry
//! as it happens, with an empty line every [`HEARTBEAT`] so that idle proxies keep it open.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::broadcast::error::RecvError;

use super::body::BoxError;
use super::{App, Problem, ResponseBody};
use crate::runtime::logs::Entry;

/// How often a follower gets a blank line when nothing happens.
const HEARTBEAT: Duration = Duration::from_secs(15);

impl App {
    pub(super) fn logs_response(
        &self,
        name: &str,
        query: Option<&str>,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        let param = |key: &str| query?.split('&').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='));
        let since = match param("since") {
            None => SystemTime::UNIX_EPOCH,
            Some(text) => {
                let ago = humantime::parse_duration(text).map_err(|e| {
                    Problem::new(StatusCode::BAD_REQUEST, format!("since `{text}`: {e} (e.g. \"10m\", \"1h\")"))
                })?;
                SystemTime::now().checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH)
            }
        };
        let follow = param("follow") == Some("true");
        let (past, receiver) = self.runtime.logs().read(name, since);
        let past = futures::stream::iter(past.into_iter().map(|entry| Ok(Frame::data(Bytes::from(line(&entry))))));
        let live = futures::stream::unfold(follow.then_some(receiver), |state| async move {
            let mut receiver = state?;
            let chunk = match tokio::time::timeout(HEARTBEAT, receiver.recv()).await {
                Ok(Ok(entry)) => line(&entry),
                Ok(Err(RecvError::Lagged(missed))) => {
                    format!("{{\"kind\":\"lagged\",\"missed\":{missed}}}\n").into_bytes()
                }
                Ok(Err(RecvError::Closed)) => return None,
                Err(_) => b"\n".to_vec(),
            };
            Some((Ok::<_, BoxError>(Frame::data(Bytes::from(chunk))), Some(receiver)))
        });
        let stream = futures::StreamExt::chain(past, live);
        let body = StreamBody::new(stream).boxed_unsync();
        let mut response = http::Response::new(body);
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
        Ok(response)
    }
}

fn line(entry: &Entry) -> Vec<u8> {
    let mut line = serde_json::to_vec(entry).unwrap_or_default();
    line.push(b'\n');
    line
}
