//! Requests between nodes: a node that does not host a function proxies the request to one
//! that does (one hop), and passes in [`PEER_HEADER`], signed with the cluster's peer key (kept
//! in etcd, created by the first node), what the request was when it reached the first node:
//! the client's address, so that rate limits, canary stickiness and connection caps on the host
//! see the real caller, and the scheme and authority the client used, so that the host routes
//! it (`[[route]] host`) and its guest sees it as the first node would have.
//!
//! Invariants: the header is trusted only when its HMAC-SHA256 verifies (constant time, `ring`)
//! and it is at most [`MAX_SKEW_SECONDS`] old; anything else is removed and the request counts
//! as coming from its TCP peer, with the authority and scheme it arrived with. Nothing but the
//! signed header carries these facts: no header a caller can set is trusted for them. A request
//! that arrived from a peer is never proxied again.
//!
//! A node also asks its peers for things of their own (`/v1/peer/...`, e.g. a function's corpus
//! for deploy verification): such a request carries [`PEER_REQUEST_HEADER`], an HMAC-SHA256
//! under the same peer key of the method, the path with query, the asking and the asked node's
//! names and the time, checked the same way (constant time, at most [`MAX_SKEW_SECONDS`] old,
//! for this node); the signed text starts with its own label, so neither header passes for the
//! other.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ring::hmac;

use super::Cluster;
use crate::access::policy::{Policy, PolicyFile, Route};
use crate::etcd::EtcdError;
use crate::registry::routes::{Rank, rank};

/// `NODE;UNIX-SECONDS;CLIENT-IP;SCHEME;AUTHORITY;HMAC-HEX`: who proxied, when, for which
/// client, and how the client asked (`http` or `https`; the authority, empty when it had none).
/// A header without the last two fields (from a node of an older version) vouches for the
/// client alone.
pub const PEER_HEADER: &str = "ledge-peer";

/// `FROM;TO;UNIX-SECONDS;HMAC-HEX` on a request one node makes of another (`/v1/peer/...`):
/// the HMAC-SHA256, under the peer key, of the method, the path with query, both nodes' names
/// and the time ([`request_text`]).
pub const PEER_REQUEST_HEADER: &str = "ledge-peer-request";

/// How old a peer header may be (clock skew between nodes plus the hop).
const MAX_SKEW_SECONDS: u64 = 30;

const PEER_KEY: &str = "/ledge/peer-key";

/// What a proxying node vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vouched {
    /// The client's address, as the first node saw it.
    pub client: IpAddr,
    /// How the client asked; `None` from a node that does not say.
    pub origin: Option<Origin>,
}

/// How the client's request reached the first node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Over TLS (the guest sees scheme `https`).
    pub https: bool,
    /// The authority (the URI's, else `Host`); `None` when the request had none.
    pub authority: Option<String>,
}

impl Cluster {
    pub(super) fn set_peer_key(&self, value: Option<&[u8]>) {
        let key = value.and_then(|hex_key| hex::decode(hex_key).ok()).filter(|k| k.len() >= 32);
        *self.peer_key.write() = key.map(|k| hmac::Key::new(hmac::HMAC_SHA256, &k));
    }

    /// Creates the peer key when the cluster has none (put-if-absent; the watch brings it in).
    pub(super) async fn create_peer_key(&self) -> Result<(), EtcdError> {
        let stored = self.etcd.shared_secret(PEER_KEY).await?;
        self.set_peer_key(Some(&stored));
        Ok(())
    }

    /// The header value that vouches for `vouched` on a proxied request; `None` without a peer
    /// key, or for an authority that cannot travel in a header.
    pub fn vouch(&self, vouched: &Vouched) -> Option<String> {
        let key = self.peer_key.read().clone()?;
        sign(&key, &self.node, unix_now(), vouched)
    }

    /// What a peer vouched for, when `header` verifies.
    pub fn vouched(&self, header: &str) -> Option<Vouched> {
        verify(self.peer_key.read().as_ref()?, header)
    }

    /// The [`PEER_REQUEST_HEADER`] for a `method` request of `target` (path and query, as the
    /// asked node will see it) to node `to`; `None` without a peer key.
    pub fn sign_request(&self, method: &str, target: &str, to: &str, body: Option<&[u8]>) -> Option<String> {
        let key = self.peer_key.read().clone()?;
        let body = body.map(crate::registry::sha256_hex);
        Some(sign_request(&key, &self.node, to, unix_now(), method, target, body.as_deref()))
    }

