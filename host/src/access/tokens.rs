//! Attenuable macaroon tokens: root keys, minting, verification, revocation.
//!
//! A token is a libmacaroons V2 macaroon, base64url without padding, sent as
//! `Authorization: Bearer <token>[,<discharge>...]`. Its identifier is
//! `ledge1 <key-id> <token-id>`: the key id names the root key (so keys can be rotated: every
//! key in `<data-dir>/keys/` verifies, the newest mints), the token id is what revocation names.
//!
//! Verification has two steps, in this order:
//! 1. the signature chain (libmacaroon, constant-time comparison): first-party caveats are
//!    chained, third-party caveats need a discharge bound to the presented token;
//! 2. every first-party caveat of the token and of its discharges is parsed and evaluated
//!    against the request ([`Request`], see [`crate::access::caveats`]). Unknown or malformed caveats refuse (fail closed).
//!
//! Invariants: a failure in step 1 (or an unknown key, a revoked id) is a 401 that says what
//! was wrong without echoing any key material; a failure in step 2 is a 403 naming the caveat.
//! Root keys and the admin token are files of mode 0600.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use libmacaroon::{Caveat as RawCaveat, Format, Macaroon, MacaroonKey, Verifier};
use thiserror::Error;

use crate::access::caveats::{Caveat, Op, Request, parse_caveat};
use crate::access::policy::RateQuota;
use crate::storage::{create_private_dir, write_durably};

const IDENTIFIER_VERSION: &str = "ledge1";
/// Where revoked token ids live in the engine (outside every guest keyspace).
pub const REVOKED_PREFIX: &[u8] = b"sys/revoked/";

/// The verified caller: its token's facts (readable by the guest) and what its caveats allow
/// on top of the function's policy. The default is an anonymous caller of a public function.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Caller {
    pub token_id: Option<String>,
    /// Every first-party caveat of the token and its discharges, as written.
    pub caveats: Vec<String>,
    /// Keys must start with every one of these (`kv-prefix` caveats).
    pub key_prefixes: Vec<Vec<u8>>,
    /// No writes (`kv = read` caveat).
    pub read_only: bool,
    /// `rate` caveats, handed to the rate limiter.
    pub rates: Vec<RateQuota>,
    /// The token carries an `fn` caveat: it may tighten its functions' policies, never widen.
    pub function_scoped: bool,
    /// No `op` caveat leaves out `manage`: with no `fn` caveat either, the token may widen
    /// policies; any other token (a deploy-only CI token) may only tighten them.
    pub manages: bool,
    /// The token's branch: its last `id` caveat, or `None` when it has none (the root id is
    /// then what a revoke takes). Audit lines name it beside the root id.
    pub branch_id: Option<String>,
    /// The token carries a `queue` caveat: the queues it may send to are named.
    pub queue_scoped: bool,
    /// No caveats but `time` and `id`, no third-party caveat: a full admin token, the only kind
    /// that may take what holds the root keys (a backup).
    pub unconfined: bool,
}

