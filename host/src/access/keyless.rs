//! What anyone holding a token can do with it, without the root key: narrow it (`ledge token
//! attenuate`), read it (`ledge token inspect`), and name the id a revoke of it takes.
//!
//! Branches: `ledge token attenuate` adds a caveat `id = <32 lowercase hex>` (random) after the
//! caveats asked for, so every token it hands out is a branch of its own. Revoking a token takes
//! its last `id` caveat (its branch), or its root id when it has none, so revoking a narrowed
//! token leaves its parent and its siblings alone; a token is refused when its root id or any
//! `id` in it is revoked ([`super::tokens::Authority::verify`]).
//!
//! Invariants: nothing here verifies a signature or sees a key; `inspect` never prints a
//! signature; attenuation only adds caveats, each parsed first (an unknown one is an error, not
//! a token that every server refuses).

use libmacaroon::{Caveat as RawCaveat, Macaroon};

use super::caveats::{Caveat, parse_caveat};
use super::tokens::{decode, encode, parse_identifier, random_hex};

/// Adds first-party caveats to a token: needs no key, only the token.
pub fn attenuate(token: &str, caveats: &[String]) -> Result<String, String> {
    let mut macaroon = decode(token).map_err(|e| e.to_string())?;
    for caveat in caveats {
        parse_caveat(caveat).map_err(|reason| format!("caveat `{caveat}`: {reason}"))?;
        macaroon.add_first_party_caveat(caveat.as_bytes()).map_err(|e| e.to_string())?;
    }
    encode(&macaroon)
}

/// `ledge token attenuate`: the caveats asked for, then a fresh `id` caveat naming the new
/// branch, so that the token can be revoked on its own.
pub fn attenuate_branch(token: &str, caveats: &[String]) -> Result<String, String> {
    let id = random_hex(16).map_err(|e| format!("no randomness for the branch id: {e}"))?;
    let mut caveats = caveats.to_vec();
    caveats.push(format!("id = {id}"));
    attenuate(token, &caveats)
}

/// What `ledge token inspect` prints: identifiers, caveats and the id a revoke would take,
/// never the signature.
pub fn inspect(token: &str) -> Result<String, String> {
    let macaroon = decode(token).map_err(|e| e.to_string())?;
    let mut lines = Vec::new();
    let root = parse_identifier(macaroon.identifier());
    match &root {
        Ok((key_id, token_id)) => lines.push(format!("token id: {token_id}\nkey id:   {key_id}")),
        Err(_) => lines.push(format!("identifier: {}", String::from_utf8_lossy(macaroon.identifier()))),
    }
    if let Some(location) = macaroon.location() {
        lines.push(format!("location: {location}"));
    }
    lines.push(format!("caveats:  {}", macaroon.caveats().len()));
    for caveat in macaroon.caveats() {
        match caveat {
            RawCaveat::FirstParty(fp) => lines.push(format!("  {}", String::from_utf8_lossy(fp.predicate()))),
            RawCaveat::ThirdParty(tp) => {
                lines.push(format!("  third-party at {} (id {})", tp.location(), String::from_utf8_lossy(tp.id())))
            }
        }
    }
    match (branch_of(&macaroon), root) {
        (Some(branch), _) => lines.push(format!("revoke:   takes {branch} (its last `id` caveat)")),
        (None, Ok((_, token_id))) => {
            lines.push(format!("revoke:   takes {token_id} (its root id: every token of the family)"))
        }
        (None, Err(_)) => {}
    }
    Ok(lines.join("\n"))
}

/// The id `ledge token revoke` and `POST /v1/tokens/revoke` take: the argument itself when it
/// already is an id, else the token's last `id` caveat, else its root id.
pub fn revocation_id_of(token_or_id: &str) -> Result<String, String> {
    if token_or_id.len() <= 64 && token_or_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(token_or_id.to_ascii_lowercase());
    }
    let macaroon = decode(token_or_id).map_err(|e| e.to_string())?;
    let (_, root_id) = parse_identifier(macaroon.identifier()).map_err(|e| e.to_string())?;
    Ok(branch_of(&macaroon).unwrap_or(root_id))
}

/// The token's last well-formed `id` caveat.
fn branch_of(macaroon: &Macaroon) -> Option<String> {
    macaroon
        .caveats()
        .iter()
        .filter_map(|caveat| match caveat {
            RawCaveat::FirstParty(fp) => match parse_caveat(&String::from_utf8_lossy(fp.predicate())) {
                Ok(Caveat::Id(id)) => Some(id),
                _ => None,
            },
            RawCaveat::ThirdParty(_) => None,
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> String {
        let key = libmacaroon::MacaroonKey::generate(b"a test root key");
        let identifier = "ledge1 00000000000000f0 0123456789abcdef0123456789abcdef";
        let macaroon = Macaroon::create(Some("ledge"), &key, identifier).expect("a macaroon");
        encode(&macaroon).expect("encodes")
    }

    #[test]
    fn a_revoke_takes_the_last_branch_or_the_root_id() {
        let root = token();
        assert_eq!(revocation_id_of(&root).unwrap(), "0123456789abcdef0123456789abcdef");
        let first = attenuate_branch(&root, &["method = GET".into()]).unwrap();
        let first_id = revocation_id_of(&first).unwrap();
        assert_eq!(first_id.len(), 32, "{first_id}");
        assert!(first_id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{first_id}");
        let second = attenuate_branch(&first, &[]).unwrap();
        let second_id = revocation_id_of(&second).unwrap();
        assert_ne!(second_id, first_id, "each attenuation is a branch of its own");
        let sibling = attenuate_branch(&root, &[]).unwrap();
        assert_ne!(revocation_id_of(&sibling).unwrap(), first_id);
        assert!(inspect(&second).unwrap().contains(&format!("revoke:   takes {second_id}")));
        // Another library's own `id` caveat names the branch too, in upper case or not.
        let foreign = attenuate(&root, &["id = ABCDEF".into()]).unwrap();
        assert_eq!(revocation_id_of(&foreign).unwrap(), "abcdef");
        assert_eq!(revocation_id_of("ABCDEF01").unwrap(), "abcdef01");
    }
}
