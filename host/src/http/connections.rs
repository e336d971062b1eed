//! Which connections the server keeps: a cap on open connections in all and per client
//! address (an IPv6 /64), a separate cap for cluster peers, and an idle timeout.
//!
//! A proxying peer carries many clients' requests, so its connections are not one client's:
//! a connection from a peer's address (a live member's advertised address, or one that sent a
//! verified peer header lately) is admitted under the peers' own cap, and each request on it
//! that a verified peer header vouches for holds a slot of the *vouched client's* address for
//! as long as it is in flight, as that client's own connection would. A request on such a
//! connection without a verified header (a client on the peer's machine) moves the connection
//! onto its own address's caps first, or is refused when they are full.
//!
//! Invariants: a connection over a cap is closed at accept, before a byte of it is read;
//! a connection with no request in flight and no bytes moving for the idle timeout is shut
//! down gracefully (HTTP/1.1: closed; HTTP/2: GOAWAY), so idle keep-alive connections cannot
//! hold slots forever, while one whose guest is still working is never cut off. Together with
//! the request-head timeout this bounds what a slowloris client holds: at most its address's
//! share of connections, each for at most the head timeout (and, on a peer's address, slots of
//! the peers' cap for as long).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::access::rate::client_key;

/// Addresses remembered as peers' because they sent a verified peer header (bounded).
const MAX_KNOWN_PEERS: usize = 64;

/// How long an address stays known as a peer's after its last verified peer header.
const KNOWN_PEER_FOR: Duration = Duration::from_secs(600);

/// The open connections, counted in all, per client address, and from peers.
pub struct Admission {
    max_total: usize,
    max_per_address: usize,
    max_peer: usize,
    open: Mutex<Open>,
    /// Addresses that sent a verified peer header lately, and when they last did.
    known_peers: Mutex<HashMap<IpAddr, Instant>>,
}

#[derive(Default)]
struct Open {
    total: usize,
    peer: usize,
    per_address: HashMap<String, usize>,
}

/// What a slot is counted against.
enum Held {
    /// A client's connection: the total and its address.
    Connection(String),
    /// A peer's connection: the peers' cap.
    Peer,
    /// A request a peer vouched for: its client's address.
    Vouched(String),
}

/// A slot held by one open connection (or one vouched request); freed on drop.
pub struct Admitted {
    admission: Arc<Admission>,
    held: Held,
}

/// What an open connection holds: its slot (a client's or a peer's) and, for a peer's
/// connection once a request on it showed no verified peer header, the slot it then took under
/// its own address.
pub struct Slot {
    _held: Admitted,
    peer: bool,
    own: Mutex<Option<Admitted>>,
}

impl Slot {
    fn new(held: Admitted) -> Slot {
        let peer = matches!(held.held, Held::Peer);
        Slot { _held: held, peer, own: Mutex::new(None) }
    }
}

/// What a WebSocket upgraded from a connection holds while it lasts: the connection's slot
/// (`--max-connections` and the per-address limit; over HTTP/2, where one TCP connection carries
/// many streams, a slot of its own too) and the server's drain.
#[derive(Clone)]
pub struct UpgradeHold {
    _slot: Arc<Slot>,
    _stream: Option<Arc<Admitted>>,
    draining: tokio::sync::mpsc::Sender<()>,
}

impl UpgradeHold {
    /// The socket is closed: its connection slots go back, and what is left holds the server's
    /// drain only (for the connection's last event).
    pub fn release_slots(self) -> tokio::sync::mpsc::Sender<()> {
        self.draining
    }
}

