//! Verifying JWT bearer tokens for a `JwtProvider`. So far only `keys`: turning JWKs and the HMAC
//! secret into verification keys, which the resource's validation uses.

pub mod keys;
