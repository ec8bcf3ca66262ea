//! Authentication, in one place: who is calling and what it may do.
//!
//! - `api_key`: tenant API keys (`tkb_…`), argon2id once, then a cache.
//! - `idp`: end users' login JWTs, verified against the tenant's identity
//!   providers (JWKS or shared secrets).
//! - `scope`: what a key may do, and the scope a route requires as a type.
//! - `caller`: the authenticated caller, an application key or an end user.
//!
//! Nothing here knows HTTP: the `FromRequest` glue that reads the
//! `Authorization` header and maps refusals to status codes lives in
//! `routes::extractors`.

pub mod api_key;
pub mod caller;
pub mod idp;
pub mod scope;

pub use api_key::{
    AuthError, Authenticator, KEY_PREFIX, NewKey, PresentedKey, Principal, generate_key,
    parse_presented,
};
pub use caller::Caller;
pub use scope::{InsufficientScope, Required, Scopes};
