//! Outbound HTTP from guests: denied unless the function's policy lists the host.
//!
//! Invariant: the check runs on the request the guest actually sends, after wasi-http has
//! resolved its authority, so a guest cannot reach an unlisted host by any spelling of the URI.

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

type ResponseFuture = Box<
    dyn Future<Output = Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>), Error>>
        + Send,
>;

/// The wasi-http hooks of one request: the allow-list of its function's policy.
pub struct OutboundHooks {
    allow: Vec<String>,
}

impl OutboundHooks {
    pub fn new(allow: Vec<String>) -> Self {
        OutboundHooks { allow }
    }

    fn allows(&self, host: &str) -> bool {
        self.allow.iter().any(|allowed| allowed.eq_ignore_ascii_case(host))
    }
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> ResponseFuture {
        _ = fut;
        let host = request.uri().host().unwrap_or_default().to_string();
        if !self.allows(&host) {
            tracing::info!(%host, "outbound request denied by policy");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}
