//! Access: who may do what, and how often. Tokens ([`tokens`], macaroons: minting and
//! verification), what a holder does with a token alone ([`keyless`]: attenuate, inspect, the
//! id a revoke takes) and the caveats that narrow them ([`caveats`]), rate limits ([`rate`], GCRA with the IETF headers), and
//! policies ([`policy`], per-function limits and permissions: a folder holding the policy
//! types, the file format and its checked values, the built-in defaults, the server's ceilings
//! and the tighten check).
//!
//! Layer: the lowest one with product logic: it uses only [`crate::storage`] and the engine
//! crate (revocations live there). The HTTP edge asks it whether a request may run; the
//! runtime, the guest bindings and the registry apply what it decided (a [`policy::Policy`],
//! a verified [`tokens::Caller`]).
//!
//! Invariants: every check fails closed (an unknown caveat, an unreadable revocation, a
//! policy file that does not parse never grant anything); attenuation only narrows.

pub mod caveats;
pub mod keyless;
pub mod policy;
pub mod rate;
pub mod tokens;