    /// Who asked, when `header` is a fresh signature, made for this node, of a `method` request
    /// of `target`.
    pub fn verify_request(&self, method: &str, target: &str, header: &str) -> Option<Signed> {
        verify_request(self.peer_key.read().as_ref()?, &self.node, method, target, header, unix_now())
    }

    /// Whether `ip` is the address of a live member, as its advertised URL names it (a host
    /// name is not resolved here): its connections are admitted as a peer's.
    pub fn is_member_address(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nodes.read().values().any(|node| advertised_ip(&node.address) == Some(ip))
    }
}

/// What each deployed function's uploaded policy says, as of an applied revision.
pub(super) type UploadedFacts = (i64, Arc<Vec<Uploaded>>);

/// What a deployed function's uploaded policy says that nodes not running it need: its routes
/// and whether it is public.
pub(super) struct Uploaded {
    name: String,
    routes: Vec<Route>,
    public: bool,
}

impl Cluster {
    /// The function, among those deployed in the cluster that `served_here` says this node does
    /// not serve, whose uploaded policy's `[[route]]` matches `host` and `path` best, and how
    /// well: a request this node routes to it is proxied to a node that hosts it. (Routes that
    /// only an operator's policy files give are known to the nodes that serve the function.)
    pub fn route_for(
        &self,
        host: Option<&str>,
        path: &str,
        served_here: impl Fn(&str) -> bool,
    ) -> Option<(String, Rank)> {
        let uploaded = self.uploaded();
        let mut best: Option<(&String, Rank)> = None;
        for Uploaded { name, routes, .. } in uploaded.iter().filter(|uploaded| !served_here(&uploaded.name)) {
            let Some(found) = routes.iter().filter_map(|route| rank(route, host, path)).max() else { continue };
            // Ties go to the first name, as on the nodes that serve them.
            if best.is_none_or(|(_, rank)| found > rank) {
                best = Some((name, found));
            }
        }
        best.map(|(name, rank)| (name.clone(), rank))
    }

    /// Whether the policy uploaded with a deployed function makes it public (what a node that
    /// does not run it knows of it; an operator's policy file on the hosting nodes may say more).
    pub fn uploaded_public(&self, name: &str) -> bool {
        self.uploaded().iter().any(|uploaded| uploaded.name == name && uploaded.public)
    }

