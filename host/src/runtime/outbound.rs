//! Outbound HTTP from guests: denied unless the function's policy lists the host, and never
//! into the node's own network.
//!
//! Invariants:
//! - the check runs on the request the guest actually sends, after wasi-http has resolved its
//!   authority, so a guest cannot reach an unlisted host by any spelling of the URI;
//! - a listed host *name* is resolved here, every address it resolves to must be public (not
//!   loopback, private, link-local such as 169.254.169.254, unique-local, multicast, reserved,
//!   or one of this node's own addresses), and the connection goes to the address that was
//!   checked, so a name re-pointed between check and connect (DNS rebinding) gains nothing.
//!   Only an address written literally in the policy (`allow = ["10.0.0.7"]`) reaches a
//!   non-public destination;
//! - redirects are never followed by the host (the guest sees the 3xx; each hop it makes
//!   itself is checked again);
//! - per instance at most [`MAX_IN_FLIGHT`] outbound requests are open at once, and request
//!   and response bodies are capped at [`MAX_BODY`] bytes each.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::record::Tape;
use crate::record::outbound::ResponseFuture;
use crate::telemetry::logs::GUEST_RUN;
use crate::telemetry::{TraceCx, names};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

/// Outbound requests one instance may have open at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// Bytes of request body a guest may send, and of response body it may receive, per request.
pub const MAX_BODY: usize = 16 << 20;
/// How long connecting may take, unless the guest asks for less.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the response head may take, unless the guest asks for less.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);

/// The wasi-http hooks of one request: its function's allow-list and the node's own addresses.
pub struct OutboundHooks {
    allow: Vec<String>,
    own_addresses: Arc<[IpAddr]>,
    in_flight: Arc<AtomicUsize>,
    /// The run's recording (responses are recorded) or replay (responses come from the trace).
    tape: Option<Arc<Tape>>,
    /// The run's span: each request to the network gets a child, and carries it in
    /// `traceparent` unless the guest set its own.
    trace: TraceCx,
}

impl OutboundHooks {
    pub fn new(allow: Vec<String>, own_addresses: Arc<[IpAddr]>, tape: Option<Arc<Tape>>, trace: TraceCx) -> Self {
        OutboundHooks { allow, own_addresses, in_flight: Arc::default(), tape, trace }
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
        match self.tape.clone() {
            Some(tape) => crate::record::outbound::send(tape, request, |request| self.live(request, options)),
            None => self.live(request, options),
        }
    }
}

impl OutboundHooks {
    /// The request to the network, if the policy allows it. (A replay never gets here, so the
    /// `traceparent` added below is never part of what a trace recorded the guest sending.)
    fn live(&mut self, mut request: http::Request<WasiBody>, options: Option<RequestOptions>) -> ResponseFuture {
        let host = request.uri().host().unwrap_or_default().trim_matches(['[', ']']).to_string();
        let span = self.trace.child(names::OUTBOUND, SpanKind::Client, || {
            vec![
                KeyValue::new("http.request.method", request.method().as_str().to_string()),
                KeyValue::new("server.address", host.clone()),
            ]
        });
        if !self.allows(&host) {
            let _current = self.trace.enter();
            tracing::info!(target: GUEST_RUN, %host, "outbound request denied by policy");
            span.fail("denied by the function's policy");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let Some(slot) = InFlight::take(&self.in_flight) else {
            let _current = self.trace.enter();
            tracing::info!(target: GUEST_RUN, %host, "outbound request refused: {MAX_IN_FLIGHT} already open");
            span.fail("too many outbound requests open");
            return Box::new(async { Err(Error::ConnectionLimitReached) });
        };
        if !request.headers().contains_key("traceparent") {
            span.inject(request.headers_mut());
        }
        // An address the policy names literally is the operator's explicit choice.
        let explicit = host.parse::<IpAddr>().is_ok();
        let own = self.own_addresses.clone();
        Box::new(async move {
            let tls = request.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
            let port = request.uri().port_u16().unwrap_or(if tls { 443 } else { 80 });
            let sent = async {
                let destination = resolve(&host, port, explicit, &own).await?;
                send(request, destination, &host, tls, options, slot).await
            };
            let sent = sent.await;
            match &sent {
                Ok((response, _)) => span.set("http.response.status_code", i64::from(response.status().as_u16())),
                Err(error) => span.fail(error),
            }
            span.end();
            sent
        })
    }
}

/// One open outbound request; the slot comes back when the response body is dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn take(count: &Arc<AtomicUsize>) -> Option<InFlight> {
        count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_IN_FLIGHT).then_some(n + 1)).ok()?;
        Some(InFlight(count.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The address to connect to: the first one `host` resolves to, after checking all of them.
async fn resolve(host: &str, port: u16, explicit: bool, own: &[IpAddr]) -> Result<SocketAddr, Error> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| Error::DnsError { rcode: None, info_code: None })?
        .collect();
    let first = *addresses.first().ok_or(Error::DestinationNotFound)?;
    if !explicit
        && let Some(refused) = addresses.iter().find(|address| !is_public(address.ip()) || own.contains(&address.ip()))
    {
        tracing::info!(target: GUEST_RUN, %host, address = %refused.ip(), "outbound request refused: the name resolves to a non-public or own address");
        return Err(Error::DestinationIpProhibited);
    }
    Ok(first)
}

