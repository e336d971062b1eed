//! Requests between nodes: a node that does not host a function proxies the request to one
//! that does (one hop), and passes the client's address in [`PEER_HEADER`], signed with the
//! cluster's peer key (kept in etcd, created by the first node), so that rate limits and canary
//! stickiness on the host see the real caller.
//!
//! Invariants: the header is trusted only when its HMAC-SHA256 verifies (constant time, `ring`)
//! and it is at most [`MAX_SKEW_SECONDS`] old; anything else is removed and the request counts
//! as coming from its TCP peer. A request that arrived from a peer is never proxied again.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use ring::hmac;

use super::Cluster;
use crate::etcd::EtcdError;

/// `NODE;UNIX-SECONDS;CLIENT-IP;HMAC-HEX`: who proxied, when, for which client.
pub const PEER_HEADER: &str = "ledge-peer";

/// How old a peer header may be (clock skew between nodes plus the hop).
const MAX_SKEW_SECONDS: u64 = 30;

const PEER_KEY: &str = "/ledge/peer-key";

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

    /// The header value that vouches for `client` on a proxied request.
    pub fn vouch(&self, client: IpAddr) -> Option<String> {
        let key = self.peer_key.read().clone()?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let signed = format!("{};{now};{client}", self.node);
        let tag = hmac::sign(&key, signed.as_bytes());
        Some(format!("{signed};{}", hex::encode(tag.as_ref())))
    }

    /// The client address a peer vouched for, when the header verifies.
    pub fn vouched_client(&self, header: &str) -> Option<IpAddr> {
        vouched(self.peer_key.read().as_ref()?, header)
    }
}

/// The client address `header` vouches for, when it is signed with `key` and fresh.
fn vouched(key: &hmac::Key, header: &str) -> Option<IpAddr> {
    let (signed, tag) = header.rsplit_once(';')?;
    let mut fields = signed.split(';');
    let (_node, at, client) = (fields.next()?, fields.next()?, fields.next()?);
    let at: u64 = at.parse().ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if now.abs_diff(at) > MAX_SKEW_SECONDS {
        return None;
    }
    hmac::verify(key, signed.as_bytes(), &hex::decode(tag).ok()?).ok()?;
    client.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_signed_fresh_header_vouches_for_a_client() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32]);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let sign = |signed: &str| format!("{signed};{}", hex::encode(hmac::sign(&key, signed.as_bytes()).as_ref()));
        let good = sign(&format!("a;{now};203.0.113.9"));
        assert_eq!(vouched(&key, &good), Some("203.0.113.9".parse().unwrap()));
        // Another client address under the same signature.
        let forged = good.replace("203.0.113.9", "198.51.100.1");
        assert_eq!(vouched(&key, &forged), None);
        // Too old.
        assert_eq!(vouched(&key, &sign(&format!("a;{};203.0.113.9", now - 120))), None);
        // Signed with another key.
        let other = hmac::Key::new(hmac::HMAC_SHA256, &[8u8; 32]);
        assert_eq!(vouched(&other, &good), None);
        assert_eq!(vouched(&key, "garbage"), None);
    }
}