impl Caller {
    /// The longest `kv-prefix`, when all of them agree (each a prefix of it); `Err` when two
    /// contradict, which allows no key at all.
    pub(crate) fn narrowest_prefix(&self) -> Result<Option<&[u8]>, ()> {
        let Some(longest) = self.key_prefixes.iter().max_by_key(|p| p.len()) else {
            return Ok(None);
        };
        if self.key_prefixes.iter().all(|p| longest.starts_with(p)) { Ok(Some(longest)) } else { Err(()) }
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum AuthError {
    #[error("this request needs a token: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token was not issued by this server (unknown key id `{0}`)")]
    UnknownKey(String),
    #[error("the token's signature does not verify: {0}")]
    BadSignature(String),
    #[error("the token has been revoked")]
    Revoked,
    #[error("the token's caveat `{caveat}` refuses this request: {reason}")]
    Refused { caveat: String, reason: String },
}

impl AuthError {
    /// 401 for an unusable token, 403 for a valid one whose caveats refuse.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, AuthError::Refused { .. })
    }
}

/// A root key: the id tokens name, and the secret.
struct RootKey {
    id: String,
    key: MacaroonKey,
}

/// The server's token authority: its root keys and the revocation list's engine.
pub struct Authority {
    /// Newest last. Grows at run time in cluster mode, when another node adds a key.
    keys: parking_lot::RwLock<Vec<RootKey>>,
    revoked: Option<ledge_kv::Db>,
    /// Ids revoked in the cluster's state as this node follows it, refused whether or not the
    /// engine took the local copy (bounded by what etcd holds).
    followed: parking_lot::RwLock<std::collections::HashSet<String>>,
}

impl Authority {
    /// Loads the root keys under `<data_dir>/keys`, creating the first one if there is none.
    pub fn open(data_dir: &Path) -> io::Result<Authority> {
        let dir = keys_dir(data_dir);
        create_private_dir(&dir)?;
        let mut keys = load_keys(&dir)?;
        if keys.is_empty() {
            keys.push(create_key(&dir)?);
        }
        Ok(Authority { keys: parking_lot::RwLock::new(keys), revoked: None, followed: Default::default() })
    }

    /// Checks revocations against `db` from now on.
    pub fn with_revocations(mut self, db: ledge_kv::Db) -> Self {
        self.revoked = Some(db);
        self
    }

    /// Writes `<data_dir>/admin.token` (0600) unless it exists; returns its path.
    pub fn ensure_admin_token(&self, data_dir: &Path) -> io::Result<PathBuf> {
        let path = data_dir.join("admin.token");
        if !path.exists() {
            let token = self.mint(&[]).map_err(io::Error::other)?;
            write_durably(&path, format!("{token}\n").as_bytes())?;
        }
        Ok(path)
    }

    /// A new token from the newest root key, with first-party `caveats` (each checked here so
    /// a typo fails at mint time, not at use).
    pub fn mint(&self, caveats: &[String]) -> Result<String, String> {
        let keys = self.keys.read();
        let root = keys.last().ok_or("no root key")?;
        let token_id = random_hex(16).map_err(|e| e.to_string())?;
        let identifier = format!("{IDENTIFIER_VERSION} {} {token_id}", root.id);
        let mut macaroon = Macaroon::create(Some("ledge"), &root.key, identifier).map_err(|e| e.to_string())?;
        for caveat in caveats {
            parse_caveat(caveat).map_err(|reason| format!("caveat `{caveat}`: {reason}"))?;
            macaroon.add_first_party_caveat(caveat.as_bytes()).map_err(|e| e.to_string())?;
        }
        encode(&macaroon)
    }

    /// Verifies the `Authorization` header value for `request`; the verified caller on success.
    pub fn verify(&self, authorization: Option<&str>, request: &Request<'_>) -> Result<Caller, AuthError> {
        let credentials = authorization
            .ok_or(AuthError::Missing)?
            .strip_prefix("Bearer ")
            .ok_or_else(|| AuthError::Malformed("expected `Authorization: Bearer <token>`".into()))?;
        let mut parts = credentials.split(',').map(str::trim);
        let token = decode(parts.next().unwrap_or_default())?;
        let discharges = parts.map(decode).collect::<Result<Vec<_>, _>>()?;
        let (key_id, token_id) = parse_identifier(token.identifier())?;
        let keys = self.keys.read();
        let root = keys.iter().find(|k| k.id == key_id).ok_or_else(|| {
            // Only a well-formed id goes back to the caller: never echo arbitrary bytes.
            let shown = if key_id.len() == 16 && key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
                key_id.clone()
            } else {
                "(malformed)".to_string()
            };
            AuthError::UnknownKey(shown)
        })?;

        // Step 1: the signature chain only; every first-party predicate passes here.
        let mut chain = Verifier::default();
        chain.satisfy_general(|_| true);
        chain.verify(&token, &root.key, &discharges).map_err(|e| AuthError::BadSignature(e.to_string()))?;
        drop(keys);