/// Whether `ip` is a globally routable unicast address (the parts of RFC 6890 a guest may
/// reach without the operator naming the address).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link local
        || (first & 0xffc0) == 0xfec0 // site local (deprecated)
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || (first == 0x0064 && ip.segments()[1] == 0xff9b) // NAT64: reaches IPv4 by its own rules
        || (first == 0x0100 && ip.segments()[1..4] == [0, 0, 0])) // discard
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Sends `request` to `destination` (TLS verified against `host`), bodies capped both ways.
async fn send(
    mut request: http::Request<WasiBody>,
    destination: SocketAddr,
    host: &str,
    tls: bool,
    options: Option<RequestOptions>,
    slot: InFlight,
) -> Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>), Error> {
    let connect_timeout = options.and_then(|o| o.connect_timeout).unwrap_or(CONNECT_TIMEOUT).min(CONNECT_TIMEOUT);
    let first_byte_timeout =
        options.and_then(|o| o.first_byte_timeout).unwrap_or(FIRST_BYTE_TIMEOUT).min(FIRST_BYTE_TIMEOUT);
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(destination))
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(Error::Connect)?;
    let stream: Box<dyn Stream> = if tls {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::InternalError(Some(e.to_string())))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(Error::InvalidDnsNameError)?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        Box::new(connector.connect(name, stream).await.map_err(Error::Tls)?)
    } else {
        Box::new(stream)
    };
    let (mut sender, connection) =
        tokio::time::timeout(connect_timeout, hyper::client::conn::http1::handshake(TokioIo::new(stream)))
            .await
            .map_err(|_| Error::ConnectionTimeout)??;
    let driver = tokio::spawn(connection);
    // On the wire the request names only its path; the authority travels in `Host`.
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    *request.uri_mut() = http::Uri::try_from(path).map_err(|_| Error::HttpRequestUriInvalid)?;
    let request = request.map(|body| {
        Limited::new(body, MAX_BODY)
            .map_err(|error| match error.downcast::<Error>() {
                Ok(error) => *error,
                Err(_) => Error::HttpRequestBodySize(Some(MAX_BODY as u64)),
            })
            .boxed_unsync()
    });
    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| Error::ConnectionReadTimeout)??;
    let response = response.map(|body| {
        Limited::new(body, MAX_BODY)
            .map_err(|error| match error.downcast::<hyper::Error>() {
                Ok(error) => Error::from(*error),
                Err(_) => Error::HttpResponseBodySize(Some(MAX_BODY as u64)),
            })
            // The slot stays taken for as long as the guest holds the body.
            .map_frame(move |frame| {
                let _ = &slot;
                frame
            })
            .boxed_unsync()
    });
    let io = async move {
        match driver.await {
            Ok(outcome) => outcome.map_err(Error::from),
            Err(join) => Err(Error::InternalError(Some(join.to_string()))),
        }
    };
    Ok((response, Box::new(io)))
}

/// The node's own addresses: `listen` itself, or every address of every interface when it is
/// unspecified (`0.0.0.0`, `::`).
pub fn own_addresses(listen: IpAddr) -> Vec<IpAddr> {
    if !listen.is_unspecified() {
        return vec![listen];
    }
    let mut addresses = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we only read and then free once.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        tracing::warn!("cannot list this node's addresses; outbound checks know only the listen address");
        return vec![listen];
    }
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let node = unsafe { &*entry };
        if !node.ifa_addr.is_null() {
            // SAFETY: `ifa_addr` points at a sockaddr whose family says which struct it is.
            let family = i32::from(unsafe { (*node.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: family AF_INET: the sockaddr is a sockaddr_in.
                let v4 = unsafe { &*(node.ifa_addr as *const libc::sockaddr_in) };
                addresses.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))));
            } else if family == libc::AF_INET6 {
                // SAFETY: family AF_INET6: the sockaddr is a sockaddr_in6.
                let v6 = unsafe { &*(node.ifa_addr as *const libc::sockaddr_in6) };
                addresses.push(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)));
            }
        }
        entry = node.ifa_next;
    }
    // SAFETY: `list` came from a successful getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(list) };
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_globally_routable_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn an_unspecified_listen_address_means_every_local_address() {
        let own = own_addresses("0.0.0.0".parse().unwrap());
        assert!(own.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{own:?}");
        assert_eq!(own_addresses("192.0.2.7".parse().unwrap()), vec!["192.0.2.7".parse::<IpAddr>().unwrap()]);
    }
}
