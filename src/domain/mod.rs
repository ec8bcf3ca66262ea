//! Pure domain types shared by the token signers, the policy engine and the broker.
//! No I/O, no actix, no sqlx, no clock reads.

pub mod audit_row;
pub mod credential;
pub mod identity;
pub mod idp;
pub mod net;
pub mod rate;
pub mod role;
pub mod session_id;

pub use credential::{
    CredentialSpec, MAX_SECRET_FILE_BYTES, OpenTokFormat, Provider, SecretRef, confined_relative,
    env_prefix,
};
pub use identity::{Identity, Owner};
pub use idp::{IdpKeys, IdpSpec, check_jwks_url};
pub use net::parse_trusted_proxies;
pub use rate::{Rate, Rates};
pub use role::Role;
pub use session_id::{
    InvalidSessionId, MAX_LABEL_KEY, MAX_LABEL_VALUE, MAX_SESSION_ID_LEN, SessionId, is_label_key,
};