        if self.is_revoked(&token_id) {
            return Err(AuthError::Revoked);
        }

        // Step 2: every caveat, of the token and of its discharges, against the request.
        let mut caller = Caller { token_id: Some(token_id), unconfined: true, manages: true, ..Caller::default() };
        let mut branches = Vec::new();
        for (index, raw) in std::iter::once(&token).chain(&discharges).flat_map(|m| m.caveats()).enumerate() {
            let RawCaveat::FirstParty(first_party) = raw else {
                // Discharged in step 1; it still confines the token.
                caller.unconfined = false;
                continue;
            };
            let text = String::from_utf8_lossy(first_party.predicate()).into_owned();
            let refuse = |reason: String| AuthError::Refused { caveat: text.clone(), reason };
            let caveat = parse_caveat(&text).map_err(refuse)?;
            caveat.check(request).map_err(refuse)?;
            if !matches!(caveat, Caveat::TimeBefore(_) | Caveat::Id(_)) {
                caller.unconfined = false;
            }
            match caveat {
                Caveat::KvPrefix(prefix) => caller.key_prefixes.push(prefix.into_bytes()),
                Caveat::KvRead => caller.read_only = true,
                Caveat::Rate(quota) => caller.rates.push(quota),
                Caveat::Functions(_) => caller.function_scoped = true,
                Caveat::Queues(_) => caller.queue_scoped = true,
                Caveat::Ops(ops) if !ops.contains(&Op::Manage) => caller.manages = false,
                Caveat::Id(id) => {
                    // The token's own caveats come first: its last `id` among them is its branch.
                    if index < token.caveats().len() {
                        caller.branch_id = Some(id.clone());
                    }
                    branches.push(id);
                }
                _ => {}
            }
            caller.caveats.push(text);
        }
        // A revoked branch refuses every token below it, whatever else the token carries.
        if branches.iter().any(|id| self.is_revoked(id)) {
            return Err(AuthError::Revoked);
        }
        Ok(caller)
    }

    /// The ids of the root keys this node verifies with.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.read().iter().map(|k| k.id.clone()).collect()
    }

    /// Adds a root key another node created (cluster mode): cached as a file under
    /// `<data_dir>/keys` (0600) so that `ledge token mint --data-dir` sees it too, then used to
    /// verify, and to mint once it is the newest.
    pub fn adopt_key(&self, data_dir: &Path, id: &str, secret_hex: &str) -> io::Result<()> {
        let valid_id = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
        let secret = hex::decode(secret_hex.trim()).ok().filter(|s| s.len() >= 16 && valid_id);
        let Some(secret) = secret else {
            return Err(io::Error::other(format!("root key `{id}` from the cluster is malformed")));
        };
        let mut keys = self.keys.write();
        if keys.iter().any(|k| k.id == id) {
            return Ok(());
        }
        write_durably(
            &keys_dir(data_dir).join(format!("root-{id}.key")),
            format!("{}\n", secret_hex.trim()).as_bytes(),
        )?;
        keys.push(RootKey { id: id.to_string(), key: MacaroonKey::generate(&secret) });
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(())
    }

    pub fn is_revoked(&self, token_id: &str) -> bool {
        if self.followed.read().contains(token_id) {
            return true;
        }
        let Some(db) = &self.revoked else { return false };
        let key = [REVOKED_PREFIX, token_id.as_bytes()].concat();
        // A read error fails closed.
        db.begin(ledge_kv::Isolation::Snapshot).get(&key).map_or(true, |value| value.is_some())
    }

    /// Refuses `token_id` from now on: a revocation this node saw in the cluster's state, held
    /// in memory so that it holds even when the engine cannot take the local copy.
    pub fn revoked_in_cluster(&self, token_id: &str) {
        self.followed.write().insert(token_id.to_string());
    }

    /// Records `token_id` as revoked, durably.
    pub fn revoke(&self, token_id: &str) -> Result<(), String> {
        let db = self.revoked.as_ref().ok_or("revocation needs the engine")?;
        check_token_id(token_id)?;
        let mut tx = db.begin(ledge_kv::Isolation::Serializable);
        let key = [REVOKED_PREFIX, token_id.as_bytes()].concat();
        tx.put(&key, b"revoked").map_err(|e| e.to_string())?;
        tx.commit().map(|_| ()).map_err(|e| e.to_string())
    }
}

