//! Pure domain types shared by the token signers, the policy engine and the broker.
//! No I/O, no actix, no sqlx, no clock reads.

pub mod credential;
pub mod idp;
pub mod identity;
pub mod role;

pub use credential::{CredentialSpec, OpenTokFormat, Provider, SecretRef};
pub use idp::{IdpKeys, IdpSpec};
pub use identity::Identity;
pub use role::Role;
