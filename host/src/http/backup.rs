//! `GET /v1/backup`: a consistent backup of the node as a tar archive ([`crate::backup`]).
//! It holds every function, the root keys and the secrets key, so whoever has it can mint any
//! token: it needs a full admin token, with no caveats other than `time` and `id` (a manage
//! token narrowed to `method = GET` is no read-only backup token: it gets 403).
//!
//! The archive is built in an unnamed temporary file in the data dir (nothing to clean up,
//! whatever happens: the file has no name and goes when its last handle does), with registry
//! changes held off while the function files and the key-value image are copied; then it is
//! streamed from that file. Memory stays bounded, and a slow download holds no lock.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::AsyncReadExt;

use super::audit::audit;
use super::body::BoxError;
use super::{App, Problem, ResponseBody};
use crate::backup::{self, BackupError};

/// Bytes read from the archive per body frame.
const CHUNK: usize = 256 << 10;

impl App {
    pub(super) async fn backup(
        &self,
        request: http::Request<Incoming>,
        method: &Method,
        peer: SocketAddr,
    ) -> Result<http::Response<ResponseBody>, Problem> {
        let caller = self.authorize_manage(&request, method, "GET", peer)?;
        if !caller.unconfined {
            // Whoever holds the archive holds the root keys and can mint any token.
            let refusal = Problem::new(
                StatusCode::FORBIDDEN,
                "a backup holds the root key ring: it needs a full admin token (no caveats other than `time` and `id`)",
            );
            audit("backup", "node", &caller, Err::<String, _>(&refusal.detail));
            return Err(refusal);
        }
        let (data_dir, db) = (self.data_dir.clone(), self.db.clone());
        let outcome = self
            .registry
            .while_unchanged(move || {
                let staging = tempfile::tempfile_in(&data_dir).map_err(|source| BackupError::Io {
                    context: "creating the archive's temporary file".into(),
                    source,
                })?;
                backup::write(staging, &data_dir, &db)
            })
            .await
            .map_err(|source| BackupError::Io { context: "writing the backup".into(), source })
            .and_then(|written| written);
        let summary = |(file, manifest): &(std::fs::File, backup::Manifest)| {
            let size = file.metadata().map(|m| m.len()).unwrap_or_default();
            format!("kv stamp {}, {} functions, {size} bytes", manifest.kv_stamp, manifest.functions().len())
        };
        audit("backup", "node", &caller, outcome.as_ref().map(summary));
        let (file, manifest) = outcome?;
        let length = file
            .metadata()
            .map_err(|source| BackupError::Io { context: "reading the archive's size".into(), source })?
            .len();
        let body = StreamBody::new(futures::stream::unfold(Some(tokio::fs::File::from_std(file)), |file| async {
            let mut file = file?;
            let mut chunk = vec![0; CHUNK];
            match file.read(&mut chunk).await {
                Ok(0) => None,
                Ok(read) => {
                    chunk.truncate(read);
                    Some((Ok::<_, BoxError>(Frame::data(Bytes::from(chunk))), Some(file)))
                }
                // The client sees the body end early (shorter than its content-length).
                Err(error) => Some((Err(error.into()), None)),
            }
        }));
        let mut response = http::Response::new(body.boxed_unsync());
        let headers = response.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
        let disposition = format!("attachment; filename=\"ledge-backup-{}.tar\"", manifest.kv_stamp);
        if let Ok(value) = HeaderValue::from_str(&disposition) {
            headers.insert(http::header::CONTENT_DISPOSITION, value);
        }
        headers.insert("ledge-kv-stamp", HeaderValue::from(manifest.kv_stamp));
        Ok(response)
    }
}