    /// What uploaded policies say, by function name, parsed again only when records were
    /// applied since.
    fn uploaded(&self) -> Arc<Vec<Uploaded>> {
        let revision = *self.applied.borrow();
        let mut cached = self.uploaded_facts.lock();
        if let Some((at, uploaded)) = cached.as_ref()
            && *at == revision
        {
            return uploaded.clone();
        }
        let mut uploaded: Vec<Uploaded> = self
            .records
            .read()
            .iter()
            .filter(|(_, known)| known.record.serving().is_some())
            .filter_map(|(name, known)| {
                let resolved = PolicyFile::parse(known.record.policy.as_deref()?).ok()?.resolve(&Policy::default());
                Some(Uploaded { name: name.clone(), routes: resolved.routes, public: resolved.public })
            })
            .collect();
        uploaded.sort_by(|a, b| a.name.cmp(&b.name));
        let uploaded = Arc::new(uploaded);
        *cached = Some((revision, uploaded.clone()));
        uploaded
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The IP address in an advertised URL's host, if it is one.
fn advertised_ip(url: &str) -> Option<IpAddr> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// The signed header for `vouched`, made by `node` at `now`.
fn sign(key: &hmac::Key, node: &str, now: u64, vouched: &Vouched) -> Option<String> {
    let mut signed = format!("{node};{now};{}", vouched.client);
    if let Some(origin) = &vouched.origin {
        let authority = origin.authority.as_deref().unwrap_or_default();
        // What a header value may hold (the authority came from one, or from a parsed URI).
        if !authority.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let scheme = if origin.https { "https" } else { "http" };
        signed = format!("{signed};{scheme};{authority}");
    }
    let tag = hmac::sign(key, signed.as_bytes());
    Some(format!("{signed};{}", hex::encode(tag.as_ref())))
}

/// What a [`PEER_REQUEST_HEADER`] signs: a label of its own first (a node name holds no
/// newline), so that it is never the text of a proxy's header.
/// A peer request whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The asking node.
    pub from: String,
    /// The SHA-256 (hex) of the body the signature covers, for a request with a body.
    body_sha256: Option<String>,
}

impl Signed {
    /// Whether the signature covers exactly `body`.
    pub fn covers(&self, body: &[u8]) -> bool {
        self.body_sha256.as_deref().is_some_and(|signed| signed == crate::registry::sha256_hex(body))
    }
}

fn request_text(from: &str, to: &str, at: u64, method: &str, target: &str, body: Option<&str>) -> String {
    let text = format!("{PEER_REQUEST_HEADER}\n{from}\n{to}\n{at}\n{method}\n{target}");
    match body {
        Some(sha256) => format!("{text}\n{sha256}"),
        None => text,
    }
}

/// `FROM;TO;AT;HMAC`, or `FROM;TO;AT;BODY-SHA256;HMAC` for a request with a body.
fn sign_request(
    key: &hmac::Key,
    from: &str,
    to: &str,
    now: u64,
    method: &str,
    target: &str,
    body: Option<&str>,
) -> String {
    let tag = hex::encode(hmac::sign(key, request_text(from, to, now, method, target, body).as_bytes()).as_ref());
    match body {
        Some(sha256) => format!("{from};{to};{now};{sha256};{tag}"),
        None => format!("{from};{to};{now};{tag}"),
    }
}

/// Who asked, when `header` signs a `method` request of `target` to node `me` with `key` at
/// most [`MAX_SKEW_SECONDS`] from `now`.
fn verify_request(key: &hmac::Key, me: &str, method: &str, target: &str, header: &str, now: u64) -> Option<Signed> {
    let fields: Vec<&str> = header.split(';').collect();
    let (from, to, at, body, tag) = match fields.as_slice() {
        [from, to, at, tag] => (*from, *to, *at, None, *tag),
        [from, to, at, body, tag] => (*from, *to, *at, Some(*body), *tag),
        _ => return None,
    };
    if to != me {
        return None;
    }
    let at: u64 = at.parse().ok()?;
    if now.abs_diff(at) > MAX_SKEW_SECONDS {
        return None;
    }
    let text = request_text(from, to, at, method, target, body);
    hmac::verify(key, text.as_bytes(), &hex::decode(tag).ok()?).ok()?;
    Some(Signed { from: from.to_string(), body_sha256: body.map(str::to_string) })
}

/// What `header` vouches for, when it is signed with `key` and fresh.
fn verify(key: &hmac::Key, header: &str) -> Option<Vouched> {
    let (signed, tag) = header.rsplit_once(';')?;
    // The authority is last and may itself hold `;`: the other fields cannot.
    let mut fields = signed.splitn(5, ';');
    let (_node, at, client) = (fields.next()?, fields.next()?, fields.next()?);
    let origin = match (fields.next(), fields.next()) {
        (None, _) => None,
        (Some(scheme), Some(authority)) => Some(Origin {
            https: match scheme {
                "https" => true,
                "http" => false,
                _ => return None,
            },
            authority: (!authority.is_empty()).then(|| authority.to_string()),
        }),
        (Some(_), None) => return None,
    };
    let at: u64 = at.parse().ok()?;
    if unix_now().abs_diff(at) > MAX_SKEW_SECONDS {
        return None;
    }
    hmac::verify(key, signed.as_bytes(), &hex::decode(tag).ok()?).ok()?;
    Some(Vouched { client: client.parse().ok()?, origin })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(ip: &str) -> Vouched {
        Vouched { client: ip.parse().unwrap(), origin: None }
    }

    #[test]
    fn only_a_signed_fresh_header_vouches_for_a_client() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32]);
        let now = unix_now();
        let good = sign(&key, "a", now, &client("203.0.113.9")).unwrap();
        assert_eq!(verify(&key, &good), Some(client("203.0.113.9")));
        // Another client address under the same signature.
        let forged = good.replace("203.0.113.9", "198.51.100.1");
        assert_eq!(verify(&key, &forged), None);
        // Too old.
        assert_eq!(verify(&key, &sign(&key, "a", now - 120, &client("203.0.113.9")).unwrap()), None);
        // Signed with another key.
        let other = hmac::Key::new(hmac::HMAC_SHA256, &[8u8; 32]);
        assert_eq!(verify(&other, &good), None);
        assert_eq!(verify(&key, "garbage"), None);
    }

    #[test]
    fn the_scheme_and_authority_travel_signed() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32]);
        let now = unix_now();
        let origin = |https, authority: Option<&str>| Vouched {
            client: "203.0.113.9".parse().unwrap(),
            origin: Some(Origin { https, authority: authority.map(str::to_string) }),
        };
        for vouched in [origin(true, Some("api.a.test")), origin(false, Some("a;b@x.test:8443")), origin(false, None)] {
            let header = sign(&key, "a", now, &vouched).unwrap();
            assert_eq!(verify(&key, &header), Some(vouched), "{header}");
        }
        let good = sign(&key, "a", now, &origin(false, Some("api.a.test"))).unwrap();
        for forged in [good.replace(";http;", ";https;"), good.replace("api.a.test", "api.b.test")] {
            assert_eq!(verify(&key, &forged), None, "{forged}");
        }
        // An authority that cannot be a header value is not vouched for.
        assert_eq!(sign(&key, "a", now, &origin(false, Some("a b"))), None);
        // A node of an older version vouches for the client alone; its peers read that.
        let old = format!("a;{now};203.0.113.9");
        let old = format!("{old};{}", hex::encode(hmac::sign(&key, old.as_bytes()).as_ref()));
        assert_eq!(verify(&key, &old), Some(client("203.0.113.9")));
    }

    #[test]
    fn only_a_fresh_request_signed_for_this_node_passes() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32]);
        let now = unix_now();
        let target = "/v1/peer/corpus/orders?limit=50";
        let good = sign_request(&key, "a", "b", now, "GET", target, None);
        let signed = verify_request(&key, "b", "GET", target, &good, now).expect("verified");
        assert_eq!(signed.from, "a");
        assert!(!signed.covers(b""), "no body was signed");
        // Asked of another node, for another path, query or method, too old, another key.
        assert_eq!(verify_request(&key, "c", "GET", target, &good, now), None);
        assert_eq!(verify_request(&key, "b", "GET", "/v1/peer/corpus/other?limit=50", &good, now), None);
        assert_eq!(verify_request(&key, "b", "GET", "/v1/peer/corpus/orders?limit=200", &good, now), None);
        assert_eq!(verify_request(&key, "b", "POST", target, &good, now), None);
        assert_eq!(verify_request(&key, "b", "GET", target, &good, now + MAX_SKEW_SECONDS + 1), None);
        let other = hmac::Key::new(hmac::HMAC_SHA256, &[8u8; 32]);
        assert_eq!(verify_request(&other, "b", "GET", target, &good, now), None);
        // Another sender or time under the same signature; garbage; an extra field.
        for forged in [good.replacen("a;", "c;", 1), good.replace(&format!(";{now};"), &format!(";{};", now + 1))] {
            assert_eq!(verify_request(&key, "b", "GET", target, &forged, now), None, "{forged}");
        }
        for bad in ["", "garbage", "a;b;1", &format!("{good};x"), &format!("{good};x;y")] {
            assert_eq!(verify_request(&key, "b", "GET", target, bad, now), None, "{bad}");
        }
        // A request with a body: the signature covers its hash, and only that body passes.
        let body = crate::registry::sha256_hex(b"call");
        let with_body = sign_request(&key, "a", "b", now, "POST", target, Some(&body));
        let signed = verify_request(&key, "b", "POST", target, &with_body, now).expect("verified");
        assert!(signed.covers(b"call") && !signed.covers(b"another call"));
        let swapped = with_body.replace(&body, &crate::registry::sha256_hex(b"another call"));
        assert_eq!(verify_request(&key, "b", "POST", target, &swapped, now), None, "the hash is signed");
        // A proxy's header is no request signature, nor the other way round.
        let vouch = sign(&key, "a", now, &client("203.0.113.9")).unwrap();
        assert_eq!(verify_request(&key, "b", "GET", target, &vouch, now), None);
        assert_eq!(verify(&key, &good), None);
    }

    #[test]
    fn member_addresses_come_from_advertised_urls() {
        assert_eq!(advertised_ip("http://127.0.0.1:8080"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(advertised_ip("https://[::ffff:10.0.0.5]:443"), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(advertised_ip("https://[2001:db8::1]:8443"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(advertised_ip("http://node-b.internal:8080"), None);
    }
}