impl Admission {
    pub fn new(max_total: usize, max_per_address: usize, max_peer: usize) -> Arc<Self> {
        Arc::new(Admission {
            max_total,
            max_per_address,
            max_peer,
            open: Mutex::new(Open::default()),
            known_peers: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection from `ip`, unless a cap is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let address = client_key(ip);
        let mut open = self.open.lock();
        let mine = open.per_address.get(&address).copied().unwrap_or(0);
        if open.total >= self.max_total || mine >= self.max_per_address {
            return None;
        }
        open.total += 1;
        open.per_address.insert(address.clone(), mine + 1);
        Some(Admitted { admission: self.clone(), held: Held::Connection(address) })
    }

    /// What an upgrade on the connection holding `slot` holds, if it may have it: over HTTP/2
    /// (`http2`), a slot of `ip`'s own besides, and none when its address is full.
    pub fn hold_for_upgrade(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        draining: &tokio::sync::mpsc::Sender<()>,
        ip: IpAddr,
        http2: bool,
    ) -> Option<UpgradeHold> {
        let stream = match http2 {
            true => Some(Arc::new(self.admit(ip)?)),
            false => None,
        };
        Some(UpgradeHold { _slot: slot.clone(), _stream: stream, draining: draining.clone() })
    }

    /// A slot for a new connection from `ip`: under the peers' cap when `member` (the address of
    /// a live cluster member) or when the address sent a verified peer header lately, else (or
    /// when the peers' cap is reached) under the client caps.
    pub fn admit_connection(self: &Arc<Self>, ip: IpAddr, member: bool) -> Option<Slot> {
        if member || self.is_known_peer(ip) {
            let mut open = self.open.lock();
            if open.peer < self.max_peer {
                open.peer += 1;
                return Some(Slot::new(Admitted { admission: self.clone(), held: Held::Peer }));
            }
        }
        self.admit(ip).map(Slot::new)
    }

    /// Admits one request on a connection holding `slot` from `ip`; `vouched` is the client a
    /// verified peer header on it names. `Ok` holds what the request keeps while in flight;
    /// `Err` names the address whose cap refuses it.
    pub fn admit_request(
        self: &Arc<Self>,
        slot: &Slot,
        ip: IpAddr,
        vouched: Option<IpAddr>,
    ) -> Result<Option<Admitted>, IpAddr> {
        if let Some(client) = vouched {
            self.remember_peer(ip);
            return self.admit_vouched(client).map(Some).ok_or(client);
        }
        if slot.peer {
            let mut own = slot.own.lock();
            if own.is_none() {
                *own = Some(self.admit(ip).ok_or(ip)?);
            }
        }
        Ok(None)
    }

    /// A slot of `client`'s address for one request a peer vouched for (the total caps
    /// connections, and the peer's connection is counted under the peers' cap).
    fn admit_vouched(self: &Arc<Self>, client: IpAddr) -> Option<Admitted> {
        let address = client_key(client);
        let mut open = self.open.lock();
        let mine = open.per_address.get(&address).copied().unwrap_or(0);
        if mine >= self.max_per_address {
            return None;
        }
        open.per_address.insert(address.clone(), mine + 1);
        Some(Admitted { admission: self.clone(), held: Held::Vouched(address) })
    }

    /// Remembers `ip` as a peer's (it sent a verified peer header), forgetting the stalest
    /// address when [`MAX_KNOWN_PEERS`] are known.
    fn remember_peer(&self, ip: IpAddr) {
        let mut known = self.known_peers.lock();
        if known.len() >= MAX_KNOWN_PEERS && !known.contains_key(&ip) {
            let stalest = known.iter().min_by_key(|(_, at)| **at).map(|(ip, _)| *ip);
            if let Some(stalest) = stalest {
                known.remove(&stalest);
            }
        }
        known.insert(ip, Instant::now());
    }

    fn is_known_peer(&self, ip: IpAddr) -> bool {
        self.known_peers.lock().get(&ip).is_some_and(|at| at.elapsed() < KNOWN_PEER_FOR)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.admission.open.lock();
        let address = match &self.held {
            Held::Peer => {
                open.peer -= 1;
                return;
            }
            Held::Connection(address) => {
                open.total -= 1;
                address
            }
            Held::Vouched(address) => address,
        };
        if let Some(count) = open.per_address.get_mut(address) {
            *count -= 1;
            if *count == 0 {
                open.per_address.remove(address);
            }
        }
    }
}

/// What one connection is doing: when bytes last moved, and how many requests are in flight.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last read or write.
    last: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity { epoch: Instant::now(), last: AtomicU64::new(0), in_flight: AtomicUsize::new(0) })
    }

    fn touch(&self) {
        self.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// When the connection becomes idle if nothing happens: `None` while a request is in flight.
    pub fn idle_at(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.epoch + Duration::from_millis(self.last.load(Ordering::Relaxed)) + timeout)
    }

    /// Counts a request in flight until the guard drops.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }
}

/// One request in flight on a connection.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream that records its activity.
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        activity.touch();
        Tracked { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_in_all_and_per_address_and_slots_come_back() {
        let admission = Admission::new(3, 2, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert!(admission.admit(a).is_none(), "per-address cap");
        let _third = admission.admit(b).unwrap();
        assert!(admission.admit(b).is_none(), "total cap");
        drop(first);
        assert!(admission.admit(a).is_some());
    }

    #[test]
    fn peers_have_their_own_cap_and_their_requests_count_for_the_vouched_client() {
        let admission = Admission::new(10, 2, 3);
        let (peer, client, other): (IpAddr, IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        // A member's connections are not counted against its address.
        let slots: Vec<Slot> = (0..3).map(|_| admission.admit_connection(peer, true).unwrap()).collect();
        assert!(slots.iter().all(|slot| slot.peer));
        // Past the peers' cap, a member's connection is an ordinary client's.
        assert!(!admission.admit_connection(peer, true).unwrap().peer);
        // Each vouched request holds a slot of its client's address while in flight.
        let first = admission.admit_request(&slots[0], peer, Some(client)).unwrap();
        let _second = admission.admit_request(&slots[1], peer, Some(client)).unwrap();
        assert_eq!(admission.admit_request(&slots[2], peer, Some(client)).err(), Some(client));
        assert!(admission.admit(client).is_none(), "its direct connections share the cap");
        assert!(admission.admit_request(&slots[2], peer, Some(other)).unwrap().is_some());
        drop(first);
        assert!(admission.admit_request(&slots[2], peer, Some(client)).unwrap().is_some());
        // A request on a peer's connection without a verified header moves the connection onto
        // its own address's caps, once.
        assert!(admission.admit_request(&slots[0], peer, None).is_ok());
        assert!(admission.admit_request(&slots[0], peer, None).is_ok());
        let _mine = admission.admit(peer).unwrap();
        assert_eq!(admission.admit_request(&slots[1], peer, None).err(), Some(peer), "its address is full");
    }

    #[test]
    fn an_address_that_vouched_is_admitted_as_a_peer() {
        let admission = Admission::new(10, 1, 5);
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let client_slot = admission.admit_connection(peer, false).unwrap();
        assert!(!client_slot.peer);
        assert!(admission.admit_connection(peer, false).is_none(), "its address is full");
        admission.admit_request(&client_slot, peer, Some("10.0.0.2".parse().unwrap())).unwrap();
        assert!(admission.admit_connection(peer, false).unwrap().peer);
    }
}
