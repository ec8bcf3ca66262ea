//! Pure domain types shared by the token signers, the policy engine and the broker.
//! No I/O, no actix, no sqlx, no clock reads.

pub mod credential;
pub mod identity;
pub mod idp;
pub mod role;

pub use credential::{CredentialSpec, OpenTokFormat, Provider, SecretRef};
pub use identity::{Identity, Owner};
pub use idp::{IdpKeys, IdpSpec, check_jwks_url};
pub use role::Role;