/// A token id as revocation takes it: 1 to 64 ASCII letters and digits.
pub fn check_token_id(token_id: &str) -> Result<(), String> {
    if token_id.is_empty() || token_id.len() > 64 || !token_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!("`{token_id}` is not a token id"));
    }
    Ok(())
}

/// Whether an `Authorization` value carries a ledge token (`Bearer` and a macaroon whose
/// identifier is ours), as opposed to a credential meant for the function (a JWT, a webhook
/// signature). Costs a decode, no signature check.
pub fn is_ledge_token(authorization: &str) -> bool {
    let Some(credentials) = authorization.strip_prefix("Bearer ") else { return false };
    let first = credentials.split(',').next().unwrap_or_default().trim();
    decode(first).is_ok_and(|macaroon| parse_identifier(macaroon.identifier()).is_ok())
}

pub(super) fn parse_identifier(identifier: &[u8]) -> Result<(String, String), AuthError> {
    let text = std::str::from_utf8(identifier).map_err(|_| AuthError::Malformed("identifier is not text".into()))?;
    match text.split(' ').collect::<Vec<_>>().as_slice() {
        [IDENTIFIER_VERSION, key_id, token_id] => Ok((key_id.to_string(), token_id.to_string())),
        _ => Err(AuthError::Malformed("not a ledge token identifier".into())),
    }
}

pub(super) fn encode(macaroon: &Macaroon) -> Result<String, String> {
    macaroon.serialize(Format::V2).map(|text| text.trim_end_matches('=').to_string()).map_err(|e| e.to_string())
}

pub(super) fn decode(text: &str) -> Result<Macaroon, AuthError> {
    if text.is_empty() || text.len() > 64 << 10 {
        return Err(AuthError::Malformed("empty or oversized token".into()));
    }
    Macaroon::deserialize(text.as_bytes()).map_err(|e| AuthError::Malformed(e.to_string()))
}

fn keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("keys")
}

/// Every root key under `<data_dir>/keys`: (id, hex secret). A cluster node publishes these.
pub fn key_secrets(data_dir: &Path) -> io::Result<Vec<(String, String)>> {
    let dir = keys_dir(data_dir);
    let mut secrets = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix("root-").and_then(|n| n.strip_suffix(".key")) else { continue };
        secrets.push((id.to_string(), fs::read_to_string(dir.join(&name))?.trim().to_string()));
    }
    Ok(secrets)
}

/// Root keys are `root-<id>.key` files holding a hex secret; ids sort by creation.
fn load_keys(dir: &Path) -> io::Result<Vec<RootKey>> {
    let mut keys = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix("root-").and_then(|n| n.strip_suffix(".key")) else { continue };
        let secret = fs::read_to_string(dir.join(&name))?;
        let secret = hex::decode(secret.trim()).map_err(|_| io::Error::other(format!("{name} is not a hex key")))?;
        // libmacaroons and pymacaroons derive the HMAC key from the secret the same way.
        keys.push(RootKey { id: id.to_string(), key: MacaroonKey::generate(&secret) });
    }
    keys.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(keys)
}

/// Creates a new root key (it becomes the one that mints).
fn create_key(dir: &Path) -> io::Result<RootKey> {
    let seconds = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let id = format!("{seconds:012x}{}", random_hex(2)?);
    let secret = random_hex(32)?;
    write_durably(&dir.join(format!("root-{id}.key")), format!("{secret}\n").as_bytes())?;
    let secret = hex::decode(&secret).map_err(io::Error::other)?;
    Ok(RootKey { id, key: MacaroonKey::generate(&secret) })
}

pub(super) fn random_hex(bytes: usize) -> io::Result<String> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(hex::encode(buffer))
}
